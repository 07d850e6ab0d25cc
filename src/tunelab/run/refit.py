"""`confirm.refit=train+val` (scikit-learn's `refit`): once a run has selected its epoch on the
validation split, the same configuration trains again from the run's initial weights on train ∪
val for that many epochs, and the test split scores those last weights. The validation split has
then been trained on, so selection (val/*, best_epoch, a sweep's objective) stays the first
pass's; only test/* comes from the refit model."""

from __future__ import annotations

import logging
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from tunelab import build
from tunelab.config import ConfigError
from tunelab.data.loader import StreamedSplits
from tunelab.run.loop import Objective, TrainState, fit
from tunelab.run.tasks import Task

log = logging.getLogger(__name__)
TRAIN_VAL = "train+val"


@dataclass
class Refit:
    """A refit's model (on the training device), its epochs, examples and per-epoch training loss."""

    model: nn.Module
    epochs: int
    n_train: int
    history: dict[str, list[float]] = field(default_factory=dict)
    checkpoint: Path | None = None

    def metrics(self) -> dict[str, float]:
        """What the run's summary records of the refit (beside test/*, which is the refit's;
        its per-epoch `refit/train/loss` and `refit/opt/lr` are logged as it trains)."""
        return {"refit/epochs": float(self.epochs), "refit/n_train": float(self.n_train)}


def refit_mode(cfg: DictConfig) -> str | None:
    """cfg's `confirm.refit`: None (off) or "train+val"."""
    value = OmegaConf.select(cfg, "confirm.refit", default=None)
    return None if value is None else str(value)


def check_refit_data(cfg: DictConfig, data: Any) -> None:
    """Refit joins the in-memory train and val tensors; streamed data cannot be joined that way."""
    if refit_mode(cfg) and isinstance(data, StreamedSplits):
        raise ConfigError(
            f"confirm.refit={refit_mode(cfg)}: the data is streamed from disk "
            "(data.loader=stream); refit joins in-memory splits, use data.loader=memory"
        )


def train_and_val(data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The splits with train ∪ val as the training split (val kept, for the loop's epoch lines)."""
    joined = dict(data)
    joined["x_train"] = torch.cat([data["x_train"], data["x_val"]])
    joined["y_train"] = torch.cat([data["y_train"], data["y_val"]])
    return joined


def refit_config(cfg: DictConfig, epochs: int) -> DictConfig:
    """cfg for the refit: `epochs` epochs (the schedule spans them), no early stopping."""
    out = cfg.copy()
    with open_dict(out):
        out.trainer.max_epochs = int(epochs)
        out.trainer.early_stopping.patience = 0
    return out


def refit(
    cfg: DictConfig,
    initial: nn.Module,
    data: dict[str, torch.Tensor],
    epochs: int,
    *,
    task: Task,
    allow: frozenset[str],
    tracker: Any,
    augment: Any = None,
    autocast: Any = nullcontext,
    lr_mult: float = 1.0,
    freeze_backbone_epochs: int = 0,
) -> Refit:
    """Train `initial` (the run's initial weights, on the device) on train ∪ val for `epochs`
    epochs through the run's own loop (run/loop.py), with a fresh generator of the run's seed.
    The tracker gets the refit's per-epoch training loss and lr as `refit/…`."""
    joined = train_and_val(data)
    n_train = len(joined["y_train"])
    rcfg = refit_config(cfg, epochs)
    optimizer, schedule = build.build_training(initial, rcfg, n_train, lr_mult, allow)
    log.info(
        "confirm.refit=%s: training again on train+val (%d examples) for the %d selected epochs; "
        "its val/* lines below are no longer held out",
        TRAIN_VAL,
        n_train,
        epochs,
    )
    history: dict[str, list[float]] = {}

    def log_metrics(metrics: dict[str, float], step: int) -> None:
        kept = {f"refit/{k}": v for k, v in metrics.items() if k in ("train/loss", "opt/lr")}
        for k, v in kept.items():
            history.setdefault(k.removeprefix("refit/"), []).append(v)
        tracker.log_metrics(kept, step=step)

    fit(
        initial,
        optimizer,
        schedule,
        joined,
        rcfg.trainer,
        objective=Objective(str(cfg.objective.metric), str(cfg.objective.direction)),
        generator=torch.Generator().manual_seed(int(cfg.seed)),
        state=TrainState(),
        tracker=SimpleNamespace(log_metrics=log_metrics),
        freeze_backbone_epochs=freeze_backbone_epochs,
        augment=augment,
        seed=int(cfg.seed),
        task=task,
        autocast=autocast,
    )
    return Refit(initial, int(epochs), n_train, history)
