"""Per-class accuracy: a classifier's average hides the classes it gets wrong."""

from __future__ import annotations

import math

import torch


def per_class_accuracy(
    logits_or_preds: torch.Tensor, targets: torch.Tensor, num_classes: int
) -> list[float]:
    """Accuracy of each class (NaN for a class absent from `targets`); accepts (N, C) logits or (N,) labels."""
    preds = logits_or_preds.argmax(1) if logits_or_preds.ndim == 2 else logits_or_preds
    preds, targets = preds.reshape(-1).long().cpu(), targets.reshape(-1).long().cpu()
    total = torch.bincount(targets, minlength=num_classes)[:num_classes].double()
    correct = torch.bincount(targets[preds == targets], minlength=num_classes)[
        :num_classes
    ].double()
    acc = correct / total  # 0/0 -> nan for absent classes
    return [float(a) for a in acc]


def per_class_metrics(accs: list[float], prefix: str = "val/acc_class_") -> dict[str, float]:
    """{"val/acc_class_0": ..., ...}, skipping absent classes (NaN)."""
    return {f"{prefix}{c}": a for c, a in enumerate(accs) if not math.isnan(a)}
