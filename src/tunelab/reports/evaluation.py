"""Test-set evaluation of confirmed models: per seed, aggregated, per class, confusion matrix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from tunelab import build
from tunelab.run.checkpoint import load_model_state, load_safe
from tunelab.run.loop import evaluate


def evaluate_checkpoints(cfg: DictConfig, checkpoints: dict[int, Path]) -> dict[str, Any]:
    """Load each seed's selected weights and score them on the test split (never used for selection)."""
    splits = build.build_data(cfg.data)
    k = splits.num_classes
    per_seed, confusion = {}, np.zeros((k, k), dtype=np.int64)
    predictions = []
    for seed, path in sorted(checkpoints.items()):
        model = build.build_model(cfg.model, splits.input_shape, k)
        load_model_state(model, load_safe(path)["model"], path)
        loss, acc, pred = evaluate(model, splits.x_test, splits.y_test)
        np.add.at(confusion, (splits.y_test.numpy(), pred.numpy()), 1)
        per_seed[seed] = {"test_acc": acc, "test_loss": loss}
        predictions += [
            (seed, int(a), int(p))
            for a, p in zip(splits.y_test.tolist(), pred.tolist(), strict=True)
        ]
    accs = np.array([m["test_acc"] for m in per_seed.values()])
    per_class = (np.diag(confusion) / np.maximum(confusion.sum(1), 1)).tolist()
    return {
        "test_acc_mean": float(accs.mean()),
        "test_acc_std": float(accs.std(ddof=1)) if len(accs) > 1 else 0.0,
        "test_acc_min": float(accs.min()),
        "test_acc_max": float(accs.max()),
        "per_seed": per_seed,
        "per_class_acc": per_class,
        "confusion": confusion.tolist(),
        "predictions": predictions,
        "data_digest": splits.digest,
        "num_classes": k,
    }


def confusion_figure(confusion: list[list[int]]) -> Any:
    from tunelab.reports.figures import Figure

    m = np.asarray(confusion)
    fig = Figure(figsize=(5.2, 4.6))
    ax = fig.subplots()
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


def write_curves(histories: dict, path: Path) -> None:
    """Mean and range over seeds per epoch (a seed-count-independent file for `dvc plots`)."""
    keys = ("train/loss", "val/loss", "val/acc")
    epochs = min(len(h["val/acc"]) for h in histories.values())
    rows = [
        "epoch,"
        + ",".join(f"{k.replace('/', '_')}_{s}" for k in keys for s in ("mean", "min", "max"))
    ]
    for e in range(epochs):
        cells = []
        for k in keys:
            vals = [h[k][e] for h in histories.values()]
            cells += [sum(vals) / len(vals), min(vals), max(vals)]
        rows.append(f"{e + 1}," + ",".join(f"{v:.6g}" for v in cells))
    path.write_text("\n".join(rows) + "\n")
