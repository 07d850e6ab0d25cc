"""Four jobs logging to one fresh sqlite MLflow store at the same instant: no lock or migration
error reaches the user and every metric row is there."""

from __future__ import annotations

import sqlite3

import pytest
from conftest import EPOCH_METRICS, FAST, NO_TELEMETRY, finish_cli, mlflow_runs, run_cli, start_cli

EPOCHS = 3
PER_EPOCH = EPOCH_METRICS
AT_THE_END = ("best/val/acc", "best/val/loss", "test/acc", "test/loss", "best_epoch")


@pytest.mark.slow
def test_four_parallel_jobs_on_the_default_sqlite_store(tmp_path):
    args = [
        "-m",
        "seed=0,1,2,3",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=4",
        "data=synthetic",
        "model=mlp",
        "model.width=32",
        f"trainer.max_epochs={EPOCHS}",
        "trainer.num_threads=1",
        "scheduler=constant",
        "optimizer=adam",
    ]
    env = NO_TELEMETRY  # log models too
    proc = run_cli(*args, cwd=tmp_path, env=env, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    for needle in ("locked", "alembic", "migrat", "Traceback", "UNIQUE constraint"):
        assert needle.lower() not in out.lower(), (needle, out[-3000:])
    runs = mlflow_runs(tmp_path)
    jobs = [r for r in runs if r.data.tags.get("role") == "single"]
    assert len(runs) == 5 and len(jobs) == 4  # 4 jobs under one multirun parent
    assert all(r.info.status == "FINISHED" for r in runs)
    assert {r.data.tags["seed"] for r in jobs} == {"0", "1", "2", "3"}
    with sqlite3.connect(tmp_path / "mlflow.db") as db:
        for r in jobs:
            rows = db.execute(
                "select key, step, count(*) from metrics where run_uuid = ? group by key, step",
                (r.info.run_id,),
            ).fetchall()
            assert all(n == 1 for _, _, n in rows), rows  # no row twice
            keys = {(k, s) for k, s, _ in rows}
            assert {(k, e) for k in PER_EPOCH for e in range(1, EPOCHS + 1)} <= keys
            assert {(k, EPOCHS) for k in AT_THE_END} <= keys
            per_class = {k for k, s, _ in rows if k.startswith(("val/recall/", "val/precision/"))}
            assert len(per_class) == 2 * 4  # recall and precision of synthetic's 4 classes
            at_end = {k for k, s, _ in rows if k.startswith(("best/", "test/", "val/acc_class_"))}
            assert all(s == EPOCHS for k, s, _ in rows if k in at_end)
            every_epoch = len(PER_EPOCH) + len(per_class)
            assert len(rows) == every_epoch * EPOCHS + len(at_end) + 1  # + best_epoch
        models = db.execute("select count(*) from logged_models").fetchone()[0]
    assert models == 4


@pytest.mark.slow
@pytest.mark.parametrize("n", [4, 8])
def test_independent_processes_started_together_on_a_fresh_directory(tmp_path, n):
    """`for s in ...; do python src/train.py seed=$s & done` where no store exists yet: the first
    process to arrive creates the schema under a lock beside it; the others wait and use it."""
    args = [*FAST, "trainer.max_epochs=2", "trainer.num_threads=1"]
    procs = [start_cli(*args, f"seed={s}", cwd=tmp_path) for s in range(n)]
    outs = [finish_cli(p, timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0] * n, "\n".join(o[-1500:] for o in outs)
    runs = mlflow_runs(tmp_path)
    assert sorted(int(r.data.tags["seed"]) for r in runs) == list(range(n))
    assert all(r.info.status == "FINISHED" for r in runs)
    with sqlite3.connect(tmp_path / "mlflow.db") as db:
        for r in runs:
            steps = db.execute(
                "select key, count(*) from metrics where run_uuid = ? group by key",
                (r.info.run_id,),
            ).fetchall()
            assert {k: c for k, c in steps if k in PER_EPOCH} == dict.fromkeys(PER_EPOCH, 2)
