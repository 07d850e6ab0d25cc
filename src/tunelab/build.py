"""The one place that turns config nodes into objects (`_target_` + instantiate).

Only targets under the allow-listed prefixes may be instantiated, so a config file cannot
construct arbitrary Python objects.
"""

from __future__ import annotations

from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from tunelab.data.splits import Splits
from tunelab.optim.param_groups import param_groups

ALLOWED_PREFIXES = ("tunelab.", "torch.optim.")
META_KEYS = ("name", "exclude_bias_norm_from_decay")


def _checked(node: DictConfig, group: str) -> DictConfig:
    target = node.get("_target_")
    if not isinstance(target, str) or not target.startswith(ALLOWED_PREFIXES):
        raise ValueError(
            f"{group}._target_={target!r}: only targets under {ALLOWED_PREFIXES} may be built"
        )
    return node


def without(node: DictConfig, keys: tuple[str, ...]) -> DictConfig:
    """A copy of a config node minus bookkeeping keys that are not constructor arguments."""
    plain = OmegaConf.to_container(node, resolve=True)
    return OmegaConf.create({k: v for k, v in plain.items() if k not in keys})


def _instantiate(node: DictConfig) -> Any:
    """instantiate(), re-raising our own clear errors rather than Hydra's wrapper around them."""
    try:
        return instantiate(node)
    except InstantiationException as exc:
        if isinstance(exc.__cause__, (ValueError, KeyError, FileNotFoundError, TypeError)):
            raise exc.__cause__ from None
        raise


def build_data(cfg: DictConfig) -> Splits:
    return _instantiate(_checked(without(cfg, ("name",)), "data"))


def build_model(cfg: DictConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    factory = _instantiate(_checked(without(cfg, ("name",)), "model"))
    return factory(input_shape=tuple(input_shape), num_classes=num_classes)


def build_optimizer(
    model: nn.Module, cfg: DictConfig, backbone_lr_mult: float = 1.0
) -> torch.optim.Optimizer:
    """Optimizer over parameter groups (bias/norm decay exclusion, backbone lr multiplier)."""
    factory = _instantiate(_checked(without(cfg, META_KEYS), "optimizer"))
    groups = param_groups(
        model,
        lr=float(cfg.lr),
        weight_decay=float(cfg.get("weight_decay", 0.0)),
        exclude_bias_norm=bool(cfg.get("exclude_bias_norm_from_decay", False)),
        backbone_lr_mult=backbone_lr_mult,
    )
    return factory(groups)


def optimizer_factory(cfg: DictConfig) -> Any:
    """`make(params, lr=None)`: a fresh optimizer of the configured kind (diagnostics use it)."""
    factory = _instantiate(_checked(without(cfg, META_KEYS), "optimizer"))

    def make(params: Any, lr: float | None = None) -> torch.optim.Optimizer:
        return factory(params, lr=float(cfg.lr if lr is None else lr))

    return make


def build_tracker(cfg: DictConfig) -> Any:
    return _instantiate(_checked(without(cfg, ("name",)), "tracking"))
