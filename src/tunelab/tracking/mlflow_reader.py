"""The one MLflow reader: runs found page by page, a run, its artifacts and metric histories, the
store's experiments; every call under the retry policy of tracking/policy.py. The findings, the
commands and `MlflowWriter` (which extends it) read the store through it."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from tunelab.tags import PARENT_RUN_ID, tag_ref
from tunelab.tracking.policy import retry
from tunelab.tracking.store_uri import absolute_uri, missing_store

log = logging.getLogger(__name__)


class MlflowReader:
    """One tracking store, read. Thread-safe (MlflowClient is); the client is made on first use.
    `experiment_id`, when set, is where `search` looks unless told otherwise."""

    def __init__(self, tracking_uri: str, experiment_id: str | None = None) -> None:
        self.tracking_uri = absolute_uri(tracking_uri)
        self.experiment_id = experiment_id
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            from mlflow import MlflowClient

            self._client = retry(lambda: MlflowClient(self.tracking_uri))
        return self._client

    def exists(self) -> bool:
        """False for a SQLite store with no file yet (reading must not create one)."""
        return not missing_store(self.tracking_uri)

    # ---- experiments --------------------------------------------------------------------------
    def experiment_named(self, name: str) -> str | None:
        """The id of the experiment called `name`, None when the store has none."""
        exp = retry(lambda: self.client.get_experiment_by_name(name)) if self.exists() else None
        return exp.experiment_id if exp is not None else None

    def experiment_name(self, experiment_id: str) -> str:
        return retry(lambda: self.client.get_experiment(experiment_id)).name

    def experiment_ids(self) -> list[str]:
        """Every active experiment of the store."""
        found = retry(lambda: self.client.search_experiments(max_results=50000))
        return [e.experiment_id for e in found]

    # ---- runs ---------------------------------------------------------------------------------
    def run(self, run_id: str) -> Any | None:
        """A run, or None when the store has no such run."""
        from mlflow.exceptions import MlflowException

        try:
            return retry(lambda: self.client.get_run(run_id))
        except MlflowException:
            return None

    def search(
        self,
        filter_string: str = "",
        order_by: list[str] | None = None,
        experiment_ids: list[str] | None = None,
        max_results: int | None = None,
    ) -> list[Any]:
        """Every matching run (at most `max_results`) of `experiment_ids`, else of this reader's
        experiment, else of every experiment; page by page."""
        exps = experiment_ids or ([self.experiment_id] if self.experiment_id else None)
        exps = exps or self.experiment_ids()
        if not exps:
            return []
        out, token = [], None
        while True:
            page = retry(
                lambda t=token: self.client.search_runs(
                    exps, filter_string, max_results=1000, order_by=order_by, page_token=t
                )
            )
            out += list(page)
            token = page.token
            if not token or (max_results is not None and len(out) >= max_results):
                return out[:max_results]

    def children(self, run: Any) -> list[Any]:
        """The runs nested under `run` (in its experiment)."""
        query = f"{tag_ref(PARENT_RUN_ID)} = '{run.info.run_id}'"
        return self.search(query, experiment_ids=[run.info.experiment_id])

    def run_status(self, run_id: str) -> str | None:
        try:
            return retry(lambda: self.client.get_run(run_id)).info.status
        except Exception as exc:  # e.g. the run lives in another store
            log.warning("could not look up run %s: %s", run_id, str(exc).splitlines()[0])
            return None

    # ---- what a run holds ---------------------------------------------------------------------
    def artifact_bytes(self, run_id: str, path: str) -> bytes | None:
        """One artifact's bytes, None when the run has none; nothing is left on disk."""
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        try:
            with tempfile.TemporaryDirectory(prefix="tunelab-") as d:
                local = retry(lambda: self.client.download_artifacts(run_id, path, d))
                return Path(local).read_bytes()
        except Exception as exc:
            log.info("no %s for run %s: %s", path, run_id, str(exc).splitlines()[0])
            return None

    def artifact_text(self, run_id: str, path: str) -> str | None:
        """A text artifact of a run, or None when it has none."""
        data = self.artifact_bytes(run_id, path)
        return data.decode() if data is not None else None

    def read_json(self, run_id: str, path: str) -> Any | None:
        """A JSON artifact of a run, or None when it has none."""
        data = self.artifact_bytes(run_id, path)
        try:
            return json.loads(data) if data is not None else None
        except ValueError as exc:
            log.info("%s of run %s is not JSON: %s", path, run_id, exc)
            return None

    def metric_history(self, run_id: str, key: str) -> list[Any]:
        """Every logged value of a metric (MLflow's Metric: value, step, timestamp)."""
        return list(retry(lambda: self.client.get_metric_history(run_id, key)))

    def logged_pairs(self, run_id: str) -> set[tuple[str, int]]:
        """(metric, step) pairs a run already has: a resumed run skips them."""
        keys = retry(lambda: self.client.get_run(run_id)).data.metrics
        return {(k, m.step) for k in keys for m in self.metric_history(run_id, k)}
