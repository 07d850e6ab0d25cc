"""Registers hydra/sweeper=tunelab and hydra/sweeper=tunelab_study (schemas: tunelab.tuning.settings)."""

from hydra.core.config_store import ConfigStore

from tunelab.tuning.settings import StudySweeperConf, TunelabSweeperConf

ConfigStore.instance().store(
    group="hydra/sweeper", name="tunelab", node=TunelabSweeperConf, provider="tunelab"
)
ConfigStore.instance().store(
    group="hydra/sweeper", name="tunelab_study", node=StudySweeperConf, provider="tunelab"
)
