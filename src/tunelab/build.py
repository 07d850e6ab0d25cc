"""The one place that turns config nodes into objects (`_target_` + instantiate).

A node is built only when every `_target_` in it is on the exact allow-list (config/targets.py),
and without Hydra's recursive instantiation: a nested node is passed on as data, never built.
"""

from __future__ import annotations

from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import ReduceLROnPlateau

from tunelab.config import targets, tasks
from tunelab.config.data_rules import TABLE_TARGET
from tunelab.config.groups import SCHEDULER
from tunelab.config.rules import POSITIVE_INT
from tunelab.data.images import DataError, scan
from tunelab.data.splits import Splits
from tunelab.optim import lr_schedule
from tunelab.optim.lr_schedule import Schedule
from tunelab.optim.param_groups import param_groups
from tunelab.optim.schedule_fns import epochs_to_steps
from tunelab.optim.schedules import check, check_knobs

META_KEYS = ("name", "exclude_bias_norm_from_decay")
SCHEDULE_META_KEYS = ("name", "warmup_epochs", "warmup_start_factor", "monitor")


class TargetError(ValueError):
    """A `_target_` that is not on the allow-list."""


def _checked(node: DictConfig, group: str, allow: frozenset[str]) -> DictConfig:
    problems = targets.problems(node, allow, group)
    if problems or not isinstance(node.get("_target_"), str):
        raise TargetError("; ".join(problems) or f"{group} has no _target_")
    return node


def without(node: DictConfig, keys: tuple[str, ...]) -> DictConfig:
    """A copy of a config node minus bookkeeping keys that are not constructor arguments."""
    plain = OmegaConf.to_container(node, resolve=True)
    return OmegaConf.create({k: v for k, v in plain.items() if k not in keys})


def _instantiate(node: DictConfig, group: str, allow: frozenset[str] | None) -> Any:
    """instantiate() of a checked node, re-raising our own clear errors rather than Hydra's
    wrapper around them."""
    node = _checked(node, group, allow or targets.SHIPPED)
    try:
        return instantiate(node, _recursive_=False)
    except InstantiationException as exc:
        if isinstance(exc.__cause__, (ValueError, KeyError, FileNotFoundError, TypeError)):
            raise exc.__cause__ from None
        raise


def build_data(cfg: DictConfig, allow: frozenset[str] | None = None) -> Splits:
    return _instantiate(without(cfg, ("name",)), "data", allow)


def build_model(
    cfg: DictConfig,
    input_shape: tuple[int, ...],
    num_classes: int,
    allow: frozenset[str] | None = None,
) -> nn.Module:
    factory = _instantiate(without(cfg, ("name",)), "model", allow)
    return factory(input_shape=tuple(input_shape), num_classes=num_classes)


def build_optimizer(
    model: nn.Module,
    cfg: DictConfig,
    backbone_lr_mult: float = 1.0,
    allow: frozenset[str] | None = None,
) -> torch.optim.Optimizer:
    """Optimizer over parameter groups (bias/norm decay exclusion, backbone lr multiplier)."""
    factory = _instantiate(without(cfg, META_KEYS), "optimizer", allow)
    groups = param_groups(
        model,
        lr=float(cfg.lr),
        weight_decay=float(cfg.get("weight_decay", 0.0)),
        exclude_bias_norm=bool(cfg.get("exclude_bias_norm_from_decay", False)),
        backbone_lr_mult=backbone_lr_mult,
    )
    return factory(groups)


def optimizer_factory(cfg: DictConfig, allow: frozenset[str] | None = None) -> Any:
    """`make(params, lr=None)`: a fresh optimizer of the configured kind (diagnostics use it)."""
    factory = _instantiate(without(cfg, META_KEYS), "optimizer", allow)

    def make(params: Any, lr: float | None = None) -> torch.optim.Optimizer:
        return factory(params, lr=float(cfg.lr if lr is None else lr))

    return make


def build_tracker(cfg: DictConfig, allow: frozenset[str] | None = None) -> Any:
    return _instantiate(without(cfg, ("name",)), "tracking", allow)


def _schedule_factory(raw: dict[str, Any]) -> Any:
    """The partial of a scheduler node (its knobs bound), for the Schedule to wrap."""
    node = OmegaConf.create(raw)
    _checked(node, "scheduler", targets.SHIPPED)
    return instantiate(node, _partial_=True, _convert_="all", _recursive_=False)


