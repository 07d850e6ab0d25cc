"""Augmentation as configuration (`augment=`): batched kornia.augmentation ops on the device, after
the loader, whose randomness is a function of (seed, epoch, batch index) only.

Each batch's draws come from the global RNG re-seeded inside `torch.random.fork_rng`, so the run's
own random state (dropout, the in-memory order) is untouched and neither the worker count nor the
point where a run was killed can change what a batch sees. Mixup and cutmix return soft targets
(B, classes), which `F.cross_entropy` takes as they are; `loader.hard_labels` gives their class
ids for accuracy."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from tunelab.config.data_rules import enabled, fit_problem

Augment = Callable[[torch.Tensor, torch.Tensor, int, int, int], tuple[torch.Tensor, torch.Tensor]]


def batch_seed(seed: int, epoch: int, batch_index: int) -> int:
    """The seed of one batch's augmentation: (seed, epoch, batch index) and nothing else."""
    raw = hashlib.sha256(f"tunelab-augment:{seed}:{epoch}:{batch_index}".encode()).digest()
    return int.from_bytes(raw[:8], "big") & (2**63 - 1)


def make_augment(
    cfg: Mapping[str, Any],
    input_shape: tuple[int, ...],
    num_classes: int,
    norm: tuple[float, float] | None = None,
) -> Augment | None:
    """`augment(x, y, seed, epoch, batch_index) -> (x, target)` for the config, or None when it
    changes nothing. `norm` is the (mean, std) x is standardised with: the ops see [0, 1] pixels
    (black padding, colour policies in range) and x is standardised again after them.
    Raises ValueError, before anything runs, when the augmentation does not fit the data."""
    problem = fit_problem(cfg, input_shape)
    if problem:
        raise ValueError(problem)
    on = enabled(cfg)
    if not on:
        return None
    ops = _image_ops(on, input_shape, cfg)
    mean, std = norm or (0.0, 1.0)

    def augment(
        x: torch.Tensor, y: torch.Tensor, seed: int, epoch: int, batch_index: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        s = batch_seed(seed, epoch, batch_index)
        cuda = [x.device.index or 0] if x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(s)
            if ops is not None:
                x = (ops(x * std + mean) - mean) / std
            return _mix(x, y, on, num_classes, s)

    return augment


def _image_ops(on: dict[str, Any], input_shape: tuple[int, ...], cfg: Mapping[str, Any]) -> Any:
    """The per-image kornia ops in order: policy, pad + crop, flip, cutout (None: no image op)."""
    import kornia.augmentation as K
    from kornia.augmentation import auto

    ops: list[Any] = []
    if on.get("policy") == "trivialaugment":
        ops.append(auto.TrivialAugment())
    elif on.get("policy") == "randaugment":
        n, m = int(cfg.get("randaugment_n", 2)), int(cfg.get("randaugment_m", 9))
        ops.append(auto.RandAugment(n=n, m=m))
    if on.get("pad"):
        ops.append(K.RandomCrop(tuple(input_shape[1:]), padding=on["pad"]))
    if on.get("flip"):
        ops.append(K.RandomHorizontalFlip())
    if on.get("cutout"):
        area = on["cutout"] ** 2 / float(np.prod(input_shape[1:]))
        ops.append(K.RandomErasing(scale=(area, area), ratio=(1.0, 1.0), p=1.0))
    return torch.nn.Sequential(*ops) if ops else None


def _mix(
    x: torch.Tensor, y: torch.Tensor, on: dict[str, Any], num_classes: int, s: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch-level mixup or cutmix (one of them, at random, when both are on) with soft targets
    (1 - lam) * onehot(y) + lam * onehot(y of the partner); lam ~ Beta(alpha, alpha)."""
    import kornia.augmentation as K

    kinds = [k for k in ("mixup_alpha", "cutmix_alpha") if k in on]
    if not kinds:
        return x, y
    rng = np.random.default_rng(s)
    kind = kinds[int(rng.integers(len(kinds)))]
    alpha = on[kind]
    if kind == "mixup_alpha":
        lam = float(rng.beta(alpha, alpha))
        op = K.RandomMixUpV2(lambda_val=(lam, lam), p=1.0, data_keys=["input", "class"])
        shape = x.shape  # kornia mixes (B, C, H, W): sequences and features as 1-pixel-high images
        mixed, labels = op(x.reshape(shape[0], -1, 1, shape[-1]), y)
        x = mixed.reshape(shape)
        mixes = [(labels[:, 1], labels[:, 2])]  # kornia's mixup: lam is the partner's share
    else:
        op = K.RandomCutMixV2(
            beta=alpha, p=1.0, data_keys=["input", "class"], use_correct_lambda=True
        )
        x, labels = op(x, y)
        mixes = [(m[:, 1], 1 - m[:, 2]) for m in labels]  # cutmix: lam is the kept share
    target = F.one_hot(y, num_classes).to(x.dtype)
    for partner_class, partner_share in mixes:
        share = partner_share[:, None].to(x.dtype)
        partner = F.one_hot(partner_class.long(), num_classes).to(x.dtype)
        target = (1 - share) * target + share * partner
    return x, target
