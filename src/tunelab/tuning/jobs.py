"""One trial = one Hydra job per seed replicate: build its overrides, launch, read back its outcome."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import numbers
import os
import pickle
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from hydra.core.utils import JobReturn, JobStatus

from tunelab import background
from tunelab.config.secrets import mask
from tunelab.config.space import quote, to_overrides
from tunelab.run import signals
from tunelab.run.context import RunContext, RunResult

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    """What a trial's jobs came back with: kind is complete | pruned | diverged | fail |
    interrupted (a signal stopped it; reason: the signal's name) | lost (its cluster job ended
    without a result: scancel, a node failure; reason: `slurm: <state>`)."""

    kind: str
    reason: str = ""
    per_seed: list[dict[str, float]] = field(default_factory=list)
    job_dirs: list[str] = field(default_factory=list)
    run_ids: list[str] = field(default_factory=list)  # MLflow runs of the finished jobs
    fraction: float | None = None  # fidelity=data: the training fraction of its last rung


def env_overrides(env: dict[str, str]) -> list[str]:
    """`hydra.job.env_set` overrides: Hydra exports them to the job in every launcher. Values are
    JSON: a single quote becomes its JSON escape, so the quoted override reads back unchanged."""
    return [f"++hydra.job.env_set.{k}={quote(_json_safe(v))}" for k, v in env.items()]


def _json_safe(text: str) -> str:
    return text.replace("'", "\\u0027")


def job_overrides(
    fixed: list[str], params: dict[str, Any], seed: int | None, seed_key: str, ctx: RunContext
) -> list[str]:
    """The overrides of one job: fixed ones, the trial's params, the seed, and its RunContext."""
    seed_ov = [f"{seed_key}={seed}"] if seed is not None else []
    return list(fixed) + to_overrides(params) + seed_ov + env_overrides(ctx.to_env())


class JobError(RuntimeError):
    """Picklable stand-in for a job exception that could not cross a process boundary."""

    def __init__(self, message: str, type_names: tuple[str, ...]) -> None:
        super().__init__(message, type_names)
        self.type_names = type_names

    def __str__(self) -> str:
        return str(self.args[0])


class Interrupted(Exception):
    """A job stopped by SIGINT or SIGTERM (its run is recorded KILLED). An ordinary exception, so
    that Hydra records the job FAILED and joblib does not abort the jobs of its other workers."""

    def __init__(self, signum: int, slurm_job: str | None = None) -> None:
        super().__init__(signum, slurm_job)
        self.signum, self.slurm_job = signum, slurm_job  # the SLURM job it ran as, if any

    def __str__(self) -> str:
        return f"interrupted by {signal.Signals(self.signum).name}"


_held: list[int] = []  # signals a job's worker process received between two jobs


def _slurm_job() -> str | None:
    """The SLURM job this process runs as a submitit job (launcher=slurm), else None: a signal
    there came from SLURM (scancel, a limit), not from the sweep."""
    if os.environ.get("SUBMITIT_EXECUTOR") != "slurm":
        return None
    return os.environ.get("SLURM_JOB_ID")


def _hold(signum: int, frame: Any) -> None:
    _held.append(signum)


def _preemption() -> contextlib.AbstractContextManager[Callable[..., Any] | None]:
    """In a submitit SLURM job, its warning signal raises Preempted while the run trains; yields
    submitit's handler, which checkpoints the submission and requeues the job."""
    if _slurm_job() is None:
        return contextlib.nullcontext(None)
    from tunelab.compat.submitit_internals import preemption_signal

    return signals.preemption_raises(preemption_signal())


SLURM_JOB = "slurm_job"  # a trial's user attr: {"id": its SLURM job, "folder": submitit's}


