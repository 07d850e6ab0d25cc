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
