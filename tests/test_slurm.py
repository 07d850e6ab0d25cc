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

from tunelab.config.space import to_overrides
from tunelab.run import signals
from tunelab.tags import FAILURE_REASON, PREEMPTED, ROLE, Role
from tunelab.tuning.jobs import PREEMPTED_FILE, preemptions
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


def test_the_warning_signal_raises_preempted_once_and_gives_back_the_requeue_handler():
    """In a job, SLURM's warning signal stops the run as Preempted (a later copy is ignored while
    the run records); submitit's handler, which requeues, is handed back and reinstalled."""
    calls: list[int] = []

    def requeue(signum, frame):
        calls.append(signum)

    previous = signal.signal(signal.SIGUSR2, requeue)
    try:
        with (
            pytest.raises(signals.Preempted, match="SIGUSR2"),
            signals.preemption_raises(signal.SIGUSR2) as handed_back,
        ):
            assert handed_back is requeue
            try:
                os.kill(os.getpid(), signal.SIGUSR2)
                time.sleep(1)
            finally:
                os.kill(os.getpid(), signal.SIGUSR2)  # ignored: already stopping
                time.sleep(0.1)
        assert signal.getsignal(signal.SIGUSR2) is requeue and calls == []
    finally:
        signal.signal(signal.SIGUSR2, previous)


def test_a_trials_preemptions_are_counted_from_its_job_directories(tmp_path):
    (tmp_path / "0").mkdir()
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / PREEMPTED_FILE).write_text('{"times": 2, "slurm_job": "7"}')
    assert preemptions([str(tmp_path / "0"), ""]) == 0
    assert preemptions([str(tmp_path / "0"), str(tmp_path / "1")]) == 2


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


def _wait_for_epoch(proc, workdir: Path, job: str, epoch: int, deadline: float) -> None:
    """Until the job's log shows `epoch N/` (its checkpoint of epoch N-1 is written)."""
    log = workdir / "multirun" / ".submitit" / job / f"{job}_0_log.out"
    while not (log.is_file() and f"epoch {epoch}/" in log.read_text()):
        assert proc.poll() is None and time.monotonic() < deadline, "".join(proc.output)[-3000:]
        time.sleep(0.2)


def _release_when_requeued(env: dict[str, str], job: str, deadline: float) -> None:
    """A requeued job waits 120 s (SLURM's BeginTime); start it as soon as it is pending."""
    while _squeue(env, "--jobs", job, "--format=%T").strip() != "PENDING":
        assert time.monotonic() < deadline, _squeue(env, "--states=all")
        time.sleep(0.2)
    subprocess.run(
        ["scontrol", "update", f"jobid={job}", "StartTime=now"],
        env={**os.environ, **env},
        check=True,
        timeout=30,
    )