def record_job(ctx: RunContext) -> None:
    """In a submitit SLURM job of a trial: put the job's id and folder on the trial, where a
    restarted sweep finds them. A storage that cannot be reached only costs that."""
    if ctx.trial is None:
        return
    import submitit

    from tunelab.tuning import pruning
    from tunelab.tuning.study_storage import make_storage, trial_id

    env = submitit.JobEnvironment()
    job = {"id": env.job_id, "folder": str(env.paths.folder)}
    try:
        with open(ctx.trial.context_path) as fh:
            sweep = json.load(fh)
        storage = make_storage(pruning.storage_url(sweep["storage"]))
        tid = trial_id(storage, sweep["study_name"], ctx.trial.number)
        storage.set_trial_user_attr(tid, SLURM_JOB, job)
    except Exception as exc:  # noqa: BLE001 - the trial still runs; a restart re-runs it
        log.warning("SLURM job %s not recorded on its trial: %s", job["id"], exc)


PREEMPTED_FILE = "preempted.json"  # in the job's output directory: how often its job was requeued


def _note_preempted(signal_name: str) -> None:
    """Count the preemption in the job's output directory, where the requeued job runs again
    and the sweep reads it (preemptions); the run itself is tagged preempted."""
    from hydra.core.hydra_config import HydraConfig

    out_dir = Path(str(HydraConfig.get().runtime.output_dir))
    path = out_dir / PREEMPTED_FILE
    times = preemptions([str(out_dir)]) + 1
    path.write_text(json.dumps({"times": times, "slurm_job": _slurm_job()}))
    log.warning(
        "SLURM job %s got %s: its run is recorded KILLED (preempted) with its checkpoint; "
        "the job is requeued and resumes it (preemption %d)",
        _slurm_job(),
        signal_name,
        times,
    )


def preemptions(job_dirs: list[str]) -> int:
    """How often the jobs of a trial were preempted and requeued (0: never)."""
    times = 0
    for job_dir in job_dirs:
        path = Path(job_dir) / PREEMPTED_FILE if job_dir else None
        if path is not None and path.is_file():
            with contextlib.suppress(OSError, ValueError, TypeError):
                times += int(json.loads(path.read_text())["times"])
    return times


class SafeTask:
    """Wraps the task function so that every exception a job raises survives pickling (joblib),
    and a job stopped by a signal comes back as `Interrupted`.

    In a worker process (where it arrives pickled: joblib, submitit) SIGINT and SIGTERM stop the
    job that runs; between jobs they are held, and the next job stops before it starts, so a
    worker never dies of a signal while the sweep waits for it. Each job's pending background
    writes are sent before the worker takes the next job."""

    def __init__(self, fn: Callable[[Any], Any]) -> None:
        self.fn = fn
        self.origin = os.getpid()  # the sweep's process
        self.remote = False

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.remote = os.getpid() != self.origin  # not a copy made in the sweep's process
        if self.remote and threading.current_thread() is threading.main_thread():
            for s in signals.STOPPING:
                if signal.getsignal(s) is not signal.SIG_IGN:
                    signal.signal(s, _hold)

    def __call__(self, cfg: Any) -> Any:
        try:
            if not self.remote:
                return self._call(cfg)
            if _held:
                signum = _held[0]
                _held.clear()
                raise Interrupted(signum, _slurm_job())
            if _slurm_job():
                record_job(RunContext.from_env())  # a restarted sweep finds the job by its trial
            try:
                with signals.signals_raise(), _preemption() as requeue:
                    try:
                        return self._call(cfg)
                    except signals.Preempted as exc:
                        if requeue is None:
                            raise
                        preempted = exc
                        background.flush_all()  # the checkpoint is on disk before the requeue
                        _note_preempted(str(exc))
                requeue(signal.Signals[str(preempted)], None)  # submitit's: requeue, then exit
                raise preempted  # not requeued (submitit leaves that to the job's first task)
            finally:
                background.flush_all()
        except BaseException as e:
            signum = signals.signal_of(e)
            if signum is None:
                raise
            raise Interrupted(signum, _slurm_job() if self.remote else None) from None

    def _call(self, cfg: Any) -> Any:
        try:
            return self.fn(cfg)
        except Exception as e:
            try:
                pickle.loads(pickle.dumps(e))
            except Exception:
                names = tuple(k.__name__ for k in type(e).__mro__)
                raise JobError(f"{type(e).__name__}: {e}", names) from None
            raise


