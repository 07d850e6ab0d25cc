"""The schedule the training loop steps: a conf/scheduler/<name>.yaml factory behind a linear
warm-up, stepped after every optimizer step and every validation, resumable from its state."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from tunelab.build import build_optimizer, build_schedule_factory
from tunelab.config.groups import SCHEDULER
from tunelab.config.rules import POSITIVE_INT
from tunelab.optim import schedule_fns as fns
from tunelab.optim.schedule_fns import epochs_to_steps
from tunelab.optim.schedules import check, check_knobs

META_KEYS = ("name", "warmup_epochs", "warmup_start_factor", "monitor")


class MissingMetricError(KeyError):
    """The plateau schedule's monitored metric is absent from the validation metrics."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(eq=False)
class Schedule:
    """Linear warm-up to the inner schedule's first lr, then the inner torch scheduler."""

    optimizer: Optimizer
    inner: LRScheduler
    name: str
    total_steps: int
    warmup_steps: int = 0
    warmup_start_factor: float = 0.0
    monitor: str | None = None
    steps_done: int = 0
    peak_lrs: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.peak_lrs = self.lrs
        self._warm(0)

    def _warm(self, k: int) -> None:
        if self.warmup_steps > 0:
            f = fns.warmup_factor(k, self.warmup_steps, self.warmup_start_factor)
            for g, peak in zip(self.optimizer.param_groups, self.peak_lrs, strict=True):
                g["lr"] = peak * f

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    @property
    def lrs(self) -> list[float]:
        return [float(g["lr"]) for g in self.optimizer.param_groups]

    def after_step(self) -> None:
        """Advance one optimizer step: the warm-up ramp, then per-step inner schedules."""
        self.steps_done += 1
        if self.steps_done <= self.warmup_steps:
            self._warm(self.steps_done)
            return
        inner_total = getattr(self.inner, "total_steps", None)  # OneCycleLR refuses to overrun
        if self.monitor is None and (inner_total is None or self.inner.last_epoch < inner_total):
            self.inner.step()

    def after_epoch(self, metrics: dict[str, float]) -> None:
        """Feed the monitored metric to plateau (not during warm-up); a no-op for the others."""
        if self.monitor is None:
            return
        if self.monitor not in metrics:
            msg = f"scheduler {self.name} monitors {self.monitor!r}; metrics has {sorted(metrics)}"
            raise MissingMetricError(msg)
        if self.steps_done >= self.warmup_steps:
            self.inner.step(float(metrics[self.monitor]))

    def state_dict(self) -> dict[str, Any]:
        keep = ("name", "total_steps", "warmup_steps", "steps_done", "peak_lrs", "lrs")
        state = {k: copy.copy(getattr(self, k)) for k in keep}
        return state | {"inner": copy.deepcopy(self.inner.state_dict())}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("name", "total_steps", "warmup_steps"):
            ok = state[key] == getattr(self, key)
            check(self.name, f"state_dict[{key!r}]", state[key], ok, repr(getattr(self, key)))
        self.inner.load_state_dict(copy.deepcopy(state["inner"]))
        self.steps_done, self.peak_lrs = state["steps_done"], list(state["peak_lrs"])
        for g, lr in zip(self.optimizer.param_groups, state["lrs"], strict=True):
            g["lr"] = lr


def build_schedule(
    optimizer: Optimizer, cfg: DictConfig | dict, *, steps_per_epoch: int, max_epochs: int
) -> Schedule:
    """Instantiate one conf/scheduler/<name>.yaml; the inner schedule runs after the warm-up."""
    raw = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    meta = {k: raw.pop(k) for k in META_KEYS if k in raw}
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
    factory = build_schedule_factory(raw)
    inner = factory(optimizer, total_steps=total - warmup, steps_per_epoch=steps_per_epoch)
    monitor = meta.get("monitor")
    if isinstance(inner, ReduceLROnPlateau):
        check(name, "monitor", monitor, isinstance(monitor, str) and monitor != "", "a metric name")
    else:
        check(name, "monitor", monitor, monitor is None, "absent (only plateau monitors a metric)")
    return Schedule(optimizer, inner, name, total, warmup, float(start), monitor)


def steps_per_epoch(n: int, trainer: DictConfig) -> int:
    """Optimizer steps in one epoch of n training examples (drop_last, gradient accumulation)."""
    batches = (
        n // trainer.batch_size
        if trainer.drop_last and n >= trainer.batch_size
        else -(-n // trainer.batch_size)
    )
    return max(1, -(-batches // trainer.grad_accum_steps))


def build_training(
    model: nn.Module,
    cfg: DictConfig,
    n_train: int,
    backbone_lr_mult: float = 1.0,
    allow: frozenset[str] | None = None,
) -> tuple[Optimizer, Schedule]:
    """The optimizer and lr schedule a run of `cfg` trains `model` with on n_train examples."""
    optimizer = build_optimizer(model, cfg.optimizer, backbone_lr_mult, allow)
    steps = steps_per_epoch(n_train, cfg.trainer)
    schedule = build_schedule(
        optimizer, cfg.scheduler, steps_per_epoch=steps, max_epochs=int(cfg.trainer.max_epochs)
    )
    return optimizer, schedule
