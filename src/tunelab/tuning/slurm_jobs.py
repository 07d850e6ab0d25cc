"""The SLURM jobs of a sweep's trials, found again by a restarted sweep process.

Each submitit SLURM job puts its job id and folder on its trial (user attr `slurm_job`). When the
sweep's process dies (kill -9 on the login node) its jobs go on; the same command started again
takes over every trial of the dead process whose job SLURM still runs or queues (or that left its
result), waits for that job and tells the trial, instead of failing the trial and launching it
again. The budget stays exact: the trial is counted once, as it ran.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from tunelab import processes
from tunelab.tuning import study_storage
from tunelab.tuning.jobs import SLURM_JOB, Outcome, seed_outcomes, squeue_state

log = logging.getLogger(__name__)

WAITING = ("PENDING", "RUNNING", "REQUEUED", "COMPLETING", "CONFIGURING", "SUSPENDED", "RESIZING")

Tell = Callable[[optuna.Trial, Outcome, str | None, dict[str, Any]], None]


def _alive(job: dict[str, str]) -> bool:
    """Whether the job still runs or waits in SLURM, or has left its result to read."""
    import submitit

    result = submitit.SlurmJob(folder=job["folder"], job_id=job["id"]).paths.result_pickle
    return Path(result).is_file() or squeue_state(job["id"]) in WAITING


def adopt(
    storage: Any, study: optuna.Study, single_job: bool
) -> list[tuple[optuna.Trial, dict[str, str]]]:
    """The RUNNING trials of a dead sweep process whose SLURM job goes on, claimed by this one
    (so they are neither failed as stale nor launched again). Only trials that run as one job
    (single_job: one seed, or the seeds together) are taken over; the others are re-run."""
    if not single_job:
        return []
    taken = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        job = t.user_attrs.get(SLURM_JOB)
        owner = str(t.system_attrs.get(study_storage.OWNER, ""))
        if not isinstance(job, dict) or not processes.is_dead(owner) or not _alive(job):
            continue
        trial = optuna.trial.Trial(
            study, study_storage.trial_id(storage, study.study_name, t.number)
        )
        study_storage.claim(storage, study, trial)
        taken.append((trial, job))
    if taken:
        shown = [f"{t.number} (job {j['id']})" for t, j in taken]
        log.warning("trials %s were left by a dead sweep: waiting for their SLURM jobs", shown)
    return taken


def wait_for(
    storage: Any,
    study_name: str,
    taken: list[tuple[optuna.Trial, dict[str, str]]],
    metrics: list[str],
    tell: Tell,
) -> list[threading.Thread]:
    """One thread per taken-over trial: beat its heartbeat, wait for its job's result, tell it."""
    threads = []
    for trial, job in taken:
        thread = threading.Thread(
            target=_wait_one,
            args=(storage, study_name, trial, job, metrics, tell),
            name=f"slurm-job-{job['id']}",
            daemon=True,
        )
        thread.start()
        threads.append(thread)
    return threads


def _wait_one(
    storage: Any,
    study_name: str,
    trial: optuna.Trial,
    job: dict[str, str],
    metrics: list[str],
    tell: Tell,
) -> None:
    import submitit

    beat = study_storage.heartbeat(storage, study_name, trial.number).start()
    out = Outcome("complete")
    try:
        waited = submitit.SlurmJob(folder=job["folder"], job_id=job["id"])
        outcomes = seed_outcomes(
            lambda _o, _i: waited.result(), [None], lambda _i: [], metrics, False
        )
        for kind, reason, values, job_dir, job_run in outcomes:
            out.job_dirs.append(job_dir)
            if kind != "complete":
                out.kind, out.reason = kind, reason
                break
            out.per_seed.append(values)
            out.run_ids.append(job_run or "")
    finally:
        beat.stop()
    tell(trial, out, trial.user_attrs.get("mlflow_run_id"), dict(trial.params))
