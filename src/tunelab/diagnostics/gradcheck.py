"""Gradient check: autograd against central finite differences in float64 (seed 001, 14.3.1).

Catches custom autograd.Functions and modules whose backward does not match their forward."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class GradCheckReport:
    worst_rel_error: float
    worst_param: str
    per_param: dict[
        str, float
    ]  # parameter name -> worst relative error over its sampled coordinates
    passed: bool
    tolerance: float
    coordinates: int = 0  # coordinates checked in all


def gradient_check(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
    eps: float = 1e-6,
    max_params_per_tensor: int = 16,
    tolerance: float = 1e-4,
    train_mode: bool = False,
    seed: int = 0,
) -> GradCheckReport:
    """Compare d loss / d theta from autograd with (L(theta+eps) - L(theta-eps)) / 2eps on up to
    `max_params_per_tensor` seeded coordinates of every trainable tensor of a float64 copy.

    Eval mode by default (BatchNorm running stats, no dropout); train_mode=True reseeds the RNG
    before every forward so dropout masks agree, and uses batch statistics."""
    net = copy.deepcopy(model).double()
    net.train(train_mode)
    device = next(net.parameters()).device
    x = inputs.to(device).double() if inputs.is_floating_point() else inputs.to(device)
    y = targets.to(device)
    params = [(name, p) for name, p in net.named_parameters() if p.requires_grad]
    if not params:
        raise ValueError("gradient_check: the model has no trainable parameters")

    rng_devices = [device.index or 0] if device.type == "cuda" else []

    def loss() -> torch.Tensor:
        with torch.random.fork_rng(devices=rng_devices):
            torch.manual_seed(seed)
            return loss_fn(net(x), y)

    net.zero_grad(set_to_none=True)
    loss().backward()
    analytic = {
        name: p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
        for name, p in params
    }
    gen = torch.Generator().manual_seed(seed)
    per_param: dict[str, float] = {}
    total = 0
    with torch.no_grad():
        for name, p in params:
            flat = p.view(-1)  # shares storage with p
            k = min(max_params_per_tensor, flat.numel())
            idx = torch.randperm(flat.numel(), generator=gen)[:k].tolist()
            worst = 0.0
            for i in idx:
                orig = flat[i].item()
                flat[i] = orig + eps
                plus = loss().item()
                flat[i] = orig - eps
                minus = loss().item()
                flat[i] = orig
                numeric = (plus - minus) / (2 * eps)
                exact = analytic[name].view(-1)[i].item()
                worst = max(worst, _rel_error(exact, numeric))
            per_param[name] = worst
            total += k
    worst_param = max(per_param, key=per_param.__getitem__)
    worst = per_param[worst_param]
    return GradCheckReport(worst, worst_param, per_param, worst <= tolerance, tolerance, total)


def _rel_error(a: float, b: float, floor: float = 1e-5) -> float:
    """|a - b| / max(|a|, |b|, floor): relative where gradients are sizeable, absolute near zero."""
    return abs(a - b) / max(abs(a), abs(b), floor)
