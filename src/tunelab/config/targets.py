"""Only code the project ships runs from config.

Every `_target_` anywhere in a composed config (outside Hydra's own `hydra` node) must be exactly
one the config groups name (`config/groups.py`), or one a config *file* lists under
`allowed_targets`: a user's own model or dataset, added in a file on Hydra's search path. Neither
`_target_` nor `allowed_targets` can be set or added from the command line, where Hydra itself
would otherwise build a `hydra.callbacks` entry before any tunelab code runs."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from tunelab.config import groups

SHIPPED = frozenset(target for table in groups.BY_TARGET.values() for target in table)
GUARDED = ("_target_", "allowed_targets")


def allowed(cfg: DictConfig | None) -> frozenset[str]:
    """The shipped targets plus the config's own `allowed_targets`."""
    extra = OmegaConf.select(cfg, "allowed_targets", default=None) if cfg is not None else None
    return SHIPPED | frozenset(str(t) for t in (extra or []))


def command_line_problem(args: list[str]) -> str | None:
    """Why a command line may not run, when an argument sets or adds a guarded key."""
    for arg in args:
        hit = next((g for g in GUARDED if g in arg), None)
        if hit:
            return (
                f"{arg!r}: {hit} cannot be set from the command line; put a new class in a config "
                "file on Hydra's search path and list it under allowed_targets there (README: "
                "Your own dataset)"
            )
    return None


def problems(cfg: Any, allow: frozenset[str], prefix: str = "") -> list[str]:
    """Every `_target_` under cfg (a composed config, or the group node `prefix`) that may not be
    built. Interpolations are not resolved: a target must be written out."""
    plain = OmegaConf.to_container(cfg, resolve=False) if OmegaConf.is_config(cfg) else cfg
    return _walk(plain, allow, prefix)


def _walk(node: Any, allow: frozenset[str], path: str) -> list[str]:
    if isinstance(node, dict):
        items = list(node.items())
    elif isinstance(node, (list, tuple)):
        items = list(enumerate(node))
    else:
        return []
    out = []
    for key, child in items:
        if path == "" and key == "hydra":
            continue
        here = f"{path}.{key}" if path else str(key)
        if key == "_target_" and str(child) not in allow:
            out.append(
                f"{here}={child!r} is not allowed: only the classes and functions tunelab's config "
                "groups name (or a config file's allowed_targets) may be built"
            )
        elif key != "_target_":
            out += _walk(child, allow, here)
    return out
