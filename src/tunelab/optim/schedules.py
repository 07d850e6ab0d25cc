"""Learning-rate schedules: one factory per conf/scheduler/*.yaml (warm-up: optim/lr_schedule.py).

Factories take (optimizer, *, total_steps, steps_per_epoch, **knobs) and return a torch scheduler;
durations are in epochs. Absolute lrs (end_lr, max_lr, min_lr) refer to param group 0; the other
groups get them scaled by their lr ratio, so every group keeps its ratio to group 0.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from torch.optim import Optimizer
from torch.optim.lr_scheduler import (
    LambdaLR,
    LRScheduler,
    MultiStepLR,
    OneCycleLR,
    ReduceLROnPlateau,
    StepLR,
)

from tunelab.config.groups import SCHEDULER_KNOBS
from tunelab.config.rules import is_number
from tunelab.optim import schedule_fns as fns
from tunelab.optim.schedule_fns import epochs_to_steps


def check(schedule: str, key: str, value: object, ok: bool, allowed: str) -> None:
    """Raise ValueError naming the schedule, key, bad value and what is allowed."""
    if not ok:
        msg = f"scheduler {schedule}: {key}={value!r} is not allowed; expected {allowed}"
        raise ValueError(msg)


def check_knobs(schedule: str, knobs: dict[str, Any]) -> None:
    """The knob rules of config/groups.py (also checked at compose time), at build time: the
    warm-up's and `schedule`'s knobs present in `knobs`."""
    for key, rule in {**SCHEDULER_KNOBS["warmup"], **SCHEDULER_KNOBS.get(schedule, {})}.items():
        if key in knobs and (allowed := rule(knobs[key])) is not None:
            check(schedule, key, knobs[key], False, allowed)


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
    ok = ok and all(is_number(v) and v > 0 for v in values)
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
    kw = {k: v for k, v in locals().items() if k in SCHEDULER_KNOBS["linear_cosine"]}
    check_knobs("linear_cosine", kw)
    return _fn(optimizer, fns.linear_cosine_decay, decay_steps=total_steps, **kw)


def noisy_linear_cosine(
    optimizer,
    *,
    total_steps,
    steps_per_epoch,
    num_periods: float = 0.5,
    alpha: float = 0.0,
    beta: float = 1.0e-3,
    noise: float = 1.0,
    noise_decay: float = 0.55,
    noise_seed: int | None = None,
):
    """tf noisy_linear_cosine_decay (its defaults: initial variance 1.0, variance decay 0.55): the
    linear-cosine formula with noise always on; the noise is a function of (noise_seed, step), and
    build_schedule makes a null noise_seed the run's seed."""
    kw = {k: v for k, v in locals().items() if k in SCHEDULER_KNOBS["noisy_linear_cosine"]}
    check_knobs("noisy_linear_cosine", kw)
    kw["noise_seed"] = 0 if noise_seed is None else noise_seed
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
    if abs(float(pct_start) * total_steps - 1) < 1e-9:
        # OneCycleLR's warm-up phase then spans zero steps, and torch divides by its length
        raise ValueError(
            f"scheduler=onecycle: pct_start={pct_start} of {total_steps} optimizer steps is one "
            "step, a warm-up of length zero; train more epochs, use a smaller "
            "trainer.batch_size, or change scheduler.pct_start"
        )
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
    kw = {k: v for k, v in locals().items() if k in SCHEDULER_KNOBS["plateau"]}
    kw["min_lr"] = [min_lr * r for r in _ratios(optimizer)]
    return ReduceLROnPlateau(optimizer, **kw)
