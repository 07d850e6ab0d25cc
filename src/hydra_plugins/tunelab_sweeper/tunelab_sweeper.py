"""The Sweeper class Hydra instantiates; all work happens in tunelab.tuning.sweeper."""

from __future__ import annotations

from typing import Any

from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

import hydra_plugins.tunelab_sweeper.config  # noqa: F401  (registers hydra/sweeper=tunelab)
from tunelab.tuning.settings import StudySweeperConf, TunelabSweeperConf, sweep_settings


class TunelabSweeper(Sweeper):
    """Optuna study over Hydra jobs: one job per trial and seed, launched by the configured launcher."""

    schema: type[TunelabSweeperConf] | type[StudySweeperConf] = TunelabSweeperConf

    def __init__(self, **conf: Any) -> None:
        values = {
            k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
            for k, v in conf.items()
        }
        # the typed settings, built once here: the sweep, study, storage and reports take them
        self.settings: TunelabSweeperConf | StudySweeperConf = sweep_settings(values, self.schema)
        self.config: DictConfig | None = None
        self.launcher = None
        self.hydra_context: HydraContext | None = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config = config
        self.hydra_context = hydra_context
        from tunelab.tuning.jobs import SafeTask

        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=SafeTask(task_function)
        )

    def sweep(self, arguments: list[str]) -> Any:
        from tunelab.tuning.study_storage import WarmStartError
        from tunelab.tuning.sweeper import SettingsChanged, run_sweep

        assert self.config is not None and self.launcher is not None
        try:
            return run_sweep(self.settings, self.config, self.launcher, list(arguments))
        except (
            SettingsChanged,
            WarmStartError,
        ) as exc:  # the user's to fix, not a crash: no traceback
            raise SystemExit(f"error: {exc}") from None
