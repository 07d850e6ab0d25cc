"""What every run builds first: the device, seeded RNGs, the data and the model."""

from __future__ import annotations

import logging
import os
import random
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from tunelab import build
from tunelab.config import ConfigError, targets
from tunelab.data.augment import Augment, make_augment
from tunelab.data.loader import StreamedSplits
from tunelab.data.splits import Splits, one_vs_rest, train_fraction
from tunelab.run.context import RunContext
from tunelab.run.lineage import resolve_device
from tunelab.run.tasks import Task, make_task

log = logging.getLogger(__name__)

SPLIT_KEYS = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")


class DataChangedError(RuntimeError):
    """The data is not the data the caller expects (a reproduction of an older run)."""


@dataclass
class Setup:
    """What every run builds first: device, seeded RNGs, data, its task and model."""

    device: torch.device
    splits: Any
    model: torch.nn.Module
    allow: frozenset[str]  # the targets this config may build
    task: Task


def setup(cfg: DictConfig, ctx: RunContext) -> Setup:
    allow = targets.allowed(cfg)
    device = resolve_device(cfg.trainer.device)
    seed_everything(int(cfg.seed), cfg.trainer, ctx.threads)
    splits = build.build_data(cfg.data, allow)
    positive = (cfg.get("task") or {}).get("positive_class")
    if positive is not None:  # task=binary on one class of a multi-class dataset
        if not isinstance(splits, Splits):
            raise ConfigError("task.positive_class needs a dataset held in memory")
        try:
            splits = one_vs_rest(splits, int(positive))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    if (fraction := cfg.trainer.get("train_fraction")) is not None:  # a sweep's data fidelity
        if not isinstance(splits, Splits):
            raise ConfigError("trainer.train_fraction needs a dataset held in memory")
        splits = train_fraction(splits, float(fraction), int(cfg.data.get("split_seed", 0)))
    workers = int(splits.settings.num_workers) if isinstance(splits, StreamedSplits) else 0
    if workers and not cfg.trainer.num_threads:  # an explicit count is kept
        torch.set_num_threads(loader_threads(torch.get_num_threads(), workers))
    if ctx.data_digest and splits.digest != ctx.data_digest:
        raise DataChangedError(
            f"data changed: expected digest {ctx.data_digest}, the data now has {splits.digest}"
        )
    task = make_task(cfg, splits)  # ConfigError: a task these targets cannot train
    try:
        model = build.build_model(cfg.model, splits.input_shape, task.outputs, allow)
    except ValueError as exc:  # a model that cannot take this data's examples
        model_name, data_name = cfg.model.get("name", "?"), cfg.data.get("name", "?")
        raise ConfigError(f"model={model_name} cannot train on data={data_name}: {exc}") from None
    if cfg.trainer.get("channels_last"):
        use_channels_last(model, splits)
    return Setup(device, splits, model, allow, task.to(device))


def use_channels_last(model: torch.nn.Module, splits: Any) -> bool:
    """trainer.channels_last: the model's 4-D weights and every image batch in NHWC order (what
    tensor cores and cuDNN's fastest convolutions read). Examples that are not images (C, H, W)
    have no such layout: the knob is ignored there, and the log says so (a speed knob, not a
    reason to refuse a sweep over several datasets). Returns whether it applied."""
    if len(splits.input_shape) != 3:
        log.warning(
            "trainer.channels_last=true ignored: the data's examples are %s, not images (C, H, W)",
            tuple(splits.input_shape),
        )
        return False
    fmt = torch.channels_last
    model.to(memory_format=fmt)
    if isinstance(splits, StreamedSplits):
        splits.memory_format = fmt
    else:  # slices and .to(device) keep the layout
        for key in SPLIT_KEYS[::2]:
            setattr(splits, key, getattr(splits, key).contiguous(memory_format=fmt))
    return True


def compile_model(model: torch.nn.Module, trainer: DictConfig) -> torch.nn.Module:
    """trainer.compile: torch.compile the model in place (`Module.compile`, so its state_dict
    keys, checkpoints and resume are unchanged); off by default, as compiling costs seconds."""
    if trainer.get("compile"):
        model.compile()
    return model


def seed_everything(seed: int, trainer: DictConfig, threads: int | None = None) -> None:
    """Seed every RNG; set torch's CPU threads (trainer.num_threads, else the share of the cores
    a parallel launcher gave this job)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if trainer.num_threads or threads:
        torch.set_num_threads(int(trainer.num_threads or threads))
    if trainer.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def loader_threads(threads: int, workers: int) -> int:
    """Torch threads of a run whose DataLoader has `workers` processes (one thread each): the
    cores the run was given less its workers, at least 1, so the run uses what it was given."""
    return max(1, threads - workers)


def run_data(splits: Any, device: torch.device) -> dict[str, torch.Tensor] | StreamedSplits:
    """What a run trains on: the in-memory splits on `device`, or the streamed splits as they are
    (data/loader.py moves each batch to the device)."""
    if isinstance(splits, StreamedSplits):
        return splits
    return {k: getattr(splits, k).to(device) for k in SPLIT_KEYS}


def build_augment(cfg: DictConfig, splits: Any) -> Augment | None:
    """The run's augmentation (cfg.augment, absent or none: None) for its data."""
    node = cfg.get("augment")
    if node is None:
        return None
    plain = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
    return make_augment(plain, splits.input_shape, splits.num_classes, splits.norm)


def autocast_for(trainer: DictConfig, device: torch.device) -> Any:
    if trainer.precision == "bf16" and device.type == "cuda":
        return partial(torch.autocast, device_type="cuda", dtype=torch.bfloat16)
    return nullcontext
