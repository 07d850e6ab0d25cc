"""Test-set evaluation of confirmed models: per seed, aggregated, per class, confusion matrix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from tunelab.reports.ensemble import evaluate_members


def headline(objective: str) -> str:
    """The test metric a pipeline reports first: the objective's (`val/acc` -> `acc`)."""
    return objective.split("/", 1)[1] if objective.startswith("val/") else objective


def metric_key(metric: str) -> str:
    """A test metric's key in metrics.json (`acc` -> `test_acc`, `recall/1` -> `test_recall_1`)."""
    return "test_" + metric.replace("/", "_")


def evaluate_checkpoints(
    cfg: DictConfig, checkpoints: dict[int, Path], objective: str = "val/acc"
) -> dict[str, Any]:
    """Load each seed's selected weights and score them on the test split (never used for
    selection) with the task's metrics; their ensemble (reports/ensemble.py); for
    classification also per class and the confusion matrix. The objective's test metric is
    summarised as test_<metric>_mean/std/min/max."""
    members = evaluate_members(cfg, checkpoints)
    splits, task = members["splits"], members["task"]
    per_seed = {
        seed: {metric_key(k): v for k, v in m.items()} for seed, m in members["per_seed"].items()
    }
    head = metric_key(headline(objective))
    values = np.array([m[head] for m in per_seed.values()])
    out = {
        "metric": headline(objective),
        f"{head}_mean": float(values.mean()),
        f"{head}_std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
        f"{head}_min": float(values.min()),
        f"{head}_max": float(values.max()),
        "per_seed": per_seed,
        "ensemble": {metric_key(k): v for k, v in members["ensemble"].items()},
        "per_class_acc": [],
        "confusion": [],
        "predictions": [],
        "data_digest": splits.digest,
        "num_classes": splits.num_classes,
        "task": task.name,
    }
    if task.name == "classification":
        k = splits.num_classes
        confusion = np.zeros((k, k), dtype=np.int64)
        y = splits.y_test
        for seed, pred in sorted(members["kept"].items()):
            np.add.at(confusion, (y.numpy(), pred.numpy()), 1)
            out["predictions"] += [
                (seed, int(a), int(p)) for a, p in zip(y.tolist(), pred.tolist(), strict=True)
            ]
        out["per_class_acc"] = (np.diag(confusion) / np.maximum(confusion.sum(1), 1)).tolist()
        out["confusion"] = confusion.tolist()
    return out


def confusion_figure(confusion: list[list[int]], task: str = "classification") -> Any:
    """The test confusion matrix over all seeds; for another task a figure that says it has none
    (the pipeline's outputs are the same files for every task)."""
    from tunelab.reports.figures import Figure

    m = np.asarray(confusion)
    fig = Figure(figsize=(5.2, 4.6))
    ax = fig.subplots()
    if not m.size:
        ax.axis("off")
        ax.text(0.5, 0.5, f"task={task}: no confusion matrix", ha="center", va="center")
        return fig
    im = ax.imshow(m, cmap="Blues")
    for (i, j), v in np.ndenumerate(m):
        ax.text(
            j,
            i,
            str(v),
            ha="center",
            va="center",
            fontsize=7,
            color="white" if v > m.max() / 2 else "black",
        )
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title("test confusion matrix (all seeds)")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    return fig


def seeds_of(directory: Path) -> dict[int, Path]:
    return {int(p.stem.split("_")[1]): p for p in sorted(directory.glob("seed_*.pt"))}


def write_curves(histories: dict, path: Path, objective: str = "val/acc") -> None:
    """Mean and range over seeds per epoch (a seed-count-independent file for `dvc plots`): the
    losses and the objective, whose columns are `objective_*` for every task."""
    keys = ("train/loss", "val/loss", objective)
    names = ("train_loss", "val_loss", "objective")
    epochs = min(len(h[objective]) for h in histories.values())
    rows = ["epoch," + ",".join(f"{n}_{s}" for n in names for s in ("mean", "min", "max"))]
    for e in range(epochs):
        cells = []
        for k in keys:
            vals = [h[k][e] for h in histories.values()]
            cells += [sum(vals) / len(vals), min(vals), max(vals)]
        rows.append(f"{e + 1}," + ",".join(f"{v:.6g}" for v in cells))
    path.write_text("\n".join(rows) + "\n")
