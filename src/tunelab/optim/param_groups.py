"""Optimizer parameter groups: weight-decay exclusion and fine-tuning learning-rate split."""

from __future__ import annotations

from torch import nn

NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)


def no_decay_names(model: nn.Module) -> set[str]:
    """Names of biases and normalisation parameters (conventionally excluded from weight decay)."""
    names = set()
    for mod_name, module in model.named_modules():
        for p_name, _ in module.named_parameters(recurse=False):
            full = f"{mod_name}.{p_name}" if mod_name else p_name
            if p_name == "bias" or isinstance(module, NORM_TYPES):
                names.add(full)
    return names


def param_groups(
    model: nn.Module,
    *,
    lr: float,
    weight_decay: float,
    exclude_bias_norm: bool,
    backbone_lr_mult: float = 1.0,
) -> list[dict]:
    """Split parameters into (head | backbone) x (decay | no decay) groups; empty groups are dropped.

    Each group records `lr_mult` and `role` so schedules and logs can tell them apart."""
    skip_decay = no_decay_names(model) if exclude_bias_norm else set()
    head_ids = {id(p) for p in model.head.parameters()} if hasattr(model, "head") else set()
    buckets: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        role = "head" if id(p) in head_ids else "backbone"
        buckets.setdefault((role, name not in skip_decay), []).append(p)
    groups = []
    for (role, decay), params in sorted(buckets.items()):
        mult = 1.0 if role == "head" else backbone_lr_mult
        groups.append(
            {
                "params": params,
                "lr": lr * mult,
                "weight_decay": weight_decay if decay else 0.0,
                "lr_mult": mult,
                "role": role,
            }
        )
    return groups
