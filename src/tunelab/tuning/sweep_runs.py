"""A sweep's MLflow runs: one parent per study (shared by every process working on it, found
again on resume) and one child per trial, under which the trial's seed runs nest."""

from __future__ import annotations

import logging
import threading
from typing import Any

from tunelab.config.secrets import mask
from tunelab.reports.run_record import RunRecord
from tunelab.run.names import trial_name
from tunelab.tags import FAILURE_REASON, ROLE, Role
from tunelab.tracking.mlflow_writer import MlflowWriter
from tunelab.tracking.policy import tag_filter
from tunelab.tracking.run_owners import keyed_run, leave

log = logging.getLogger(__name__)

STATUS = {
    "complete": "FINISHED",
    "pruned": "KILLED",
    "diverged": "FAILED",
    "fail": "FAILED",
    "interrupted": "KILLED",
    "lost": "KILLED",
}


def log_record(writer: MlflowWriter, run_id: str, record: RunRecord) -> None:
    """Put a report's record on a run: its values, params and tags (the run's earlier ones kept),
    then its files."""
    writer.log(
        run_id, metrics=record.metrics, params=record.params, tags=record.tags, keep_existing=True
    )
    for path, folder in record.files:
        writer.log_artifact(run_id, path, folder)
    for folder_path in record.folders:
        writer.log_artifacts(run_id, folder_path)


class SweepRuns:
    def __init__(self, tracking_uri: str, experiment: str, study_name: str) -> None:
        self.writer = MlflowWriter(tracking_uri, experiment)
        self.study_name = study_name
        self.parent_id: str | None = None
        self._active: set[str] = set()
        self._lock = threading.Lock()
        self._closed = False

    def open_parent(self, tags: dict[str, Any], parent_run_id: str | None) -> str:
        key = {"run_key": f"sweep:{self.study_name}"}
        tags = {**tags, "sweep": self.study_name, ROLE: Role.SWEEP}
        self.parent_id = keyed_run(self.writer, self.study_name, key, tags, parent_run_id)
        return self.parent_id

    def start_trial(self, number: int, params: dict[str, Any], tags: dict[str, Any]) -> str:
        if self._closed:
            raise RuntimeError("the sweep was stopped")
        run_id = self.writer.create_run(
            trial_name(number, params),
            {**tags, ROLE: Role.TRIAL, "optuna_state": "RUNNING"},
            parent_run_id=self.parent_id,
        )
        with self._lock:
            self._active.add(run_id)
        return run_id

    def end_trial(
        self, run_id: str, kind: str, metrics: dict[str, float], tags: dict, params: dict
    ) -> None:
        """Final values, params and tags, then the status (complete, pruned, ...), written in the
        background: the next trial does not wait for the store."""
        with self._lock:
            self._active.discard(run_id)
        self.writer.later(self._end, run_id, STATUS[kind], metrics, tags, params)

    def _end(self, run_id: str, status: str, metrics: dict, tags: dict, params: dict) -> None:
        self.writer.log(run_id, metrics=metrics, params=params, tags=tags)
        self.writer.end_run(run_id, status)
        if status == "KILLED" and tags.get(FAILURE_REASON):  # a job killed while it recorded
            self.close_stale(run_id, tags[FAILURE_REASON])

    def end_late(
        self, run_id: str, kind: str, metrics: dict, params: dict, told: int | None, n_seeds: int
    ) -> None:
        """The end of a trial that another worker failed while it ran (its heartbeat went stale):
        the run keeps its values, tagged late_result with where they went in Optuna."""
        late = f"told as trial {told}" if told is not None else "not told: the trial had failed"
        state = "COMPLETE" if told is not None else "FAIL"
        tags = {"late_result": late, "optuna_state": state, "n_seeds": str(n_seeds)}
        self.end_trial(run_id, kind, metrics, tags, params)

    def close_stale(self, run_id: str, reason: str = "heartbeat_stale") -> None:
        """A trial whose worker stopped beating (its machine died), or that a signal stopped: its
        run and the runs still RUNNING under it end KILLED."""
        children = self.writer.search(tag_filter({"mlflow.parentRunId": run_id}))
        for rid in [run_id, *(r.info.run_id for r in children if r.info.status == "RUNNING")]:
            self.writer.mark_killed(rid, reason)

    def leave(self, status: str | None = None) -> bool:
        """This process is done with the sweep: it is no longer listed as working on the parent
        (which the worker that ends the study ends FINISHED; with a status, the last worker to
        leave ends it so). True if it ended the parent. A store that is away is logged, not
        raised: the sweep's own outcome (e.g. too many failed trials) is what the user must see,
        and the next tunelab process on this host closes what is left."""
        if not self.parent_id:
            return False
        try:
            return leave(self.writer, self.parent_id, status)
        except Exception as exc:
            log.warning("could not leave the sweep's run %s: %s", self.parent_id, mask(str(exc)))
            return False

    def finish(self, record: RunRecord, results_dir: str) -> None:
        """The sweep's reports are written: the parent run gets their record and ends FINISHED. A
        store that is away is logged, not raised: the files in `results_dir` stay."""
        if not self.parent_id:
            return
        try:
            self.writer.flush(quietly=True)
            log_record(self.writer, self.parent_id, record)
            self.writer.end_run(self.parent_id, "FINISHED")
        except Exception as exc:
            log.error(
                "the sweep's MLflow run was not updated (%s); its results are in %s",
                mask(str(exc))[:300],
                results_dir,
            )

    def interrupted(self, reason: str = "interrupted") -> None:
        """The sweep was stopped at once: its running trials (and the runs RUNNING under them)
        end KILLED, and the parent too unless another process still works on the sweep; no trial
        starts after this."""
        self._closed = True
        self.writer.flush(quietly=True)
        for run_id in list(self._active):
            self.writer.set_tags(run_id, {"optuna_state": "INTERRUPTED"})
            self.close_stale(run_id, reason)
        self.end_parent(reason)

    def end_parent(self, reason: str) -> None:
        """The parent ends KILLED (the sweep was stopped) after every queued write is sent, unless
        another process still works on it."""
        self.writer.flush(quietly=True)
        if self.leave("KILLED"):  # the last worker to leave ends it
            self.writer.set_tags(self.parent_id, {FAILURE_REASON: reason})
