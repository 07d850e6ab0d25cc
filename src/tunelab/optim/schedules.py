"""Learning-rate schedules: one factory per conf/scheduler/*.yaml, wrapped with warm-up in Schedule.

Factories take (optimizer, *, total_steps, steps_per_epoch, **knobs) and return a torch scheduler;
durations are in epochs. Absolute lrs (end_lr, max_lr, min_lr) refer to param group 0; the other
groups get them scaled by their lr ratio, so every group keeps its ratio to group 0.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.optim import Optimizer
from torch.optim.lr_scheduler import (
    LambdaLR,
    LRScheduler,
    MultiStepLR,
    OneCycleLR,
    ReduceLROnPlateau,
    StepLR,
)

from tunelab.optim import schedule_fns as fns
from tunelab.optim.schedule_fns import check, check_knobs, epochs_to_steps

META_KEYS = ("name", "warmup_epochs", "warmup_start_factor", "monitor")


class MissingMetricError(KeyError):
    """The plateau schedule's monitored metric is absent from the validation metrics."""

    def __str__(self) -> str:
        return str(self.args[0])


def _ratios(optimizer: Optimizer) -> list[float]:
    lr0 = optimizer.param_groups[0]["lr"]
    return [g["lr"] / lr0 for g in optimizer.param_groups]


def _fn(optimizer: Optimizer, formula, **kw: Any) -> LambdaLR:
    """LambdaLR over a pure multiplier formula from schedule_fns."""
    return LambdaLR(optimizer, partial(formula, **kw))


def constant(optimizer: Optimizer, *, total_steps: int, steps_per_epoch: int) -> LRScheduler:
    """The optimizer's lr throughout (warm-up still applies)."""
    return _fn(optimizer, fns.piecewise_constant, boundaries=[], values=[1.0])


def step(optimizer, *, total_steps, steps_per_epoch, step_epochs: float, gamma: float):
    """StepLR: multiply by gamma every step_epochs."""
    check_knobs("step", locals())
    return StepLR(optimizer, epochs_to_steps(step_epochs, steps_per_epoch), gamma)


def multistep(optimizer, *, total_steps, steps_per_epoch, milestones_epochs: list, gamma: float):
    """MultiStepLR: multiply by gamma at each milestone."""
    check_knobs("multistep", locals())
    milestones = [epochs_to_steps(m, steps_per_epoch) for m in milestones_epochs]
    return MultiStepLR(optimizer, milestones, gamma)


def exponential(
    optimizer,
    *,
    total_steps,
    steps_per_epoch,
    gamma: float,
    decay_epochs: float = 1.0,
    staircase: bool = False,
    decay_rate: float | None = None,
):
    """gamma per decay_epochs (> 1 grows: an lr range test); decay_rate set -> exp(-rate * t)."""
    check_knobs("exponential", locals())
    n = epochs_to_steps(decay_epochs, steps_per_epoch)
    if decay_rate is None:
        return _fn(
            optimizer, fns.exponential_decay, decay_steps=n, gamma=gamma, staircase=staircase
        )
    rate = decay_rate
    return _fn(
        optimizer, fns.natural_exp_decay, decay_steps=n, decay_rate=rate, staircase=staircase
    )


def piecewise(optimizer, *, total_steps, steps_per_epoch, boundaries_epochs: list, values: list):
    """values[i] x lr from boundaries_epochs[i - 1] on; values has one more entry than boundaries."""
    check_knobs("piecewise", locals())
    ok = isinstance(values, list) and len(values) == len(boundaries_epochs) + 1
    ok = ok and all(fns.is_num(v) and v > 0 for v in values)
    check("piecewise", "values", values, ok, f"{len(boundaries_epochs) + 1} multipliers > 0")
    bounds = [epochs_to_steps(b, steps_per_epoch) for b in boundaries_epochs]
    return _fn(optimizer, fns.piecewise_constant, boundaries=bounds, values=values)


def polynomial(
    optimizer,
    *,
    total_steps,
    steps_per_epoch,
    power: float = 1.0,
    end_lr_factor: float = 1.0e-2,
    end_lr: float | None = None,
    decay_epochs: float | None = None,
    cycle: bool = False,
):
    """tf polynomial_decay to end_lr (absolute; wins) or end_lr_factor x lr over decay_epochs."""
    check_knobs("polynomial", locals())
    end = end_lr_factor if end_lr is None else end_lr / optimizer.param_groups[0]["lr"]
    n = total_steps if decay_epochs is None else epochs_to_steps(decay_epochs, steps_per_epoch)
    kw = {"decay_steps": n, "end_factor": end, "power": power, "cycle": cycle}
    return _fn(optimizer, fns.polynomial_decay, **kw)


def inverse_time(
    optimizer,
    *,
    total_steps,
    steps_per_epoch,
    decay_rate: float,
    decay_epochs: float = 1.0,
    staircase: bool = False,
):
    """tf inverse_time_decay: lr / (1 + decay_rate * epochs / decay_epochs)."""
    check_knobs("inverse_time", locals())
    n = epochs_to_steps(decay_epochs, steps_per_epoch)
    kw = {"decay_steps": n, "decay_rate": decay_rate, "staircase": staircase}
    return _fn(optimizer, fns.inverse_time_decay, **kw)


