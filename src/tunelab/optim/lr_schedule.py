"""The schedule the training loop steps: a conf/scheduler/<name>.yaml's torch scheduler behind a
linear warm-up, stepped after every optimizer step and every validation, resumable from its state
(tunelab/build.py builds it)."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from tunelab.optim import schedule_fns as fns
from tunelab.optim.schedules import check


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


def batches_per_epoch(n: int, trainer: DictConfig) -> int:
    """Batches in one epoch of n training examples (drop_last drops a short last one)."""
    bs = int(trainer.batch_size)
    return n // bs if trainer.drop_last and n >= bs else -(-n // bs)


def steps_per_epoch(n: int, trainer: DictConfig) -> int:
    """Optimizer steps in one epoch of n training examples (drop_last, gradient accumulation)."""
    return max(1, -(-batches_per_epoch(n, trainer) // trainer.grad_accum_steps))
