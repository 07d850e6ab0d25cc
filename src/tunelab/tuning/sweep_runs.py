"""A sweep's MLflow runs: one parent per study (shared by every process working on it, found
again on resume) and one child per trial, under which the trial's seed runs nest."""

from __future__ import annotations

import threading
from typing import Any

from tunelab.run.names import trial_name
from tunelab.tracking.mlflow_writer import MlflowWriter
from tunelab.tracking.owners import keyed_run, leave
from tunelab.tracking.policy import tag_filter

STATUS = {"complete": "FINISHED", "pruned": "KILLED", "diverged": "FAILED", "fail": "FAILED"}


class SweepRuns:
    def __init__(self, tracking_uri: str, experiment: str, study_name: str) -> None:
        self.writer = MlflowWriter(tracking_uri, experiment)
        self.study_name = study_name
        self.parent_id: str | None = None
        self._active: set[str] = set()
        self._lock = threading.Lock()

    def open_parent(self, tags: dict[str, Any], parent_run_id: str | None) -> str:
        key = {"run_key": f"sweep:{self.study_name}"}
        tags = {**tags, "sweep": self.study_name, "role": "sweep"}
        self.parent_id = keyed_run(self.writer, self.study_name, key, tags, parent_run_id)
        return self.parent_id

    def start_trial(self, number: int, params: dict[str, Any], tags: dict[str, Any]) -> str:
        run_id = self.writer.create_run(
            trial_name(number, params),
            {**tags, "role": "trial", "optuna_state": "RUNNING"},
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

    def end_late(
        self, run_id: str, kind: str, metrics: dict, params: dict, told: int | None, n_seeds: int
    ) -> None:
        """The end of a trial that another worker failed while it ran (its heartbeat went stale):
        the run keeps its values, tagged late_result with where they went in Optuna."""
        late = f"told as trial {told}" if told is not None else "not told: the trial had failed"
        state = "COMPLETE" if told is not None else "FAIL"
        tags = {"late_result": late, "optuna_state": state, "n_seeds": str(n_seeds)}
        self.end_trial(run_id, kind, metrics, tags, params)

    def close_stale(self, run_id: str) -> None:
        """A trial whose worker stopped beating (its machine died): its run and the runs still
        RUNNING under it end KILLED."""
        children = self.writer.search(tag_filter({"mlflow.parentRunId": run_id}))
        for rid in [run_id, *(r.info.run_id for r in children if r.info.status == "RUNNING")]:
            self.writer.mark_killed(rid, "heartbeat_stale")

    def leave(self) -> None:
        """This process is done with the sweep: it is no longer listed as working on the parent
        (which the worker that ends the study ends FINISHED)."""
        if self.parent_id:
            leave(self.writer, self.parent_id)

    def interrupted(self) -> None:
        """The sweep was stopped: its running trials end KILLED, and the parent too unless
        another process still works on the sweep."""
        self.writer.flush(quietly=True)
        for run_id in list(self._active):
            self.writer.set_tags(run_id, {"optuna_state": "INTERRUPTED"})
            self.writer.end_run(run_id, "KILLED")
        if self.parent_id:
            leave(self.writer, self.parent_id, "KILLED")
