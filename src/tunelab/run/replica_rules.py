"""Which runs can train as vmapped replicas (the task, the model's layers, the optimizer, the
schedule, fine-tuning, augmentation, streamed data), and the initial model of each replica."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from tunelab import build
from tunelab.config.data_rules import enabled
from tunelab.config.groups import OPTIMIZERS
from tunelab.data.loader import StreamedSplits

# Leaf layers whose forward is a pure function of (parameters, buffers, input) under vmap; and
# BatchNorm, whose running statistics are batched buffers it updates in place.
PURE_LAYERS = (
    *(nn.Linear, nn.Conv1d, nn.Conv2d, nn.GroupNorm, nn.LayerNorm, nn.Flatten, nn.Identity),
    *(nn.MaxPool1d, nn.MaxPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d),
    *(nn.ReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.LeakyReLU, nn.ELU),
)
# The layers with running statistics and the convolutions, by their public classes
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
CONVOLUTIONS = (
    *(nn.Conv1d, nn.Conv2d, nn.Conv3d),
    *(nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d),
)
# optimizer classes whose update of a tensor is elementwise (no norms over a whole tensor)
ELEMENTWISE = tuple(target for target, facts in OPTIMIZERS.items() if facts.elementwise)


def can_batch(model: nn.Module) -> str | None:
    """None when `model` can train as vmapped replicas matching its sequential runs, else why not."""
    for name, module in model.named_modules():
        own = [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]
        if next(module.children(), None) is not None and not own:
            continue  # a container: its forward composes its children, which are checked
        reason = _layer_reason(module)
        if reason:
            return f"{name or 'the model'} ({type(module).__name__}): {reason}"
    return None


def _layer_reason(m: nn.Module) -> str | None:
    if isinstance(m, nn.Dropout) and m.p > 0:
        return (
            f"dropout p={m.p} draws its masks from the global RNG; the replicas' masks could "
            "not match their sequential runs (set model.dropout=0)"
        )
    if isinstance(m, BATCH_NORMS) and m.track_running_stats:
        return None if m.momentum is not None else "BatchNorm momentum=None reads its step count"
    ok = isinstance(m, (nn.Dropout, *BATCH_NORMS, *PURE_LAYERS))
    return None if ok else "not a layer known to run under vmap"


def has_convolutions(model: nn.Module) -> bool:
    """Whether `model` convolves (batched, its replicas run grouped convolutions)."""
    return any(isinstance(m, CONVOLUTIONS) for m in model.modules())


def config_reason(cfg: DictConfig) -> str | None:
    """None when the run config (task, optimizer, scheduler, fine-tuning) can train as replicas."""
    task = cfg.get("task") or {}
    if task.get("name", "classification") != "classification":
        return (
            f"task={task.get('name')}: replica groups batch classification only (its loss and "
            "metrics are computed per replica under vmap)"
        )
    if task.get("class_weights") is not None:
        return "task.class_weights: torch's weighted cross-entropy does not run under vmap"
    target = str(cfg.optimizer.get("_target_", ""))
    if target not in ELEMENTWISE:
        names = "|".join(t.rsplit(".", 1)[-1] for t in ELEMENTWISE)
        return f"optimizer {target} is not elementwise ({names})"
    if cfg.scheduler.get("monitor"):
        return (
            f"scheduler {cfg.scheduler.get('name')} follows each run's own {cfg.scheduler.monitor}:"
            " the replicas' learning rates would differ, and they share one"
        )
    if _noise_follows_seed(cfg):
        return (
            f"scheduler {cfg.scheduler.get('name')} draws its noise from each run's seed: the "
            "replicas' learning rates would differ, and they share one"
        )
    if enabled(_plain(cfg.get("augment"))):
        return (
            f"augment={cfg.augment.get('name')} draws each batch's augmentation from the run's "
            "seed; the stacked replicas share one batch step"
        )
    if OmegaConf.select(cfg, "confirm.refit", default=None):
        return "confirm.refit trains each seed again on train+val after its own selection"
    ft = cfg.get("finetune") or {}
    tuned = ft.get("init_checkpoint") or ft.get("freeze_backbone_epochs")
    if tuned or ft.get("backbone_lr_mult", 1.0) != 1.0:
        return "fine-tuning (a checkpoint, a frozen backbone, backbone_lr_mult) is not supported"
    return None


def data_reason(splits: Any) -> str | None:
    """None when the data can train as replicas: in memory, where each replica's own order is a
    gather; streamed data would be read from disk once per replica."""
    if isinstance(splits, StreamedSplits):
        return "streamed data (data.loader=stream) is read in one order per run, not per replica"
    return None


def _plain(node: Any) -> dict:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else {}


def build_replicas(
    cfg: DictConfig,
    seeds: Sequence[int],
    input_shape: tuple[int, ...],
    num_classes: int,
    allow: frozenset[str] | None = None,
) -> list[nn.Module]:
    """The initial model of each sequential run `seed=s`: api.setup seeds python, numpy and torch
    (seed_everything), builds the data (which draws from none of their global RNGs) and the model."""
    models = []
    for seed in seeds:
        for seed_rng in (random.seed, np.random.seed, torch.manual_seed):  # seed_everything's
            seed_rng(int(seed))
        models.append(build.build_model(cfg.model, input_shape, num_classes, allow))
    return models


def _noise_follows_seed(cfg: DictConfig) -> bool:
    """Whether the schedule is noisy with the run's seed as its noise seed (noise_seed null)."""
    sched = cfg.get("scheduler")
    return (
        sched is not None
        and bool(sched.get("noise"))
        and "noise_seed" in sched
        and (sched.noise_seed is None)
    )
