"""Atomic, safe checkpoints: written via temp file + fsync + rename, read with weights_only=True.

Everything stored is a tensor, number, string, list or dict, so `torch.load(weights_only=True)`
reads it and a crafted file cannot run code on load.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch


class CheckpointError(RuntimeError):
    """A checkpoint that exists but cannot be used; the message names the file and the reason."""


def save_atomic(obj: dict[str, Any], path: str | Path) -> None:
    """Write `obj` so that `path` holds either the previous or the complete new checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


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
    """Load with weights_only=True; any failure becomes a CheckpointError naming the file."""
    path = Path(path)
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:  # truncated zip, pickle refused by the safe unpickler, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"cannot load checkpoint {path}: {first}") from exc
    if not isinstance(obj, dict) or "model" not in obj:
        raise CheckpointError(
            f"cannot load checkpoint {path}: not a tunelab checkpoint (no 'model' entry)"
        )
    return obj


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
