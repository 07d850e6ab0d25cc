"""Pure lr-multiplier formulas (TensorFlow decay semantics).

Every formula maps an optimizer step index (0-based, counted from the end of warm-up) to a
multiplier of the peak lr, so one function serves every param group and keeps their ratios.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

import numpy as np


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
    """(alpha + linear + eps) * cosine + beta (tf [noisy_]linear_cosine_decay), at least beta.

    eps ~ N(0, noise / (1 + step) ** noise_decay); noise = 0 gives plain linear-cosine (never
    below beta). A negative draw would take tf's lr to zero or below: here it stops at beta.
    """
    t = min(step, decay_steps)
    linear = (decay_steps - t) / decay_steps
    cosine = 0.5 * (1.0 + math.cos(math.pi * 2.0 * num_periods * t / decay_steps))
    eps = 0.0
    if noise > 0.0:
        eps = math.sqrt(noise / (1.0 + t) ** noise_decay) * step_noise(noise_seed, t)
    return max(beta, (alpha + linear + eps) * cosine + beta)
