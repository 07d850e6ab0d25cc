"""The order of tunelab's layers, bottom first: the one source of the README's Architecture table and
of tests/test_architecture.py, which checks that a module imports only from its own package or
module and from layers below its own (imports inside functions included). Packages that share a
layer are independent of each other. This module imports nothing."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Layer:
    """One row of the table: its name, its packages and top-level modules, what lives there."""

    name: str
    units: tuple[str, ...]
    what: str
    also: tuple[str, ...] = ()  # files outside src/tunelab that belong to the layer


LAYERS: tuple[Layer, ...] = (
    Layer("layer order", ("tunelab.layer_order",), "this table, read by the architecture test"),
    Layer(
        "vocabulary",
        ("tunelab.tags", "tunelab.environment"),
        "the names of the tags tunelab writes and the roles of its runs (the data contract "
        "`trace`, `reproduce` and the findings read); the `TUNELAB_*` environment settings",
    ),
    Layer(
        "other libraries' private APIs",
        ("tunelab.compat",),
        "every private API of another library that tunelab uses, one module per library, each "
        "with a test that fails when a release changes it",
    ),
    Layer(
        "processes",
        ("tunelab.startup", "tunelab.processes", "tunelab.background", "tunelab.localpg"),
        "importing the heavy libraries once, file locks and owner stamps, the ordered background "
        "writer, a throwaway PostgreSQL for tests and benchmarks",
    ),
    Layer(
        "config",
        ("tunelab.config",),
        "the rule language, the schema check of a composed config (no torch), the `_target_` "
        "allow-list, config identity, the sweep grammar and its check, masking secrets in what "
        "leaves the machine",
    ),
    Layer(
        "data and models",
        ("tunelab.data", "tunelab.models"),
        "dataset loaders and splits; networks and their building blocks",
    ),
    Layer("optimizers", ("tunelab.optim",), "parameter groups, learning-rate schedules"),
    Layer(
        "building and checks",
        ("tunelab.build", "tunelab.diagnostics"),
        "the one place that turns config nodes into objects; sanity checks of data, gradients, "
        "learning-rate range and overfitting",
    ),
    Layer(
        "tracking",
        ("tunelab.tracking",),
        "the `Tracker` protocol, `MlflowTracker`, `MlflowWriter` and `MlflowReader`, the only code "
        "that writes to or reads MLflow; store URIs (`store_uri.py`); run owners; the UI app",
    ),
    Layer(
        "one run",
        ("tunelab.run",),
        "`api.run`, the loop, checkpoints (`store.py`), the run record, lineage, replica groups",
    ),
    Layer(
        "reports",
        ("tunelab.reports",),
        "what results become: sweep outputs, study statistics, verdicts and report, the pipeline "
        "report, test evaluation",
    ),
    Layer(
        "tuning and findings",
        ("tunelab.tuning", "tunelab.findings"),
        "Optuna sweeps (`sweeper.py`) and playbook studies (`study.py`) over Hydra jobs: storages, "
        "samplers, pruning reporter, launch, their MLflow runs; `tunelab findings`: the claims of "
        "`docs/findings/claims.yaml` run as studies and sweeps (through `src/train.py`, one "
        "process each), `docs/FINDINGS.md` written back from their MLflow runs",
    ),
    Layer(
        "entry points",
        ("tunelab.hydra_job", "tunelab.command_line", "tunelab.commands", "tunelab.stages"),
        "the Hydra job and callback, the check of a `src/train.py` command line, the `tunelab` "
        "commands, the DVC stages' shared helpers",
    ),
    Layer(
        "your own loop",
        ("tunelab.own_loop",),
        "`tracked_run`: a training loop the user wrote, recorded, checkpointed, resumed and pruned "
        "as tunelab's own runs are",
    ),
    Layer(
        "Lightning",
        ("tunelab.lightning",),
        "`TunelabCallback`: a Lightning Trainer's epochs through `tracked_run` (the optional "
        "`lightning` extra)",
    ),
    Layer(
        "launchers",
        ("tunelab.__main__",),
        "`python -m tunelab`, `python src/train.py`, the sweeper plugins, the DVC stage scripts",
        also=("src/train.py", "hydra_plugins/", "pipelines/"),
    ),
)


def layer_of(module: str) -> int:
    """The index in LAYERS of a tunelab module's layer (KeyError: a module with none)."""
    for i, layer in enumerate(LAYERS):
        if any(module == u or module.startswith(u + ".") for u in layer.units):
            return i
    raise KeyError(f"{module} has no layer in tunelab/layer_order.py")


def unit_of(module: str) -> str:
    """The package or top-level module a tunelab module belongs to."""
    return ".".join(module.split(".")[:2])
