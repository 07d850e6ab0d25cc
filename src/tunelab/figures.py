"""Matplotlib figures logged with runs (Agg backend: no display needed)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def learning_curves(history: dict[str, list[float]], best_epoch: int | None = None) -> Figure:
    """Loss, accuracy and learning rate per epoch; the selected epoch is marked."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), dpi=80)
    epochs = range(1, len(history.get("train/loss", [])) + 1)
    for ax, (title, keys) in zip(
        axes,
        [
            ("loss", ("train/loss", "val/loss")),
            ("accuracy", ("train/acc", "val/acc")),
            ("learning rate", ("opt/lr",)),
        ],
        strict=False,
    ):
        for k in keys:
            if k in history:
                ax.plot(epochs, history[k], label=k)
        if best_epoch is not None and best_epoch >= 0 and title != "learning rate":
            ax.axvline(best_epoch + 1, color="grey", ls="--", lw=0.8, label="selected epoch")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.legend(fontsize=8)
    axes[2].set_yscale("log")
    fig.subplots_adjust(
        left=0.05, right=0.99, bottom=0.15, top=0.9, wspace=0.25
    )  # tight_layout costs ~0.25 s
    return fig


def close(fig: Figure) -> None:
    plt.close(fig)
