"""launcher=slurm against a real single-node SLURM (tests/slurm_cluster.py): a sweep's trials run
as SLURM jobs and the sweep completes exactly n_trials."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import optuna
import pytest
from conftest import finish_cli, mlflow_runs, run_cli, start_cli
from optuna.trial import TrialState
from slurm_cluster import slurm_cluster

from tunelab.tags import FAILURE_REASON
from tunelab.tuning.study_storage import make_storage

pytestmark = pytest.mark.xdist_group("slurm")

# One CPU and 1 GB per trial on the test node (the preset asks for a GPU, 8 CPUs and 32 GB).
ON_TEST_NODE = [
    "launcher=slurm",
    "hydra.launcher.partition=main",
    "hydra.launcher.gpus_per_node=0",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=1",
    "hydra.sweep.dir=multirun",
]


def _squeue(env: dict[str, str], *args: str) -> str:
    return subprocess.run(
        ["squeue", "-h", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout


def _study(cwd: Path, name: str) -> optuna.Study:
    return optuna.load_study(
        study_name=name, storage=make_storage(f"journal:{cwd / 'optuna.journal'}")
    )


def test_the_cluster_runs_a_job_and_its_daemons_stop_afterwards(tmp_path):
    with slurm_cluster(tmp_path / "slurm") as env:
        full = {**os.environ, **env}
        out = subprocess.run(
            ["srun", "-p", "main", "-n1", "--mem=100", "echo", "ran-on-slurm"],
            env=full,
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
        )
        assert out.returncode == 0 and "ran-on-slurm" in out.stdout, out.stderr
        pids = [
            int(p.read_text()) for p in (tmp_path / "slurm").rglob("*.pid") if p.read_text().strip()
        ]
        assert len(pids) == 3  # munged, slurmctld, slurmd
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


@pytest.mark.slow
def test_a_slurm_sweep_completes_exactly_n_trials(workdir, slurm):
    proc = run_cli(
        "-m",
        "search=random",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.n_jobs=2",
        "hydra.sweeper.study_name=onslurm",
        "data=synthetic",
        "trainer.max_epochs=2",
        "hydra.sweeper.figures=false",
        *ON_TEST_NODE,
        cwd=workdir,
        env=slurm,
        timeout=600,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    study = _study(workdir, "onslurm")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    jobs = sorted((workdir / "multirun" / ".submitit").glob("[0-9]*"))
    assert len(jobs) == 2  # each trial ran as a SLURM job of its own
    trials = [r for r in mlflow_runs(workdir) if r.data.tags.get("trial") is not None]
    assert {r.info.status for r in trials} == {"FINISHED"}
    assert "Bypassing sacct error" not in out
    assert out.count("accounting is off") == 1  # said once, not at every poll
    assert _squeue(slurm) == ""  # nothing left queued or running


def _running_jobs(env: dict[str, str]) -> list[str]:
    lines = _squeue(env, "--states=RUNNING", "--format=%i").split()
    return sorted(lines, key=lambda j: [int(p) for p in j.replace("_", " ").split()])


def _scancel(env: dict[str, str], job: str) -> None:
    """scancel: SIGTERM, then SIGKILL after KillWait=2 (the job may write its stopped result)."""
    subprocess.run(["scancel", job], env={**os.environ, **env}, check=True, timeout=30)


def _kill_9(env: dict[str, str], job: str) -> None:
    """kill -9 of the job's training process (as the OOM killer does): no result is written."""
    listed = subprocess.run(
        ["scontrol", "listpids", job],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.splitlines()[1:]
    pids = [int(cols[0]) for cols in map(str.split, listed) if cols[2] == "0"]  # step 0
    assert pids, listed
    for pid in pids:
        os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("stop", "reason"),
    [(_scancel, "slurm: cancelled"), (_kill_9, "slurm: failed")],
    ids=["scancel", "kill-9"],
)
def test_a_dead_trial_job_fails_killed_is_retried_and_the_sweep_finishes(
    workdir, slurm, stop, reason
):
    """A trial's job cancelled or killed while it trains: the trial ends FAIL with SLURM's
    reason, its run KILLED, its retry runs, the sweep finishes with the exact budget."""
    proc = start_cli(
        "-m",
        "search=random",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.n_jobs=2",
        "hydra.sweeper.study_name=cancelled",
        "data=synthetic",
        "trainer.max_epochs=120",
        "hydra.sweeper.figures=false",
        *ON_TEST_NODE,
        cwd=workdir,
        env=slurm,
    )
    deadline = time.monotonic() + 300
    while not (running := _running_jobs(slurm)):
        assert proc.poll() is None and time.monotonic() < deadline, "".join(proc.output)[-3000:]
        time.sleep(0.5)
    victim = running[0]
    log = workdir / "multirun" / ".submitit" / victim / f"{victim}_0_log.out"
    while not (log.is_file() and "epoch 1/" in log.read_text()):  # training has started
        assert proc.poll() is None and time.monotonic() < deadline, "".join(proc.output)[-3000:]
        time.sleep(0.2)
    stop(slurm, victim)
    out = finish_cli(proc, timeout=600)
    assert proc.returncode == 0, out[-4000:]

    study = _study(workdir, "cancelled")
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    shown = [(t.number, t.state, t.user_attrs.get("fail_reason")) for t in study.trials]
    assert len(failed) == 1 and len(complete) == 2, f"{shown}\n{out[-3000:]}"
    dead = failed[0]
    assert dead.user_attrs["fail_reason"] == reason
    assert dead.user_attrs["stale"] is True  # not counted: its retry is
    retry = [t for t in complete if t.user_attrs.get("retry_of") == dead.number]
    assert len(retry) == 1 and retry[0].params == dead.params
    runs = {r.info.run_id: r for r in mlflow_runs(workdir)}
    killed = runs[dead.user_attrs["mlflow_run_id"]]
    assert killed.info.status == "KILLED"
    assert killed.data.tags[FAILURE_REASON] == reason
    assert not [r for r in runs.values() if r.info.status == "RUNNING"]
    assert _squeue(slurm) == ""
