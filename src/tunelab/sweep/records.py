"""MLflow records of a sweep: a parent run per study, a child run per trial (seed runs nest below)."""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

_PARAM_MAX = 6000
log = logging.getLogger(__name__)


class SweepRecorder:
    """Thin, thread-safe wrapper over MlflowClient for the sweep's own runs."""

    def __init__(self, tracking_uri: str, experiment: str) -> None:
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self._lock = threading.Lock()
        exp = self.client.get_experiment_by_name(experiment)
        self.experiment_id = (
            exp.experiment_id if exp is not None else self.client.create_experiment(experiment)
        )
        self.parent_id: str | None = None
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="mlflow-writer")
        self._pending: list[Future] = []

    def later(self, fn: Any, *args: Any) -> None:
        """Run a record write in the background, in submission order (off the trials' path)."""
        self._pending.append(self._writer.submit(_retry_locked, fn, *args))

    def flush(self) -> None:
        """Wait for the background writes; a failed write is logged, not raised."""
        for fut in self._pending:
            try:
                fut.result()
            except Exception as e:
                log.warning("MLflow record write failed: %s", e)
        self._pending.clear()

    def start_parent(self, study_name: str, run_id: str | None, tags: dict[str, str]) -> str:
        """Create the sweep run, or reopen the one a previous sweep of this study left."""
        if run_id:
            try:
                self.client.update_run(run_id, status="RUNNING")
                self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
                self.parent_id = run_id
                return run_id
            except Exception:
                pass
        tags = {**tags, "role": "sweep"}
        if os.environ.get("TUNELAB_PARENT_RUN_ID"):  # nested under an enclosing run
            tags["mlflow.parentRunId"] = os.environ["TUNELAB_PARENT_RUN_ID"]
        run = self.client.create_run(self.experiment_id, run_name=study_name, tags=tags)
        self.parent_id = run.info.run_id
        return self.parent_id

    def start_trial(self, name: str, tags: dict[str, str]) -> str:
        """Child run for one trial, tagged flat so it filters without the tree."""
        with self._lock:
            run = self.client.create_run(
                self.experiment_id,
                run_name=name,
                tags={**tags, "role": "trial", "mlflow.parentRunId": self.parent_id or ""},
            )
        return run.info.run_id

    def end_run(
        self,
        run_id: str,
        status: str,
        metrics: dict[str, float],
        tags: dict[str, str],
        params: dict[str, Any] | None = None,
    ) -> None:
        """Log params, final metrics and tags in one batch and close the run."""
        now = int(time.time() * 1000)
        ms = [Metric(k, float(v), now, 0) for k, v in metrics.items() if _finite(v)]
        ps = [Param(k, str(v)[:_PARAM_MAX]) for k, v in (params or {}).items()]
        with self._lock:
            self.client.log_batch(
                run_id, metrics=ms, params=ps, tags=[RunTag(k, str(v)) for k, v in tags.items()]
            )
            self.client.set_terminated(run_id, status=status)

    def log_parent(
        self,
        metrics: dict[str, float],
        params: dict[str, Any],
        tags: dict[str, str],
        files: list[str],
    ) -> None:
        """Best value/params and artifacts on the sweep run."""
        self.flush()
        if self.parent_id is None:
            return
        now = int(time.time() * 1000)
        existing = self.client.get_run(self.parent_id).data.params
        ps = [
            Param(k, str(v)[:_PARAM_MAX])
            for k, v in params.items()
            if k not in existing or existing[k] == str(v)[:_PARAM_MAX]
        ]
        with self._lock:
            self.client.log_batch(
                self.parent_id,
                metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items() if _finite(v)],
                params=ps,
                tags=[RunTag(k, str(v)) for k, v in tags.items()],
            )
            for path in files:
                sub = "figures" if path.endswith(".png") else None
                self.client.log_artifact(self.parent_id, path, artifact_path=sub)

    def end_parent(self, status: str = "FINISHED") -> None:
        self.flush()
        if self.parent_id is not None:
            self.client.set_terminated(self.parent_id, status=status)


def _retry_locked(fn: Any, *args: Any, attempts: int = 6) -> Any:
    """sqlite allows one writer at a time: retry a write that found the database locked."""
    for i in range(attempts):
        try:
            return fn(*args)
        except Exception as e:
            if "locked" not in str(e) or i == attempts - 1:
                raise
            time.sleep(0.1 * 2**i)


def _finite(v: Any) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False
