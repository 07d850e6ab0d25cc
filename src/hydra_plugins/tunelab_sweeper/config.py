"""Schema of `hydra.sweeper` for the tunelab sweeper (registered as hydra/sweeper=tunelab)."""

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore


@dataclass
class SamplerConf:
    # grid | random | qmc | tpe | gp | cmaes | nsgaii | line
    name: str = "tpe"
    # null: drawn once and stored with the study (so a resumed study keeps it)
    seed: int | None = None
    # passed to the Optuna sampler, e.g. {multivariate: true} for tpe
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class PrunerConf:
    # none | median | percentile | successive_halving | hyperband | wilcoxon
    name: str = "none"
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class ObjectiveConf:
    metric: str = "val/acc"
    direction: str = "maximize"


@dataclass
class TunelabSweeperConf:
    _target_: str = "hydra_plugins.tunelab_sweeper.tunelab_sweeper.TunelabSweeper"
    # null: "<experiment>-<sampler>"; same name + storage = resume
    study_name: str | None = None
    # null: journal file optuna.journal next to the MLflow sqlite store; or journal:PATH, a path,
    # sqlite:///file.db, postgresql://…
    storage: str | None = None
    # total trials of the study (a resumed study runs only the remainder)
    n_trials: int = 20
    # trials running at once (needs a multi-process launcher such as hydra/launcher=joblib)
    n_jobs: int = 1
    timeout_s: float | None = None
    sampler: SamplerConf = field(default_factory=SamplerConf)
    pruner: PrunerConf = field(default_factory=PrunerConf)
    # null: the task's objective {metric, direction}; several entries = multi-objective (nsgaii)
    objectives: list[ObjectiveConf] | None = None
    # key -> Hydra sweep expression: interval(a, b), tag(log, interval(a, b)), choice(…), range(…)
    params: dict[str, str] = field(default_factory=dict)
    # parent key -> parent value -> {key: expression}: searched only when the parent has that value
    conditional: dict[str, Any] = field(default_factory=dict)
    # seed replicates: every trial runs once per seed; Optuna is told the mean
    seeds: list[int] | None = None
    seed_key: str = "seed"
    # extra flat tags for the sweep's MLflow runs (parent, trials, seeds)
    tags: dict[str, str] = field(default_factory=dict)
    # abort when failed trials exceed this fraction of n_trials
    max_failure_rate: float = 0.5
    # re-runs of a trial interrupted by a killed sweep
    max_retries: int = 1
    # values per interval for the grid sampler
    grid_points: int = 5
    figures: bool = True
    # basic launcher: compose each job from a cached template (same config, ~0.1 s less per job)
    cached_compose: bool = True
    # null: cfg.tracking.tracking_uri / cfg.experiment
    tracking_uri: str | None = None
    experiment: str | None = None


ConfigStore.instance().store(
    group="hydra/sweeper", name="tunelab", node=TunelabSweeperConf, provider="tunelab"
)
