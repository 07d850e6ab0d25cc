"""Every way out of a run leaves an honest status: signals -> KILLED, errors -> FAILED with a reason,
a second live process on the same config is refused; nothing stays RUNNING."""

from __future__ import annotations

import json
import re
import signal

import pytest
from conftest import FAST, finish_cli, mlflow_runs, start_cli, wait_for_line

from tunelab.run.checkpoint import load_safe

EPOCHS = 30  # ~3 s of training: a signal sent at epoch 2 lands well inside it
ARGS = [
    "data=synthetic",
    "data.num_samples=4096",
    "model=mlp",
    "model.width=32",
    f"trainer.max_epochs={EPOCHS}",
    "trainer.batch_size=32",
    "scheduler=constant",
    "optimizer=adam",
    "trainer.num_threads=1",
]


def _default_signals() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("sig", "reason"), [(signal.SIGTERM, "terminated"), (signal.SIGINT, "interrupted")]
)
def test_a_signal_ends_the_run_killed_and_the_rerun_continues_it(workdir, sig, reason):
    # the run as started from a terminal: a shell's background job (nohup ... &) inherits SIGINT
    # ignored, and a run keeps what its parent ignores
    proc = start_cli(*ARGS, cwd=workdir, preexec_fn=_default_signals)
    wait_for_line(proc, f"epoch 2/{EPOCHS}")
    proc.send_signal(sig)
    out = finish_cli(proc)
    assert proc.returncode == 128 + sig, out[-3000:]
    (r,) = mlflow_runs(workdir)
    assert r.info.status == "KILLED", out[-3000:]
    assert r.data.tags["failure_reason"] == reason
    assert f"stopped by {sig.name}" in out
    (last,) = workdir.glob("checkpoints/*/last.pt")
    assert load_safe(last)["state"]["epoch"] >= 2  # the checkpoint is whole

    out = finish_cli(start_cli(*ARGS, cwd=workdir))
    assert "resuming from" in out, out[-3000:]
    (again,) = mlflow_runs(workdir)
    assert again.info.run_id == r.info.run_id and again.info.status == "FINISHED"


def test_the_same_config_cannot_train_twice_at_once(workdir):
    args = [a for a in ARGS if not a.startswith("trainer.max_epochs")] + ["trainer.max_epochs=1000"]
    first = start_cli(*args, cwd=workdir)
    wait_for_line(first, "epoch 1/1000")
    twin = start_cli(*args, cwd=workdir)
    out = finish_cli(twin)
    assert twin.returncode != 0 and first.poll() is None
    assert "is in use by a live run" in out and "already training" in out, out[-2000:]
    first.send_signal(signal.SIGTERM)
    finish_cli(first)
    (r,) = mlflow_runs(workdir)  # the refused twin created no run
    assert r.info.status == "KILLED"


def test_nonfinite_loss_fails_the_run_with_the_reason_and_epoch(workdir):
    args = [*FAST, "optimizer=sgd", "optimizer.lr=1.0e6", "trainer.max_epochs=5"]
    proc = start_cli(*args, "trainer.num_threads=1", cwd=workdir)
    out = finish_cli(proc)
    assert proc.returncode != 0
    assert "non-finite training loss" in out
    (r,) = mlflow_runs(workdir)
    assert r.info.status == "FAILED"
    assert r.data.tags["failure_reason"] == "nonfinite_loss"
    epoch = int(re.search(r"non-finite training loss \(.*?\) in epoch (\d+)", out)[1])
    assert 1 <= epoch <= 5 and r.data.tags["diverged_at_epoch"] == str(epoch)  # counted from 1
    (done,) = workdir.glob("checkpoints/*/done.json")  # a result, not a crash: never resumed
    assert json.loads(done.read_text())["outcome"] == "diverged"
