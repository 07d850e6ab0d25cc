"""Atomic, verified, safe checkpoints: written via temp file + fsync + rename, checked against the
zip CRCs, read with weights_only=True.

Everything stored is a tensor, number, string, list or dict, so `torch.load(weights_only=True)`
reads it and a crafted file cannot run code on load. There is no unsafe fallback.
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used or written; the message names the file and the reason."""

    def __init__(self, message: str, reason: str = "checkpoint_unreadable") -> None:
        super().__init__(message)
        self.reason = reason  # recorded as the run's failure_reason tag


def clone_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A copy of a model's state_dict that training cannot change any more (a memory copy)."""
    return {k: v.detach().clone() for k, v in state.items()}


def serialize(obj: dict[str, Any]) -> bytes:
    """The checkpoint file's bytes: a consistent snapshot, taken before training moves on."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def write_atomic(data: bytes, path: str | Path) -> None:
    """Temp file + fsync + rename, so `path` holds either the previous or the complete new
    checkpoint; a full disk or a size limit surfaces as the OS error itself."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        _unlink_quietly(tmp)
        kept = "the previous checkpoint is intact" if path.exists() else "no checkpoint written"
        raise CheckpointError(
            f"cannot write checkpoint {path}: {exc.strerror or exc} ({kept})",
            reason="checkpoint_write_failed",
        ) from exc
    except BaseException:
        _unlink_quietly(tmp)
        raise
    _fsync_dir(path.parent)


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_safe(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Verify and load with weights_only=True; any problem becomes a CheckpointError naming the file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    problem = _integrity_problem(path)
    if problem:
        raise CheckpointError(f"cannot load checkpoint {path}: {problem}")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot load checkpoint {path}: {_load_problem(exc)}") from exc
    if not isinstance(obj, dict) or "model" not in obj:
        raise CheckpointError(
            f"cannot load checkpoint {path}: not a tunelab checkpoint (no 'model' entry)"
        )
    return obj


def _integrity_problem(path: Path) -> str | None:
    """Empty, truncated or bit-flipped files (torch itself does not check the zip CRCs)."""
    size = path.stat().st_size
    if size == 0:
        return "the file is empty (0 bytes)"
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            magic = f.read(2)
        if magic == b"PK":
            return f"truncated or corrupted ({size} bytes, no zip central directory)"
        if magic[:1] != b"\x80":
            return "not a tunelab checkpoint (neither a torch zip archive nor a pickle)"
        return None  # legacy pickle format: the safe unpickler decides
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        return f"corrupted zip archive ({exc})"
    return f"corrupted: CRC mismatch in {bad!r}" if bad else None


def _load_problem(exc: Exception) -> str:
    text = str(exc)
    if "Weights only load failed" in text:
        detail = "disallowed content"
        for line in text.splitlines():
            line = line.strip().removeprefix("WeightsUnpickler error:").strip()
            if line.startswith(("Unsupported", "Trying to load")):
                detail = line.split(". Please")[0].rstrip(".")
                break
        return (
            f"refused by the safe loader (weights_only=True): {detail} "
            "(tunelab never loads checkpoints unsafely)"
        )
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return f"{type(exc).__name__}: {first[:300]}"


def load_model_state(
    model: torch.nn.Module, state: dict[str, torch.Tensor], path: str | Path
) -> None:
    """Strict load with a readable error when the architecture differs."""
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        raise CheckpointError(
            f"checkpoint {path} does not fit the configured model (different architecture?): "
            + " ".join(lines[1:3])[:400]
        ) from exc


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    """Every RNG the run draws from, in weights_only-loadable form."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "generator": generator.get_state(),
        "numpy": {
            "key": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "gauss": float(np_state[4]),
        },
        "python": {"version": py_state[0], "state": list(py_state[1]), "gauss": py_state[2]},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["generator"])
    np_s = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            np_s["key"].numpy().astype(np.uint32),
            np_s["pos"],
            np_s["has_gauss"],
            np_s["gauss"],
        )
    )
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
