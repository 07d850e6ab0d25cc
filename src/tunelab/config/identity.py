"""What makes two configs the same experiment: one digest for checkpoint directories, pipeline
studies and playbook-study signatures.

Settings that do not change a result (where it is tracked, how it resumes, CPU threads) are left
out, so changing them resumes the same checkpoints and the same studies."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from omegaconf import DictConfig, OmegaConf

VOLATILE = (
    "tracking",
    "trainer.resume",
    "trainer.checkpoint_dir",
    "trainer.checkpoint_every_epochs",
    "trainer.num_threads",
    "experiment",
)


def digest(obj: Any, length: int = 16) -> str:
    """sha256 of the canonical JSON of obj (sorted keys), hex, first `length` characters."""
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def is_volatile(key: str) -> bool:
    """True for a dotted key inside one of the VOLATILE settings."""
    return any(key == v or key.startswith(f"{v}.") for v in VOLATILE)


def override_key(line: str) -> str:
    """The dotted key of a command-line override (`+a.b=1`, `~a.b`, `a.b=1` -> a.b)."""
    return line.split("=", 1)[0].lstrip("+~")


def fixed_settings(cfg: DictConfig, swept: list[str]) -> dict[str, Any]:
    """What a sweep holds fixed, flattened to dotted keys: the resolved config without Hydra's
    node, the VOLATILE settings and the swept keys (a swept group drops its whole node). Two sweeps
    with other fixed settings are different experiments, whatever their search space."""
    plain = {
        key: OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
        for key, value in cfg.items()
        if key != "hydra"  # resolving it needs a job's runtime values
    }
    out: dict[str, Any] = {}

    def walk(node: Any, path: str) -> None:
        if any(path == s or path.startswith(f"{s}.") for s in swept) or is_volatile(path):
            return
        if isinstance(node, dict) and node:
            for key, child in node.items():
                walk(child, f"{path}.{key}" if path else str(key))
        else:
            out[path] = node

    walk(plain, "")
    return out


def changed_keys(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """`key: old -> new` for every key whose value differs (or that one side lacks)."""
    missing = object()
    lines = []
    for key in sorted(set(before) | set(after)):
        old, new = before.get(key, missing), after.get(key, missing)
        if old != new:
            show = ["(unset)" if v is missing else json.dumps(v, default=str) for v in (old, new)]
            lines.append(f"{key}: {show[0]} -> {show[1]}")
    return lines


def config_key(cfg: DictConfig) -> str:
    """The digest of the resolved config without its VOLATILE settings."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    for dotted in VOLATILE:
        *parents, leaf = dotted.split(".")
        node = plain
        for p in parents:
            node = node.get(p, {})
        node.pop(leaf, None)
    return digest(plain)
