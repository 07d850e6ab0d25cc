"""Experiment tracking behind one small protocol: MLflow for real runs, a null tracker for tests.

The training loop only sees `Tracker`; nothing outside this module imports mlflow for logging runs.
"""

from __future__ import annotations

import json
import logging
import os
import random
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol, TypeVar

from tunelab.background import BackgroundWriter

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_BATCH = 100  # MLflow's limit on params per log_batch call
PARAM_CHARS = 6000


class Tracker(Protocol):
    """start(run_id=...) continues an existing run; on it log_metrics skips (key, step) pairs the
    run already has, so replaying epochs after a crash never duplicates history."""

    run_id: str | None

    def start(
        self,
        run_name: str,
        tags: dict[str, str],
        parent_run_id: str | None = None,
        run_id: str | None = None,
    ) -> str: ...
    def log_params(self, params: dict[str, Any]) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...
    def set_tags(self, tags: dict[str, Any]) -> None: ...
    def log_artifact(self, local_path: str | Path, artifact_path: str | None = None) -> None: ...
    def log_dict(self, obj: Any, artifact_file: str) -> None: ...
    def log_text(self, text: str, artifact_file: str) -> None: ...
    def log_figure(self, fig: Any, artifact_file: str) -> None: ...  # fig: not changed afterwards
    def log_dataset(self, name: str, digest: str, source: str, profile: dict[str, Any]) -> None: ...
    def log_model(self, model: Any, input_example: Any) -> None: ...
    def end(self, status: str) -> None: ...
    def mark_killed(self, run_id: str, reason: str) -> bool: ...


class NullTracker:
    """Records nothing; keeps the calls so tests can inspect them."""

    def __init__(self, **_: Any) -> None:
        self.run_id: str | None = None
        self.calls: list[tuple[str, Any]] = []

    def __getattr__(self, name: str) -> Callable[..., None]:
        if name.startswith("_"):
            raise AttributeError(name)
        return lambda *args, **kwargs: self.calls.append((name, args or kwargs))

    def start(
        self,
        run_name: str,
        tags: dict[str, str],
        parent_run_id: str | None = None,
        run_id: str | None = None,
    ) -> str:
        self.run_id = run_id or "null"
        return self.run_id


# Errors a concurrent writer causes and a retry resolves: SQLite's single-writer lock, and two jobs
# registering the same dataset at once (MLflow checks, then inserts; the second insert fails and a
# retry finds the row and links it).
TRANSIENT = ("database is locked", "unique constraint failed: datasets")


def retry_locked(fn: Callable[[], T], *, attempts: int = 12) -> T:
    """Call fn, retrying with jittered backoff on the transient errors of concurrent writers."""
    for attempt in range(attempts):
        try:
            return fn()
        except Exception as exc:  # sqlalchemy/mlflow wrap the sqlite3 error differently per path
            transient = any(t in str(exc).lower() for t in TRANSIENT)
            if not transient or attempt == attempts - 1:
                raise
            time.sleep(min(2.0, 0.05 * 2**attempt) * (0.5 + random.random()))
    raise AssertionError("unreachable")


