"""The sweep grammar, in one place: Hydra's override syntax (`interval(a, b)`, `tag(log, ...)`,
`range(...)`, `choice(...)`) to Optuna distributions, their bounds for reports and checks, suggestions
for a trial, and trial values back to overrides."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

_INT_INTERVAL = re.compile(r"interval\(\s*[-+]?\d+\s*,\s*[-+]?\d+\s*\)")
_SAFE_STR = re.compile(r"[A-Za-z_][\w./\-+:@]*")
_RESERVED = {"true", "false", "null", "none", "inf", "nan"}


@dataclass(frozen=True)
class Param:
    """One searched key: its Optuna distribution and an optional (parent key, parent value) guard."""

    name: str
    dist: BaseDistribution
    condition: tuple[str, str] | None = None


def _distribution(ov: Override) -> BaseDistribution:
    """Map one parsed sweep override to an Optuna distribution."""
    sweep = ov.value()
    tags = set(getattr(sweep, "tags", set()) or set())
    if isinstance(sweep, IntervalSweep):
        lo, hi = float(sweep.start), float(sweep.end)
        raw_int = bool(_INT_INTERVAL.search(ov.input_line or ""))
        if lo >= hi:
            raise ValueError(f"{ov.key_or_group}: interval needs low < high, got ({lo}, {hi})")
        if "int" in tags or (raw_int and "float" not in tags):
            return IntDistribution(int(lo), int(hi), log="log" in tags)
        return FloatDistribution(lo, hi, log="log" in tags)
    if isinstance(sweep, RangeSweep):
        values = list(sweep.range())
        if not values:
            raise ValueError(f"{ov.key_or_group}: empty range")
        if all(isinstance(v, int) for v in values) and len(values) > 1:
            return IntDistribution(values[0], values[-1], step=int(sweep.step))
        return CategoricalDistribution(values)
    if isinstance(sweep, ChoiceSweep):
        choices = list(sweep.list)
        for c in choices:
            if not (c is None or isinstance(c, (bool, int, float, str))):
                raise ValueError(f"{ov.key_or_group}: choice values must be scalars, got {c!r}")
        return CategoricalDistribution(choices)
    raise ValueError(f"{ov.key_or_group}: unsupported sweep {sweep!r}")


def _parse(lines: list[str]) -> list[Override]:
    return OverridesParser.create().parse_overrides(lines)


def build_space(
    params: dict[str, str] | None,
    arguments: list[str],
    conditional: dict[str, dict[str, dict[str, str]]] | None = None,
) -> tuple[list[Param], list[str]]:
    """Merge `hydra.sweeper.params`, command-line sweeps and conditional params.

    Returns (space, fixed): command-line sweeps replace params of the same key; a plain command-line
    override of a searched key fixes it (it leaves the space). `fixed` are passed to every job.
    """
    space: dict[str, Param] = {}
    for ov in _parse([f"{k}={v}" for k, v in (params or {}).items()]):
        space[ov.get_key_element()] = Param(ov.get_key_element(), _distribution(ov))
    fixed: list[str] = []
    for ov in _parse(list(arguments)):
        key = ov.get_key_element()
        if ov.is_sweep_override():
            space[key] = Param(key, _distribution(ov))
        else:
            space.pop(key.lstrip("+~"), None)
            space.pop(ov.key_or_group, None)
            fixed.append(ov.input_line or "")
    for parent, branches in (conditional or {}).items():
        if parent not in space:
            raise ValueError(f"conditional parent '{parent}' is not a searched parameter")
        for value, children in (branches or {}).items():
            for ov in _parse([f"{k}={v}" for k, v in (children or {}).items()]):
                key = ov.get_key_element()
                if key in space:
                    raise ValueError(f"'{key}' is both unconditional and conditional")
                space[f"{key}|{parent}={value}"] = Param(
                    key, _distribution(ov), (parent, str(value))
                )
    return list(space.values()), fixed


def suggest(trial: optuna.Trial, space: list[Param]) -> dict[str, Any]:
    """Suggest every active parameter (define-by-run, so conditional ones appear only when active)."""
    values: dict[str, Any] = {}
    for p in space:
        if p.condition is not None and _fmt(values.get(p.condition[0])) != p.condition[1]:
            continue
        d = p.dist
        if isinstance(d, FloatDistribution):
            values[p.name] = trial.suggest_float(p.name, d.low, d.high, log=d.log, step=d.step)
        elif isinstance(d, IntDistribution):
            values[p.name] = trial.suggest_int(p.name, d.low, d.high, log=d.log, step=d.step)
        else:
            values[p.name] = trial.suggest_categorical(p.name, d.choices)
    return values


def _fmt(value: Any) -> str:
    """Format a value the way Hydra's override grammar reads it back unchanged."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return repr(value) if math.isfinite(value) else ("inf" if value > 0 else "-inf")
    s = str(value)
    if _SAFE_STR.fullmatch(s) and s.lower() not in _RESERVED:
        return s
    return quote(s)


def to_overrides(values: dict[str, Any]) -> list[str]:
    """Trial params -> Hydra overrides (`key=value`)."""
    return [f"{k}={_fmt(v)}" for k, v in values.items()]


def quote(value: str) -> str:
    """Quote an arbitrary string as a single-quoted override value."""
    return "'" + value.replace("'", "\\'") + "'"


def grid_values(space: list[Param], points: int) -> dict[str, list[Any]]:
    """Grid for GridSampler: choices as they are, intervals as `points` (log-)even values."""
    grid: dict[str, list[Any]] = {}
    for p in space:
        if p.condition is not None:
            raise ValueError("the grid sampler does not support conditional parameters")
        d = p.dist
        if isinstance(d, CategoricalDistribution):
            grid[p.name] = list(d.choices)
        elif isinstance(d, IntDistribution):
            vals = list(range(d.low, d.high + 1, d.step))
            if len(vals) > points:
                space_fn = np.geomspace if d.log else np.linspace
                vals = sorted({int(round(v)) for v in space_fn(d.low, d.high, points)})
            grid[p.name] = vals
        else:
            space_fn = np.geomspace if d.log else np.linspace
            grid[p.name] = [float(f"{v:.6g}") for v in space_fn(d.low, d.high, points)]
    return grid


def describe(space: list[Param]) -> dict[str, str]:
    """A flat, loggable description of the space (for MLflow params and study attrs)."""
    out = {}
    for p in space:
        key = p.name if p.condition is None else f"{p.name}|{p.condition[0]}={p.condition[1]}"
        out[key] = repr(p.dist)
    return out


def bounds(space: list[Param]) -> dict[str, dict[str, Any]]:
    """param -> {low, high, log} for intervals and ranges, {choices} for choices."""
    out: dict[str, dict[str, Any]] = {}
    for p in space:
        d = p.dist
        if isinstance(d, CategoricalDistribution):
            out[p.name] = {"choices": list(d.choices)}
        else:
            out[p.name] = {"low": d.low, "high": d.high, "log": bool(d.log)}
    return out


def search_bounds(params: dict[str, str]) -> dict[str, dict[str, Any]]:
    """bounds() of a `hydra.sweeper.params` mapping (key -> sweep expression)."""
    space, _ = build_space(params, [])
    return bounds(space)


def contains(dist: BaseDistribution, value: Any) -> bool:
    """Whether a distribution can propose `value` (a config's own value, say)."""
    if isinstance(dist, CategoricalDistribution):
        return value in dist.choices
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return dist.low <= value <= dist.high
