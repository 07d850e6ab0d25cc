"""The pruning reporter of a job launched by the tunelab sweeper.

The job learns its trial from its RunContext (`ctx.trial`: the sweep's context file and the trial
number). Jobs in the sweeper's own process (basic launcher) find the live trial in a registry;
jobs in other processes reopen it from the shared storage. The reporter raises `TrialPruned`,
which is both Optuna's exception and the run layer's `Pruned`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import threading
from typing import Any

import optuna

from tunelab import environment
from tunelab.config.secrets import MASK, mask
from tunelab.run.context import Reporter, TrialRef
from tunelab.run.loop import Pruned

_registry: dict[tuple[str, int], optuna.Trial] = {}
_lock = threading.Lock()


class TrialPruned(optuna.TrialPruned, Pruned):
    """The pruner stopped this trial: PRUNED in Optuna, KILLED with pruned=true in MLflow."""


def register(context_path: str, trial: optuna.Trial) -> None:
    """Make a live trial visible to in-process jobs."""
    with _lock:
        _registry[(context_path, trial.number)] = trial


def unregister(context_path: str, trial: optuna.Trial) -> None:
    with _lock:
        _registry.pop((context_path, trial.number), None)


def write_context(path: str, context: dict[str, Any]) -> None:
    """Write the sweep context file that jobs in other processes read (only this user may). Its
    storage URL is masked: a job takes the password from where the sweeper took it
    (storage_url)."""
    context = {**context, "storage": mask(context["storage"])}
    tmp = f"{path}.tmp{os.getpid()}"
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as fh:
        json.dump(context, fh, indent=1)
    os.replace(tmp, path)


def _reopen(context_path: str, number: int) -> optuna.Trial | None:
    """Reopen a RUNNING trial from the shared storage (job in another process)."""
    from tunelab.tuning.samplers import make_pruner
    from tunelab.tuning.study_storage import make_storage, trial_id

    with open(context_path) as fh:
        ctx = json.load(fh)
    if len(ctx.get("directions", ["minimize"])) > 1:
        return None  # Optuna cannot report intermediate values of multi-objective trials
    storage = make_storage(storage_url(ctx["storage"]))
    study = optuna.load_study(
        study_name=ctx["study_name"],
        storage=storage,
        sampler=optuna.samplers.RandomSampler(),
        pruner=make_pruner(ctx.get("pruner")),
    )
    return optuna.trial.Trial(study, trial_id(storage, ctx["study_name"], number))


def storage_url(recorded: str) -> str:
    """The storage URL a context file names (masked): the one of this job's hydra.sweeper.storage
    or $TUNELAB_OPTUNA_STORAGE, where the sweeper took it from, that masks to the same text."""
    from hydra.core.hydra_config import HydraConfig

    from tunelab.tuning.settings import sweep_settings
    from tunelab.tuning.study_storage import ENV_STORAGE, normalize_storage

    sweeper = HydraConfig.get().sweeper if HydraConfig.initialized() else None
    typed = sweep_settings(sweeper).storage if sweeper is not None else None
    for candidate in (typed, environment.optuna_storage()):
        if candidate:
            with contextlib.suppress(ValueError):
                url = normalize_storage(str(candidate))
                if mask(url) == recorded:
                    return url
    if MASK in recorded:
        raise LookupError(
            f"the sweep's storage {recorded} is not this job's hydra.sweeper.storage or "
            f"${ENV_STORAGE}: its password is not passed on any other way"
        )
    return recorded


def make_reporter(trial: optuna.Trial) -> Reporter:
    """reporter(epoch, value): report the objective, raise TrialPruned when the pruner says so."""

    def report(epoch: int, value: float) -> None:
        value = float(value)
        if not math.isfinite(value):
            return  # divergence is the loop's to raise; a non-finite value is never reported
        trial.report(value, step=int(epoch))
        if trial.should_prune():
            raise TrialPruned(f"pruned at epoch {epoch} (value {value:.6g})")

    return report


def reporter_for(trial_ref: TrialRef | None) -> Reporter | None:
    """The reporter of the job's trial, or None (no trial, or a replicate that does not report)."""
    if trial_ref is None or not trial_ref.report:
        return None
    with _lock:
        trial = _registry.get((trial_ref.context_path, trial_ref.number))
    if trial is None:
        trial = _reopen(trial_ref.context_path, trial_ref.number)
    elif len(trial.study.directions) > 1:
        return None
    return None if trial is None else make_reporter(trial)