class MlflowTracker:
    """One MLflow run through MlflowClient (no global fluent state, safe for in-process sweeps)."""

    def __init__(
        self,
        tracking_uri: str,
        experiment: str,
        log_model: bool = True,
        metrics_every_s: float = 2.0,
    ) -> None:
        from mlflow import MlflowClient

        self.tracking_uri = absolute_uri(tracking_uri)
        self.experiment, self.log_model_enabled = experiment, log_model
        # metrics are sent in one batch (one SQLite transaction) at most this often; flush, end
        # and every artifact send what is pending. A killed run's unsent epochs come back from its
        # checkpoint's history when it resumes.
        self.metrics_every_s = float(metrics_every_s)
        self._pending: list[Any] = []
        self._sent_at = time.monotonic()
        if os.environ.get("TUNELAB_LOG_MODEL") == "0":
            self.log_model_enabled = False
        self.client = retry_locked(lambda: MlflowClient(self.tracking_uri))
        self.run_id: str | None = None
        self._logged: set[tuple[str, int]] = set()  # (key, step) already in a resumed run
        self._background: BackgroundWriter | None = None  # started on the first metric write
        self.experiment_id = ensure_experiment(self.client, experiment)

    @property
    def _writer(self) -> BackgroundWriter:
        if self._background is None:
            self._background = BackgroundWriter()
        return self._background

    def __getstate__(self) -> dict[str, Any]:
        """Picklable (Hydra callbacks travel to joblib workers): pending writes are flushed first."""
        self.flush()
        return {k: v for k, v in self.__dict__.items() if k != "_background"} | {
            "_background": None
        }

    def start(
        self,
        run_name: str,
        tags: dict[str, str],
        parent_run_id: str | None = None,
        run_id: str | None = None,
    ) -> str:
        if run_id is not None:  # resume an existing run
            retry_locked(lambda: self.client.update_run(run_id, status="RUNNING"))
            self.run_id = run_id
            self._logged = self._logged_pairs(run_id)
            return run_id
        all_tags = {k: str(v) for k, v in tags.items()}
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        run = retry_locked(
            lambda: self.client.create_run(self.experiment_id, run_name=run_name, tags=all_tags)
        )
        self.run_id = run.info.run_id
        return self.run_id

    def flush(self) -> None:
        """Wait until every queued write is recorded (re-raising the first that failed)."""
        self._send_metrics()
        if self._background is not None:  # nothing was ever queued: no thread to start
            self._background.flush()

    def _later(self, write: Callable[[str], Any]) -> None:
        """Queue a write for the background thread (in order; retried while SQLite is locked)."""
        run_id = self.run_id
        self._writer.submit(lambda: retry_locked(lambda: write(run_id)))

    def _batches(self, kind: str, items: list, size: int = MAX_BATCH) -> None:
        for chunk in _chunks(items, size):
            self._later(
                lambda rid, c=chunk: self.client.log_batch(rid, **{kind: c}, synchronous=True)
            )

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        self._batches("params", [Param(k, str(v)[:PARAM_CHARS]) for k, v in params.items()])

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
            self._batches("metrics", pending, size=1000)

    def set_tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        self._batches("tags", [RunTag(k, str(v)[:PARAM_CHARS]) for k, v in tags.items()])

    def log_artifact(self, local_path: str | Path, artifact_path: str | None = None) -> None:
        self.flush()  # the file may be temporary: copy it now
        retry_locked(lambda: self.client.log_artifact(self.run_id, str(local_path), artifact_path))

    def log_dict(self, obj: Any, artifact_file: str) -> None:
        snapshot = json.loads(json.dumps(obj, default=str))  # the caller may keep mutating obj
        self._later(lambda rid: self.client.log_dict(rid, snapshot, artifact_file))

    def log_text(self, text: str, artifact_file: str) -> None:
        self._later(lambda rid: self.client.log_text(rid, text, artifact_file))

    def log_figure(self, fig: Any, artifact_file: str) -> None:
        """Rendered on the background thread: pass a pyplot-free Figure and leave it unchanged."""
        self._later(lambda rid: self.client.log_figure(rid, fig, artifact_file))

    def log_dataset(self, name: str, digest: str, source: str, profile: dict[str, Any]) -> None:
        from mlflow.entities import Dataset, DatasetInput, InputTag

        ds = Dataset(
            name=name,
            digest=digest[:36],
            source_type="local",
            source=json.dumps({"uri": source}),
            profile=json.dumps(profile),
        )
        inp = DatasetInput(ds, tags=[InputTag("mlflow.data.context", "training")])
        self._later(lambda rid: self.client.log_inputs(rid, datasets=[inp]))

    def log_model(self, model: Any, input_example: Any) -> None:
        """Log with MLflow's PyTorch flavour (signature inferred from the input example)."""
        self.flush()
        if not self.log_model_enabled:
            return
        import mlflow
        import mlflow.pytorch

        mlflow.set_tracking_uri(self.tracking_uri)
        with mlflow.start_run(run_id=self.run_id):
            mlflow.pytorch.log_model(
                model, name="model", input_example=input_example, serialization_format="pickle"
            )

    def end(self, status: str) -> None:
        try:
            self.flush()
        finally:
            if self.run_id is not None:
                retry_locked(lambda: self.client.set_terminated(self.run_id, status=status))

    def mark_killed(self, run_id: str, reason: str) -> bool:
        """End a run that a dead process left RUNNING as KILLED; False if it is not RUNNING here."""
        from mlflow.entities import RunTag

        try:
            run = retry_locked(lambda: self.client.get_run(run_id))
        except Exception as exc:  # e.g. the run lives in another store
            log.warning("could not look up unfinished run %s: %s", run_id, exc)
            return False
        if run.info.status != "RUNNING":
            return False
        tags = [RunTag("failure_reason", reason)]
        retry_locked(lambda: self.client.log_batch(run_id, tags=tags, synchronous=True))
        retry_locked(lambda: self.client.set_terminated(run_id, status="KILLED"))
        return True

    def _logged_pairs(self, run_id: str) -> set[tuple[str, int]]:
        keys = retry_locked(lambda: self.client.get_run(run_id)).data.metrics
        return {
            (k, m.step)
            for k in keys
            for m in retry_locked(lambda k=k: self.client.get_metric_history(run_id, k))
        }


def ensure_experiment(client: Any, name: str) -> str:
    """Create the experiment (and so the schema) once; safe against a concurrent creator."""
    exp = retry_locked(lambda: client.get_experiment_by_name(name))
    if exp is not None:
        return exp.experiment_id
    try:
        return retry_locked(lambda: client.create_experiment(name))
    except Exception:
        exp = retry_locked(lambda: client.get_experiment_by_name(name))
        if exp is None:
            raise
        return exp.experiment_id


def prepare_store(tracking_uri: str, experiment: str) -> str:
    """Create schema and experiment before parallel jobs start (SQLite is single-writer)."""
    from mlflow import MlflowClient

    return ensure_experiment(MlflowClient(absolute_uri(tracking_uri)), experiment)


def absolute_uri(uri: str) -> str:
    """Pin a relative sqlite path to the current directory (MLflow caches stores by URI)."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix) :].startswith("/"):
        return prefix + str(Path(uri[len(prefix) :]).resolve())
    return uri


def temp_artifact_dir() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="tunelab-")


def _chunks(items: list[T], size: int) -> Iterable[list[T]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
