"""Data check before trusting any number (seed 001, 14.3.1): the targets as the task sees them
(class balance; positive rate per label; a regression target's mean, std, range and NaN/Inf),
leakage across splits, NaN/Inf inputs and distribution shift between splits; in memory or
streamed from disk one batch at a time."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from scipy.stats import chisquare
from torch import Tensor

from tunelab.config.tasks import CLASSES, MULTI_HOT, VALUES
from tunelab.data.loader import StreamedSplits, split_batches

SPLITS = ("train", "val", "test")
_TASK_OF_KIND = {CLASSES: "classification", MULTI_HOT: "multilabel", VALUES: "regression"}


@dataclass
class DataReport:
    warnings: list[str] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.warnings


def check_data(
    splits: Any,
    *,
    imbalance_ratio: float = 1.5,
    shift_tolerance: float = 0.5,
    std_ratio: float = 1.5,
    batch_size: int = 256,
    task: str | None = None,
) -> DataReport:
    """Inspect `splits`: in-memory (x_train/y_train/x_val/y_val/x_test/y_test, optional
    num_classes) or streamed from disk (`StreamedSplits`, read batch_size examples at a time, so
    memory holds one batch of inputs plus a label and a 16-byte hash per example).

    `task` (config/tasks.py's names; None: the one the targets' kind implies) decides what the
    targets are checked for. Warns on: classification and binary, a class missing or max/min class
    count > imbalance_ratio in a split; binary and multilabel, a label without positives or
    without negatives in a split (its positive rate per label is in the stats); regression,
    NaN/Inf targets (their mean, std and range are in the stats); every task, inputs shared
    between splits, NaN/Inf inputs, a val/test mean more than shift_tolerance train stds from the
    train mean, or a std ratio beyond std_ratio."""
    seen = {s: _scan(batches) for s, batches in _split_sources(splits, batch_size).items()}
    kind = getattr(splits, "targets", CLASSES)
    task = task or _TASK_OF_KIND.get(kind, "classification")
    classes = kind == CLASSES and task in ("classification", "binary")
    labels = [y for y, _, _ in seen.values() if len(y)] if classes else []
    num_classes = getattr(splits, "num_classes", None) or (
        int(max(int(y.max()) for y in labels)) + 1 if labels else 0
    )
    report = DataReport(
        stats={"num_classes": num_classes, "sizes": {s: len(y) for s, (y, _, _) in seen.items()}}
    )
    if not classes:
        report.stats["class_checks"] = f"skipped: task={task}, its targets are {kind}"
    for s, (y, moments, _) in seen.items():
        if classes:
            _check_classes(report, s, y, num_classes, imbalance_ratio)
        if task in ("binary", "multilabel") and kind != VALUES:
            _check_positives(report, s, y)
        if task == "regression":
            _check_targets(report, s, y)
        _check_values(report, s, moments)
    _check_shift(report, shift_tolerance, std_ratio)
    _check_duplicates(report, {s: hashes for s, (_, _, hashes) in seen.items()})
    return report


def _split_sources(splits: Any, batch_size: int) -> dict[str, Iterable[tuple[Tensor, Tensor]]]:
    """Each split as (x, y) batches: streamed data through the run's loader, in file order;
    in-memory tensors as one batch."""
    if isinstance(splits, StreamedSplits):
        return {s: split_batches(splits, s, batch_size) for s in SPLITS}
    return {
        s: [(getattr(splits, f"x_{s}"), getattr(splits, f"y_{s}"))]
        for s in SPLITS
        if hasattr(splits, f"x_{s}")
    }


@dataclass
class _Moments:
    """Count, NaN/Inf counts, min/max, mean and sum of squared deviations of the finite values,
    merged batch by batch (Chan et al.'s pairwise update: no second pass, no float64 copy of the
    whole split)."""

    n: int = 0
    nan: int = 0
    inf: int = 0
    low: float = math.inf
    high: float = -math.inf
    mean: float = 0.0
    m2: float = 0.0

    def add(self, x: Tensor) -> None:
        xf = x.detach().reshape(-1).double().cpu()
        finite = torch.isfinite(xf)
        nan = int(torch.isnan(xf).sum())
        self.nan += nan
        self.inf += int((~finite).sum()) - nan
        vals = xf[finite]
        k = vals.numel()
        if not k:
            return
        mean = float(vals.mean())
        m2 = float(((vals - mean) ** 2).sum())
        total = self.n + k
        delta = mean - self.mean
        self.mean += delta * k / total
        self.m2 += m2 + delta**2 * self.n * k / total
        self.n = total
        self.low, self.high = min(self.low, float(vals.min())), max(self.high, float(vals.max()))

    def stats(self) -> dict[str, float]:
        out: dict[str, float] = {"nan": self.nan, "inf": self.inf}
        if self.n:
            out.update(
                min=self.low,
                max=self.high,
                mean=self.mean,
                std=math.sqrt(self.m2 / (self.n - 1)) if self.n > 1 else 0.0,
            )
        return out


def _scan(batches: Iterable[tuple[Tensor, Tensor]]) -> tuple[Tensor, _Moments, list[bytes]]:
    """One pass over a split: its labels, the moments of its inputs and a hash per example."""
    labels: list[Tensor] = []
    moments, hashes = _Moments(), []
    for x, y in batches:
        labels.append((y if y.is_floating_point() else y.long()).cpu())  # rows: one per example
        moments.add(x)
        hashes += _row_hashes(x)
    y = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long)
    return y, moments, hashes


def datacheck_tags(report: DataReport) -> dict[str, str]:
    """Flat MLflow tags: data_check=ok|warnings, its count and the first warning."""
    if report.ok:
        return {"data_check": "ok"}
    return {
        "data_check": "warnings",
        "data_check.count": str(len(report.warnings)),
        "data_check.first": report.warnings[0],
    }


def _check_classes(
    report: DataReport, split: str, y: torch.Tensor, num_classes: int, ratio: float
) -> None:
    y = y.reshape(-1).long().cpu()
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        report.warnings.append(f"{split}: labels outside [0, {num_classes})")
        y = y[(y >= 0) & (y < num_classes)]
    counts = torch.bincount(y, minlength=num_classes)[:num_classes].tolist()
    report.stats.setdefault("class_counts", {})[split] = counts
    if not len(y):
        return
    missing = [c for c, n in enumerate(counts) if n == 0]
    if missing:
        report.warnings.append(f"{split}: classes {missing} have no examples")
    present = [n for n in counts if n > 0]
    r = max(present) / min(present)
    report.stats.setdefault("class_ratio", {})[split] = r
    # a small split is uneven by chance: warn only when uniform sampling cannot explain it
    p_uniform = float(chisquare(present).pvalue) if len(present) > 1 else 1.0
    if r > ratio and p_uniform < 1e-3:
        report.warnings.append(
            f"{split}: class imbalance, largest/smallest class = {max(present)}/{min(present)} = {r:.2f} "
            f"(> {ratio}, chi-square p={p_uniform:.1g}); weigh the classes: task.class_weights=balanced (task=binary: task.pos_weight), or resample"
        )


def _check_positives(report: DataReport, split: str, y: Tensor) -> None:
    """Binary and multilabel: the positive rate of each label; a label whose split has no
    positives or no negatives (its recall, precision or AUROC mean nothing there)."""
    if not len(y):
        return
    rows = y.reshape(len(y), -1).double()
    rates = [float(r) for r in rows.mean(0)]
    report.stats.setdefault("positive_rate", {})[split] = rates
    one_sided = [k for k, r in enumerate(rates) if r in (0.0, 1.0)]
    if one_sided:
        report.warnings.append(
            f"{split}: labels {one_sided} have only negatives or only positives "
            f"(positive rates {[rates[k] for k in one_sided]})"
        )


def _check_targets(report: DataReport, split: str, y: Tensor) -> None:
    """Regression: the targets' mean, std, range and NaN/Inf counts; NaN/Inf targets warned."""
    moments = _Moments()
    moments.add(y)
    report.stats.setdefault("targets", {})[split] = moments.stats()
    if moments.nan or moments.inf:
        report.warnings.append(
            f"{split}: {moments.nan} NaN and {moments.inf} Inf target values (the loss turns NaN)"
        )


