"""In-memory train/val/test splits shared by every dataset."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class Splits:
    """Tensors of one dataset; the test split is reported, never used for selection."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    name: str
    digest: str
    norm: tuple[float, float] | None = None  # the (mean, std) the inputs were standardised with
    provenance: dict = field(default_factory=dict)  # manifest digest, file and class counts

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.y_train), "val": len(self.y_val), "test": len(self.y_test)}


def digest_arrays(*arrays: np.ndarray) -> str:
    """sha256 over the raw bytes, shapes and dtypes of the arrays (order matters)."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.shape}{a.dtype}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def make_splits(
    x: np.ndarray,
    y: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    *,
    name: str,
    val_fraction: float,
    split_seed: int,
    standardize: bool = True,
    train_subset: int | None = None,
    float_targets: bool = False,
) -> Splits:
    """Carve a stratified-by-shuffle validation split from the training data and standardise
    every split with the training statistics. `float_targets`: y holds values (N,) or (N, k) kept
    as floats (regression, multi-hot labels), not class ids; num_classes is then their width."""
    validate_arrays(x, y, "train", float_targets=float_targets)
    validate_arrays(x_test, y_test, "test", float_targets=float_targets)
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"data.val_fraction={val_fraction}: must be in (0, 1)")
    rng = np.random.default_rng(split_seed)
    order = rng.permutation(len(y))
    n_val = max(1, int(round(val_fraction * len(y))))
    val_idx, train_idx = order[:n_val], order[n_val:]
    if train_subset:
        train_idx = train_idx[:train_subset]
    x_train, y_train, x_val, y_val = x[train_idx], y[train_idx], x[val_idx], y[val_idx]
    norm = None
    if standardize:
        mean, std = float(x_train.mean()), float(x_train.std()) or 1.0
        x_train, x_val, x_test = ((a - mean) / std for a in (x_train, x_val, x_test))
        norm = (mean, std)
    num_classes = int(max(y.max(), y_test.max())) + 1
    if float_targets:  # the width of the targets: what the model outputs
        num_classes = y.shape[1] if y.ndim == 2 else 1
    tensors = [
        torch.as_tensor(np.ascontiguousarray(a))
        for a in (x_train, y_train, x_val, y_val, x_test, y_test)
    ]
    tensors = [
        t.float() if i % 2 == 0 or float_targets else t.long() for i, t in enumerate(tensors)
    ]
    return Splits(
        *tensors,
        num_classes=num_classes,
        name=name,
        digest=digest_arrays(x, y, x_test, y_test),
        norm=norm,
    )


def validate_arrays(
    x: np.ndarray, y: np.ndarray, split: str, *, float_targets: bool = False
) -> None:
    """Reject arrays that would silently train on garbage."""
    if x.ndim < 2:
        raise ValueError(
            f"{split} inputs have shape {x.shape}: expected (N, features...) with N examples"
        )
    if y.ndim not in ((1, 2) if float_targets else (1,)) or len(y) != len(x):
        raise ValueError(
            f"{split} labels have shape {y.shape}: expected ({len(x)},) to match the inputs"
        )
    if float_targets:
        if not np.isfinite(y).all():
            raise ValueError(f"{split} targets contain {int((~np.isfinite(y)).sum())} NaN/Inf")
    elif not np.issubdtype(y.dtype, np.integer) and not np.all(np.equal(np.mod(y, 1), 0)):
        raise ValueError(f"{split} labels must be integer class ids, got dtype {y.dtype}")
    elif len(y) and y.min() < 0:
        raise ValueError(f"{split} labels must be >= 0, found {y.min()}")
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).sum())
        raise ValueError(f"{split} inputs contain {bad} NaN/Inf values")
