"""What a `python src/train.py` command line names, checked against conf/ before Hydra composes it.

Hydra answers a misspelt key (`trainer.max_epoch=2`), a misspelt group (`optimiser=adam`) or a key
the chosen option lacks (`optimizer=adam optimizer.momentum=0.9`) with "To append to your config
use +…", which leads away from the fix: tunelab refuses new keys anyway. This check answers first,
in tunelab's words: which node or option the key is not a setting of, and the closest names that
are. It reads only the YAML files of conf/ and the sweepers' schemas (no torch, no composition)."""

from __future__ import annotations

import difflib
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml

from tunelab.config import groups
from tunelab.config.targets import command_line_problem
from tunelab.tuning.settings import StudySweeperConf, TunelabSweeperConf

SWEEPER_KEYS = sorted(
    {f.name for c in (TunelabSweeperConf, StudySweeperConf) for f in fields(c)} - {"_target_"}
)
# flags after which Hydra reads a value; a command line naming another primary config is not
# checked against conf/train.yaml
VALUE_FLAGS = (
    "--config-path",
    "-cp",
    "--config-name",
    "-cn",
    "--config-dir",
    "-cd",
    "--cfg",
    "-c",
    "--package",
    "-p",
    "--info",
    "-i",
    "--experimental-rerun",
)
OTHER_PRIMARY = ("--config-path", "-cp", "--config-name", "-cn", "--experimental-rerun")
SWEEP_GROUPS = ("search", "study")


def check(argv: list[str], conf: Path) -> tuple[list[str], list[str]]:
    """(problems, warnings) of a command line; problems stop it before Hydra starts."""
    if problem := command_line_problem(argv):
        return [problem], []
    if any(a.split("=", 1)[0] in OTHER_PRIMARY for a in argv):
        return [], []
    overrides, skip = [], False
    for arg in argv:
        if skip or arg.startswith("-"):
            skip = not skip and arg in VALUE_FLAGS
            continue
        overrides.append(arg)
    parsed = _parse(overrides)
    if parsed is None:
        return [], []  # Hydra's parser explains its own syntax errors
    chosen = _choices(conf, parsed)
    problems = [p for key in _changed_keys(parsed) if (p := _key_problem(key, chosen, conf))]
    multirun = any(a in ("-m", "--multirun") for a in argv)
    warnings = [
        f"{group}={chosen[group][0]} configures a sweep, which runs only with -m: without it this "
        f"trains one run with the config's own values (python src/train.py -m {group}=…)"
        for group in SWEEP_GROUPS
        if not multirun and chosen.get(group) and chosen[group][0] not in (None, "null")
    ]
    return problems, warnings


def _parse(overrides: list[str]) -> list[Any] | None:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        return OverridesParser.create().parse_overrides(overrides)
    except Exception:
        return None


def _changed_keys(parsed: list[Any]) -> list[str]:
    """Keys set without + / ++ / ~ (those are Hydra's and the schema's to judge)."""
    from hydra.core.override_parser.types import OverrideType

    return [o.key_or_group for o in parsed if o.type == OverrideType.CHANGE and not o.package]


def _choices(conf: Path, parsed: list[Any]) -> dict[str, list[Any]]:
    """group -> the options the command line picks (several for a sweep), else train.yaml's."""
    out: dict[str, list[Any]] = {}
    primary = yaml.safe_load((conf / "train.yaml").read_text()) or {}
    for entry in primary.get("defaults", []):
        if isinstance(entry, dict):
            for group, option in entry.items():
                if not group.startswith("optional "):
                    out[group] = [option]
    for o in parsed:
        if "." not in o.key_or_group and o.key_or_group in out:
            values = list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.value()]
            out[o.key_or_group] = [str(v) if v is not None else None for v in values]
    return out


def _key_problem(key: str, chosen: dict[str, list[Any]], conf: Path) -> str | None:
    if key.startswith("hydra"):
        return _sweeper_problem(key)
    if "/" in key:
        return None
    head, *rest = key.split(".")
    tops = sorted({*groups.TOP, *groups.TOP_NODES, *chosen} - {"hydra"})
    if head not in tops:
        return f"{head} is not a setting or a config group{_suggest(head, tops)}"
    if not rest or head not in groups.TOP_NODES:
        return None
    if head == "objective":
        known = list(groups.OBJECTIVE)
        if rest[0] not in known:
            return f"{key} is not a setting of objective{_suggest(rest[0], known, 'objective.')}"
        return None
    options = chosen.get(head) or []
    nodes = {opt: _option(conf, head, opt) for opt in options if opt not in (None, "null")}
    if not nodes or any(node is None for node in nodes.values()):
        return None  # an option from elsewhere on the search path: its keys are not known here
    lacking = [opt for opt, node in nodes.items() if not _has(node, rest)]
    if not lacking:
        return None
    opt = lacking[0]
    parent, leaf = _parent(nodes[opt], rest), rest[-1]
    siblings = sorted(parent) if isinstance(parent, dict) else []
    prefix = ".".join([head, *rest[:-1]]) + "."
    where = head if len(_all_options(conf, head)) <= 1 else f"{head}={opt}"
    others = [o for o in _all_options(conf, head) if _has(_option(conf, head, o) or {}, rest)]
    if others and not difflib.get_close_matches(leaf, siblings, n=1, cutoff=0.75):
        shown = ", ".join(s for s in siblings if s not in groups.BOOKKEEPING)
        return (
            f"{key} is not a setting of {where} (it is of {head}={', '.join(others)}); "
            f"{where}'s settings: {shown}"
        )
    return f"{key} is not a setting of {where}{_suggest(leaf, siblings, prefix)}"


def _sweeper_problem(key: str) -> str | None:
    parts = key.split(".")
    if parts[:2] != ["hydra", "sweeper"] or len(parts) < 3 or parts[2] in SWEEPER_KEYS:
        return None
    return f"{key} is not a setting of hydra.sweeper{_suggest(parts[2], SWEEPER_KEYS, 'hydra.sweeper.')}"


def _suggest(word: str, known: list[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(word, known, n=2, cutoff=0.6)
    if close:
        return "; did you mean " + " or ".join(f"{prefix}{c}" for c in close) + "?"
    return f"; its settings: {', '.join(known)}" if len(known) <= 40 else ""


def _option(conf: Path, group: str, option: str) -> dict[str, Any] | None:
    path = conf / group / f"{option}.yaml"
    if not path.is_file():
        return None
    return yaml.safe_load(path.read_text()) or {}


def _all_options(conf: Path, group: str) -> list[str]:
    return sorted(p.stem for p in (conf / group).glob("*.yaml")) if (conf / group).is_dir() else []


def _has(node: Any, path: list[str]) -> bool:
    for part in path:
        if not isinstance(node, dict):
            return True  # an index into a list value: Hydra's to judge
        if part not in node:
            return False
        node = node[part]
    return True


def _parent(node: dict[str, Any], path: list[str]) -> Any:
    for part in path[:-1]:
        node = node.get(part) if isinstance(node, dict) else None
    return node
