"""The samplers and pruners a sweep may name, with what a sweep must know of each: the one list
that validation (config/sweep_check.py) checks names against and tuning/samplers.py builds from.
Light on purpose (no Optuna import): the config layer reads it before anything is built."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SamplerFacts:
    """One sampler: its class in `optuna.samplers` (or tunelab's own), and how a sweep runs it."""

    optuna_class: str
    # seeded once per study (its sequence of points is deterministic), not again per trial count
    fixed_seed: bool = False
    # each point depends on the previous result: one trial at a time, one continuous parameter
    sequential: bool = False
    # draws from a grid of values per interval (hydra.sweeper.grid_points); its size caps n_trials
    gridded: bool = False
    # samples towards the trials that meet hydra.sweeper.constraints (Optuna's trial.constraints);
    # the others sample as without them, and the best trial is chosen among the feasible ones
    constrained: bool = False


SAMPLERS: dict[str, SamplerFacts] = {
    "bruteforce": SamplerFacts("BruteForceSampler"),
    "cmaes": SamplerFacts("CmaEsSampler"),
    "gp": SamplerFacts("GPSampler", constrained=True),
    "grid": SamplerFacts("GridSampler", fixed_seed=True, gridded=True),
    "line": SamplerFacts(
        "GoldenSectionSampler", fixed_seed=True, sequential=True, constrained=True
    ),
    "nsgaii": SamplerFacts("NSGAIISampler", constrained=True),
    "qmc": SamplerFacts("QMCSampler", fixed_seed=True),
    "random": SamplerFacts("RandomSampler"),
    "tpe": SamplerFacts("TPESampler", constrained=True),
}

# pruner name -> its class in `optuna.pruners`
PRUNERS: dict[str, str] = {
    "none": "NopPruner",
    "median": "MedianPruner",
    "percentile": "PercentilePruner",
    "successive_halving": "SuccessiveHalvingPruner",
    "hyperband": "HyperbandPruner",
    "wilcoxon": "WilcoxonPruner",
}


# the pruners whose rungs can be training-set fractions (hydra.sweeper.fidelity=data)
FIDELITY_PRUNERS = ("successive_halving", "hyperband")
FIDELITIES = ("epochs", "data")


def sampler_name(v: object) -> str | None:
    """None when `v` names a registered sampler, else what is allowed."""
    return None if isinstance(v, str) and v in SAMPLERS else f"one of {sorted(SAMPLERS)}"


def pruner_name(v: object) -> str | None:
    """None when `v` names a registered pruner, else what is allowed."""
    return None if isinstance(v, str) and v in PRUNERS else f"one of {sorted(PRUNERS)}"
