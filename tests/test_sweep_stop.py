"""Stopping a sweep: SIGINT (a terminal's Ctrl-C, sent to the process group) or SIGTERM ends it
within seconds, no new trial starts, every run ends (none RUNNING), every finished trial keeps its
MLflow record, and the exit status is a single run's (130, 143)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
from conftest import finish_cli, mlflow_runs, start_cli, wait_for_line
from optuna.trial import TrialState

from tunelab.tuning.jobs import Interrupted, SafeTask
from tunelab.tuning.study_storage import make_storage

STUDY = "stop"
ARGS = [
    "-m",
    "search=random",
    "data=synthetic",
    "data.num_samples=2048",
    "model=mlp",
    "model.width=32",
    "trainer.max_epochs=12",
    "trainer.batch_size=32",
    "scheduler=constant",
    "trainer.num_threads=1",
    "hydra.sweeper.n_trials=40",
    "hydra.sweeper.figures=false",
    f"hydra.sweeper.study_name={STUDY}",
    "hydra.sweeper.storage=journal:optuna.journal",
]
JOBLIB = ["hydra/launcher=joblib", "hydra.sweeper.n_jobs=2"]


def _terminal_like() -> None:
    """The sweep as started from a terminal: its own process group, SIGINT and SIGTERM at their
    defaults (a background job of a script inherits SIGINT ignored, and keeps it)."""
    os.setpgrp()
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _trials(workdir) -> list[optuna.trial.FrozenTrial]:
    path = workdir / "optuna.journal"
    if not path.exists():
        return []
    try:
        storage = make_storage(f"journal:{path}")
        return optuna.load_study(study_name=STUDY, storage=storage).get_trials(deepcopy=False)
    except KeyError:  # the study is not created yet
        return []


def _wait_until(proc, what: str, ready, timeout: float = 300):
    """Poll until ready() returns something true (the sweep's stores, not its log); return it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "".join(proc.output)[-3000:]
        if found := ready():
            return found
        time.sleep(0.2)
    raise AssertionError(f"no {what} in {timeout} s:\n{''.join(proc.output)[-3000:]}")


def _complete(workdir) -> list:
    trials = _trials(workdir)
    return trials if any(t.state == TrialState.COMPLETE for t in trials) else []


def _training(workdir) -> list:
    """A trial's job recording epochs (a RUNNING seed run with metrics) after a trial finished."""
    if not _complete(workdir):
        return []
    runs = mlflow_runs(workdir)
    training = [r for r in runs if r.info.status == "RUNNING" and r.data.tags.get("role") == "seed"]
    return _trials(workdir) if any("train/loss" in r.data.metrics for r in training) else []


def _group_ended(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def _stop(
    workdir, args: list[str], sig: int, when, group: bool = True, twice: bool = False
) -> tuple[str, set[int]]:
    """Start the sweep, send sig once when(workdir) holds (to its process group, as a terminal
    does, or to its process alone; twice: again once it says it stops); its output and the
    trials that existed just before the signal. It and its job workers must be gone in 60 s (sqlite retries its locked writes on a busy machine)."""
    proc = start_cli(*args, cwd=workdir, preexec_fn=_terminal_like)
    send = (lambda: os.killpg(proc.pid, sig)) if group else (lambda: proc.send_signal(sig))
    try:
        before = {t.number for t in _wait_until(proc, when.__name__, lambda: when(workdir))}
        send()
        if twice:
            wait_for_line(proc, f"{sig.name}: the sweep stops", timeout=30)
            send()
        out = finish_cli(proc, timeout=60)
        deadline = time.monotonic() + 60
        while not _group_ended(proc.pid):  # workers that outlive the sweep finish recording
            assert time.monotonic() < deadline, "job workers still alive 60 s after the sweep"
            time.sleep(0.2)
    except subprocess.TimeoutExpired:
        tail = "".join(proc.output)[-3000:]
        raise AssertionError(f"still running 60 s after {sig.name}:\n{tail}") from None
    finally:  # nothing of the sweep outlives the test
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 128 + sig, out[-3000:]
    assert f"sweep stopped by {sig.name}" in out
    return out, before


def _check_stopped(workdir, out: str, sig: int, before: set[int], n_jobs: int) -> list:
    """Nothing RUNNING, no trial started after the signal, every finished trial recorded; the
    trials the signal stopped (FAIL, not counted, queued again) are returned."""
    trials = _trials(workdir)
    assert not [t.number for t in trials if t.state == TrialState.RUNNING], out[-3000:]
    # no trial started after the signal beyond those already running: the ones asked since the
    # study was read are at most one per slot (a trial takes seconds, the read and the signal
    # milliseconds); the re-queued copies of stopped trials wait for the next start
    started = [t for t in trials if t.state != TrialState.WAITING]
    assert len([t for t in started if t.number not in before]) <= n_jobs, out[-3000:]
    assert len(started) < 40
    reason = "interrupted" if sig == signal.SIGINT else "terminated"  # as a single run's
    stopped = [t for t in trials if t.user_attrs.get("fail_reason", "").startswith(reason)]
    assert all(t.state == TrialState.FAIL and t.user_attrs["stale"] for t in stopped)
    waiting = [t for t in trials if t.state == TrialState.WAITING]
    assert sorted(t.user_attrs["retry_of"] for t in waiting) == [t.number for t in stopped]

    runs = mlflow_runs(workdir)
    running = [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    assert not running, out[-3000:]
    by_id = {r.info.run_id: r for r in runs}
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert complete
    for t in complete:  # every finished trial is recorded, with its value
        run = by_id[t.user_attrs["mlflow_run_id"]]
        assert run.info.status == "FINISHED", (t.number, run.info.status)
        assert run.data.metrics["val/acc"] == pytest.approx(t.value)
    for t in stopped:
        run = by_id[t.user_attrs["mlflow_run_id"]]
        assert run.info.status == "KILLED" and run.data.tags["failure_reason"] == reason
    (parent,) = [r for r in runs if r.data.tags.get("role") == "sweep"]
    assert parent.info.status == "KILLED" and parent.data.tags["failure_reason"] == reason
    return stopped


@pytest.mark.slow
@pytest.mark.parametrize(
    ("launcher", "n_jobs", "sig"),
    [(JOBLIB, 2, signal.SIGINT), (JOBLIB, 2, signal.SIGTERM), ([], 1, signal.SIGINT)],
    ids=["joblib-SIGINT", "joblib-SIGTERM", "basic-SIGINT"],
)
def test_a_signal_stops_the_sweep_and_loses_no_finished_trial(workdir, launcher, n_jobs, sig):
    # just after a trial finished: with joblib the other trial trains (its job stops on the
    # signal) and the next one is being launched; with the basic launcher the next job starts
    out, before = _stop(workdir, [*ARGS, *launcher], sig, _complete)
    _check_stopped(workdir, out, sig, before, n_jobs)


@pytest.mark.slow
def test_sigterm_to_the_sweep_process_alone_stops_its_job_workers_too(workdir):
    # `kill PID`: the sweep hands the signal on to the joblib workers that run its trials
    out, before = _stop(workdir, [*ARGS, *JOBLIB], signal.SIGTERM, _complete, group=False)
    _check_stopped(workdir, out, signal.SIGTERM, before, 2)


@pytest.mark.slow
def test_a_second_ctrl_c_exits_at_once_and_leaves_no_run_running(workdir):
    out, _ = _stop(workdir, [*ARGS, *JOBLIB], signal.SIGINT, _complete, twice=True)
    assert "SIGINT again: the sweep exits now" in out, out[-3000:]
    runs = mlflow_runs(workdir)
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"], out[-3000:]
    (parent,) = [r for r in runs if r.data.tags.get("role") == "sweep"]
    assert parent.info.status == "KILLED" and parent.data.tags["failure_reason"] == "interrupted"


@pytest.mark.slow
def test_a_sweep_stopped_mid_training_resumes_with_the_same_command(workdir):
    # basic launcher (in-process); trials long enough, and each epoch logged, for the signal to
    # land in the second trial's training
    args = [*ARGS, "trainer.max_epochs=40", "tracking.metrics_every_s=0"]
    out, before = _stop(workdir, args, signal.SIGTERM, _training)
    assert "stopped by SIGTERM: run" in out  # the job recorded its own run KILLED
    (stopped,) = _check_stopped(workdir, out, signal.SIGTERM, before, 1)
    seeds = [r for r in mlflow_runs(workdir) if r.data.tags.get("role") == "seed"]
    (seed_run,) = [r for r in seeds if r.data.tags["trial"] == str(stopped.number)]
    assert seed_run.info.status == "KILLED"

    done = sum(t.state == TrialState.COMPLETE for t in _trials(workdir))
    resumed = [*args, f"hydra.sweeper.n_trials={done + 1}"]  # just the stopped trial again
    out = finish_cli(start_cli(*resumed, cwd=workdir))
    assert "resuming from" in out, out[-3000:]
    (retry,) = [t for t in _trials(workdir) if t.user_attrs.get("retry_of") == stopped.number]
    assert retry.state == TrialState.COMPLETE and retry.params == stopped.params
    runs = {r.info.run_id: r for r in mlflow_runs(workdir)}
    assert not [r.info.run_name for r in runs.values() if r.info.status == "RUNNING"]
    assert runs[seed_run.info.run_id].info.status == "FINISHED"  # the stopped job's run went on
    (parent,) = [r for r in runs.values() if r.data.tags.get("role") == "sweep"]
    assert parent.info.status == "FINISHED"


def _exits(code: int) -> None:
    raise SystemExit(code)


@pytest.mark.parametrize(("code", "sig"), [(130, signal.SIGINT), (143, signal.SIGTERM)])
def test_a_job_stopped_by_a_signal_comes_back_as_interrupted(code, sig):
    # what tunelab.hydra_job.job raises after recording its run KILLED
    with pytest.raises(Interrupted) as info:
        SafeTask(lambda cfg: _exits(code))(None)
    assert info.value.signum == sig
    with pytest.raises(SystemExit):  # any other exit is not a signal's
        SafeTask(lambda cfg: _exits(1))(None)


WRITER = """
import atexit
import time
from pathlib import Path
from tunelab import background

def slow_write():
    time.sleep(0.5)
    Path("written").write_text("yes")

if {control}:  # without the exit hook the queued write is dropped with the daemon thread
    atexit.unregister(background.flush_all)
background.BackgroundWriter().submit(slow_write)
raise SystemExit({code})
"""


@pytest.mark.parametrize("code", [0, 143])
def test_writes_still_queued_when_a_process_exits_are_sent(tmp_path, code):
    def exit_with(control: bool) -> bool:
        (tmp_path / "written").unlink(missing_ok=True)
        script = WRITER.format(code=code, control=control)
        proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, timeout=60)
        assert proc.returncode == code
        return (tmp_path / "written").exists()

    assert exit_with(control=False)
    assert not exit_with(control=True)
