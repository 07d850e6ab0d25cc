"""The settings of the tunelab sweepers, `hydra.sweeper`: `hydra/sweeper=tunelab` (an Optuna study)
and `hydra/sweeper=tunelab_study` (a playbook study). Both extend SweepSettings, the settings every
Optuna study of theirs shares. These dataclasses are the schemas hydra_plugins/tunelab_sweeper
registers with Hydra (each default is written here, once) and, built by `sweep_settings` when the
sweep starts, the read-only settings object the sweep, the study, the storage and the reports take.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from omegaconf import DictConfig, OmegaConf


class ReadOnly:
    """Fields are set by the constructor only (derive changed settings with dataclasses.replace).
    Not dataclass(frozen=True): Hydra's nodes of a frozen dataclass are read-only, so overrides
    of them would fail."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "_built", True)

    def __setattr__(self, name: str, value: Any) -> None:
        if getattr(self, "_built", False):
            raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}")
        object.__setattr__(self, name, value)


@dataclass
class SamplerConf(ReadOnly):
    # a name of config/search_methods.SAMPLERS
    name: str = "tpe"
    # null: drawn once and stored with the study (so a resumed study keeps it)
    seed: int | None = None
    # passed to the Optuna sampler, e.g. {multivariate: true} for tpe
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class PrunerConf(ReadOnly):
    # a name of config/search_methods.PRUNERS
    name: str = "none"
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class ObjectiveConf(ReadOnly):
    metric: str = "val/acc"
    direction: str = "maximize"


@dataclass
class WarmStartConf(ReadOnly):
    # the earlier Optuna study whose best configurations this sweep's first trials run (null: none)
    study: str | None = None
    # null: this sweep's storage; else as `storage` below
    storage: str | None = None
    # how many of its best completed configurations (at most n_trials)
    top_k: int = 5


@dataclass
class SweepSettings(ReadOnly):
    """How an Optuna study is stored, sampled, pruned, launched and recorded."""

    # null: derived from the experiment; same name + storage = resume
    study_name: str | None = None
    # null: $TUNELAB_OPTUNA_STORAGE, else the journal file optuna.journal next to the MLflow sqlite
    # store; or journal:PATH, a path, sqlite:///file.db, postgresql://user@host:port/db
    storage: str | None = None
    # total trials of the study (a resumed study runs only the remainder)
    n_trials: int = 20
    # trials running at once (needs a multi-process launcher such as hydra/launcher=joblib)
    n_jobs: int = 1
    timeout_s: float | None = None
    sampler: SamplerConf = field(default_factory=SamplerConf)
    pruner: PrunerConf = field(default_factory=PrunerConf)
    seed_key: str = "seed"
    # abort when failed trials exceed this fraction of n_trials
    max_failure_rate: float = 0.5
    # re-runs of a trial interrupted by a killed sweep (or, on a database server, a lost heartbeat)
    max_retries: int = 1
    # database servers: a running trial's heartbeat interval, and how long without one makes it stale
    # (at least 3 intervals)
    heartbeat_interval_s: int = 60
    grace_period_s: int | None = None  # null: three times the interval
    # GPUs to spread concurrent trials over (null: the node's CUDA devices) and trials per GPU
    gpus: int | None = None
    trials_per_gpu: int = 1
    # values per interval for the grid sampler
    grid_points: int = 5
    # a configuration's seeds train in one job (trainer.replicas: batched where the model allows,
    # else one after another in that job); false: one job per seed
    replicas: bool = True
    # Optuna's figures on the sweep run
    figures: bool = True
    # basic launcher: compose each job from a cached template (same config, ~0.1 s less per job)
    cached_compose: bool = True
    # null: cfg.tracking.tracking_uri / cfg.tracking.experiment
    tracking_uri: str | None = None
    experiment: str | None = None


SWEEP_KEYS = tuple(f.name for f in fields(SweepSettings))


@dataclass
class TunelabSweeperConf(SweepSettings):
    _target_: str = "hydra_plugins.tunelab_sweeper.tunelab_sweeper.TunelabSweeper"
    # null: the task's objective {metric, direction}; several entries = multi-objective (nsgaii)
    objectives: list[ObjectiveConf] | None = None
    # key -> Hydra sweep expression: interval(a, b), tag(log, interval(a, b)), choice(…), range(…)
    params: dict[str, str] = field(default_factory=dict)
    # parent key -> parent value -> {key: expression}: searched only when the parent has that value
    conditional: dict[str, Any] = field(default_factory=dict)
    # seed replicates: every trial runs once per seed; Optuna is told the mean
    seeds: list[int] | None = None
    # extra flat tags for the sweep's MLflow runs (parent, trials, seeds)
    tags: dict[str, str] = field(default_factory=dict)
    # the first trial runs the config's own values of the searched keys: the untuned reference
    baseline: bool = False
    # queue an earlier study's best configurations first (once per study)
    warm_start: WarmStartConf = field(default_factory=WarmStartConf)
    # "METRIC >= NUMBER" / "METRIC <= NUMBER" on each trial's (seed-mean) summary metrics: the best
    # trial is chosen among the trials that meet them all (config/constraints.py)
    constraints: list[str] = field(default_factory=list)
    # the budget of successive halving / Hyperband: epochs (each job reports every epoch), or
    # data: rung r trains on a nested fraction of the training split (data_rungs rungs, the last
    # all of it) and reports once
    fidelity: str = "epochs"
    data_rungs: int = 3


