"""Pruning reporter for jobs launched by the tunelab sweeper.

The sweeper passes the trial to its job through environment variables (`hydra.job.env_set`):
TUNELAB_SWEEP_CONTEXT (a JSON file: study name, storage URL, pruner), TUNELAB_TRIAL_ID and
TUNELAB_REPORT (1 for the replicate that drives pruning). Jobs in the sweeper's own process
(basic launcher) find the live trial in a registry; jobs in other processes reopen it from storage.
"""

from __future__ import annotations

import json
import math
import os
import threading
from collections.abc import Callable
from typing import Any

import optuna

Reporter = Callable[[int, float], None]

ENV_CONTEXT = "TUNELAB_SWEEP_CONTEXT"
ENV_TRIAL_ID = "TUNELAB_TRIAL_ID"
ENV_REPORT = "TUNELAB_REPORT"

_registry: dict[tuple[str, int], optuna.Trial] = {}
_lock = threading.Lock()


def register(context_path: str, trial: optuna.Trial) -> None:
    """Make a live trial visible to in-process jobs."""
    with _lock:
        _registry[(context_path, trial._trial_id)] = trial


def unregister(context_path: str, trial: optuna.Trial) -> None:
    with _lock:
        _registry.pop((context_path, trial._trial_id), None)


def write_context(path: str, context: dict[str, Any]) -> None:
    """Write the sweep context file that jobs in other processes read."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as fh:
        json.dump(context, fh, indent=1)
    os.replace(tmp, path)


def _reopen(context_path: str, trial_id: int) -> optuna.Trial | None:
    """Reopen a RUNNING trial from the shared storage (job in another process)."""
    from tunelab.sweep.study import make_pruner, make_storage

    with open(context_path) as fh:
        ctx = json.load(fh)
    if len(ctx.get("directions", ["minimize"])) > 1:
        return None  # Optuna cannot report intermediate values of multi-objective trials
    study = optuna.load_study(
        study_name=ctx["study_name"],
        storage=make_storage(ctx["storage"]),
        sampler=optuna.samplers.RandomSampler(),
        pruner=make_pruner(ctx.get("pruner")),
    )
    return optuna.trial.Trial(study, trial_id)


def make_reporter(trial: optuna.Trial) -> Reporter:
    """reporter(epoch, value): report the objective, raise optuna.TrialPruned when the pruner says so."""

    def report(epoch: int, value: float) -> None:
        value = float(value)
        if not math.isfinite(value):
            return  # divergence is the loop's to raise; a non-finite value is never reported
        trial.report(value, step=int(epoch))
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {epoch} (value {value:.6g})")

    return report


def reporter_from_env() -> Reporter | None:
    """The job's reporter when launched by the tunelab sweeper, else None."""
    context_path, trial_id = os.environ.get(ENV_CONTEXT), os.environ.get(ENV_TRIAL_ID)
    if not context_path or trial_id is None or os.environ.get(ENV_REPORT, "1") != "1":
        return None
    with _lock:
        trial = _registry.get((context_path, int(trial_id)))
    if trial is None:
        trial = _reopen(context_path, int(trial_id))
    elif len(trial.study.directions) > 1:
        return None
    return None if trial is None else make_reporter(trial)
