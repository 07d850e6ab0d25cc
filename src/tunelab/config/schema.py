"""Validation of a composed config: bad values fail here, before any run, checkpoint or directory.

Hydra rejects unknown group options at compose time; this module checks values (types, ranges,
allowed choices, scheduler knobs), naming the key, the value and what is allowed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from tunelab.config import rules as r


class ConfigError(ValueError):
    """A configuration value that cannot work; the message says which, why and what is allowed."""


RULES: dict[str, r.Check] = {
    "seed": r.number(0, 2**32 - 1, integer=True),
    "objective.direction": r.one_of("maximize", "minimize"),
    "optimizer.lr": r.POSITIVE,
    "optimizer.weight_decay": r.NON_NEGATIVE,
    "optimizer.momentum": r.FRACTION,
    "optimizer.dampening": r.FRACTION,
    "optimizer.eps": r.POSITIVE,
    "optimizer.betas": r.betas,
    "optimizer.alpha": r.FRACTION,
    "optimizer.rho": r.FRACTION,
    "optimizer.lr_decay": r.NON_NEGATIVE,
    "optimizer.momentum_decay": r.NON_NEGATIVE,
    "trainer.max_epochs": r.POSITIVE_INT,
    "trainer.batch_size": r.POSITIVE_INT,
    "trainer.grad_accum_steps": r.POSITIVE_INT,
    "trainer.grad_clip_norm": r.OPTIONAL_POSITIVE,
    "trainer.label_smoothing": r.FRACTION,
    "trainer.device": r.one_of("auto", "cpu", "cuda", "mps"),
    "trainer.precision": r.one_of("fp32", "bf16"),
    "trainer.num_threads": r.OPTIONAL_POSITIVE_INT,
    "trainer.checkpoint_every_epochs": r.NON_NEGATIVE_INT,
    "trainer.resume": r.one_of("auto", "never", "must"),
    "trainer.early_stopping.patience": r.NON_NEGATIVE_INT,
    "trainer.early_stopping.min_delta": r.NON_NEGATIVE,
    "model.width": r.POSITIVE_INT,
    "model.depth": r.NON_NEGATIVE_INT,
    "model.kernel_size": r.POSITIVE_INT,
    "model.dropout": r.FRACTION,
    "data.val_fraction": r.OPEN_UNIT,
    "finetune.freeze_backbone_epochs": r.NON_NEGATIVE_INT,
    "finetune.backbone_lr_mult": r.NON_NEGATIVE,
    "tracking.metrics_every_s": r.NON_NEGATIVE,
}

# The knobs of every conf/scheduler/<name>.yaml; `warmup` holds the keys every schedule has.
SCHEDULER_KNOBS: dict[str, dict[str, r.Check]] = {
    "warmup": {"warmup_epochs": r.NON_NEGATIVE, "warmup_start_factor": r.UNIT},
    "constant": {},
    "step": {"step_epochs": r.POSITIVE, "gamma": r.SHARE},
    "multistep": {"milestones_epochs": r.increasing_epochs, "gamma": r.SHARE},
    "exponential": {
        "gamma": r.POSITIVE, "decay_epochs": r.POSITIVE, "staircase": r.boolean,
        "decay_rate": r.OPTIONAL_NON_NEGATIVE,
    },
    "piecewise": {"boundaries_epochs": r.increasing_epochs},
    "polynomial": {
        "power": r.POSITIVE, "end_lr_factor": r.NON_NEGATIVE, "end_lr": r.OPTIONAL_NON_NEGATIVE,
        "decay_epochs": r.OPTIONAL_POSITIVE, "cycle": r.boolean,
    },
    "inverse_time": {"decay_rate": r.NON_NEGATIVE, "decay_epochs": r.POSITIVE, "staircase": r.boolean},
    "cosine": {"min_lr_factor": r.UNIT},
    "cosine_restarts": {
        "first_cycle_epochs": r.POSITIVE, "t_mul": r.AT_LEAST_ONE, "m_mul": r.POSITIVE,
        "min_lr_factor": r.UNIT,
    },
    "linear_cosine": {
        "num_periods": r.NON_NEGATIVE, "alpha": r.NON_NEGATIVE, "beta": r.NON_NEGATIVE,
        "noise": r.NON_NEGATIVE, "noise_decay": r.NON_NEGATIVE, "noise_seed": r.INTEGER,
    },
    "onecycle": {
        "max_lr_factor": r.POSITIVE, "max_lr": r.OPTIONAL_POSITIVE, "pct_start": r.OPEN_UNIT,
        "anneal": r.one_of("cos", "cosine", "linear"), "div_factor": r.POSITIVE,
        "final_div_factor": r.POSITIVE, "three_phase": r.boolean, "cycle_momentum": r.boolean,
        "base_momentum": r.UNIT, "max_momentum": r.UNIT,
    },
    "plateau": {
        "mode": r.one_of("min", "max"), "factor": r.OPEN_UNIT, "patience": r.NON_NEGATIVE_INT,
        "threshold": r.NON_NEGATIVE, "threshold_mode": r.one_of("rel", "abs"),
        "cooldown": r.NON_NEGATIVE_INT, "min_lr": r.NON_NEGATIVE,
    },
}  # fmt: skip


def knob_problems(schedule: str, knobs: dict[str, Any]) -> list[tuple[str, Any, str]]:
    """(key, value, allowed) for every bad knob of `schedule` present in `knobs`."""
    out = []
    for key, check in {**SCHEDULER_KNOBS["warmup"], **SCHEDULER_KNOBS.get(schedule, {})}.items():
        if key in knobs and (allowed := check(knobs[key])) is not None:
            out.append((key, knobs[key], allowed))
    return out


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
    problems += _scheduler_problems(cfg)
    problems += _path_problems(cfg)
    if check_data and not problems:
        problems += _npz_problems(cfg)
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))


def _scheduler_problems(cfg: DictConfig) -> list[str]:
    node = cfg.get("scheduler")
    if not isinstance(node, DictConfig):
        return []
    knobs = OmegaConf.to_container(node, resolve=True)
    return [
        f"scheduler.{key}={value!r} is invalid: expected {allowed}"
        for key, value, allowed in knob_problems(str(knobs.get("name")), knobs)
    ]


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
