"""Learning-rate range test: one short run with the lr growing exponentially, loss against lr."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import nn

OptimizerFactory = Callable[..., torch.optim.Optimizer]  # (params, lr=None) -> Optimizer
RULE = "steepest_descent_of_trend"  # argmin d trend / d log10(lr), up to the trend minimum


@dataclass
class LRRangeResult:
    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    suggested_lr: float
    rule: str
    diverged: bool = False  # stopped early because the smoothed loss exploded
    trend: list[float] = field(
        default_factory=list
    )  # centred (no-lag) smoothed loss the rule reads

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def lr_range_test(
    model: nn.Module,
    make_optimizer: OptimizerFactory,
    x: torch.Tensor | None = None,
    y: torch.Tensor | None = None,
    *,
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]] | None = None,
    min_lr: float = 1e-7,
    max_lr: float = 10.0,
    num_steps: int = 100,
    batch_size: int = 64,
    smoothing: float = 0.05,
    diverge_factor: float = 4.0,
    seed: int = 0,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
) -> LRRangeResult:
    """Train a copy of `model` for up to num_steps minibatches, lr from min_lr to max_lr
    geometrically; stop once the smoothed loss exceeds diverge_factor x its best. The minibatches
    are seeded draws from (x, y), or the next ones of `batches` (streamed data).

    `smoothed` is the bias-corrected EMA of the losses that the stop test uses.
    Suggestion (`rule`): the lr where the loss falls fastest per decade of lr, searched up to the
    minimum (fast learning, well below divergence), read from `trend`: a centred running median+mean
    over 5% of the steps each side, so neither the EMA's lag nor the divergent tail shifts it.
    Param groups keep their lr ratios."""
    if not 0 < min_lr < max_lr or num_steps < 2:
        raise ValueError(
            f"lr range test needs 0 < min_lr < max_lr and num_steps >= 2 (got {min_lr}, {max_lr}, {num_steps})"
        )
    if (batches is None) == (x is None or y is None):
        raise ValueError("lr range test needs either x and y or batches")
    net = copy.deepcopy(model)
    net.train()
    device = next(net.parameters()).device
    optimizer = make_optimizer(list(net.parameters()), lr=min_lr)
    base = [g["lr"] / min_lr for g in optimizer.param_groups]  # each group's multiplier
    if batches is None:
        gen = torch.Generator().manual_seed(seed)
        batches = ((x[i], y[i]) for i in _batches(len(y), batch_size, gen))
    ratio = (max_lr / min_lr) ** (1 / (num_steps - 1))
    lrs: list[float] = []
    losses: list[float] = []
    smoothed: list[float] = []
    avg, best, diverged = 0.0, math.inf, False
    for step in range(num_steps):
        lr = min_lr * ratio**step
        for g, mult in zip(optimizer.param_groups, base, strict=True):
            g["lr"] = lr * mult
        bx, by = next(batches)
        loss = loss_fn(net(bx.to(device)), by.to(device))
        value = loss.item()
        lrs.append(lr)
        losses.append(value)
        if not math.isfinite(value):
            smoothed.append(math.inf)
            diverged = True
            break
        avg = smoothing * value + (1 - smoothing) * avg
        smooth = avg / (1 - (1 - smoothing) ** (step + 1))  # bias-corrected EMA
        smoothed.append(smooth)
        best = min(best, smooth)
        if smooth > diverge_factor * best:
            diverged = True
            break
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    trend = _centred_trend(losses, max(1, round(0.05 * num_steps)))
    return LRRangeResult(lrs, losses, smoothed, _suggest(lrs, trend), RULE, diverged, trend)


def plot_lr_range(result: LRRangeResult) -> Figure:
    """Loss (raw and smoothed) against lr on a log axis, with the suggested lr marked."""
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    ax.plot(result.lrs, result.losses, alpha=0.3, label="loss")
    trend = result.trend or result.smoothed
    ax.plot(result.lrs, trend, label="centred trend")
    k = int(np.argmin(trend))
    finite = [v for v in result.losses[: k + 1] + trend if math.isfinite(v)]
    top, low = max(trend[: k + 1]), min(finite)  # hide the divergent tail's scale
    pad = top - low + 1e-12
    ax.set_ylim(low - 0.05 * pad, top + 0.3 * pad)
    ax.axvline(
        result.suggested_lr, color="red", ls="--", label=f"suggested lr {result.suggested_lr:.2g}"
    )
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title(f"lr range test ({result.rule})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _centred_trend(values: list[float], half_width: int) -> list[float]:
    """Centred running median (robust to spikes and to the divergent tail), then a centred running
    mean of the same width: a smooth curve that does not lag behind the lr."""
    finite = [x for x in values if math.isfinite(x)]
    worst = max(finite) if finite else 0.0
    v = np.asarray([x if math.isfinite(x) else worst for x in values], dtype=float)
    n, h = len(v), half_width
    med = np.array([np.median(v[max(0, i - h) : i + h + 1]) for i in range(n)])
    return [float(np.mean(med[max(0, i - h) : i + h + 1])) for i in range(n)]


def _suggest(lrs: list[float], smooth: list[float]) -> float:
    """lr of the steepest descent of `smooth` per decade, up to its minimum."""
    end = int(np.argmin(smooth)) + 1
    if end < 3:
        return lrs[0]
    slope = np.gradient(np.asarray(smooth[:end]), np.log10(lrs[:end]))
    return lrs[int(np.argmin(slope))]


def _batches(n: int, batch_size: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless seeded minibatch indices, reshuffled every pass."""
    bs = min(batch_size, n)
    while True:
        perm = torch.randperm(n, generator=gen)
        for start in range(0, n - bs + 1, bs):
            yield perm[start : start + bs]