def _is(exc: BaseException, name: str) -> bool:
    names = getattr(exc, "type_names", ()) or tuple(k.__name__ for k in type(exc).__mro__)
    return name in names


def job_error(ret: JobReturn) -> BaseException:
    """The exception a failed job raised (Hydra's `return_value` re-raises it and notes it on
    stderr; the sweep records it instead)."""
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            ret.return_value  # noqa: B018 (raises the job's exception)
    except BaseException as exc:  # noqa: BLE001 - the job's own exception is the value here
        return exc
    return RuntimeError("job failed without an exception")


def read_job(
    ret: JobReturn, metrics: list[str]
) -> tuple[str, str, dict[str, float], str, str | None]:
    """(kind, reason, metrics, output_dir, MLflow run id) of one finished Hydra job."""
    out_dir = _out_dir(ret)
    if ret.status != JobStatus.COMPLETED:
        exc = job_error(ret)
        if isinstance(exc, optuna.TrialPruned) or _is(exc, "TrialPruned"):
            return "pruned", str(exc), {}, out_dir, None
        if isinstance(exc, Interrupted) and exc.slurm_job:  # SLURM stopped the job, not the sweep
            return "lost", slurm_end(exc.slurm_job, exc.signum), {}, out_dir, None
        if isinstance(exc, Interrupted):
            return "interrupted", signal.Signals(exc.signum).name, {}, out_dir, None
        if _is(exc, "DivergedError"):
            return "diverged", f"diverged: {exc}", {}, out_dir, None
        if isinstance(exc, JobError):
            return "fail", mask(str(exc))[:500], {}, out_dir, None
        return "fail", mask(f"{type(exc).__name__}: {exc}")[:500], {}, out_dir, None
    values, run_id = _values(ret.return_value, metrics, out_dir)
    return judge(values, metrics, out_dir, run_id)


def _out_dir(ret: JobReturn) -> str:
    with contextlib.suppress(Exception):
        return str(ret.hydra_cfg.hydra.runtime.output_dir)
    return ""


def judge(
    values: dict[str, float], metrics: list[str], out_dir: str, run_id: str | None
) -> tuple[str, str, dict[str, float], str, str | None]:
    """A finished job's outcome: complete, or why its metrics cannot be told to Optuna."""
    missing = [m for m in metrics if m not in values]
    if missing:
        reason = f"objective {missing} missing from the job's result"
        return "fail", reason, values, out_dir, run_id
    bad = [m for m in metrics if not math.isfinite(values[m])]
    if bad:
        return "diverged", f"non-finite objective {bad}", values, out_dir, run_id
    return "complete", "", values, out_dir, run_id


def read_seeds(
    ret: JobReturn, metrics: list[str], n: int
) -> list[tuple[str, str, dict[str, float], str, str | None]]:
    """The outcome of each of the n seeds one trainer.replicas job trained: a FAILED seed is
    diverged; a job that failed as a whole (pruned, crashed) is that outcome for every seed."""
    rv = ret.return_value if ret.status == JobStatus.COMPLETED else None
    if not isinstance(rv, RunResult) or len(rv.replicas) != n:
        first = read_job(ret, metrics)
        return (
            [first] * n
            if first[0] != "complete"
            else [("fail", "no per-seed results", {}, first[3], None)] * n
        )
    out_dir = _out_dir(ret)
    return [
        judge({k: float(v) for k, v in r.metrics.items()}, metrics, out_dir, r.run_id)
        if r.status == "FINISHED"
        else ("diverged", f"diverged: {r.reason}", {}, out_dir, r.run_id)
        for r in rv.replicas
    ]


