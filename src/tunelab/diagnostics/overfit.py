"""Overfit a tiny subset first (seed 003): a healthy model and pipeline drive the training loss on a
few examples to ~zero; if they cannot, there is a bug. Turning regularisation off is the config's job."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

BatchFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class OverfitResult:
    passed: bool
    final_loss: float
    steps: int
    message: str
    losses: list[float] = field(default_factory=list)


def overfit_tiny_subset(
    model: nn.Module,
    make_optimizer: Callable[..., torch.optim.Optimizer],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    n_examples: int = 32,
    max_steps: int = 500,
    target_loss: float = 0.05,
    lr: float | None = None,
    seed: int = 0,
    batch_fn: BatchFn | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
) -> OverfitResult:
    """Full-batch training of a copy of `model` on n_examples seeded examples until the loss is
    below target_loss or max_steps pass. batch_fn (x, y) -> (x, y), if given, is applied every step
    (the data pipeline under test)."""
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(y), generator=gen)[: min(n_examples, len(y))]
    net = copy.deepcopy(model)
    net.train()
    device = next(net.parameters()).device
    xs, ys = x[idx].to(device), y[idx].to(device)
    optimizer = make_optimizer(list(net.parameters()), lr=lr)
    losses: list[float] = []
    value = float("nan")
    for _ in range(max_steps):
        bx, by = batch_fn(xs, ys) if batch_fn else (xs, ys)
        loss = loss_fn(net(bx), by)
        value = loss.item()
        losses.append(value)
        if value <= target_loss or not math.isfinite(value):
            break
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    steps, n = len(losses), len(idx)
    passed = value <= target_loss
    if passed:
        message = (
            f"loss reached {value:.3g} on {n} examples after {steps} steps (target {target_loss})"
        )
    else:
        message = (
            f"loss stayed at {value:.3g} after {steps} steps on {n} examples (target {target_loss}): "
            "likely a bug in the model or data pipeline"
        )
    return OverfitResult(passed, value, steps, message, losses)
