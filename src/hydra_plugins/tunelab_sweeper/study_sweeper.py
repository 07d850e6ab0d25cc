"""Hydra sweeper `tunelab_study` (hydra/sweeper=tunelab_study): a playbook study, scientific x
nuisance x seeds; all work happens in tunelab.tuning.study."""

from typing import Any

from tunelab.tuning.settings import StudySweeperConf

from .tunelab_sweeper import TunelabSweeper


class StudySweeper(TunelabSweeper):
    """Per scientific value a nuisance study, then its winner under the study's seeds (paired)."""

    schema = StudySweeperConf

    def sweep(self, arguments: list[str]) -> Any:
        from tunelab.tuning.study import run_study

        assert self.config is not None and self.launcher is not None
        assert isinstance(self.settings, StudySweeperConf)
        return run_study(self.settings, self.config, self.launcher, list(arguments))