@pytest.mark.slow
def test_a_job_warned_before_its_limit_is_requeued_and_resumes_its_run_bit_identically(
    workdir, slurm
):
    """SLURM's warning signal (USR2, as --signal=USR2@signal_delay_s sends it before the time
    limit) mid-training: the run records KILLED + preempted with its checkpoint, the job is
    requeued, resumes the same MLflow run, and ends with an uninterrupted run's exact metrics; the
    trial counts once and says it was preempted."""
    trains = ["data=synthetic", "trainer.max_epochs=12", "trainer.num_threads=1"]
    proc = start_cli(
        "-m",
        "search=random",
        "hydra.sweeper.n_trials=1",
        "hydra.sweeper.study_name=preempted",
        "hydra.sweeper.figures=false",
        *trains,
        *ON_TEST_NODE,
        cwd=workdir,
        env=slurm,
    )
    deadline = time.monotonic() + 300
    while not (running := _running_jobs(slurm)):
        assert proc.poll() is None and time.monotonic() < deadline, "".join(proc.output)[-3000:]
        time.sleep(0.5)
    job = running[0]
    _wait_for_epoch(proc, workdir, job, 4, deadline)
    subprocess.run(
        ["scancel", "--signal=USR2", job], env={**os.environ, **slurm}, check=True, timeout=30
    )
    _release_when_requeued(slurm, job, deadline)
    out = finish_cli(proc, timeout=600)
    assert proc.returncode == 0, out[-4000:]

    study = _study(workdir, "preempted")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE], out[-3000:]  # counted once
    trial = study.trials[0]
    assert trial.user_attrs[PREEMPTED] == 1
    log = (workdir / "multirun" / ".submitit" / job / f"{job}_0_log.out").read_text()
    assert "resuming from" in log and "Requeued job" in log
    assert len(list((workdir / "multirun" / ".submitit").glob("[0-9]*"))) == 1  # one SLURM job

    runs = {r.info.run_id: r for r in mlflow_runs(workdir)}
    (seed_run_id,) = trial.user_attrs["mlflow_seed_run_ids"]
    resumed = runs[seed_run_id]  # the run the first attempt opened, continued by the requeued job
    assert resumed.info.status == "FINISHED"
    assert resumed.data.tags[PREEMPTED] == "true" and resumed.data.tags["resumed"] == "true"
    assert runs[trial.user_attrs["mlflow_run_id"]].data.tags[PREEMPTED] == "1"
    assert len([r for r in runs.values() if r.data.tags.get("trial") == "0"]) == 2  # trial + seed

    # the same configuration trained without interruption, on this machine
    ref = run_cli(
        *trains, *to_overrides(trial.params), "trainer.checkpoint_dir=uninterrupted", cwd=workdir
    )
    assert ref.returncode == 0, ref.stderr[-3000:]
    (plain,) = [r for r in mlflow_runs(workdir) if r.info.run_id not in runs]
    compared = {k: v for k, v in plain.data.metrics.items() if not k.startswith(("perf/", "sys/"))}
    assert "test/acc" in compared and "val/acc" in compared
    assert {k: resumed.data.metrics[k] for k in compared} == compared


@pytest.mark.slow
def test_a_restarted_sweep_waits_for_its_running_jobs_instead_of_launching_them_again(
    workdir, slurm
):
    """kill -9 of the sweep's process while its trials run as SLURM jobs: the same command
    started again finds the jobs on their trials, waits for them and tells them; no trial is
    launched twice and the budget stays exact."""
    command = [
        "-m",
        "search=random",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.n_jobs=2",
        "hydra.sweeper.study_name=restarted",
        "hydra.sweeper.figures=false",
        "data=synthetic",
        "trainer.max_epochs=40",
        *ON_TEST_NODE,
    ]
    first = start_cli(*command, cwd=workdir, env=slurm)
    deadline = time.monotonic() + 300
    while len(running := _running_jobs(slurm)) < 2:
        assert first.poll() is None and time.monotonic() < deadline, "".join(first.output)[-3000:]
        time.sleep(0.5)
    for job in running:
        _wait_for_epoch(first, workdir, job, 2, deadline)
    recorded = {
        t.user_attrs.get("slurm_job", {}).get("id") for t in _study(workdir, "restarted").trials
    }
    assert recorded == set(running), recorded  # each trial knows its job
    first.kill()  # the login node's process dies; its jobs go on
    finish_cli(first, timeout=60)
    assert _running_jobs(slurm) == running

    again = run_cli(*command, cwd=workdir, env=slurm, timeout=600)
    out = again.stdout + again.stderr
    assert again.returncode == 0, out[-4000:]
    assert "waiting for their SLURM jobs" in out
    study = _study(workdir, "restarted")
    shown = [(t.number, t.state, t.user_attrs.get("fail_reason")) for t in study.trials]
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2, shown
    jobs = {p.name for p in (workdir / "multirun" / ".submitit").glob("[0-9]*")}
    assert jobs == set(running)  # no trial launched again
    trials = [r for r in mlflow_runs(workdir) if r.data.tags.get(ROLE) == Role.TRIAL]
    assert len(trials) == 2 and {r.info.status for r in trials} == {"FINISHED"}
    assert not [r for r in mlflow_runs(workdir) if r.info.status == "RUNNING"]
    assert _squeue(slurm) == ""