def file_problems(cfg: DictConfig) -> list[str]:
    """The problems of the files behind a config's local data paths, found before any run,
    directory, lock or study exists: a .npz is loaded to see what it holds; an image folder's
    layout is scanned (missing, no class folders, an empty class, class sets that differ); a
    .npz's targets must be what the task trains on (config/tasks.py)."""
    data = cfg.get("data")
    target = str(data.get("_target_", "")) if data is not None else ""
    plain = OmegaConf.to_container(cfg.get("task") or {}, resolve=True)
    if target == "tunelab.data.images.images" and data.get("path"):
        try:
            folder = scan(data.path)
        except DataError as exc:
            return [str(exc)]
        problem = tasks.weights_problem(plain, len(folder.classes))
        return [problem] if problem else []
    elif target == TABLE_TARGET:
        from tunelab.data.tables import problems  # pandas: loaded for tables only

        return problems(data)
    elif target.endswith(".npz"):
        try:
            splits = build_data(data)
        except Exception as exc:  # every loader complaint: missing keys, shapes, NaN, not an npz
            text = str(exc.args[0] if isinstance(exc, KeyError) and exc.args else exc)
            first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
            return [first if first.startswith("data.") else f"data.path={data.path!r}: {first}"]
        task = str(plain.get("name", tasks.DEFAULT))
        if problem := tasks.target_problem(task, splits):
            return [f"data.path={data.path!r}: {problem}"]
        if task == "classification" and (
            problem := tasks.weights_problem(plain, splits.num_classes)
        ):
            return [problem]
    return []


def build_schedule(
    optimizer: Optimizer,
    cfg: DictConfig | dict,
    *,
    steps_per_epoch: int,
    max_epochs: int,
    seed: int = 0,
) -> Schedule:
    """Instantiate one conf/scheduler/<name>.yaml; the inner schedule runs after the warm-up. A
    noise_seed of null is the run's `seed` (noisy_linear_cosine's default)."""
    raw = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    if "noise_seed" in raw and raw["noise_seed"] is None:
        raw["noise_seed"] = int(seed)
    meta = {k: raw.pop(k) for k in SCHEDULE_META_KEYS if k in raw}
    target = raw.get("_target_")
    name = str(meta.get("name") or target)
    ok = isinstance(target, str) and target in SCHEDULER
    check(name, "_target_", target, ok, f"one of {sorted(SCHEDULER)}")
    for key, value in {"steps_per_epoch": steps_per_epoch, "max_epochs": max_epochs}.items():
        check(name, key, value, POSITIVE_INT(value) is None, "an integer >= 1")
    check_knobs("warmup", meta)
    w_epochs, start = meta.get("warmup_epochs", 0.0), meta.get("warmup_start_factor", 0.0)
    total = max_epochs * steps_per_epoch
    warmup = epochs_to_steps(w_epochs, steps_per_epoch) if w_epochs > 0 else 0
    check(name, "warmup_epochs", w_epochs, warmup < total, f"< max_epochs={max_epochs}")
    factory = _schedule_factory(raw)
    inner = factory(optimizer, total_steps=total - warmup, steps_per_epoch=steps_per_epoch)
    monitor = meta.get("monitor")
    if isinstance(inner, ReduceLROnPlateau):
        check(name, "monitor", monitor, isinstance(monitor, str) and monitor != "", "a metric name")
    else:
        check(name, "monitor", monitor, monitor is None, "absent (only plateau monitors a metric)")
    return Schedule(optimizer, inner, name, total, warmup, float(start), monitor)


def build_training(
    model: nn.Module,
    cfg: DictConfig,
    n_train: int,
    backbone_lr_mult: float = 1.0,
    allow: frozenset[str] | None = None,
) -> tuple[Optimizer, Schedule]:
    """The optimizer and lr schedule a run of `cfg` trains `model` with on n_train examples."""
    optimizer = build_optimizer(model, cfg.optimizer, backbone_lr_mult, allow)
    steps = lr_schedule.steps_per_epoch(n_train, cfg.trainer)
    schedule = build_schedule(
        optimizer,
        cfg.scheduler,
        steps_per_epoch=steps,
        max_epochs=int(cfg.trainer.max_epochs),
        seed=int(cfg.get("seed", 0)),
    )
    return optimizer, schedule
