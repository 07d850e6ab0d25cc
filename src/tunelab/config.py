"""Validation of a composed config: bad values fail here, before any run, checkpoint or directory.

Hydra already rejects unknown keys and unknown group options at compose time; this module checks
values: types, ranges and allowed choices, naming the key, the value and what is allowed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf


class ConfigError(ValueError):
    """A configuration value that cannot work; the message says which, why and what is allowed."""


Check = Callable[[Any], str | None]  # returns what is allowed when the value is bad, else None


def number(
    lo: float = -math.inf,
    hi: float = math.inf,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
    integer: bool = False,
    optional: bool = False,
) -> Check:
    kind = "an integer" if integer else "a number"
    lb, rb = "(" if lo_open else "[", ")" if hi_open else "]"
    allowed = f"{kind} in {lb}{lo:g}, {hi:g}{rb}" + (" or null" if optional else "")

    def check(v: Any) -> str | None:
        if v is None:
            return None if optional else allowed
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return allowed
        if integer and not float(v).is_integer():
            return allowed
        if not math.isfinite(float(v)):
            return allowed
        if v < lo or v > hi or (lo_open and v == lo) or (hi_open and v == hi):
            return allowed
        return None

    return check


def one_of(*choices: Any) -> Check:
    return lambda v: None if v in choices else f"one of {list(choices)}"


def betas(v: Any) -> str | None:
    ok = (
        isinstance(v, (list, tuple))
        and len(v) == 2
        and all(number(0, 1, hi_open=True)(b) is None for b in v)
    )
    return None if ok else "two numbers in [0, 1), e.g. [0.9, 0.999]"


POSITIVE = number(0, lo_open=True)
NON_NEGATIVE = number(0)
FRACTION = number(0, 1, hi_open=True)
POSITIVE_INT = number(1, integer=True)

RULES: dict[str, Check] = {
    "seed": number(0, 2**32 - 1, integer=True),
    "objective.direction": one_of("maximize", "minimize"),
    "optimizer.lr": POSITIVE,
    "optimizer.weight_decay": NON_NEGATIVE,
    "optimizer.momentum": FRACTION,
    "optimizer.dampening": FRACTION,
    "optimizer.eps": POSITIVE,
    "optimizer.betas": betas,
    "optimizer.alpha": FRACTION,
    "optimizer.rho": FRACTION,
    "optimizer.lr_decay": NON_NEGATIVE,
    "optimizer.momentum_decay": NON_NEGATIVE,
    "trainer.max_epochs": POSITIVE_INT,
    "trainer.batch_size": POSITIVE_INT,
    "trainer.grad_accum_steps": POSITIVE_INT,
    "trainer.grad_clip_norm": number(0, lo_open=True, optional=True),
    "trainer.label_smoothing": FRACTION,
    "trainer.device": one_of("auto", "cpu", "cuda", "mps"),
    "trainer.precision": one_of("fp32", "bf16"),
    "trainer.num_threads": number(1, integer=True, optional=True),
    "trainer.checkpoint_every_epochs": number(0, integer=True),
    "trainer.resume": one_of("auto", "never", "must"),
    "trainer.early_stopping.patience": number(0, integer=True),
    "trainer.early_stopping.min_delta": NON_NEGATIVE,
    "model.width": POSITIVE_INT,
    "model.depth": number(0, integer=True),
    "model.kernel_size": POSITIVE_INT,
    "model.dropout": FRACTION,
    "data.val_fraction": number(0, 1, lo_open=True, hi_open=True),
    "finetune.freeze_backbone_epochs": number(0, integer=True),
    "finetune.backbone_lr_mult": NON_NEGATIVE,
    "tracking.metrics_every_s": NON_NEGATIVE,
}


def validate(cfg: DictConfig, *, check_data: bool = True) -> None:
    """Raise ConfigError listing every bad value in cfg; check_data also loads local .npz arrays."""
    problems = []
    for key, check in RULES.items():
        node = OmegaConf.select(cfg, key, default="__absent__", throw_on_missing=False)
        if isinstance(node, str) and node == "__absent__":
            continue
        value = OmegaConf.to_container(node) if OmegaConf.is_config(node) else node
        allowed = check(value)
        if allowed is not None:
            problems.append(f"{key}={value!r} is invalid: expected {allowed}")
    problems += _path_problems(cfg)
    if check_data and not problems:
        problems += _npz_problems(cfg)
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))


def _path_problems(cfg: DictConfig) -> list[str]:
    """Local data and checkpoint paths must exist before anything starts."""
    out = []
    for key in ("data.path", "finetune.init_checkpoint"):
        parent, leaf = key.split(".")
        present = leaf in cfg[parent].keys() if parent in cfg else False  # noqa: SIM118 (??? is not "in")
        if present and OmegaConf.is_missing(cfg[parent], leaf):
            out.append(
                f"{key} is required for {parent}={cfg[parent].get('name')!r}: give {key}=/local/path"
            )
            continue
        value = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
        if value is not None and not Path(str(value)).expanduser().exists():
            out.append(f"{key}={value!r}: no such file or directory")
    return out


def _npz_problems(cfg: DictConfig) -> list[str]:
    """A local .npz must hold usable arrays (shapes, labels, finite values): load it to find out."""
    data = cfg.get("data")
    if data is None or not str(data.get("_target_", "")).endswith(".npz"):
        return []
    from tunelab.build import build_data

    path = str(data.path)
    try:
        build_data(data)
    except Exception as exc:  # every loader complaint: missing keys, shapes, NaN, not an npz
        text = str(exc.args[0] if isinstance(exc, KeyError) and exc.args else exc)
        first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        return [first if first.startswith("data.") else f"data.path={path!r}: {first}"]
    return []