@pytest.mark.slow
def test_pruning_reaches_a_trial_running_as_a_slurm_job(workdir, slurm):
    """Median pruning on the cluster, as tests/test_sweep_e2e.py does locally: a learning rate
    that learns nothing, tried after two that learn (grid order, seed 5), is pruned from inside
    its SLURM job: PRUNED in the study, its runs KILLED with pruned=true and the epoch."""
    proc = run_cli(
        "-m",
        "search=grid",
        "data=synthetic",
        "trainer.max_epochs=4",
        "optimizer=adam",
        "optimizer.lr=choice(3.0e-3, 2.0e-3, 1.0e-6)",
        "optimizer.weight_decay=0.0",
        "scheduler=constant",
        "hydra.sweeper.sampler.seed=5",
        "hydra.sweeper.pruner.name=median",
        "++hydra.sweeper.pruner.kwargs.n_startup_trials=1",
        "hydra.sweeper.study_name=pruned",
        "hydra.sweeper.figures=false",
        *ON_TEST_NODE,
        cwd=workdir,
        env=slurm,
        timeout=600,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    trials = {t.params["optimizer.lr"]: t for t in _study(workdir, "pruned").trials}
    assert trials[1e-6].number == 2 and trials[1e-6].state == TrialState.PRUNED, out[-3000:]
    assert {t.state for t in trials.values()} <= {TrialState.COMPLETE, TrialState.PRUNED}
    assert len(list((workdir / "multirun" / ".submitit").glob("[0-9]*"))) == 3  # one job each
    runs = mlflow_runs(workdir)
    pruned = {lr for lr, t in trials.items() if t.state == TrialState.PRUNED}
    tagged = [r for r in runs if r.data.tags.get("pruned") == "true"]
    assert {float(r.data.params["optimizer.lr"]) for r in tagged} == pruned
    assert all(r.info.status == "KILLED" for r in tagged)
    seeds = [r for r in tagged if r.data.tags.get(ROLE) == Role.SEED]  # trained in the job
    assert len(seeds) == len(pruned)
    assert {int(r.data.tags["pruned_at_epoch"]) for r in seeds} <= {1, 2, 3}  # before the last
    assert _squeue(slurm) == ""


@pytest.mark.slow
def test_two_sweep_processes_share_one_postgresql_study_on_slurm(
    workdir, slurm, postgres, mlflow_server
):
    """The cluster recipe: two sweep processes (as on two login shells) on one PostgreSQL study and
    one MLflow server, trials as SLURM jobs; the jobs take the storage's password from the
    environment SLURM passes on; exactly n_trials run, each as one job, none twice."""
    from mlflow import MlflowClient

    storage, n_trials = postgres.url("slurmteam"), 4
    common = [
        "-m",
        "search=random",
        f"hydra.sweeper.n_trials={n_trials}",
        "hydra.sweeper.study_name=slurmteam",
        "hydra.sweeper.figures=false",
        "data=synthetic",
        "trainer.max_epochs=2",
        f"tracking.tracking_uri={mlflow_server}",
        *[o for o in ON_TEST_NODE if not o.startswith("hydra.sweep.dir=")],
    ]
    env = {**slurm, "TUNELAB_OPTUNA_STORAGE": storage}
    procs = [
        start_cli(*common, f"hydra.sweep.dir=multirun/w{i}", cwd=workdir, env=env) for i in (0, 1)
    ]
    outs = [finish_cli(p, timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n=====\n".join(o[-3000:] for o in outs)
    assert not any(postgres.password in o for o in outs)
    study = optuna.load_study(study_name="slurmteam", storage=make_storage(storage))
    assert sorted(t.number for t in study.trials) == list(range(n_trials))  # none lost or extra
    assert {t.state for t in study.trials} == {TrialState.COMPLETE}
    assert len(list(workdir.glob("multirun/w*/.submitit/[0-9]*"))) == n_trials  # a job each
    client = MlflowClient(mlflow_server)
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        "tags.sweep = 'slurmteam'",
        max_results=1000,
    )
    trials = [r for r in runs if r.data.tags.get(ROLE) == Role.TRIAL]
    assert sorted(int(r.data.tags["trial"]) for r in trials) == list(range(n_trials))
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert _squeue(slurm) == ""
