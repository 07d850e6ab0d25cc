"""Samplers and pruners by name, and the golden-section line search: the "binary search" of one
smooth hyperparameter as an Optuna sampler.

The line search is stateless: the next point is replayed from the finished trials, so a resumed
study continues the same bracket. It assumes a unimodal objective on [low, high] (in log space for
log distributions). Under constraints (hydra.sweeper.constraints) it compares two points by Deb's
constrained domination: a feasible point beats an infeasible one, two infeasible ones are ranked by
how far they miss: where the feasible set is an interval of the knob and the objective unimodal on
it, the bracket closes on the best feasible point (e.g. the smallest loss weight whose recall
reaches a target, seed 004's example).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, FloatDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from tunelab.config.search_methods import PRUNERS, SAMPLERS

GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0  # 0.618...
_DONE = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def next_point(
    history: Sequence[tuple[float, Any]], minimize: bool = True, tol: float = 1e-9
) -> float:
    """Next golden-section point in [0, 1] given evaluated (u, value) pairs (failures = +-inf);
    a value may be a tuple (a rank, compared in order; minimize only)."""

    def lookup(u: float) -> Any:
        for x, f in history:
            if abs(x - u) <= tol:
                return f if minimize else -f
        return None

    a, b = 0.0, 1.0
    c, d = b - GOLDEN * (b - a), a + GOLDEN * (b - a)
    for _ in range(200):
        fc = lookup(c)
        if fc is None:
            return c
        fd = lookup(d)
        if fd is None:
            return d
        if fc <= fd:  # minimum lies in [a, d]
            b, d = d, c
            c = b - GOLDEN * (b - a)
        else:  # minimum lies in [c, b]
            a, c = c, d
            d = a + GOLDEN * (b - a)
    return (a + b) / 2.0


def _to_unit(x: float, d: FloatDistribution) -> float:
    if d.log:
        return (math.log(x) - math.log(d.low)) / (math.log(d.high) - math.log(d.low))
    return (x - d.low) / (d.high - d.low)


def _from_unit(u: float, d: FloatDistribution) -> float:
    if d.log:
        return math.exp(math.log(d.low) + u * (math.log(d.high) - math.log(d.low)))
    return d.low + u * (d.high - d.low)


def rank(trial: FrozenTrial, minimize: bool) -> tuple[float, float]:
    """A finished trial's rank for the line search, lower better: (0, objective) when it meets
    every constraint, (total violation, 0) when not, (inf, inf) failed or pruned."""
    if trial.state != TrialState.COMPLETE or trial.value is None:
        return math.inf, math.inf
    violation = sum(max(0.0, v) for v in trial.constraints.values())
    if violation > 0:
        return violation, 0.0
    return 0.0, trial.value if minimize else -trial.value


class GoldenSectionSampler(BaseSampler):
    """Golden-section search over the single float parameter of the study (sequential trials)."""

    def __init__(self, seed: int | None = None) -> None:
        self._fallback = RandomSampler(seed=seed)

    def infer_relative_search_space(self, study, trial) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(self, study, trial, search_space) -> dict[str, Any]:
        return {}

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, dist: BaseDistribution
    ) -> Any:
        if not isinstance(dist, FloatDistribution) or dist.step is not None:
            raise ValueError(
                f"line search needs a continuous float parameter, got {param_name}: {dist}"
            )
        minimize = study.direction == StudyDirection.MINIMIZE
        history = []
        for t in study.get_trials(deepcopy=False, states=_DONE):
            if param_name not in t.params or t.user_attrs.get("stale"):
                continue
            history.append((_to_unit(t.params[param_name], dist), rank(t, minimize)))
        u = next_point(history)
        return min(max(_from_unit(u, dist), dist.low), dist.high)

    def reseed_rng(self) -> None:
        self._fallback.reseed_rng()


class _Grid(optuna.samplers.GridSampler):
    """GridSampler whose exhaustion is handled by the sweep's budget (no study.stop() outside optimize)."""

    def after_trial(self, study, trial, state, values) -> None:
        return None


def _qmc(seed: int | None, grid: Any, **kw: Any) -> BaseSampler:
    kw.setdefault("qmc_type", "sobol")
    kw.setdefault("scramble", True)
    kw.setdefault("warn_asynchronous_seeding", False)
    return optuna.samplers.QMCSampler(seed=seed, **kw)


# Samplers built other than `optuna.samplers.<optuna_class>(seed=seed, **kwargs)`; every other name
# of config/search_methods.SAMPLERS is built that way.
_BUILT_OWN_WAY = {
    "grid": lambda seed, grid, **kw: _Grid(grid or {}, seed=seed),
    "random": lambda seed, grid, **kw: optuna.samplers.RandomSampler(seed=seed),
    "qmc": _qmc,
    "line": lambda seed, grid, **kw: GoldenSectionSampler(seed=seed),
}


def _spec(spec: Any, default: str) -> tuple[str, dict[str, Any]]:
    """(name, kwargs) of a sampler or pruner setting (settings.SamplerConf / PrunerConf or a dict)."""
    if isinstance(spec, dict):
        return spec.get("name") or default, dict(spec.get("kwargs") or {})
    return spec.name, dict(spec.kwargs or {})


def make_sampler(spec: Any, seed: int | None, grid: dict[str, list] | None = None) -> BaseSampler:
    """Sampler by name (config/search_methods.SAMPLERS), with the spec's kwargs."""
    name, kw = _spec(spec, "tpe")
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}: choose one of {sorted(SAMPLERS)}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if name in _BUILT_OWN_WAY:
            return _BUILT_OWN_WAY[name](seed, grid, **kw)
        return getattr(optuna.samplers, SAMPLERS[name].optuna_class)(seed=seed, **kw)


def make_pruner(spec: Any) -> optuna.pruners.BasePruner:
    """Pruner by name (config/search_methods.PRUNERS), with the spec's kwargs."""
    name, kw = _spec(spec or {}, "none")
    if name not in PRUNERS:
        raise ValueError(f"unknown pruner {name!r}: choose one of {sorted(PRUNERS)}")
    cls = getattr(optuna.pruners, PRUNERS[name])
    return cls() if name == "none" else cls(**kw)
