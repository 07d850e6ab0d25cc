"""kill -9 mid-training, re-run the same command: the run continues bit-identically in the same
MLflow run; a dead run that is not continued is marked KILLED by the next start."""

from __future__ import annotations

import json
import random
import signal
import time
from pathlib import Path

import pytest
import torch
from conftest import finish_cli, mlflow_runs, start_cli, wait_for_line
from mlflow import MlflowClient

EPOCHS = 24
# ~0.1 s per epoch on one thread: long enough to land a kill anywhere in the run.
ARGS = [
    "data=synthetic",
    "data.num_samples=4096",
    "data.noise=2.0",
    "model=mlp",
    "model.width=32",
    "model.dropout=0.1",  # draws from the torch RNG every step
    f"trainer.max_epochs={EPOCHS}",
    "trainer.batch_size=32",
    "scheduler=cosine",
    "optimizer=adamw",
    "trainer.num_threads=1",
]


def client(cwd: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{cwd.resolve()}/mlflow.db")


def metric_history(cwd: Path, run_id: str) -> dict[str, list[tuple[int, float]]]:
    """Every logged (step, value) per key, in step order; perf/* differ between runs by nature."""
    c = client(cwd)
    keys = c.get_run(run_id).data.metrics
    return {
        k: sorted((m.step, m.value) for m in c.get_metric_history(run_id, k))
        for k in keys
        if not k.startswith("perf/")
    }


def checkpoints(cwd: Path) -> dict[str, dict[str, torch.Tensor]]:
    (d,) = [p for p in (cwd / "checkpoints").iterdir() if p.is_dir()]
    return {n: torch.load(d / n, weights_only=True)["model"] for n in ("best.pt", "last.pt")}


def logged_history(cwd: Path, run_id: str) -> dict[str, list[float]]:
    path = client(cwd).download_artifacts(run_id, "history.json", str(cwd))
    return {
        k: v for k, v in json.loads(Path(path).read_text()).items() if not k.startswith("perf/")
    }


def kill_at_random_epoch(proc, rng: random.Random, last: int, cwd: Path, every: int = 1) -> int:
    """SIGKILL somewhere after a checkpoint is on disk (with none, a rerun rightly starts over)."""
    epoch = rng.randint(every, last)
    wait_for_line(proc, f"epoch {epoch}/{EPOCHS}")
    deadline = time.monotonic() + 30
    while not list(cwd.glob("checkpoints/*/last.pt")) and time.monotonic() < deadline:
        time.sleep(0.005)  # checkpoints are written on a background thread
    time.sleep(rng.uniform(0.0, 0.15))  # anywhere inside the following epoch(s)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    return epoch


@pytest.mark.slow
@pytest.mark.parametrize("every", [1, 2])
def test_sigkill_at_a_random_step_then_rerun_is_bit_identical(
    tmp_path, mlflow_schema, every, session_seed
):
    """every=2 also kills after epochs that were logged but not checkpointed: replayed, not
    duplicated. One thread: see tests/README.md for why not two."""
    import shutil

    ref_dir, crash_dir = tmp_path / "reference", tmp_path / "crash"
    for d in (ref_dir, crash_dir):
        d.mkdir()
        shutil.copy(mlflow_schema, d / "mlflow.db")
    args = [*ARGS, f"trainer.checkpoint_every_epochs={every}"]
    reference = start_cli(*args, cwd=ref_dir)
    victim = start_cli(*args, cwd=crash_dir)
    rng = random.Random(session_seed + every)  # the seed is printed with a failure
    killed_after = kill_at_random_epoch(victim, rng, last=EPOCHS // 2, cwd=crash_dir, every=every)
    (dead,) = mlflow_runs(crash_dir)
    assert dead.info.status == "RUNNING"  # SIGKILL leaves no chance to clean up

    out = finish_cli(start_cli(*args, cwd=crash_dir))
    assert "resuming from" in out, out[-3000:]
    assert finish_cli(reference) and reference.returncode == 0, "".join(reference.output)[-3000:]

    (ref,) = mlflow_runs(ref_dir)
    (resumed,) = mlflow_runs(crash_dir)
    note = f"killed after epoch {killed_after}, every={every}"
    assert resumed.info.run_id == dead.info.run_id, note
    assert resumed.info.status == "FINISHED" and resumed.data.tags["resumed"] == "true"
    want, got = (
        metric_history(ref_dir, ref.info.run_id),
        metric_history(crash_dir, dead.info.run_id),
    )
    assert got == want, note  # no step twice, none missing, same values
    assert len(want["val/acc"]) == EPOCHS
    a, b = checkpoints(ref_dir), checkpoints(crash_dir)
    for name in a:
        assert a[name].keys() == b[name].keys()
        assert all(torch.equal(a[name][k], b[name][k]) for k in a[name]), (name, note)
    assert logged_history(ref_dir, ref.info.run_id) == logged_history(crash_dir, dead.info.run_id)


def test_a_resumed_run_never_logs_a_step_twice(workdir):
    """The tracker side of the above: continuing a run skips the (key, step) pairs it already has."""
    from tunelab.run.record import relog_history
    from tunelab.tracking.mlflow_tracker import MlflowTracker

    uri = f"sqlite:///{workdir}/mlflow.db"
    first = MlflowTracker(uri, "tunelab", log_model=False)
    run_id = first.start("r", tags={})
    first.log_metrics({"train/loss": 1.0}, step=1)
    first.log_metrics({"train/loss": 0.5, "val/acc": 0.7}, step=2)  # killed before checkpoint 2
    first.flush()  # what the killed process had committed is in the store before the restart
    again = MlflowTracker(uri, "tunelab", log_model=False)
    again.start("r", tags={}, run_id=run_id)
    relog_history(again, {"train/loss": [1.0], "val/acc": [0.6]})  # checkpoint 1 had val/acc
    again.log_metrics({"train/loss": 0.5, "val/acc": 0.7}, step=2)  # the replayed epoch
    again.log_metrics({"train/loss": 0.25, "val/acc": 0.8}, step=3)
    again.end("FINISHED")
    assert metric_history(workdir, run_id) == {
        "train/loss": [(1, 1.0), (2, 0.5), (3, 0.25)],
        "val/acc": [(1, 0.6), (2, 0.7), (3, 0.8)],
    }


@pytest.mark.slow
@pytest.mark.parametrize(
    "how", ["resume=never after a checkpoint", "no checkpoint to resume (every=0)"]
)
def test_a_dead_run_that_is_not_continued_is_marked_killed(workdir, how):
    first, second = list(ARGS), list(ARGS)
    if how.startswith("resume=never"):
        second.append("trainer.resume=never")
    else:
        first.append("trainer.checkpoint_every_epochs=0")
    victim = start_cli(*first, cwd=workdir)
    wait_for_line(victim, f"epoch 2/{EPOCHS}")
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=60)
    (dead,) = mlflow_runs(workdir)
    assert dead.info.status == "RUNNING"

    out = finish_cli(start_cli(*second, cwd=workdir))
    assert "resuming from" not in out
    runs = {r.info.run_id: r for r in mlflow_runs(workdir)}
    assert len(runs) == 2, out[-3000:]
    old = runs.pop(dead.info.run_id)
    (new,) = runs.values()
    assert old.info.status == "KILLED" and old.data.tags["failure_reason"] == "process_died"
    assert new.info.status == "FINISHED"
    assert "marked KILLED" in out