def can_group(replicas: bool, config: Any) -> bool:
    """Whether a configuration's seeds may train in one job: the sweep allows it (replicas) and
    the task is tunelab's (its config has trainer.replicas, which that job sets)."""
    from omegaconf import OmegaConf

    owned = OmegaConf.select(config, "trainer.replicas", default=None) is not None
    return replicas and owned


_NO_OUTPUT = re.compile(r"has not produced any output \(state: ([A-Za-z_]+)")


def lost_job(exc: BaseException) -> str | None:
    """`slurm: <state>` (e.g. `slurm: cancelled`) when waiting for a cluster job ended because the
    job ended without writing its result (submitit's UncompletedJobError), else None."""
    if not _is(exc, "UncompletedJobError"):
        return None
    found = _NO_OUTPUT.search(str(exc))
    return f"slurm: {found.group(1).lower() if found else 'ended without a result'}"


def squeue_state(job_id: str) -> str:
    """The job's state as squeue shows it ("" once SLURM no longer knows it, or squeue fails)."""
    try:
        out = subprocess.run(
            ["squeue", "--noheader", "--states=all", "--format=%T", "--jobs", job_id],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return ""
    return out[0] if out else ""


def slurm_end(job_id: str, signum: int, wait_s: float = 30) -> str:
    """`slurm: <state>` of a SLURM job that a signal stopped (scancel: `slurm: cancelled`), once
    SLURM has settled it (a job shows COMPLETING while its processes end); the signal when
    squeue no longer knows the job."""
    deadline = time.monotonic() + wait_s
    state = ""
    while time.monotonic() < deadline:
        state = squeue_state(job_id)
        if state not in ("RUNNING", "COMPLETING", "SUSPENDED"):
            break
        time.sleep(0.5)
    if not state or state in ("RUNNING", "COMPLETING", "SUSPENDED"):
        return f"slurm: stopped by {signal.Signals(signum).name}"
    return f"slurm: {state.lower()}"


def seed_outcomes(
    launch: Callable[[list[str], int], JobReturn],
    seeds: list[Any],
    overrides_for: Callable[[int], list[str]],
    metrics: list[str],
    together: bool,
) -> Iterator[tuple[str, str, dict[str, float], str, str | None]]:
    """Each seed's (kind, reason, metrics, job dir, run id), in seed order, launched as they are
    read: one job per seed (launch(overrides, index)), or (together) one job that trains them
    all as trainer.replicas."""
    if together:
        jobs = [(overrides_for(0) + [f"trainer.replicas=[{','.join(map(str, seeds))}]"], 0)]
    else:
        jobs = [(overrides_for(i), i) for i in range(len(seeds))]
    for overrides, index in jobs:
        try:
            ret = launch(overrides, index)
        except Exception as e:  # the launcher failed (e.g. unpicklable exception), or the job died
            lost = lost_job(e)
            kind, reason = ("lost", lost) if lost else ("fail", f"launch: {type(e).__name__}: {e}")
            yield from [(kind, mask(reason)[:500], {}, "", None)] * (len(seeds) if together else 1)
            continue
        yield from read_seeds(ret, metrics, len(seeds)) if together else [read_job(ret, metrics)]


def _values(rv: Any, metrics: list[str], out_dir: str) -> tuple[dict[str, float], str | None]:
    """A tunelab job returns its RunResult; another task function a number or a dict of numbers,
    with more metrics in metrics.json in its output directory."""
    if isinstance(rv, RunResult):
        return {k: float(v) for k, v in rv.metrics.items()}, rv.run_id
    values: dict[str, float] = {}
    path = Path(out_dir) / "metrics.json" if out_dir else None
    if path is not None and path.is_file():
        data = json.loads(path.read_text())
        values.update({k: float(v) for k, v in data.items() if isinstance(v, numbers.Real)})
    if isinstance(rv, numbers.Real) and len(metrics) == 1:
        values[metrics[0]] = float(rv)
    elif isinstance(rv, dict):
        values.update({k: float(v) for k, v in rv.items() if isinstance(v, numbers.Real)})
    return values, None
