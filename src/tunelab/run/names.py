"""Run names that say what differs between the runs beside them in the MLflow table: a multirun
job's swept values (`optimizer=sgd`), a trial's number and parameters (`trial 7 lr=0.012`), one
seed of a trial (`seed 3`) and one confirmation seed of a study cell (`cell adamw / seed 2`)."""

from __future__ import annotations

from typing import Any

from tunelab.config.identity import override_key
from tunelab.tags import ROLE, Role

MAX_LEN = 250  # MLflow's limit on a run name


def short(value: Any) -> str:
    """A value as a person reads it in a table: floats to 3 significant digits."""
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def _leaves(keys: list[str]) -> dict[str, str]:
    """Each dotted key by its last part (`optimizer.lr` -> lr), unless two keys share it."""
    leaf = {k: k.rsplit(".", 1)[-1] for k in keys}
    shared = {v for v in leaf.values() if list(leaf.values()).count(v) > 1}
    return {k: (k if v in shared else v) for k, v in leaf.items()}


def trial_name(number: int, params: dict[str, Any]) -> str:
    names = _leaves(list(params))
    parts = [f"{names[k]}={short(v)}" for k, v in params.items()]
    return " ".join([f"trial {number}", *parts])[:MAX_LEN]


def swept_values(overrides: list[str], swept: str) -> list[str]:
    """The overrides of a job that set one of its sweep's swept keys (comma-separated)."""
    keys = set(swept.split(","))
    return [o for o in overrides if override_key(o) in keys]


def job_name(overrides: list[str], tags: dict[str, str], seed: Any) -> str:
    """The name of one training run, from its (non-hydra) overrides and its context's tags."""
    role = tags.get(ROLE)
    if role == Role.SEED:
        return f"seed {seed}"
    if role == Role.CONFIRM and tags.get("cell"):
        return f"cell {tags['cell']} / seed {seed}"
    if tags.get("swept") and (values := swept_values(overrides, tags["swept"])):
        return " ".join(values)[:MAX_LEN]
    return ",".join(overrides)[:MAX_LEN] or "default"
