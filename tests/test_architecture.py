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