@dataclass
class ScientificConf(ReadOnly):
    # the hyperparameter under study (a label; the override key when `values` is a list)
    name: str = "optimizer"
    # a list of values of `name`, or {cell name: [overrides]} for values that need several keys
    values: Any = None
    # null: every pair of cells is compared; a cell name: every cell against it
    baseline: str | None = None


@dataclass
class NuisanceConf(ReadOnly):
    # key -> sweep expression, searched in every cell
    common: dict[str, str] = field(default_factory=dict)
    # cell name -> {key: sweep expression}: the conditional part (e.g. momentum only for SGD)
    cells: dict[str, Any] = field(default_factory=dict)


@dataclass
class StudySweeperConf(SweepSettings):
    """A playbook study: per scientific value (cell) a nuisance study of n_trials, then its best
    configuration under the confirmation seeds. Cell studies are "<study_name>-<cell>"."""

    _target_: str = "hydra_plugins.tunelab_sweeper.study_sweeper.StudySweeper"
    sampler: SamplerConf = field(default_factory=lambda: SamplerConf(name="qmc"))
    # nuisance trials per cell (the cell study's total: a resumed study runs only the remainder)
    n_trials: int = 8
    # the study report has its own figures
    figures: bool = False
    goal: str = ""
    scientific: ScientificConf = field(default_factory=ScientificConf)
    nuisance: NuisanceConf = field(default_factory=NuisanceConf)
    # key -> value applied to every job and listed in the report as the study's caveats
    fixed: dict[str, Any] = field(default_factory=dict)
    # seed replicates of every nuisance trial (null: the config's seed)
    search_seeds: list[int] | None = None
    # confirmation seeds per cell, the same for every cell: N (seed_start..) or an explicit list
    seeds: Any = 5
    # each confirmation seed also draws its own validation split (data.split_seed), paired across
    # cells: the verdict covers that source of variance too
    vary_split: bool = True
    # the smallest difference worth resolving (metric units): the report says how many seeds it takes
    min_effect: float = 0.005
    seed_start: int = 1
    # report: boundary zone of the edge check, curves of the top-k trials, bootstrap draws, test level
    edge_fraction: float = 0.1
    top_k_curves: int = 3
    bootstrap: int = 500
    alpha: float = 0.05


def sweep_settings(
    conf: Mapping[str, Any] | DictConfig, schema: type[SweepSettings] | None = None
) -> Any:
    """The typed, read-only settings of `hydra.sweeper` (missing keys take the schema's defaults):
    an instance of `schema`, else of the one its `_target_` names (StudySweeperConf for
    hydra/sweeper=tunelab_study, else TunelabSweeperConf). Raises omegaconf's ValidationError for
    a value of the wrong type or a key the schema does not have."""
    values = OmegaConf.to_container(conf, resolve=True) if OmegaConf.is_config(conf) else conf
    if schema is None:
        target = str(values.get("_target_") or "")
        schema = StudySweeperConf if target.endswith("StudySweeper") else TunelabSweeperConf
    settings = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), values))
    pruner = settings.pruner
    if pruner.name in ("median", "percentile") and "n_startup_trials" not in pruner.kwargs:
        # Optuna waits for 5 finished trials: a budget of 6 could prune one. A third of the
        # budget (1 to 5) starts instead; 15 trials and more keep Optuna's 5.
        startup = min(5, max(1, int(settings.n_trials) // 3))
        kwargs = {**pruner.kwargs, "n_startup_trials": startup}
        settings = dataclasses.replace(settings, pruner=dataclasses.replace(pruner, kwargs=kwargs))
    return settings


def cell_sweep_settings(study: StudySweeperConf, **changes: Any) -> TunelabSweeperConf:
    """The settings of a playbook study's nuisance sweep: the study's SweepSettings, with `changes`."""
    shared = {k: getattr(study, k) for k in SWEEP_KEYS}
    return TunelabSweeperConf(**{**shared, **changes})


def tracking_target(settings: SweepSettings, config: DictConfig) -> tuple[str | None, str]:
    """(tracking URI or None when tracking is off, experiment) of a sweep or study."""
    sel = OmegaConf.select
    uri = settings.tracking_uri or sel(config, "tracking.tracking_uri", default=None)
    experiment = (
        settings.experiment
        or sel(config, "tracking.experiment", default=None)
        or sel(config, "experiment", default=None)
        or "tunelab"
    )
    return uri, str(experiment)
