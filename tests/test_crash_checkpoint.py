"""A damaged, foreign or malicious checkpoint stops the run with the file and the reason: never a
silent fresh start (unless trainer.resume=never), never an unsafe load."""

from __future__ import annotations

import hashlib
import pickle
import shutil
import struct
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import compose_cfg, run_cli

from tunelab.config.identity import config_key
from tunelab.run.api import run
from tunelab.run.context import RunContext
from tunelab.tracking import NullTracker

ARGS = [
    "data=synthetic",
    "model=mlp",
    "model.width=32",
    "trainer.max_epochs=4",
    "trainer.batch_size=64",
    "scheduler=constant",
    "optimizer=adam",
    "tracking=none",
    "trainer.num_threads=1",
]


class Crash(Exception):
    pass


def crashed_run(root: Path, *overrides: str) -> Path:
    """The checkpoint directory of a run that raised after epoch 2 (so it is resumable)."""
    cfg = compose_cfg(*ARGS, *overrides, f"trainer.checkpoint_dir={root}")

    def crash(epoch: int, value: float) -> None:
        if epoch == 2:
            raise Crash

    with pytest.raises(Crash):
        run(cfg, RunContext(reporter=crash), tracker=NullTracker())
    return root / config_key(cfg)


@pytest.fixture(scope="module")
def originals(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("originals")
    return {
        "mlp32": crashed_run(root),
        "mlp16": crashed_run(root, "model.width=16"),
    }


class Payload:
    """Unpickling this (unsafely) creates the file `path`."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def truncate(path: Path, ctx: dict) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def flip_a_weight_bit(path: Path, ctx: dict) -> None:
    """One flipped bit inside a tensor: torch.load alone would return the wrong weight silently."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        info = max(z.infolist(), key=lambda i: i.file_size if "/data/" in i.filename else 0)
    name_len, extra_len = struct.unpack(
        "<HH", data[info.header_offset + 26 : info.header_offset + 30]
    )
    data[info.header_offset + 30 + name_len + extra_len + 17] ^= 0x04
    path.write_bytes(data)


def empty(path: Path, ctx: dict) -> None:
    path.write_bytes(b"")


def crafted_zip(path: Path, ctx: dict) -> None:
    torch.save({"model": Payload(ctx["sentinel"])}, path)


def crafted_pickle(path: Path, ctx: dict) -> None:
    path.write_bytes(pickle.dumps({"model": Payload(ctx["sentinel"])}))


def other_architecture(path: Path, ctx: dict) -> None:
    shutil.copy(ctx["originals"]["mlp16"] / "last.pt", path)


def weights_only_file(path: Path, ctx: dict) -> None:
    shutil.copy(path.with_name("best.pt"), path)


CASES = [
    ("last.pt", truncate, "truncated or corrupted"),
    ("last.pt", flip_a_weight_bit, "CRC mismatch"),
    ("last.pt", empty, "the file is empty"),
    ("last.pt", crafted_zip, "refused by the safe loader (weights_only=True)"),
    ("last.pt", crafted_pickle, "refused by the safe loader (weights_only=True)"),
    ("last.pt", other_architecture, "does not fit the configured model"),
    ("last.pt", weights_only_file, "not a resume checkpoint"),
    ("best.pt", truncate, "truncated or corrupted"),
]


def digests(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in directory.iterdir()}


def broken_workdir(tmp_path: Path, originals: dict, name: str, damage) -> tuple[Path, dict]:
    ckpt = tmp_path / "checkpoints" / originals["mlp32"].name
    shutil.copytree(originals["mlp32"], ckpt)
    ctx = {"sentinel": tmp_path / "SENTINEL", "originals": originals}
    damage(ckpt / name, ctx)
    return ckpt, ctx


@pytest.mark.parametrize(("name", "damage", "reason"), CASES, ids=[c[1].__name__ for c in CASES])
def test_a_bad_checkpoint_stops_the_run_with_file_and_reason(
    tmp_path, originals, name, damage, reason
):
    ckpt, ctx = broken_workdir(tmp_path, originals, name, damage)
    before = digests(ckpt)
    proc = run_cli(*ARGS, cwd=tmp_path, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert f"{ckpt / name}" in out and reason in out, out[-3000:]
    assert "trainer.resume=never" in out  # how to start over on purpose
    assert "epoch 1/" not in out  # never a silent fresh start
    assert digests(ckpt) == before  # nothing overwritten
    assert not ctx["sentinel"].exists()  # no code ran


def test_the_crafted_payload_is_live(tmp_path):
    """Control for the sentinel checks above: an unsafe load really does run the payload."""
    ctx = {"sentinel": tmp_path / "SENTINEL"}
    crafted_zip(tmp_path / "evil.pt", ctx)
    torch.load(tmp_path / "evil.pt", weights_only=False)
    assert ctx["sentinel"].exists()


def test_a_crafted_init_checkpoint_is_refused(tmp_path):
    evil, sentinel = tmp_path / "pretrained.pt", tmp_path / "SENTINEL"
    crafted_zip(evil, {"sentinel": sentinel})
    proc = run_cli(*ARGS, f"finetune.init_checkpoint={evil}", cwd=tmp_path, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and f"cannot load checkpoint {evil}" in out, out[-3000:]
    assert "refused by the safe loader" in out and not sentinel.exists()


def test_resume_never_starts_over_on_purpose(tmp_path, originals):
    ckpt, _ = broken_workdir(tmp_path, originals, "last.pt", truncate)
    proc = run_cli(*ARGS, "trainer.resume=never", cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "epoch 1/4" in proc.stdout + proc.stderr
    assert torch.load(ckpt / "last.pt", weights_only=True)["state"]["epoch"] == 4


def test_resume_must_without_a_checkpoint_refuses_to_start(tmp_path):
    proc = run_cli(*ARGS, "trainer.resume=must", cwd=tmp_path, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "trainer.resume=must but there is no unfinished" in out
    assert "epoch 1/" not in out
