"""MlflowTracker: the Tracker of one training run, on the shared MlflowWriter.

Per-epoch metrics are collected and sent in one batch (one SQLite transaction) at most every
`metrics_every_s`; params, tags, dataset and small artifacts go to the writer's background thread
in order; `flush`, `end` and every file artifact send what is pending first.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tunelab.config.secrets import mask
from tunelab.tracking.mlflow_writer import MlflowWriter
from tunelab.tracking.policy import retry

log = logging.getLogger(__name__)


@contextlib.contextmanager
def fluent_store(uri: str) -> Iterator[None]:
    """MLflow's fluent API (log_model needs it) pointed at `uri`, then put back as it was: its
    set_tracking_uri also exports MLFLOW_TRACKING_URI, which every later subprocess would inherit."""
    import mlflow

    previous = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)  # None unsets the variable


class MlflowTracker:
    def __init__(
        self,
        tracking_uri: str,
        experiment: str,
        log_model: bool = True,
        metrics_every_s: float = 2.0,
        system_metrics: bool = False,
        system_metrics_every_s: float = 10.0,
    ) -> None:
        self.writer = MlflowWriter(tracking_uri, experiment)
        self.tracking_uri, self.experiment_id = self.writer.tracking_uri, self.writer.experiment_id
        self.log_model_enabled = log_model
        # a killed run's unsent epochs come back from its checkpoint's history when it resumes
        self.metrics_every_s = float(metrics_every_s)
        self._pending: list[Any] = []
        self._sent_at = time.monotonic()
        self.run_id: str | None = None
        self._logged: set[tuple[str, int]] = set()  # (key, step) already in a resumed run
        # MLflow's own CPU, memory, disk, network and (CUDA) GPU sampling, on request
        self.system_metrics_every_s = float(system_metrics_every_s) if system_metrics else None
        self._monitor: Any = None

    def __getstate__(self) -> dict[str, Any]:
        """Picklable (Hydra callbacks travel to joblib workers): pending writes are sent first."""
        self.flush()
        return {**self.__dict__, "_monitor": None}  # a sampling thread stays with its process

    def start(
        self,
        run_name: str,
        tags: dict[str, str],
        parent_run_id: str | None = None,
        run_id: str | None = None,
    ) -> str:
        """A new run, or (run_id) the continuation of one: its logged epochs are not re-sent."""
        if run_id is not None:
            if not self.writer.reopen_run(run_id):
                raise LookupError(f"run {run_id} is not in {mask(self.tracking_uri)}")
            self.run_id = run_id
            self._logged = self.writer.logged_pairs(run_id)
        else:
            self.run_id = self.writer.create_run(run_name, tags, parent_run_id)
        self._watch_system(resumed=run_id is not None)
        return self.run_id

    def _watch_system(self, resumed: bool) -> None:
        if self.system_metrics_every_s is None:
            return
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        self._monitor = SystemMetricsMonitor(
            self.run_id,
            sampling_interval=self.system_metrics_every_s,
            resume_logging=resumed,
            tracking_uri=self.tracking_uri,
        )
        self._monitor.start()

    def flush(self) -> None:
        """Wait until every queued write is recorded (re-raising the first that failed)."""
        self._send_metrics()
        self.writer.flush()

    def _later(self, method: Any, *args: Any) -> None:
        self.writer.later(method, self.run_id, *args)

    def log_params(self, params: dict[str, Any]) -> None:
        self._later(lambda rid, p: self.writer.log(rid, params=p), dict(params))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._pending += [
            Metric(k, float(v), now, step)
            for k, v in metrics.items()
            if (k, step) not in self._logged
        ]
        if time.monotonic() - self._sent_at >= self.metrics_every_s:
            self._send_metrics()

    def _send_metrics(self) -> None:
        self._sent_at = time.monotonic()
        if self._pending:
            pending, self._pending = self._pending, []
            self._later(self.writer.log_metric_list, pending)

    def set_tags(self, tags: dict[str, Any]) -> None:
        self._later(self.writer.set_tags, dict(tags))

    def delete_tags(self, keys: list[str]) -> None:
        self._later(self.writer.delete_tags, list(keys))

    def log_artifact(self, local_path: str | Path, artifact_path: str | None = None) -> None:
        self.flush()  # the file may be temporary: copy it now
        self.writer.log_artifact(self.run_id, local_path, artifact_path)

    def log_dict(self, obj: Any, artifact_file: str) -> None:
        snapshot = json.loads(json.dumps(obj, default=str))  # the caller may keep mutating obj
        self._later(self.writer.log_dict, snapshot, artifact_file)

    def log_text(self, text: str, artifact_file: str) -> None:
        self._later(self.writer.log_text, text, artifact_file)

    def log_figure(self, fig: Any, artifact_file: str) -> None:
        """Rendered on the background thread: pass a pyplot-free Figure and leave it unchanged."""
        self._later(self.writer.log_figure, fig, artifact_file)

    def log_dataset(self, name: str, digest: str, source: str, profile: dict[str, Any]) -> None:
        """The data as an MLflow dataset input, identified by its digest."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        ds = Dataset(
            name=name,
            digest=digest[:36],
            source_type="local",
            source=json.dumps({"uri": source}),
            profile=json.dumps(profile),
        )
        inp = DatasetInput(ds, tags=[InputTag("mlflow.data.context", "training")])
        client = self.writer.client
        self._later(lambda rid: retry(lambda: client.log_inputs(rid, datasets=[inp])))

    def log_model(self, model: Any, input_example: Any) -> None:
        """MLflow's PyTorch flavour as a `pt2` graph (torch.export): loading it runs no pickled
        code and needs no tunelab import. A model torch.export cannot capture is logged pickled,
        tagged model_format=pickle. Requirements are given, not inferred (seconds saved)."""
        self.flush()
        if not self.log_model_enabled or self._has_model():
            return  # logged before this run was interrupted and resumed
        import mlflow
        import mlflow.pytorch
        import torch

        requirements = [f"torch=={torch.__version__.split('+')[0]}"]
        with fluent_store(self.tracking_uri), mlflow.start_run(run_id=self.run_id):
            try:
                mlflow.pytorch.log_model(
                    model,
                    name="model",
                    input_example=input_example,
                    serialization_format="pt2",
                    pip_requirements=requirements,
                )
                self.set_tags({"model_format": "pt2"})
            except Exception as exc:  # e.g. data-dependent control flow torch.export refuses
                log.warning("model not exportable (%s): logged pickled", str(exc).splitlines()[0])
                mlflow.pytorch.log_model(
                    model,
                    name="model",
                    input_example=input_example,
                    serialization_format="pickle",
                    pip_requirements=requirements,
                )
                self.set_tags({"model_format": "pickle"})
        self.flush()

    def _has_model(self) -> bool:
        """Whether the run has a complete logged model; incomplete ones (a process killed while
        logging) are deleted, so the next log_model is the run's only model."""
        client = self.writer.client
        models = retry(
            lambda: client.search_logged_models(
                [self.experiment_id], filter_string=f"source_run_id = '{self.run_id}'"
            )
        )
        ready = False
        for m in models:
            if str(m.status).endswith("READY"):
                ready = True
            else:
                retry(lambda m=m: client.delete_logged_model(m.model_id))
        return ready

    def end(self, status: str) -> None:
        try:
            if self._monitor is not None:
                self._monitor.finish()  # its last samples are logged before the run ends
                self._monitor = None
            self.flush()
        finally:
            if self.run_id is not None:
                self.writer.end_run(self.run_id, status)

    def mark_killed(self, run_id: str, reason: str) -> bool:
        return self.writer.mark_killed(run_id, reason)
