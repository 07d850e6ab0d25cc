"""The private submitit API tunelab relies on, named in one place. tests/test_compat.py fails when a
submitit release changes it.

- `SlurmJob.watcher`, a `SlurmInfoWatcher` shared by every SLURM job of the process: it polls
  `sacct` for job states (`_make_command`, `read_info`). Where SLURM accounting is off, `sacct`
  fails at every poll ("Bypassing sacct error ... status may be inaccurate"), and a job that died
  without writing its result (scancel, a node failure) stays UNKNOWN, so waiting for it never ends.
  `SqueueWatcher` asks the controller itself (`squeue`) instead: a job squeue no longer lists has
  ended (VANISHED), and waiting for it ends with submitit's UncompletedJobError naming the state.
- `JobEnvironment._usr_sig()`: the signal a submitit SLURM job asks for before its time limit
  (`--signal=USR2@signal_delay_s`), whose handler checkpoints the submission and requeues the job.
"""

from __future__ import annotations

import logging
import subprocess
import threading
from typing import Any

import submitit
from submitit.slurm import slurm as submitit_slurm

log = logging.getLogger(__name__)

POLL_S = 15  # the longest wait between two status polls: a dead job is noticed within this
VANISHED = "VANISHED"  # a job squeue does not list (purged MinJobAge after its end)

# states of a job that will run again (requeued, held, suspended): its wait goes on
STILL_QUEUED = ("REQUEUE_FED", "REQUEUE_HOLD", "RESIZING", "SUSPENDED", "CONFIGURING", "STOPPED")

__all__ = [
    "POLL_S",
    "VANISHED",
    "SqueueWatcher",
    "accounting_is_off",
    "preemption_signal",
    "use_squeue_status",
]


class SqueueWatcher(submitit_slurm.SlurmInfoWatcher):
    """submitit's SLURM status poller, on `squeue --me --states=all` instead of `sacct`. One poll
    at a time (the sweep's trial threads share it); only a job that was already submitted when
    squeue ran can be missing from its answer."""

    def __init__(self, delay_s: int = 60) -> None:
        super().__init__(delay_s=delay_s)
        self._lock = threading.RLock()
        self._asked: set[str] = set()

    def update(self) -> None:
        with self._lock:
            super().update()

    def _make_command(self) -> list[str] | None:
        self._asked = self._registered - self._finished
        if not self._asked:
            return None
        return ["squeue", "--me", "--noheader", "--states=all", "--format=%i|%T|%N"]

    def is_done(self, job_id: str, mode: str = "standard") -> bool:
        if self.get_state(job_id, mode=mode).upper() in STILL_QUEUED:
            return False
        return super().is_done(job_id, mode="cache")

    def read_info(self, string: bytes | str) -> dict[str, dict[str, str]]:
        text = string.decode() if isinstance(string, bytes) else string
        info = super().read_info("JobID|State|NodeList\n" + text)
        for job_id in self._asked:
            if job_id not in info and job_id.split("_")[0] not in info:
                info[job_id] = {"JobID": job_id, "State": VANISHED, "NodeList": ""}
        return info


def accounting_is_off() -> bool:
    """True when the cluster keeps no job accounting (AccountingStorageType=accounting_storage/none)."""
    try:
        out = subprocess.run(
            ["scontrol", "show", "config"], capture_output=True, text=True, timeout=30
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return any(
        line.split("=", 1)[0].strip() == "AccountingStorageType"
        and line.split("=", 1)[1].strip() == "accounting_storage/none"
        for line in out.splitlines()
        if "=" in line
    )


def use_squeue_status(poll_s: float = POLL_S) -> Any:
    """Make every SLURM job of this process take its state from squeue, polled at least every
    poll_s seconds; the watcher installed."""
    if accounting_is_off():
        log.info("SLURM accounting is off: job states come from squeue, not sacct")
    watcher = SqueueWatcher(delay_s=int(poll_s))
    submitit_slurm.SlurmJob.watcher = watcher
    return watcher


def preemption_signal() -> int:
    """The warning signal of a submitit SLURM job (USR2 unless SUBMITIT_PREEMPT_SIGNAL says
    otherwise): SLURM sends it signal_delay_s before the time limit, or to preempt the job."""
    return int(submitit.JobEnvironment._usr_sig())
