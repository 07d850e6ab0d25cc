"""A study's configuration (`hydra.sweeper` of hydra/sweeper=tunelab_study) as plain data.

Overrides of one job, later groups winning on the same key: the study's `fixed` caveats, the command
line, the cell's scientific value, then the cell's nuisance parameters (searched or best).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

from tunelab.config.identity import digest, is_volatile, override_key
from tunelab.config.space import to_overrides
from tunelab.tuning.settings import StudySweeperConf

_UNSAFE = re.compile(r"[^\w.\-]+")


@dataclass(frozen=True)
class Cell:
    """One value of the scientific hyperparameter: its overrides and its own nuisance space."""

    name: str
    overrides: tuple[str, ...]
    space: dict[str, str] = field(default_factory=dict)


@dataclass
class StudySpec:
    name: str
    goal: str
    experiment: str
    scientific: str
    cells: list[Cell]
    fixed: list[str]
    arguments: list[str]
    n_trials: int
    search_seeds: list[int] | None
    seeds: list[int]
    metric: str
    direction: str
    settings: StudySweeperConf  # hydra.sweeper, as the plugin built it
    checks: dict[str, Any]
    base: list[str] = field(default_factory=list)
    baseline: str | None = None  # the cell every other is compared with (None: all pairs)
    vary_split: bool = True

    def cell_arguments(self, cell: Cell) -> list[str]:
        """Overrides every job of this cell starts from (fixed < command line < scientific value)."""
        return merge_overrides(self.base, self.fixed, self.arguments, list(cell.overrides))

    def signature(self) -> str:
        """What must not change for a stored study to be resumed (budgets and seeds may grow;
        settings that do not change results, such as threads or tracking, may change too)."""
        plain = {
            "fixed": self.fixed,
            "arguments": sorted(a for a in self.arguments if not is_volatile(override_key(a))),
            "cells": [[c.name, list(c.overrides), c.space] for c in self.cells],
            "objective": [self.metric, self.direction],
        }
        return digest(plain)


def merge_overrides(*groups: list[str]) -> list[str]:
    """Concatenate override lists; a later override of the same key replaces the earlier one."""
    out: dict[str, str] = {}
    for group in groups:
        for line in group:
            key = override_key(line)
            out.pop(key, None)
            out[key] = line
    return list(out.values())


def format_override(key: str, value: Any) -> str:
    """`key=value` in Hydra's grammar (lists as `[a,b]`)."""
    if isinstance(value, (list, tuple)):
        items = [to_overrides({"v": v})[0][2:] for v in value]
        return f"{key}=[{','.join(items)}]"
    return to_overrides({key: value})[0]


def cell_name(value: Any) -> str:
    text = f"{value:g}" if isinstance(value, float) else str(value)
    return _UNSAFE.sub("_", text).strip("_") or "cell"


def _cells(scientific: dict[str, Any], nuisance: dict[str, Any]) -> list[Cell]:
    key = str(scientific.get("name") or "scientific")
    values = scientific.get("values")
    if not values:
        raise ValueError("hydra.sweeper.scientific.values is empty: list the values to compare")
    if isinstance(values, dict):
        pairs = []
        for name, ovs in values.items():
            ovs = [ovs] if isinstance(ovs, str) else list(ovs or [])
            pairs.append((cell_name(name), tuple(str(o) for o in ovs)))
    else:
        pairs = [(cell_name(v), (format_override(key, v),)) for v in values]
    names = [n for n, _ in pairs]
    if len(set(names)) != len(names):
        raise ValueError(f"scientific values give duplicate cell names: {names}")
    common = dict(nuisance.get("common") or {})
    per_cell = dict(nuisance.get("cells") or {})
    unknown = set(map(cell_name, per_cell)) - set(names)
    if unknown:
        raise ValueError(f"nuisance.cells names unknown cells {sorted(unknown)}; cells are {names}")
    spaces = {cell_name(k): dict(v or {}) for k, v in per_cell.items()}
    return [Cell(n, ovs, {**common, **spaces.get(n, {})}) for n, ovs in pairs]


def _seeds(settings: StudySweeperConf) -> list[int]:
    seeds = settings.seeds
    if isinstance(seeds, int):
        if seeds < 1:
            raise ValueError("hydra.sweeper.seeds must be >= 1 (confirmation seeds per cell)")
        return list(range(settings.seed_start, settings.seed_start + seeds))
    return [int(s) for s in seeds]


def parse(settings: StudySweeperConf, config: DictConfig, arguments: list[str]) -> StudySpec:
    """The study from the sweeper's settings, the composed master config and the command line."""
    sel = OmegaConf.select
    metric = sel(config, "objective.metric", default="val/acc")
    direction = sel(config, "objective.direction", default="maximize")
    # the study's MLflow experiment, also passed to its jobs: command line > sweeper conf > config
    given = [o.split("=", 1)[1] for o in arguments if override_key(o) == "experiment"]
    experiment = (given[-1] if given else None) or settings.experiment
    base = [format_override("experiment", experiment)] if experiment and not given else []
    experiment = experiment or sel(config, "experiment", default=None) or "tunelab"
    name = settings.study_name or f"{experiment}-study"
    fixed = [format_override(k, v) for k, v in settings.fixed.items()]
    search_seeds = settings.search_seeds
    scientific, nuisance = (
        dataclasses.asdict(settings.scientific),
        dataclasses.asdict(settings.nuisance),
    )
    return StudySpec(
        name=cell_name(name),
        goal=settings.goal,
        experiment=str(experiment),
        scientific=settings.scientific.name or "scientific",
        cells=_cells(scientific, nuisance),
        fixed=fixed,
        arguments=list(arguments),
        n_trials=settings.n_trials,
        search_seeds=[int(s) for s in search_seeds] if search_seeds else None,
        seeds=_seeds(settings),
        metric=metric,
        direction=direction,
        settings=settings,
        checks={
            "edge_fraction": settings.edge_fraction,
            "top_k": settings.top_k_curves,
            "bootstrap": settings.bootstrap,
            "alpha": settings.alpha,
            "min_effect": settings.min_effect,
        },
        base=base,
        baseline=_baseline(scientific, nuisance),
        vary_split=settings.vary_split,
    )


def _baseline(scientific: dict[str, Any], nuisance: dict[str, Any]) -> str | None:
    name = scientific.get("baseline")
    if name is None:
        return None
    cells = [c.name for c in _cells(scientific, nuisance)]
    if cell_name(name) not in cells:
        raise ValueError(f"hydra.sweeper.scientific.baseline={name!r} is not a cell: {cells}")
    return cell_name(name)
