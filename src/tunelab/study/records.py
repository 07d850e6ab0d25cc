"""MLflow records of a study: the study run, its cell runs, flat tags on every leaf, histories."""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)
_PARAM_MAX = 6000


class StudyRecords:
    """Thin wrapper over MlflowClient for the runs the study itself owns or tags."""

    def __init__(self, tracking_uri: str, experiment: str) -> None:
        self.client = MlflowClient(tracking_uri=tracking_uri)
        exp = self.client.get_experiment_by_name(experiment)
        self.experiment_id = (
            exp.experiment_id if exp is not None else self.client.create_experiment(experiment)
        )

    def open_run(
        self, name: str, run_id: str | None, tags: dict[str, str], parent: str | None = None
    ) -> str:
        """Create a run, or reopen `run_id` (a resumed study keeps its runs)."""
        if parent:
            tags = {**tags, "mlflow.parentRunId": parent}
        if run_id:
            try:
                self.client.update_run(run_id, status="RUNNING")
                self.set_tags(run_id, tags)
                return run_id
            except Exception as e:  # e.g. the run was deleted: start a new one
                log.warning("cannot reopen MLflow run %s (%s): starting a new one", run_id, e)
        return self.client.create_run(self.experiment_id, run_name=name, tags=tags).info.run_id

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def tag_sweep(self, sweep: str, tags: dict[str, str]) -> int:
        """Add `tags` to every run of one cell's nuisance sweep that lacks them; returns the count."""
        runs = self.client.search_runs(
            [self.experiment_id], f"tags.sweep = '{sweep}'", max_results=50000
        )
        n = 0
        for r in runs:
            missing = {k: v for k, v in tags.items() if r.data.tags.get(k) != v}
            if missing and r.data.tags.get("role") in ("trial", "seed"):
                self.set_tags(r.info.run_id, missing)
                n += 1
        return n

    def confirm_runs(self, study: str) -> dict[tuple[str, int], Any]:
        """(cell, seed) -> the newest FINISHED confirmation run of this study."""
        runs = self.client.search_runs(
            [self.experiment_id],
            f"tags.study = '{study}' and tags.role = 'confirm' and attributes.status = 'FINISHED'",
            max_results=50000,
            order_by=["attributes.start_time ASC"],
        )
        return {(r.data.tags.get("cell", ""), int(r.data.tags.get("seed", -1))): r for r in runs}

    def first_seed_run(self, trial_run_id: str) -> str | None:
        """The replicate-0 job run under one trial run (the one the pruner watched)."""
        runs = self.client.search_runs(
            [self.experiment_id],
            f"tags.mlflow.parentRunId = '{trial_run_id}'",
            max_results=100,
            order_by=["attributes.start_time ASC"],
        )
        return runs[0].info.run_id if runs else None

    def history(self, run_id: str) -> dict[str, list[float]] | None:
        """The per-epoch history a job logged (history.json), or None."""
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        try:
            with tempfile.TemporaryDirectory() as d:
                path = self.client.download_artifacts(run_id, "history.json", d)
                return json.loads(Path(path).read_text())
        except Exception as e:
            log.info("no history for run %s: %s", run_id, e)
            return None

    def log(
        self,
        run_id: str,
        metrics: dict[str, float] | None = None,
        params: dict[str, Any] | None = None,
        tags: dict[str, str] | None = None,
    ) -> None:
        """Metrics, params (existing ones with other values are left alone) and tags in a batch."""
        now = int(time.time() * 1000)
        existing = self.client.get_run(run_id).data.params
        ps = [
            Param(k, str(v)[:_PARAM_MAX])
            for k, v in (params or {}).items()
            if k not in existing or existing[k] == str(v)[:_PARAM_MAX]
        ]
        ms = [Metric(k, float(v), now, 0) for k, v in (metrics or {}).items() if _finite(v)]
        for i in range(0, len(ps), 100):  # MLflow's per-batch limits
            self.client.log_batch(run_id, params=ps[i : i + 100])
        for i in range(0, len(ms), 900):
            self.client.log_batch(run_id, metrics=ms[i : i + 900])
        if tags:
            self.set_tags(run_id, tags)

    def artifacts(self, run_id: str, directory: Path) -> None:
        self.client.log_artifacts(run_id, str(directory))

    def end(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)


def _finite(v: Any) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False
