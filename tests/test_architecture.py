"""The layers stay layers: the run layer never reaches up into tuning, reports or tracking
internals; no module imports itself back through others."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "tunelab"


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every tunelab module a file imports, at the top or inside a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            submodules = {f"{node.module}.{a.name}" for a in node.names}
            found |= {m for m in submodules if m in MODULE_NAMES} or {node.module}
    return {m for m in found if m.startswith("tunelab")}


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}
MODULE_NAMES = set(MODULES)
# edges between modules; a package's own submodules importing it back is how packages work
GRAPH = {
    name: {m for m in imports(p) if m in MODULES and m != name and not name.startswith(m + ".")}
    for name, p in MODULES.items()
}


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


def test_lower_layers_never_import_upper_ones():
    upper = {
        "tunelab.config": ("tunelab.run", "tunelab.tuning", "tunelab.reports", "tunelab.tracking"),
        "tunelab.tracking": (
            "tunelab.run",
            "tunelab.tuning",
            "tunelab.reports",
            "tunelab.hydra_job",
        ),
        "tunelab.reports": ("tunelab.tuning", "tunelab.hydra_job", "tunelab.commands"),
        "tunelab.tuning": ("tunelab.hydra_job", "tunelab.commands"),
        "tunelab.diagnostics": ("tunelab.run", "tunelab.tuning", "tunelab.reports"),
        "tunelab.findings": ("tunelab.hydra_job", "tunelab.commands", "tunelab.run"),
        "tunelab.startup": ("tunelab.",),
    }
    for name, deps in GRAPH.items():
        for layer, forbidden in upper.items():
            if name == layer or name.startswith(layer + "."):
                bad = sorted(d for d in deps if d.startswith(forbidden))
                assert not bad, f"{name} imports {bad}"


def test_no_import_cycles():
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(GRAPH[node]):
            if state.get(dep) == 1:
                cycle = path[path.index(dep) :] + [dep] if dep in path else [node, dep]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep, [*path, dep])
        state[node] = 2

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [name])


def test_only_run_context_knows_the_environment_variable():
    """The hand-off to a job in another process is RunContext's alone (TUNELAB_RUN_CONTEXT);
    user-facing settings such as TUNELAB_OPTUNA_STORAGE are another matter."""
    users = [n for n, p in MODULES.items() if "TUNELAB_RUN_CONTEXT" in p.read_text()]
    assert users == ["tunelab.run.context"]


# ---- the tag vocabulary, MLflow and tunelab's environment, each in one place -----------------

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
