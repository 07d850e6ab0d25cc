"""Pure lr-multiplier formulas (TensorFlow decay semantics) and knob checks.

Every formula maps an optimizer step index (0-based, counted from the end of warm-up) to a
multiplier of the peak lr, so one function serves every param group and keeps their ratios.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence

import numpy as np


def check(schedule: str, key: str, value: object, ok: bool, allowed: str) -> None:
    """Raise ValueError naming the schedule, key, bad value and what is allowed."""
    if not ok:
        msg = f"scheduler {schedule}: {key}={value!r} is not allowed; expected {allowed}"
        raise ValueError(msg)


def is_num(value: object) -> bool:
    """True for finite real numbers (bool excluded), so YAML strings like '1e-4' are caught."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _epochs(v: object) -> bool:
    return isinstance(v, list) and all(is_num(x) and x > 0 for x in v) and v == sorted(set(v))


RULES = {
    ">0": (lambda v: is_num(v) and v > 0, "> 0"),
    ">=0": (lambda v: is_num(v) and v >= 0, ">= 0"),
    ">=1": (lambda v: is_num(v) and v >= 1, ">= 1"),
    "(0,1]": (lambda v: is_num(v) and 0 < v <= 1, "0 < x <= 1"),
    "(0,1)": (lambda v: is_num(v) and 0 < v < 1, "0 < x < 1"),
    "[0,1]": (lambda v: is_num(v) and 0 <= v <= 1, "0 <= x <= 1"),
    "null|>0": (lambda v: v is None or (is_num(v) and v > 0), "null or > 0"),
    "null|>=0": (lambda v: v is None or (is_num(v) and v >= 0), "null or >= 0"),
    "int": (_is_int, "an integer"),
    "int>=0": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "int>=1": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "epochs": (_epochs, "a list of strictly increasing epochs > 0"),
    "min|max": (lambda v: v in ("min", "max"), "min | max"),
    "rel|abs": (lambda v: v in ("rel", "abs"), "rel | abs"),
    "cos|linear": (lambda v: v in ("cos", "cosine", "linear"), "cos | linear"),
}

# Allowed values of every knob of every conf/scheduler/<name>.yaml (and the warm-up meta keys).
KNOB_RULES: dict[str, dict[str, str]] = {
    "warmup": {"warmup_epochs": ">=0", "warmup_start_factor": "[0,1]"},
    "constant": {},
    "step": {"step_epochs": ">0", "gamma": "(0,1]"},
    "multistep": {"milestones_epochs": "epochs", "gamma": "(0,1]"},
    "exponential": {
        "gamma": ">0", "decay_epochs": ">0", "staircase": "bool", "decay_rate": "null|>=0"
    },
    "piecewise": {"boundaries_epochs": "epochs"},
    "polynomial": {
        "power": ">0", "end_lr_factor": ">=0", "end_lr": "null|>=0", "decay_epochs": "null|>0",
        "cycle": "bool",
    },
    "inverse_time": {"decay_rate": ">=0", "decay_epochs": ">0", "staircase": "bool"},
    "cosine": {"min_lr_factor": "[0,1]"},
    "cosine_restarts": {
        "first_cycle_epochs": ">0", "t_mul": ">=1", "m_mul": ">0", "min_lr_factor": "[0,1]"
    },
    "linear_cosine": {
        "num_periods": ">=0", "alpha": ">=0", "beta": ">=0", "noise": ">=0", "noise_decay": ">=0",
        "noise_seed": "int",
    },
    "onecycle": {
        "max_lr_factor": ">0", "max_lr": "null|>0", "pct_start": "(0,1)", "anneal": "cos|linear",
        "div_factor": ">0", "final_div_factor": ">0", "three_phase": "bool",
        "cycle_momentum": "bool", "base_momentum": "[0,1]", "max_momentum": "[0,1]",
    },
    "plateau": {
        "mode": "min|max", "factor": "(0,1)", "patience": "int>=0", "threshold": ">=0",
        "threshold_mode": "rel|abs", "cooldown": "int>=0", "min_lr": ">=0",
    },
}  # fmt: skip


def check_knobs(schedule: str, knobs: Mapping[str, object]) -> None:
    """Check the knobs of KNOB_RULES[schedule] present in knobs (usable at compose time)."""
    for key, rule in KNOB_RULES.get(schedule, {}).items():
        if key in knobs:
            ok, allowed = RULES[rule]
            check(schedule, key, knobs[key], ok(knobs[key]), allowed)


def epochs_to_steps(epochs: float, steps_per_epoch: int) -> int:
    """Round a duration in epochs half-up to optimizer steps (at least 1)."""
    return max(1, math.floor(epochs * steps_per_epoch + 0.5))


