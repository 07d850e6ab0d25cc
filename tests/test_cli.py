"""What a user typing `python src/train.py ...` sees: runs, multiruns, and bad input."""

from __future__ import annotations

import json
import sqlite3

import pytest
from conftest import EPOCH_METRICS, FAST, mlflow_runs, run_cli


def _runs(cwd):
    return mlflow_runs(cwd)


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["optimizer=nosuch"], ["optimizer/nosuch", "Available options"]),
        (["optimizer.nosuch=1"], ["nosuch"]),
        (["optimizer.lr=abc"], ["optimizer.lr='abc'", "expected a number"]),
        (["optimizer.lr=-0.01"], ["optimizer.lr=-0.01", "expected a number in (0"]),
        (["trainer.batch_size=0"], ["trainer.batch_size=0", "expected an integer"]),
        (["trainer.max_epochs=1.5"], ["trainer.max_epochs=1.5", "expected an integer"]),
        (
            ["data=npz", "data.path=/nonexistent/x.npz"],
            ["data.path='/nonexistent/x.npz'", "no such file"],
        ),
        (["data=cifar10"], ["data.path is required"]),
    ],
)
def test_bad_input_fails_fast_with_a_clear_message_and_no_side_effects(tmp_path, args, needles):
    proc = run_cli(*args, cwd=tmp_path, timeout=120)
    assert proc.returncode != 0
    for needle in needles:
        assert needle in proc.stderr + proc.stdout, (needle, proc.stderr[-2000:])
    assert (
        list(tmp_path.iterdir()) == []
    )  # no outputs/, multirun/, mlruns/, checkpoints/ or mlflow.db


def test_single_run_prints_where_to_look(tmp_path):
    proc = run_cli(*FAST, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "mlflow ui --app-name tunelab --backend-store-uri sqlite:///mlflow.db" in proc.stdout
    assert "runs?workflowType=machine_learning" in proc.stdout
    (r,) = _runs(tmp_path)
    assert r.info.run_name == ",".join(FAST)
    (metrics,) = tmp_path.glob("outputs/*/*/metrics.json")
    assert json.loads(metrics.read_text())["run_id"] == r.info.run_id
    (train_log,) = tmp_path.glob("outputs/*/*/train.log")
    result = next(line for line in train_log.read_text().splitlines() if "result: " in line)
    assert result.endswith(f"; run {r.info.run_id}")  # the id reproduce and trace take


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["basic", "joblib"])
def test_multirun_puts_jobs_under_one_parent(tmp_path, launcher):
    extra = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"] if launcher == "joblib" else []
    args = [a for a in FAST if not a.startswith("optimizer=")]
    proc = run_cli("-m", *args, "optimizer=sgd,adam", *extra, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "locked" not in proc.stderr
    runs = _runs(tmp_path)
    parents = [r for r in runs if r.data.tags.get("role") == "multirun"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert len(parents) == 1 and len(children) == 2
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    assert {r.data.params["optimizer.name"] for r in children} == {"sgd", "adam"}
    assert all(r.info.status == "FINISHED" for r in runs)
    # what differs is easy to find: a swept tag and each job's value in its description
    assert {r.data.tags.get("swept") for r in runs} == {"optimizer"}
    notes = {r.data.tags.get("mlflow.note.content") for r in children}
    assert notes == {"swept: optimizer=sgd", "swept: optimizer=adam"}
    keys = EPOCH_METRICS
    with sqlite3.connect(
        tmp_path / "mlflow.db"
    ) as db:  # no lost metric rows: 2 runs x 2 epochs x 8 keys
        n = db.execute(
            f"select count(*) from metrics where key in ({','.join('?' * len(keys))})", keys
        ).fetchone()[0]
    assert n == 2 * 2 * len(keys)
    # the multirun ends with its jobs side by side and the link, readable without the UI
    table = proc.stdout[proc.stdout.index("job ") :]
    assert "best val/acc" in table and "optimizer=sgd" in table and "optimizer=adam" in table
    assert "runs?workflowType=machine_learning" in table
    threads = {r.data.tags["threads"] for r in children}
    import os

    if launcher == "joblib":  # the two jobs share the cores instead of each taking all
        assert threads == {str(max(1, len(os.sched_getaffinity(0)) // 2))}


def test_epochs_count_from_one_in_the_log_the_metrics_and_best_epoch(tmp_path):
    proc = run_cli(*FAST, "trainer.max_epochs=3", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert all(f"epoch {e}/3 " in log for e in (1, 2, 3)) and "epoch 0/" not in log
    (r,) = _runs(tmp_path)
    from mlflow import MlflowClient

    history = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_metric_history(
        r.info.run_id, "val/acc"
    )
    assert [m.step for m in history] == [1, 2, 3]
    best = max(history, key=lambda m: (m.value, -m.step))
    assert r.data.metrics["best_epoch"] == best.step  # the epoch the log calls it


def test_help_describes_tunelab(tmp_path):
    proc = run_cli("--help", cwd=tmp_path)
    assert proc.returncode == 0
    for needle in ("tunelab: systematic", "== Configuration groups ==", "optimizer: adadelta",
                   "python src/train.py -m search=tpe", "tunelab reproduce"):  # fmt: skip
        assert needle in proc.stdout, needle


@pytest.mark.slow
def test_sweeps_and_diagnostics_end_with_a_summary_and_the_link(tmp_path):
    sweep = run_cli("-m", *FAST, "search=random", "hydra.sweeper.n_trials=3", cwd=tmp_path)
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    out = sweep.stdout + sweep.stderr
    assert "3 complete, 0 pruned, 0 failed" in out and "trial  val/acc" in out
    assert "runs?workflowType=machine_learning" in sweep.stdout
    diagnose = run_cli(*FAST, "diagnose=datacheck", cwd=tmp_path)
    assert diagnose.returncode == 0, diagnose.stderr[-3000:]
    assert "runs?workflowType=machine_learning" in diagnose.stdout
