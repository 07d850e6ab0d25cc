"""Data check before trusting any number (seed 001, 14.3.1): class balance, leakage across splits,
NaN/Inf and distribution shift between splits."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import torch
from scipy.stats import chisquare

SPLITS = ("train", "val", "test")


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
) -> DataReport:
    """Inspect `splits` (anything with x_train/y_train/x_val/y_val/x_test/y_test, optional num_classes).

    Warns on: a class missing or max/min class count > imbalance_ratio in a split; inputs shared
    between splits; NaN/Inf; a val/test mean more than shift_tolerance train stds from the train mean,
    or a std ratio beyond std_ratio."""
    data = {
        s: (getattr(splits, f"x_{s}"), getattr(splits, f"y_{s}"))
        for s in SPLITS
        if hasattr(splits, f"x_{s}")
    }
    kind = getattr(splits, "targets", "classes")  # multi-hot or real values: no class checks
    labels = [y for _, y in data.values() if len(y)] if kind == "classes" else []
    num_classes = getattr(splits, "num_classes", None) or (
        int(max(int(y.max()) for y in labels)) + 1 if labels else 0
    )
    report = DataReport(
        stats={"num_classes": num_classes, "sizes": {s: len(y) for s, (_, y) in data.items()}}
    )
    if kind != "classes":
        report.stats["class_checks"] = f"skipped: the targets are {kind}, not class ids"
    for s, (x, y) in data.items():
        if kind == "classes":
            _check_classes(report, s, y, num_classes, imbalance_ratio)
        _check_values(report, s, x)
    _check_shift(report, shift_tolerance, std_ratio)
    _check_duplicates(report, {s: x for s, (x, _) in data.items()})
    return report


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
            f"(> {ratio}, chi-square p={p_uniform:.1g}); consider class weights or resampling"
        )


def _check_values(report: DataReport, split: str, x: torch.Tensor) -> None:
    xf = x.reshape(len(x), -1).double().cpu() if len(x) else torch.zeros(0, dtype=torch.float64)
    finite = torch.isfinite(xf)
    nan, inf = int(torch.isnan(xf).sum()), int((~finite).sum()) - int(torch.isnan(xf).sum())
    vals = xf[finite]
    stats = {"nan": nan, "inf": inf}
    if vals.numel():
        stats.update(
            min=float(vals.min()),
            max=float(vals.max()),
            mean=float(vals.mean()),
            std=float(vals.std()) if vals.numel() > 1 else 0.0,
        )
    report.stats.setdefault("values", {})[split] = stats
    if nan or inf:
        report.warnings.append(f"{split}: {nan} NaN and {inf} Inf input values")


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


def _row_hashes(x: torch.Tensor) -> list[bytes]:
    rows = x.detach().reshape(len(x), -1).cpu().contiguous().numpy()
    return [hashlib.blake2b(r.tobytes(), digest_size=16).digest() for r in rows]


def _check_duplicates(report: DataReport, xs: dict[str, torch.Tensor]) -> None:
    """Exact byte-identical inputs shared between splits (leakage) or repeated within one."""
    hashes = {s: _row_hashes(x) for s, x in xs.items()}
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