def cosine(optimizer, *, total_steps, steps_per_epoch, min_lr_factor: float = 0.0):
    """Cosine annealing over the run after warm-up, down to min_lr_factor x lr."""
    check_knobs("cosine", locals())
    return _fn(optimizer, fns.cosine_decay, decay_steps=total_steps, min_factor=min_lr_factor)


def cosine_restarts(
    optimizer,
    *,
    total_steps,
    steps_per_epoch,
    first_cycle_epochs: float,
    t_mul: float = 2.0,
    m_mul: float = 1.0,
    min_lr_factor: float = 0.0,
):
    """SGDR: cycle i lasts first_cycle_epochs * t_mul**i and restarts at m_mul**i x lr."""
    check_knobs("cosine_restarts", locals())
    n = epochs_to_steps(first_cycle_epochs, steps_per_epoch)
    kw = {
        "first_cycle_steps": n,
        "t_mul": float(t_mul),
        "m_mul": m_mul,
        "min_factor": min_lr_factor,
    }
    return _fn(optimizer, fns.cosine_decay_restarts, **kw)


def linear_cosine(
    optimizer,
    *,
    total_steps,
    steps_per_epoch,
    num_periods: float = 0.5,
    alpha: float = 0.0,
    beta: float = 1.0e-3,
    noise: float = 0.0,
    noise_decay: float = 0.55,
    noise_seed: int = 0,
):
    """tf linear_cosine_decay over the run; noise > 0 (initial variance) makes it the noisy one."""
    kw = {k: v for k, v in locals().items() if k in fns.KNOB_RULES["linear_cosine"]}
    check_knobs("linear_cosine", kw)
    return _fn(optimizer, fns.linear_cosine_decay, decay_steps=total_steps, **kw)


def onecycle(
    optimizer,
    *,
    total_steps,
    steps_per_epoch,
    max_lr_factor: float = 1.0,
    max_lr: float | None = None,
    pct_start: float = 0.3,
    anneal: str = "cos",
    div_factor: float = 25.0,
    final_div_factor: float = 1.0e4,
    three_phase: bool = False,
    cycle_momentum: bool = False,
    base_momentum: float = 0.85,
    max_momentum: float = 0.95,
):
    """OneCycleLR peaking at max_lr (absolute; wins) or max_lr_factor x the optimizer lr."""
    check_knobs("onecycle", locals())
    peak = max_lr if max_lr is not None else max_lr_factor * optimizer.param_groups[0]["lr"]
    return OneCycleLR(
        optimizer,
        max_lr=[peak * r for r in _ratios(optimizer)],
        total_steps=total_steps,
        pct_start=pct_start,
        anneal_strategy="linear" if anneal == "linear" else "cos",
        div_factor=div_factor,
        final_div_factor=final_div_factor,
        three_phase=three_phase,
        cycle_momentum=cycle_momentum,
        base_momentum=base_momentum,
        max_momentum=max_momentum,
    )


def plateau(
    optimizer,
    *,
    total_steps,
    steps_per_epoch,
    mode: str = "max",
    factor: float = 0.1,
    patience: int = 5,
    threshold: float = 1.0e-4,
    threshold_mode: str = "rel",
    cooldown: int = 0,
    min_lr: float = 0.0,
):
    """ReduceLROnPlateau, stepped once per validation; min_lr floors group 0 (others by ratio)."""
    check_knobs("plateau", locals())
    kw = {k: v for k, v in locals().items() if k in fns.KNOB_RULES["plateau"]}
    kw["min_lr"] = [min_lr * r for r in _ratios(optimizer)]
    return ReduceLROnPlateau(optimizer, **kw)


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
    ok = isinstance(target, str) and target.startswith("tunelab.")
    check(name, "_target_", target, ok, "a tunelab.optim.schedules factory")
    for key, value in {"steps_per_epoch": steps_per_epoch, "max_epochs": max_epochs}.items():
        check(name, key, value, fns.RULES["int>=1"][0](value), "an integer >= 1")
    check_knobs("warmup", meta)
    w_epochs, start = meta.get("warmup_epochs", 0.0), meta.get("warmup_start_factor", 0.0)
    total = max_epochs * steps_per_epoch
    warmup = epochs_to_steps(w_epochs, steps_per_epoch) if w_epochs > 0 else 0
    check(name, "warmup_epochs", w_epochs, warmup < total, f"< max_epochs={max_epochs}")
    factory = instantiate(raw, _partial_=True, _convert_="all")
    inner = factory(optimizer, total_steps=total - warmup, steps_per_epoch=steps_per_epoch)
    monitor = meta.get("monitor")
    if isinstance(inner, ReduceLROnPlateau):
        check(name, "monitor", monitor, isinstance(monitor, str) and monitor != "", "a metric name")
    else:
        check(name, "monitor", monitor, monitor is None, "absent (only plateau monitors a metric)")
    return Schedule(optimizer, inner, name, total, warmup, float(start), monitor)
