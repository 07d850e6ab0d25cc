"""The one place that turns config nodes into objects (`_target_` + instantiate).

A node is built only when every `_target_` in it is on the exact allow-list (config/targets.py),
and without Hydra's recursive instantiation: a nested node is passed on as data, never built.
"""

from __future__ import annotations

from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from tunelab.config import targets
from tunelab.data.images import DataError, scan
from tunelab.data.splits import Splits
from tunelab.optim.param_groups import param_groups

META_KEYS = ("name", "exclude_bias_norm_from_decay")


class TargetError(ValueError):
    """A `_target_` that is not on the allow-list."""


def _checked(node: DictConfig, group: str, allow: frozenset[str]) -> DictConfig:
    problems = targets.problems(node, allow, group)
    if problems or not isinstance(node.get("_target_"), str):
        raise TargetError("; ".join(problems) or f"{group} has no _target_")
    return node


def without(node: DictConfig, keys: tuple[str, ...]) -> DictConfig:
    """A copy of a config node minus bookkeeping keys that are not constructor arguments."""
    plain = OmegaConf.to_container(node, resolve=True)
    return OmegaConf.create({k: v for k, v in plain.items() if k not in keys})


def _instantiate(node: DictConfig, group: str, allow: frozenset[str] | None) -> Any:
    """instantiate() of a checked node, re-raising our own clear errors rather than Hydra's
    wrapper around them."""
    node = _checked(node, group, allow or targets.SHIPPED)
    try:
        return instantiate(node, _recursive_=False)
    except InstantiationException as exc:
        if isinstance(exc.__cause__, (ValueError, KeyError, FileNotFoundError, TypeError)):
            raise exc.__cause__ from None
        raise


def build_data(cfg: DictConfig, allow: frozenset[str] | None = None) -> Splits:
    return _instantiate(without(cfg, ("name",)), "data", allow)


def build_model(
    cfg: DictConfig,
    input_shape: tuple[int, ...],
    num_classes: int,
    allow: frozenset[str] | None = None,
) -> nn.Module:
    factory = _instantiate(without(cfg, ("name",)), "model", allow)
    return factory(input_shape=tuple(input_shape), num_classes=num_classes)


def build_optimizer(
    model: nn.Module,
    cfg: DictConfig,
    backbone_lr_mult: float = 1.0,
    allow: frozenset[str] | None = None,
) -> torch.optim.Optimizer:
    """Optimizer over parameter groups (bias/norm decay exclusion, backbone lr multiplier)."""
    factory = _instantiate(without(cfg, META_KEYS), "optimizer", allow)
    groups = param_groups(
        model,
        lr=float(cfg.lr),
        weight_decay=float(cfg.get("weight_decay", 0.0)),
        exclude_bias_norm=bool(cfg.get("exclude_bias_norm_from_decay", False)),
        backbone_lr_mult=backbone_lr_mult,
    )
    return factory(groups)


def optimizer_factory(cfg: DictConfig, allow: frozenset[str] | None = None) -> Any:
    """`make(params, lr=None)`: a fresh optimizer of the configured kind (diagnostics use it)."""
    factory = _instantiate(without(cfg, META_KEYS), "optimizer", allow)

    def make(params: Any, lr: float | None = None) -> torch.optim.Optimizer:
        return factory(params, lr=float(cfg.lr if lr is None else lr))

    return make


def build_tracker(cfg: DictConfig, allow: frozenset[str] | None = None) -> Any:
    return _instantiate(without(cfg, ("name",)), "tracking", allow)


def build_schedule_factory(raw: dict[str, Any]) -> Any:
    """The partial of a scheduler node (its knobs bound), for optim.lr_schedule to wrap."""
    node = OmegaConf.create(raw)
    _checked(node, "scheduler", targets.SHIPPED)
    return instantiate(node, _partial_=True, _convert_="all", _recursive_=False)


def file_problems(cfg: DictConfig) -> list[str]:
    """The problems of the files behind a config's local data paths, found before any run,
    directory, lock or study exists: a .npz is loaded to see what it holds; an image folder's
    layout is scanned (missing, no class folders, an empty class, class sets that differ)."""
    data = cfg.get("data")
    target = str(data.get("_target_", "")) if data is not None else ""
    if target == "tunelab.data.images.images" and data.get("path"):
        try:
            scan(data.path)
        except DataError as exc:
            return [str(exc)]
    elif target.endswith(".npz"):
        try:
            build_data(data)
        except Exception as exc:  # every loader complaint: missing keys, shapes, NaN, not an npz
            text = str(exc.args[0] if isinstance(exc, KeyError) and exc.args else exc)
            first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
            return [first if first.startswith("data.") else f"data.path={data.path!r}: {first}"]
    return []
