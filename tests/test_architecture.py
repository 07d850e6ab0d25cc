"""The layers stay layers: every module has a layer in tunelab/layer_order.py and imports only from
its own package and the layers below (imports inside functions included), the README's table is
that order, no module or package imports itself back through others, and private APIs of other
libraries are named only in tunelab/compat/."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tunelab.layer_order import LAYERS, layer_of, unit_of

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PACKAGE = SRC / "tunelab"


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every tunelab module a file imports, at the top or inside a function (not those under
    `if TYPE_CHECKING:`): `from pkg import sub` names the submodule, `from pkg import name` the
    package's own `__init__`."""
    found: set[str] = set()
    tree = ast.parse(path.read_text())
    for block in ast.walk(tree):  # annotations only: they never run
        if isinstance(block, ast.If) and ast.unparse(block.test).endswith("TYPE_CHECKING"):
            block.body = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in MODULE_NAMES else node.module)
    return {m for m in found if m.split(".")[0] == "tunelab"}


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}
MODULE_NAMES = set(MODULES)
# every edge between modules, a submodule's import of its own package's names included
GRAPH = {name: {m for m in imports(p) if m in MODULES and m != name} for name, p in MODULES.items()}


def cycle_in(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of graph (a path that comes back to where it started), or None."""
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return [*path[path.index(dep) :], dep]
            if dep not in state and (found := visit(dep, [*path, dep])):
                return found
        state[node] = 2
        return None

    for name in sorted(graph):
        if name not in state and (found := visit(name, [name])):
            return found
    return None


def markdown_table() -> list[str]:
    """The README's layer table, top layer first, rendered from tunelab/layer_order.py."""
    rows = ["| layer | folder | what lives there |", "|---|---|---|"]
    for layer in reversed(LAYERS):
        where = [
            f"`tunelab/{u.split('.')[1]}/`"
            if (PACKAGE / u.split(".")[1]).is_dir()
            else f"`tunelab/{u.split('.')[1]}.py`"
            for u in layer.units
        ] + [f"`{extra}`" for extra in layer.also]
        rows.append(f"| {layer.name} | {', '.join(where)} | {layer.what} |")
    return rows


def test_every_module_has_a_layer_and_every_layer_names_real_modules():
    units = [u for layer in LAYERS for u in layer.units]
    assert len(units) == len(set(units)), "a package or module is in two layers"
    assert set(units) == {unit_of(m) for m in MODULES if m != "tunelab"}
    for name in MODULES.keys() - {"tunelab"}:
        layer_of(name)  # KeyError names the module without one
    for layer in LAYERS:
        for extra in layer.also:
            assert (SRC / extra).exists() or (ROOT / extra).exists(), extra
    assert not GRAPH["tunelab"], "the top package imports nothing: `import tunelab` stays cheap"


def test_each_layer_imports_only_from_its_own_package_and_the_layers_below():
    bad = []
    for name, deps in GRAPH.items():
        if name == "tunelab":
            continue
        for dep in deps:
            if unit_of(dep) != unit_of(name) and layer_of(dep) >= layer_of(name):
                bad.append(
                    f"{name} ({LAYERS[layer_of(name)].name}) imports {dep} "
                    f"({LAYERS[layer_of(dep)].name})"
                )
    assert not bad, "\n".join(sorted(bad))


def test_the_layer_rule_sees_imports_inside_functions(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from tunelab.run import api\n"
        "def f():\n    from tunelab.config import groups, validate\n"
    )
    assert imports(probe) == {"tunelab.config.groups", "tunelab.config"}


@pytest.mark.parametrize("layer", ["tunelab.run"])
def test_the_run_layer_imports_nothing_from_tuning_reports_or_tracking_internals(layer):
    allowed_tracking = {"tunelab.tracking", "tunelab.tracking.base"}
    for name, deps in GRAPH.items():
        if not (name == layer or name.startswith(layer + ".")):
            continue
        bad = {
            d
            for d in deps
            if d.startswith(
                ("tunelab.tuning", "tunelab.reports", "tunelab.hydra_job", "tunelab.commands")
            )
            or (d.startswith("tunelab.tracking") and d not in allowed_tracking)
        }
        assert not bad, f"{name} imports {sorted(bad)}"


def test_no_import_cycle_between_modules():
    cycle = cycle_in(GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_no_import_cycle_between_packages():
    """Package level: every module of a package (its own subpackages apart) as one node, and each
    top-level module as its own."""
    packages = {name for name, path in MODULES.items() if path.name == "__init__.py"}

    def package_of(module: str) -> str:
        parent = module.rsplit(".", 1)[0]
        return module if module in packages or parent == "tunelab" else parent

    graph: dict[str, set[str]] = {}
    for name, deps in GRAPH.items():
        here = package_of(name)
        graph.setdefault(here, set()).update(package_of(d) for d in deps if package_of(d) != here)
    cycle = cycle_in(graph)
    assert cycle is None, "import cycle between packages: " + " -> ".join(cycle or [])


def test_the_cycle_check_finds_a_cycle():
    assert cycle_in({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle_in({"a": {"b"}, "b": set()}) is None


def test_the_readme_table_is_the_layer_order():
    readme = (ROOT / "README.md").read_text().splitlines()
    table = markdown_table()
    start = readme.index(table[0])
    assert readme[start : start + len(table)] == table, (
        "README.md's layer table differs from tunelab/layer_order.py; it should read:\n"
        + "\n".join(table)
    )
    assert not readme[start + len(table)].startswith("|")


def test_validation_loads_no_torch(tmp_path):
    """`tunelab.config` checks a config in well under a second: no torch, no MLflow behind it,
    even for a local data file (the caller passes the loader that opens it)."""
    arrays = tmp_path / "arrays.npz"
    arrays.write_bytes(b"not opened")
    code = (
        "import sys, pkgutil, importlib\n"
        "import tunelab.config as c\n"
        "from hydra import compose, initialize_config_dir\n"
        "for m in pkgutil.iter_modules(c.__path__):\n"
        "    importlib.import_module('tunelab.config.' + m.name)\n"
        f"with initialize_config_dir(config_dir={str(ROOT / 'conf')!r}, version_base='1.3'):\n"
        "    c.validate(compose('train'))\n"
        f"    c.validate(compose('train', overrides=['data=npz', 'data.path={arrays}']))\n"
        "print(sorted(m for m in ('torch', 'mlflow') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def private_uses(path: Path) -> list[str]:
    """Another library's private names a file uses: a private module in an import (`a._b`), a
    private name imported from one, or a private attribute of a name bound to an imported library
    (`torch._foreach_norm`, `nn.modules.conv._ConvNd`). Dunder names are public, and so are the
    standard library's documented underscore names (`os._exit`)."""

    def private(name: str) -> bool:
        return any(p.startswith("_") and not p.endswith("__") for p in name.split("."))

    tree = ast.parse(path.read_text())
    bound: set[str] = set()  # names bound to another library's modules and objects
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] not in {"tunelab", *sys.stdlib_module_names}:
                    bound.add(a.asname or a.name.split(".")[0])
                    out += [f"import {a.name}"] if private(a.name) else []
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] in {"tunelab", *sys.stdlib_module_names}:
                continue
            for a in node.names:
                bound.add(a.asname or a.name)
                if private(node.module) or private(a.name):
                    out.append(f"from {node.module} import {a.name}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and private(node.attr):
            root = node.value
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root.id in bound:
                out.append(ast.unparse(node))
    return sorted(set(out))


def test_private_apis_of_other_libraries_are_named_only_in_compat():
    """A private API changes without notice: tunelab/compat/ names each one, with a test in
    tests/test_compat.py that fails when a release changes it."""
    compat = PACKAGE / "compat"
    files = [p for p in SRC.rglob("*.py") if compat not in p.parents]
    found = [f"{p.relative_to(ROOT)}: {use}" for p in sorted(files) for use in private_uses(p)]
    assert not found, "private APIs outside tunelab/compat/:\n" + "\n".join(found)


def test_the_private_api_check_sees_modules_names_and_attributes(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import os, torch\nfrom torch import nn\nfrom hydra._internal import utils\n"
        "from mlflow.server import _MLFLOW_SGI_NAME\nimport numpy as np\n"
        "x = torch._foreach_norm\ny = nn.modules.conv._ConvNd\nz = np.__version__\n"
        "self_owned = object()._private\nos._exit(0)\n"
    )
    assert private_uses(probe) == [
        "from hydra._internal import utils",
        "from mlflow.server import _MLFLOW_SGI_NAME",
        "nn.modules.conv._ConvNd",
        "torch._foreach_norm",
    ]


def test_only_run_context_knows_the_environment_variable():
    """The hand-off to a job in another process is RunContext's alone (TUNELAB_RUN_CONTEXT);
    user-facing settings such as TUNELAB_OPTUNA_STORAGE are another matter."""
    users = [n for n, p in MODULES.items() if "TUNELAB_RUN_CONTEXT" in p.read_text()]
    assert users == ["tunelab.run.context"]


# ---- vocabulary and boundaries ----

# the tag vocabulary, MLflow and tunelab's environment, each in one place -----------------

TAG_MODULE = "tunelab.tags"
# string literals that equal a tag name elsewhere but mean something else
NOT_TAGS = {("tunelab.optim.param_groups", "role"): "an optimizer param group's key"}


def _mentions(node: ast.AST, name: str) -> bool:
    """Whether an expression names `name` (a variable, an attribute or a call argument)."""
    return any(
        (isinstance(n, ast.Name) and n.id == name)
        or (isinstance(n, ast.Attribute) and n.attr == name)
        for n in ast.walk(node)
    )


def tag_literals(tree: ast.AST, module: str) -> list[str]:
    """The tag names `role` and `failure_reason`, and role values used as a role, written as
    string literals (in filters too) instead of taken from tunelab/tags.py."""
    from tunelab.tags import FAILURE_REASON, ROLE, Role

    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = node.value
            if text in (ROLE, FAILURE_REASON) and (module, text) not in NOT_TAGS:
                bad.append(f"{text!r} (line {node.lineno})")
            elif any(f"tags.{t}" in text or f"tags.`{t}`" in text for t in (ROLE, FAILURE_REASON)):
                bad.append(f"a filter on {text!r} (line {node.lineno})")
        pairs: list[tuple[ast.AST, ast.AST]] = []
        if isinstance(node, ast.Dict):  # {ROLE: "seed"}
            pairs = [(k, v) for k, v in zip(node.keys, node.values, strict=True) if k is not None]
        elif isinstance(node, ast.Compare):  # role == "seed", tags.get(ROLE) != "trial"
            sides = [node.left, *node.comparators]
            pairs = [(a, b) for a in sides for b in sides if a is not b]
        elif isinstance(node, ast.Call) and _mentions(node.func, "require"):  # require("sweep", …)
            pairs = [(node.func, a) for a in node.args[:1]]
        for key, value in pairs:
            named = (isinstance(key, ast.Constant) and key.value == ROLE) or any(
                _mentions(key, n) for n in ("ROLE", "role", "require")
            )
            if named and isinstance(value, ast.Constant) and value.value in Role.ALL:
                bad.append(f"role {value.value!r} (line {value.lineno})")
    return bad


def test_tag_names_and_roles_are_written_only_in_the_tag_module():
    """`role` and `failure_reason` and the role values are the data contract `trace`, `reproduce`
    and the findings read: every module takes them from tunelab/tags.py."""
    found = {
        name: bad
        for name, path in MODULES.items()
        if name != TAG_MODULE and (bad := tag_literals(ast.parse(path.read_text()), name))
    }
    assert not found, found


def test_the_tag_check_finds_literal_roles_and_failure_reasons():
    written = """
tags = {"role": "seed", "failure_reason": "x"}
run = search(f"tags.role = '{x}'")
if role == "trial" or tags.get(ROLE) != "confirm":
    reader.require("sweep", name)
ok = {ROLE: Role.SEED, "lr_mult": 1.0, "seed": 3}
"""
    bad = tag_literals(ast.parse(written), "tunelab.example")
    assert len(bad) == 7, bad  # role, failure_reason, the filter, seed, trial, confirm, sweep
    assert tag_literals(ast.parse('g = {"role": "head"}'), "tunelab.optim.param_groups") == []


def imported_libraries(path: Path) -> set[str]:
    """The top-level names of every module a file imports (at the top or inside a function)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


# where mlflow may be imported, and why
MLFLOW_USERS = {
    "tunelab.tracking": "every MLflow read and write (the reader, the writer, the UI app)",
    "tunelab.compat.mlflow_internals": "MLflow's private APIs, named with a test",
}


def test_mlflow_is_imported_only_by_the_tracking_layer():
    users = sorted(n for n, p in MODULES.items() if "mlflow" in imported_libraries(p))
    stray = [n for n in users if not any(n == u or n.startswith(u + ".") for u in MLFLOW_USERS)]
    assert users and not stray, f"{stray} import mlflow: read and write through tunelab.tracking"


ENVIRONMENT_MODULE = "tunelab.environment"
# modules that may name a TUNELAB_ variable themselves, and why
OWN_VARIABLES = {
    "tunelab.run.context": "the hand-off of a run's context to a job in another process, which "
    "RunContext alone writes and reads (the run contract, not a user's setting)",
}


def test_tunelab_environment_variables_are_read_by_one_module():
    """What each TUNELAB_* setting means and how it is read is in tunelab/environment.py."""
    import re

    variable = re.compile(r"TUNELAB_[A-Z0-9_]+")
    naming = {
        name
        for name, path in MODULES.items()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and variable.fullmatch(node.value)
    }
    assert ENVIRONMENT_MODULE in naming and "os.environ" in MODULES[ENVIRONMENT_MODULE].read_text()
    assert naming - {ENVIRONMENT_MODULE} <= set(OWN_VARIABLES), sorted(naming)


def test_the_tag_and_environment_modules_are_at_the_bottom():
    assert not GRAPH[TAG_MODULE] and not GRAPH[ENVIRONMENT_MODULE], "they import nothing of tunelab"
