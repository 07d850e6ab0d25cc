"""Disk full, read-only or unusable directories: a clear error, the previous checkpoint intact, the
run FAILED (or, when nothing could start, no run at all)."""

from __future__ import annotations

import hashlib
import os
import resource
import signal
import subprocess
import sys

import pytest
from conftest import (
    FAST,
    QUICK_ENV,
    TRAIN,
    finish_cli,
    mlflow_runs,
    run_cli,
    start_cli,
    wait_for_line,
)
from mlflow import MlflowClient

# last.pt (~3.3 MB with Adam state) is the biggest file a run writes; best.pt ~1.1 MB, mlflow.db ~1 MB.
BIG = [
    "data=synthetic",
    "model=mlp",
    "model.width=512",
    "trainer.max_epochs=40",
    "trainer.batch_size=64",
    "scheduler=constant",
    "optimizer=adam",
    "trainer.num_threads=1",
]
FILE_LIMIT = 2_000_000


def file_size_limit() -> None:
    """In the child: files may not grow past FILE_LIMIT; a write beyond fails with EFBIG."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_LIMIT, FILE_LIMIT))


def can_mount_privately() -> bool:
    probe = ["unshare", "-rm", "sh", "-c", "mount -t tmpfs none /mnt"]
    try:
        return subprocess.run(probe, capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def stopped_at_epoch_2(workdir) -> tuple:
    """A BIG run stopped by SIGTERM after epoch 2: its checkpoint directory and last.pt's hash."""
    first = start_cli(*BIG, cwd=workdir)
    wait_for_line(first, "epoch 2/40")
    first.send_signal(signal.SIGTERM)
    finish_cli(first)
    (ckpt,) = [p for p in (workdir / "checkpoints").iterdir() if p.is_dir()]
    return ckpt, sha(ckpt / "last.pt")


@pytest.mark.slow
def test_a_full_disk_fails_the_run_keeps_the_checkpoint_and_room_again_resumes(workdir):
    ckpt, intact = stopped_at_epoch_2(workdir)

    # 1. the disk fills up (a file size limit: the write fails with EFBIG like ENOSPC would)
    out = finish_cli(start_cli(*BIG, cwd=workdir, preexec_fn=file_size_limit))
    assert f"cannot write checkpoint {ckpt / 'last.pt'}: File too large" in out, out[-3000:]
    assert "the previous checkpoint is intact" in out
    (r,) = mlflow_runs(workdir)
    assert r.info.status == "FAILED"
    assert r.data.tags["failure_reason"] == "checkpoint_write_failed"
    assert sha(ckpt / "last.pt") == intact
    assert not list(ckpt.glob(".*.tmp"))

    # 2. with room again, the same command continues the same run from the intact checkpoint
    out = finish_cli(start_cli(*BIG, cwd=workdir))
    assert "resuming from" in out, out[-3000:]
    (again,) = mlflow_runs(workdir)
    assert again.info.run_id == r.info.run_id and again.info.status == "FINISHED"
    history = MlflowClient(f"sqlite:///{workdir}/mlflow.db").get_metric_history(
        r.info.run_id, "val/acc"
    )
    assert sorted(m.step for m in history) == list(range(1, 41))  # epochs count from 1


@pytest.mark.slow
def test_a_read_only_checkpoint_directory_fails_the_run_and_keeps_the_checkpoint(workdir):
    """A private read-only bind mount (user namespaces): where none can be made the test says so,
    and under CI=true fails rather than pass unseen."""
    if not can_mount_privately():
        reason = "no user namespace to mount the checkpoint directory read-only (unshare -rm)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    ckpt, intact = stopped_at_epoch_2(workdir)
    ro = f'mount --bind {ckpt} {ckpt} && mount -o remount,bind,ro {ckpt} && exec "$@"'
    cmd = ["unshare", "-rm", "sh", "-c", ro, "sh", sys.executable, str(TRAIN), *BIG]
    env = {**os.environ, **QUICK_ENV}
    done = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True)
    out = done.stdout + done.stderr
    assert done.returncode != 0 and "Read-only file system" in out, out[-3000:]
    assert f"cannot write to checkpoint directory {ckpt}" in out
    (r,) = mlflow_runs(workdir)
    assert r.info.status == "FAILED" and sha(ckpt / "last.pt") == intact


def test_a_checkpoint_dir_that_cannot_exist_fails_before_any_run(workdir):
    (workdir / "afile").write_text("not a directory")
    out = finish_cli(start_cli(*FAST, "trainer.checkpoint_dir=afile/ckpt", cwd=workdir))
    assert f"cannot use checkpoint directory {workdir / 'afile' / 'ckpt'}: Not a directory" in out
    assert mlflow_runs(workdir) == []


def test_an_unwritable_artifact_store_fails_the_run(workdir):
    (workdir / "mlruns").write_text("not a directory")
    proc = start_cli(*FAST, cwd=workdir)
    out = finish_cli(proc)
    assert proc.returncode != 0 and f"Not a directory: '{workdir / 'mlruns'}" in out, out[-3000:]
    (r,) = mlflow_runs(workdir)
    assert r.info.status == "FAILED" and r.data.tags["failure_reason"] == "NotADirectoryError"
    assert str(workdir / "mlruns") in r.data.tags["failure_message"]


def test_an_unwritable_output_dir_fails_before_anything(tmp_path):
    (tmp_path / "outputs").write_text("not a directory")
    proc = run_cli(*FAST, cwd=tmp_path, timeout=300)
    assert proc.returncode != 0 and "Not a directory: 'outputs/" in proc.stderr, proc.stderr[-2000:]
    assert {p.name for p in tmp_path.iterdir()} == {"outputs"}
