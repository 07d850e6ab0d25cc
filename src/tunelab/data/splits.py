"""In-memory train/val/test splits shared by every dataset."""

from __future__ import annotations

import dataclasses
import hashlib
import math
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
    targets: str = "classes"  # classes (int64 ids) | multi_hot ((N, L) of 0/1) | values (float)
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
    """Carve a validation split from the training data by a seeded shuffle and standardise every
    split's inputs with the training statistics. The targets keep their kind (target_kind):
    class ids become int64, multi-hot and real values float32; `num_classes` is the model's
    outputs (classes, labels or target columns)."""
    validate_arrays(x, y, "train")
    validate_arrays(x_test, y_test, "test")
    kind = target_kind(y, values=float_targets)
    if kind == CLASSES and y_test.ndim == 1 and len(y_test) and y_test.min() < 0:
        raise ValueError(f"test labels must be >= 0 (class ids), found {y_test.min()}")
    if target_kind(y_test) != kind and kind != VALUES:
        raise ValueError(
            f"train targets are {kind} but test targets are {target_kind(y_test)} "
            f"(dtype {y_test.dtype}, shape {y_test.shape})"
        )
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
    if kind == CLASSES:
        num_classes = int(max(y.max(), y_test.max())) + 1
    else:
        num_classes = 1 if y.ndim == 1 else int(y.shape[1])
    tensors = [
        torch.as_tensor(np.ascontiguousarray(a))
        for a in (x_train, y_train, x_val, y_val, x_test, y_test)
    ]
    as_target = torch.Tensor.long if kind == CLASSES else torch.Tensor.float
    tensors = [t.float() if i % 2 == 0 else as_target(t) for i, t in enumerate(tensors)]
    return Splits(
        *tensors,
        num_classes=num_classes,
        name=name,
        digest=digest_arrays(x, y, x_test, y_test),
        norm=norm,
        targets=kind,
    )


CLASSES, MULTI_HOT, VALUES = "classes", "multi_hot", "values"  # config/tasks.py's target kinds


def train_fraction(splits: Splits, fraction: float, seed: int) -> Splits:
    """The splits with only `fraction` of the training examples (at least one): the first
    ceil(fraction x n) of one seeded permutation, so a smaller fraction's examples are part of every
    larger one's (a sweep's data fidelity, hydra.sweeper.fidelity=data). Validation and test stay."""
    if fraction >= 1.0:
        return splits
    n = len(splits.y_train)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    keep = order[: max(1, math.ceil(fraction * n))].sort().values
    return dataclasses.replace(splits, x_train=splits.x_train[keep], y_train=splits.y_train[keep])


def target_kind(y: np.ndarray, values: bool = False) -> str:
    """What labels are: class ids (integers >= 0, one per example, of an integer dtype or whole
    floats), multi-hot ((N, L) of 0 and 1) or real values (anything else numeric). values: the
    source says they are values (a float column), so whole numbers are not class ids."""
    y = y.astype(np.int64) if y.dtype == np.bool_ else y
    if values:
        return MULTI_HOT if y.ndim == 2 and np.isin(y, (0, 1)).all() else VALUES
    whole = np.issubdtype(y.dtype, np.integer) or bool(np.all(np.equal(np.mod(y, 1), 0)))
    if y.ndim == 1 and whole and (not len(y) or y.min() >= 0):
        return CLASSES
    if y.ndim == 2 and np.isin(y, (0, 1)).all():
        return MULTI_HOT
    return VALUES


def validate_arrays(x: np.ndarray, y: np.ndarray, split: str) -> None:
    """Reject arrays that would silently train on garbage. Labels may be class ids, multi-hot
    rows or real values (target_kind): which ones a task takes, the task checks."""
    if x.ndim < 2:
        raise ValueError(
            f"{split} inputs have shape {x.shape}: expected (N, features...) with N examples"
        )
    if y.ndim not in (1, 2) or len(y) != len(x):
        raise ValueError(
            f"{split} labels have shape {y.shape}: expected ({len(x)},) or ({len(x)}, T) to "
            "match the inputs"
        )
    if not (np.issubdtype(y.dtype, np.number) or y.dtype == np.bool_):
        raise ValueError(f"{split} labels must be numbers, got dtype {y.dtype}")
    if not np.isfinite(y.astype(np.float64)).all():
        raise ValueError(f"{split} labels contain NaN/Inf values")
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).sum())
        raise ValueError(f"{split} inputs contain {bad} NaN/Inf values")


def one_vs_rest(splits: Splits, positive: int) -> Splits:
    """The splits with class `positive` as 1 and every other class as 0: a binary task (often an
    imbalanced one) from a multi-class dataset. ValueError when the data has no such class."""
    if splits.targets != CLASSES or not 0 <= positive < splits.num_classes:
        raise ValueError(
            f"task.positive_class={positive}: the data's targets are {splits.targets} with "
            f"{splits.num_classes} classes"
        )
    ys = {k: (getattr(splits, k) == positive).long() for k in ("y_train", "y_val", "y_test")}
    return dataclasses.replace(splits, **ys, num_classes=2)
