"""What the findings read back from the MLflow store: each study's summary and figures, each
search sweep's trials, the runs behind every number and the time they took."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from tunelab.config.secrets import mask
from tunelab.tags import CELL, OPTUNA_STATE, PARENT_RUN_ID, ROLE, STUDY, TRAINING_ROLES, TRIAL, Role
from tunelab.tracking.mlflow_reader import MlflowReader
from tunelab.tracking.policy import tag_filter


class Missing(LookupError):
    """The store lacks a piece the document needs; the message says which and how to run it."""


@dataclass
class Trial:
    number: int
    run_id: str
    state: str
    val: float | None
    test: float | None
    epochs: int


class Reader:
    """One experiment of a store, as the findings read it (through tracking's MlflowReader)."""

    def __init__(self, uri: str, experiment: str, create: bool = False) -> None:
        self.uri, self.experiment_name = uri, experiment
        self.store = MlflowReader(uri)
        self._create = create

    @property
    def experiment_id(self) -> str | None:
        if self.store.experiment_id is None:
            self.store.experiment_id = self.store.experiment_named(self.experiment_name)
        return self.store.experiment_id

    def search(self, tags: dict[str, str], finished: bool = False) -> list[Any]:
        """The experiment's runs carrying these tags (only FINISHED ones if asked), newest first."""
        if self.experiment_id is None:
            return []
        query = tag_filter(tags) + (" and attributes.status = 'FINISHED'" if finished else "")
        return self.store.search(query, order_by=["attributes.start_time DESC"])

    def parent(self, kind: str, name: str) -> Any | None:
        """The newest FINISHED parent run of a study or sweep called `name`."""
        runs = self.search({ROLE: kind, kind: name}, finished=True)
        return runs[0] if runs else None

    def finished(self, kind: str, name: str) -> bool:
        return self.parent(kind, name) is not None

    def require(self, kind: str, name: str) -> Any:
        run = self.parent(kind, name)
        if run is None:
            raise Missing(
                f"no finished {kind} '{name}' in experiment '{self.experiment_name}' of {mask(self.uri)}: "
                "run `tunelab findings run` (with the same --budget) first"
            )
        return run

    def summary(self, run: Any) -> dict[str, Any]:
        data = self.artifact(run.info.run_id, "summary.json")
        if data is None:
            raise Missing(f"study run {run.info.run_id} has no summary.json artifact")
        return json.loads(data)

    def artifact(self, run_id: str, path: str) -> bytes | None:
        """One artifact's bytes (None when the run has none); nothing is left on disk."""
        return self.store.artifact_bytes(run_id, path)

    def seconds_by_cell(self, study: str) -> dict[str, list[float]]:
        """Wall seconds of each finished training run of a study, per cell."""
        out: dict[str, list[float]] = {}
        for r in self.search({STUDY: study}):
            if r.data.tags.get(ROLE) in TRAINING_ROLES and r.info.end_time:
                cell = r.data.tags.get(CELL, "")
                out.setdefault(cell, []).append((r.info.end_time - r.info.start_time) / 1000)
        return out

    def training(self, study: str) -> str:
        """What the confirmation runs of a study trained: the model and the epochs per run."""
        runs = self.search({STUDY: study, ROLE: Role.CONFIRM})
        if not runs:
            return "no confirmation run recorded"
        p = runs[0].data.params
        return (
            f"{p.get('model.name', '?')} model, {p.get('trainer.max_epochs', '?')} epochs per run"
        )

    def trials(self, sweep_run: Any) -> list[Trial]:
        """A sweep's trials in order, from their MLflow runs."""
        runs = self.search({PARENT_RUN_ID: sweep_run.info.run_id, ROLE: Role.TRIAL})
        out = []
        for r in runs:
            m, t = r.data.metrics, r.data.tags
            if TRIAL not in t:
                continue
            out.append(
                Trial(
                    int(t[TRIAL]),
                    r.info.run_id,
                    t.get(OPTUNA_STATE, "?"),
                    m.get("val/acc"),
                    m.get("test/acc"),
                    int(m.get("epochs_run", 0)),
                )
            )
        return sorted(out, key=lambda x: x.number)

    @staticmethod
    def span(run: Any) -> tuple[float, float]:
        """When a run started and ended, in seconds since the epoch."""
        start = run.info.start_time / 1000
        return start, (run.info.end_time / 1000 if run.info.end_time else start)
