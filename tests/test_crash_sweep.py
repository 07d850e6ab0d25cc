"""Sweep-side faults: a bad search interval is refused before anything is created; a sweep killed
mid-trial is repaired by the next start (stale trial FAIL + retry, the job's run resumed)."""

from __future__ import annotations

import signal

import optuna
import pytest
from conftest import finish_cli, mlflow_runs, run_cli, start_cli, wait_for_line

from tunelab.tuning.study_storage import make_storage

SMALL = [
    "data=synthetic",
    "model=mlp",
    "model.width=32",
    "trainer.max_epochs=2",
    "scheduler=constant",
    "optimizer=adam",
    "trainer.num_threads=1",
]


@pytest.mark.parametrize(
    ("space", "needle"),
    [
        ("interval(0.1, 0.01)", "interval needs low < high, got (0.1, 0.01)"),
        ("interval(0.1, 0.1)", "interval needs low < high, got (0.1, 0.1)"),
        ("range(5, 1)", "empty range"),
    ],
)
def test_an_empty_or_reversed_search_interval_is_refused_first(tmp_path, space, needle):
    args = ["-m", *SMALL, "hydra/sweeper=tunelab", "hydra.sweeper.n_trials=2"]
    proc = run_cli(*args, f"optimizer.lr={space}", cwd=tmp_path, timeout=300)
    assert proc.returncode != 0
    assert "optimizer.lr" in proc.stderr and needle in proc.stderr, proc.stderr[-2000:]
    assert list(tmp_path.iterdir()) == []  # no multirun/, journal, mlflow.db or checkpoints


@pytest.mark.slow
def test_a_sweep_killed_mid_trial_is_repaired_by_the_next_start(workdir):
    args = [
        "-m",
        "data=synthetic",
        "data.num_samples=4096",
        "trainer.batch_size=32",
        "model=mlp",
        "model.width=32",
        "trainer.max_epochs=20",
        "scheduler=constant",
        "optimizer=adam",
        "trainer.num_threads=1",
        "hydra/sweeper=tunelab",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.sampler.name=random",
        "hydra.sweeper.storage=journal:optuna.journal",
        "optimizer.lr=interval(0.001, 0.01)",
    ]
    sweep = start_cli(*args, cwd=workdir)
    wait_for_line(sweep, "trial 0 COMPLETE")
    wait_for_line(sweep, "epoch 3/20")  # inside trial 1
    sweep.send_signal(signal.SIGKILL)
    sweep.wait(timeout=60)
    (dead_job,) = [
        r
        for r in mlflow_runs(workdir)
        if r.info.status == "RUNNING" and r.data.tags.get("role") == "seed"
    ]

    out = finish_cli(start_cli(*args, cwd=workdir))
    assert "were left RUNNING by a dead sweep" in out and "resuming from" in out, out[-3000:]
    storage = make_storage(f"journal:{workdir / 'optuna.journal'}")
    (summary,) = optuna.get_all_study_summaries(storage)
    trials = optuna.load_study(study_name=summary.study_name, storage=storage).get_trials()
    states = [t.state.name for t in trials]
    assert states == ["COMPLETE", "FAIL", "COMPLETE"], states
    assert trials[1].user_attrs["stale"] and trials[2].user_attrs["retry_of"] == 1
    assert trials[2].params == trials[1].params
    runs = mlflow_runs(workdir)
    job = next(r for r in runs if r.info.run_id == dead_job.info.run_id)
    assert job.info.status == "FINISHED" and job.data.tags["resumed"] == "true"
    (retry,) = [
        r for r in runs if r.data.tags.get("role") == "trial" and r.data.tags["trial"] == "2"
    ]
    assert job.data.tags["trial"] == "2"  # the retry adopted the job's run
    assert job.data.tags["mlflow.parentRunId"] == retry.info.run_id
    assert "failure_reason" not in job.data.tags  # it resumed: whatever stopped it is over
    (killed,) = [
        r for r in runs if r.data.tags.get("trial") == "1" and r.data.tags["role"] == "trial"
    ]
    assert killed.info.status == "KILLED" and killed.data.tags["failure_reason"] == "process_died"
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"]
