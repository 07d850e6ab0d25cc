"""The run contract: who is asking for a run (RunContext) and what it gives back (RunResult).

A run started by a sweep, a study, a pipeline stage or Hydra's multirun learns its place from a
RunContext: the MLflow run to nest under, flat tags for filtering, whether to log the model, and
the Optuna trial that its reporter feeds. Processes hand it on as one environment variable;
`from_env`/`to_env` are the only code that knows that variable.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

ENV = "TUNELAB_RUN_CONTEXT"

Reporter = Callable[[int, float], None]  # (epoch, objective value); may raise to prune


@dataclass(frozen=True)
class TrialRef:
    """The Optuna trial a job belongs to: the sweep's context file and the trial's number.
    `report` is true for the one replicate whose epochs the pruner watches."""

    context_path: str
    number: int
    report: bool = True


@dataclass(frozen=True)
class RunContext:
    """Who asks for a run. All but overrides and reporter cross processes."""

    parent_run_id: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    log_model: bool | None = None  # None: the tracking config decides
    trial: TrialRef | None = None
    data_digest: str | None = None  # the digest the data must have (a reproduction's check)
    threads: int | None = None  # CPU threads for a job that shares the cores with others
    overrides: tuple[str, ...] = ()  # the job's command-line overrides (Hydra's), for the record
    reporter: Reporter | None = field(default=None, compare=False)  # in-process only

    def derive(self, *, tags: Mapping[str, str] | None = None, **changes: Any) -> RunContext:
        """A copy with `changes`, and `tags` merged over this context's tags."""
        merged = {**self.tags, **{str(k): str(v) for k, v in (tags or {}).items()}}
        return replace(self, tags=merged, **changes)

    def to_env(self) -> dict[str, str]:
        """The environment variable that hands this context to a job in another process."""
        data: dict[str, Any] = {}
        if self.parent_run_id:
            data["parent_run_id"] = self.parent_run_id
        if self.tags:
            data["tags"] = dict(self.tags)
        if self.log_model is not None:
            data["log_model"] = self.log_model
        if self.data_digest:
            data["data_digest"] = self.data_digest
        if self.threads:
            data["threads"] = self.threads
        if self.trial is not None:
            data["trial"] = {
                "context_path": self.trial.context_path,
                "number": self.trial.number,
                "report": self.trial.report,
            }
        return {ENV: json.dumps(data, sort_keys=True)} if data else {}

    def export(self) -> Callable[[], None]:
        """Put this context into os.environ, for the jobs this process starts; returns the
        function that puts back what was there before."""
        previous = os.environ.pop(ENV, None)
        os.environ.update(self.to_env())

        def restore() -> None:
            os.environ.pop(ENV, None)
            if previous is not None:
                os.environ[ENV] = previous

        return restore

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> RunContext:
        text = (os.environ if environ is None else environ).get(ENV, "")
        if not text:
            return cls()
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"{ENV} is not valid JSON: {exc}") from None
        trial = data.get("trial")
        return cls(
            parent_run_id=data.get("parent_run_id") or None,
            tags={str(k): str(v) for k, v in (data.get("tags") or {}).items()},
            log_model=data.get("log_model"),
            data_digest=data.get("data_digest"),
            threads=data.get("threads"),
            trial=TrialRef(str(trial["context_path"]), int(trial["number"]), bool(trial["report"]))
            if trial
            else None,
        )


@dataclass
class RunResult:
    """What one run gives back. `float(result)` is its objective value, so a Hydra sweeper that
    expects a number from the task function gets one."""

    run_id: str | None
    status: str  # FINISHED (failures raise)
    objective: str  # the metric name the run selected on
    metrics: dict[str, float]  # summary: selected-epoch val/*, test/*, best_epoch, perf/*
    history: dict[str, list[float]] = field(default_factory=dict)  # per-epoch metrics
    checkpoint: Path | None = None  # the selected weights (best.pt), when the run trained
    # trainer.replicas: one result per seed, in order (status FINISHED or FAILED, with reason);
    # metrics then holds their mean and <metric>_std over the finished ones
    replicas: list[RunResult] = field(default_factory=list)
    reason: str = ""  # why a replica FAILED

    @property
    def value(self) -> float:
        return float(self.metrics[self.objective])

    def __float__(self) -> float:
        return self.value


def aggregate(per_seed: list[dict[str, float]]) -> dict[str, float]:
    """Mean of every metric over seeds, plus `<metric>_std` where there are several seeds."""
    keys = set.intersection(*(set(m) for m in per_seed)) if per_seed else set()
    out: dict[str, float] = {}
    for k in sorted(keys):
        vals = [m[k] for m in per_seed]
        mean = sum(vals) / len(vals)
        out[k] = mean
        if len(vals) > 1:
            out[f"{k}_std"] = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))
    return out