def _check_values(report: DataReport, split: str, moments: _Moments) -> None:
    stats = moments.stats()
    report.stats.setdefault("values", {})[split] = stats
    if moments.nan or moments.inf:
        report.warnings.append(f"{split}: {moments.nan} NaN and {moments.inf} Inf input values")


def _check_shift(report: DataReport, tolerance: float, std_ratio: float) -> None:
    values = report.stats.get("values", {})
    ref = values.get("train", {})
    if "mean" not in ref:
        return
    scale = ref["std"] or 1.0
    for s in ("val", "test"):
        other = values.get(s, {})
        if "mean" not in other:
            continue
        shift = abs(other["mean"] - ref["mean"]) / scale
        ratio = (other["std"] or 1e-12) / scale
        report.stats.setdefault("shift", {})[s] = {
            "mean_shift_in_train_std": shift,
            "std_ratio": ratio,
        }
        if shift > tolerance or not 1 / std_ratio <= ratio <= std_ratio:
            report.warnings.append(
                f"{s} inputs differ from train: mean {other['mean']:.3g} vs {ref['mean']:.3g} "
                f"({shift:.2f} train stds), std ratio {ratio:.2f}; check preprocessing or domain shift"
            )


def _row_hashes(x: Tensor) -> list[bytes]:
    if not len(x):
        return []
    rows = x.detach().reshape(len(x), -1).cpu().contiguous().numpy()
    return [hashlib.blake2b(r.tobytes(), digest_size=16).digest() for r in rows]


def _check_duplicates(report: DataReport, hashes: dict[str, list[bytes]]) -> None:
    """Exact byte-identical inputs shared between splits (leakage) or repeated within one."""
    dup: dict[str, int] = {}
    for s, h in hashes.items():
        dup[f"within_{s}"] = len(h) - len(set(h))
    names = list(hashes)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            shared = set(hashes[a])
            n = sum(1 for h in hashes[b] if h in shared)  # rows of b that also occur in a
            dup[f"{a}-{b}"] = n
            if n:
                report.warnings.append(
                    f"{n} {b} examples also appear in {a} ({n / max(len(hashes[b]), 1):.1%}): "
                    "leakage inflates the held-out score"
                )
    report.stats["duplicates"] = dup
