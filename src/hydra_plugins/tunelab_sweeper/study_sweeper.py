"""Hydra sweeper `tunelab_study` (hydra/sweeper=tunelab_study): a playbook study, scientific x
nuisance x seeds; all work happens in tunelab.study.runner."""

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore

from .config import PrunerConf, SamplerConf
from .tunelab_sweeper import TunelabSweeper


@dataclass
class ScientificConf:
    # the hyperparameter under study (a label; the override key when `values` is a list)
    name: str = "optimizer"
    # a list of values of `name`, or {cell name: [overrides]} for values that need several keys
    values: Any = None


@dataclass
class NuisanceConf:
    # key -> sweep expression, searched in every cell
    common: dict[str, str] = field(default_factory=dict)
    # cell name -> {key: sweep expression}: the conditional part (e.g. momentum only for SGD)
    cells: dict[str, Any] = field(default_factory=dict)


@dataclass
class StudySweeperConf:
    _target_: str = "hydra_plugins.tunelab_sweeper.study_sweeper.StudySweeper"
    # null: "<experiment>-study"; cell studies are "<study_name>-<cell>" in the same storage
    study_name: str | None = None
    goal: str = ""
    scientific: ScientificConf = field(default_factory=ScientificConf)
    nuisance: NuisanceConf = field(default_factory=NuisanceConf)
    # key -> value applied to every job and listed in the report as the study's caveats
    fixed: dict[str, Any] = field(default_factory=dict)
    sampler: SamplerConf = field(default_factory=lambda: SamplerConf(name="qmc"))
    pruner: PrunerConf = field(default_factory=PrunerConf)
    # nuisance trials per cell (the cell study's total: a resumed study runs only the remainder)
    n_trials: int = 8
    # seed replicates of every nuisance trial (null: the config's seed)
    search_seeds: list[int] | None = None
    # confirmation seeds per cell, the same for every cell: N (seed_start..) or an explicit list
    seeds: Any = 3
    seed_start: int = 1
    seed_key: str = "seed"
    # null: journal file optuna.journal next to the MLflow store; any tunelab sweeper storage
    storage: str | None = None
    n_jobs: int = 1
    timeout_s: float | None = None
    max_failure_rate: float = 0.5
    max_retries: int = 1
    grid_points: int = 5
    # Optuna's own figures on every cell run (the study report has its own)
    figures: bool = False
    cached_compose: bool = True
    # report: boundary zone of the edge check, curves of the top-k trials, bootstrap draws, test level
    edge_fraction: float = 0.1
    top_k_curves: int = 3
    bootstrap: int = 500
    alpha: float = 0.05
    tracking_uri: str | None = None
    experiment: str | None = None


ConfigStore.instance().store(
    group="hydra/sweeper", name="tunelab_study", node=StudySweeperConf, provider="tunelab"
)


class StudySweeper(TunelabSweeper):
    """Per scientific value a nuisance study, then its winner under the study's seeds (paired)."""

    def sweep(self, arguments: list[str]) -> Any:
        from tunelab.study.runner import run_study

        assert self.config is not None and self.launcher is not None
        return run_study(self.conf, self.config, self.launcher, list(arguments))