def warmup_factor(step: int, warmup_steps: int, start_factor: float) -> float:
    """Linear ramp start_factor -> 1 reaching 1 exactly at index warmup_steps.

    Index 0 gets start + (1 - start) / (W + 1), so the first update never uses lr 0.
    """
    if step >= warmup_steps:
        return 1.0
    return start_factor + (1.0 - start_factor) * (step + 1) / (warmup_steps + 1)


def exponential_decay(step: int, *, decay_steps: int, gamma: float, staircase: bool) -> float:
    """gamma ** (step / decay_steps), floored exponent when staircase (tf exponential_decay)."""
    p = step / decay_steps
    return gamma ** (math.floor(p) if staircase else p)


def natural_exp_decay(step: int, *, decay_steps: int, decay_rate: float, staircase: bool) -> float:
    """exp(-decay_rate * step / decay_steps) (tf natural_exp_decay)."""
    p = step / decay_steps
    return math.exp(-decay_rate * (math.floor(p) if staircase else p))


def piecewise_constant(step: int, *, boundaries: Sequence[int], values: Sequence[float]) -> float:
    """values[i] where i = number of boundaries <= step (a boundary is where its value starts)."""
    return values[bisect.bisect_right(boundaries, step)]


def polynomial_decay(
    step: int, *, decay_steps: int, end_factor: float, power: float, cycle: bool
) -> float:
    """(1 - end) * (1 - t / T) ** power + end; cycle stretches T to the next multiple (tf)."""
    if cycle:
        decay_steps = decay_steps * max(1, math.ceil(step / decay_steps))
    else:
        step = min(step, decay_steps)
    return (1.0 - end_factor) * (1.0 - step / decay_steps) ** power + end_factor


def inverse_time_decay(step: int, *, decay_steps: int, decay_rate: float, staircase: bool) -> float:
    """1 / (1 + decay_rate * step / decay_steps) (tf inverse_time_decay)."""
    p = step / decay_steps
    return 1.0 / (1.0 + decay_rate * (math.floor(p) if staircase else p))


def cosine_decay(step: int, *, decay_steps: int, min_factor: float) -> float:
    """Half cosine from 1 to min_factor over decay_steps, then flat at min_factor."""
    t = min(step, decay_steps) / decay_steps
    return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * t))


def sgdr_cycle(step: int, first_cycle_steps: int, t_mul: float) -> tuple[int, float]:
    """(restart index, fraction of the current cycle done) for cycles T, T*t_mul, ..."""
    if t_mul == 1.0:
        i, rest = divmod(step, first_cycle_steps)
        return i, rest / first_cycle_steps
    frac = step / first_cycle_steps
    i = math.floor(math.log1p(frac * (t_mul - 1.0)) / math.log(t_mul))
    for _ in range(2):  # correct float error in the log at cycle boundaries
        if frac < (t_mul**i - 1.0) / (t_mul - 1.0):
            i -= 1
        elif frac >= (t_mul ** (i + 1) - 1.0) / (t_mul - 1.0):
            i += 1
    start = (t_mul**i - 1.0) / (t_mul - 1.0)
    return i, (frac - start) / t_mul**i


def cosine_decay_restarts(
    step: int, *, first_cycle_steps: int, t_mul: float, m_mul: float, min_factor: float
) -> float:
    """SGDR (tf cosine_decay_restarts): cycle i lasts T*t_mul**i and peaks at m_mul**i."""
    i, frac = sgdr_cycle(step, first_cycle_steps, t_mul)
    cos = 0.5 * m_mul**i * (1.0 + math.cos(math.pi * frac))
    return (1.0 - min_factor) * cos + min_factor


def step_noise(seed: int, step: int) -> float:
    """Standard normal draw that depends only on (seed, step): resumable, global RNGs untouched."""
    return float(np.random.default_rng([seed, step]).standard_normal())


def linear_cosine_decay(
    step: int,
    *,
    decay_steps: int,
    num_periods: float,
    alpha: float,
    beta: float,
    noise: float = 0.0,
    noise_decay: float = 0.55,
    noise_seed: int = 0,
) -> float:
    """(alpha + linear + eps) * cosine + beta (tf [noisy_]linear_cosine_decay), clipped at 0.

    eps ~ N(0, noise / (1 + step) ** noise_decay); noise = 0 gives plain linear-cosine.
    """
    t = min(step, decay_steps)
    linear = (decay_steps - t) / decay_steps
    cosine = 0.5 * (1.0 + math.cos(math.pi * 2.0 * num_periods * t / decay_steps))
    eps = 0.0
    if noise > 0.0:
        eps = math.sqrt(noise / (1.0 + t) ** noise_decay) * step_noise(noise_seed, t)
    return max(0.0, (alpha + linear + eps) * cosine + beta)
