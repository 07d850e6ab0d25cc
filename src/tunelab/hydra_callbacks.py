"""Hydra callbacks: validate before Hydra creates any directory; one MLflow parent run per multirun."""

from __future__ import annotations

import logging
import os
from typing import Any

from hydra.core.utils import JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from tunelab.config import ConfigError, validate

log = logging.getLogger(__name__)


def _validate_or_exit(config: DictConfig) -> None:
    """Hydra turns a callback's exceptions into warnings; SystemExit is what stops it."""
    try:
        validate(config)
    except ConfigError as exc:
        raise SystemExit(f"error: {exc}") from None
    except Exception as exc:  # e.g. a mandatory value left as ???
        raise SystemExit(f"error: invalid configuration: {exc}") from None


def _uses_tunelab_sweeper(config: DictConfig) -> bool:
    return "tunelab" in str(config.hydra.sweeper.get("_target_", ""))


class TunelabCallback(Callback):
    """on_run_start runs before the job's output directory exists, so bad input leaves no trace."""

    def __init__(self) -> None:
        self.parent = None

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _validate_or_exit(config)

    def on_run_end(self, config: DictConfig, job_return: Any = None, **kwargs: Any) -> None:
        completed = job_return is not None and job_return.status == JobStatus.COMPLETED
        if completed and config.tracking.get("tracking_uri") and not config.get("diagnose"):
            from tunelab.entry import where_to_look
            from tunelab.tracking import prepare_store

            exp_id = prepare_store(config.tracking.tracking_uri, config.tracking.experiment)
            print(where_to_look(config.tracking.tracking_uri, exp_id))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _validate_or_exit(config)
        uri = config.tracking.get("tracking_uri")
        if not uri or _uses_tunelab_sweeper(config) or os.environ.get("TUNELAB_PARENT_RUN_ID"):
            return
        from tunelab.tracking import MlflowTracker

        self.parent = MlflowTracker(uri, config.tracking.experiment, log_model=False)
        overrides = " ".join(config.hydra.overrides.task)
        self.parent.start(
            run_name=f"multirun: {overrides}"[:250],
            tags={"role": "multirun", "overrides": overrides},
        )
        os.environ["TUNELAB_PARENT_RUN_ID"] = self.parent.run_id

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.parent is None:
            return
        from tunelab.entry import where_to_look

        self.parent.end("FINISHED")
        os.environ.pop("TUNELAB_PARENT_RUN_ID", None)
        print(where_to_look(config.tracking.tracking_uri, self.parent.experiment_id))
