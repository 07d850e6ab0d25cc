"""The up-front check of a composed config: every key of every group, before any run, directory,
lock or study exists, in well under a second (no torch import). Each problem names the key, the
value and what is allowed; all of them are reported at once.

What is checked: every `_target_` against the exact allow-list (config/targets.py); every setting
of every group node against its table (config/groups.py): unknown keys, types, ranges, choices;
the cross-key rules (a warm-up shorter than the run, a plateau monitor or stopping metric that
the epochs report; an objective or stopping metric that is one of the task's, in its direction,
config/tasks.py); local paths that must exist and, when the caller passes the check
(`tunelab.build.file_problems`), the files behind them: passed in, so that this check imports no torch.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from tunelab.config import data_rules, groups, targets, tasks


class ConfigError(ValueError):
    """A configuration value that cannot work; the message says which, why and what is allowed."""


def resolved_plain(cfg: DictConfig) -> dict[str, Any]:
    """cfg without its hydra node, resolved to plain containers; an interpolation that cannot
    resolve is a ConfigError."""
    try:
        own = OmegaConf.masked_copy(cfg, [k for k in cfg.keys() if k != "hydra"])  # noqa: SIM118
        return OmegaConf.to_container(own, resolve=True, throw_on_missing=False)
    except Exception as exc:  # an interpolation that cannot resolve
        raise ConfigError(f"invalid configuration: {exc}") from None


def validate(
    cfg: DictConfig, *, check_files: Callable[[DictConfig], list[str]] | None = None
) -> None:
    """Raise ConfigError listing every problem of cfg; with check_files (`build.file_problems`)
    also, once every other key is right, the problems of the files behind its local paths (what
    a .npz holds, an image folder's layout): config itself reads no data and imports no torch."""
    plain = resolved_plain(cfg)
    problems = targets.problems(cfg, targets.allowed(cfg))
    problems += _top_problems(plain)
    for group in groups.NODE_GROUPS:
        if isinstance(plain.get(group), dict):
            problems += group_problems(group, plain[group])
    problems += _cross_problems(plain)
    problems += data_rules.problems(plain)  # augment node, augmentation vs data
    problems += _path_problems(cfg)
    if check_files is not None and not problems:
        problems += check_files(cfg)
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))


def _bad(key: str, value: Any, allowed: str) -> str:
    return f"{key}={value!r} is invalid: expected {allowed}"


def _top_problems(plain: dict[str, Any]) -> list[str]:
    out = []
    for key, value in plain.items():
        if key in groups.TOP:
            allowed = groups.TOP[key](value)
            out += [_bad(key, value, allowed)] if allowed else []
        elif key not in groups.TOP_NODES:
            known = sorted([*groups.TOP, *groups.TOP_NODES])
            out.append(f"{key} is not a setting: the top-level keys are {known}")
    return out


def group_problems(group: str, node: dict[str, Any]) -> list[str]:
    table = groups.settings_of(group, node)
    if table is None:
        return []  # a user's own target (allowed_targets): its settings are the user's
    option = node.get("name") or node.get("_target_")
    out = []
    for key, value in node.items():
        if key in groups.BOOKKEEPING and key != "name":
            continue
        check = table.get(key, groups.FINETUNE.get("name") if key == "name" else None)
        if check is None:
            known = sorted(k for k in table if k != "name")
            where = f"{group}={option}" if option else group
            out.append(f"{group}.{key} is not a setting of {where}; its settings are {known}")
        elif (allowed := check(value)) is not None:
            out.append(_bad(f"{group}.{key}", value, allowed))
    if group == "trainer" and isinstance(node.get("early_stopping"), dict):
        for key, value in node["early_stopping"].items():
            check = groups.EARLY_STOPPING.get(key)
            if check is None:
                known = sorted(groups.EARLY_STOPPING)
                out.append(
                    f"trainer.early_stopping.{key} is not a setting; its settings are {known}"
                )
            elif (allowed := check(value)) is not None:
                out.append(_bad(f"trainer.early_stopping.{key}", value, allowed))
    return out


def _cross_problems(plain: dict[str, Any]) -> list[str]:
    """Rules between keys: what one setting allows depends on another."""
    out = []
    sched, trainer = plain.get("scheduler") or {}, plain.get("trainer") or {}
    warmup, epochs = sched.get("warmup_epochs"), trainer.get("max_epochs")
    numbers = all(isinstance(v, (int, float)) for v in (warmup, epochs))
    if numbers and warmup > 0 and warmup >= epochs:
        out.append(
            f"scheduler.warmup_epochs={warmup!r} is invalid: expected less than "
            f"trainer.max_epochs={epochs}"
        )
    if sched.get("name") != "plateau" and sched.get("monitor") is not None:
        out.append("scheduler.monitor is a setting of scheduler=plateau only")
    refit = (plain.get("confirm") or {}).get("refit")
    if refit is not None and sched.get("monitor") is not None:
        out.append(
            f"confirm.refit={refit!r} cannot follow scheduler={sched.get('name')}: a refit trains "
            "on the validation split its monitor would watch (choose a schedule of epochs)"
        )
    return out + tasks.metric_problems(plain)


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
