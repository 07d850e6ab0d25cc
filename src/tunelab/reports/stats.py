"""Statistics over seeds: mean, spread, t-intervals, the seed audit and best-so-far bands (the
verdicts between cells are in reports/verdicts.py)."""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

from tunelab.config.tasks import is_fraction


def scale_for(metric: str) -> tuple[float, str]:
    """Fractions (accuracies, F1, AUROC, ...: config/tasks.py) are reported in percentage
    points, everything else (RMSE, R², a loss) in its own units."""
    return (100.0, "points") if is_fraction(metric) else (1.0, "")


def describe(values: list[float]) -> dict[str, float]:
    """n, mean, sample std, 95% t-interval, min, median, max (NaN where undefined)."""
    x = np.asarray(values, dtype=float)
    n = len(x)
    out = dict.fromkeys(("mean", "std", "ci_low", "ci_high", "min", "median", "max"), math.nan)
    out["n"] = float(n)
    if n == 0:
        return out
    out.update(mean=float(x.mean()), min=float(x.min()), median=float(np.median(x)))
    out["max"] = float(x.max())
    if n > 1:
        std = float(x.std(ddof=1))
        half = float(stats.t.ppf(0.975, n - 1)) * std / math.sqrt(n)
        out.update(std=std, ci_low=out["mean"] - half, ci_high=out["mean"] + half)
    return out


def audit(values: list[float], direction: str) -> dict[str, float]:
    """Seed audit: spread, range, and how far the best single seed sits from the median."""
    d = describe(values)
    if not values:
        return {**d, "range": math.nan, "best": math.nan, "best_minus_median": math.nan}
    best = max(values) if direction == "maximize" else min(values)
    gap = best - d["median"] if direction == "maximize" else d["median"] - best
    return {**d, "range": d["max"] - d["min"], "best": best, "best_minus_median": gap}


def best_so_far_band(
    values: list[float], direction: str, n_boot: int = 500, seed: int = 0
) -> dict[str, np.ndarray]:
    """Best-so-far over trials (observed order) and a bootstrap band over random trial orders.

    Each bootstrap curve redraws the finished trials' values with replacement, so the band shows
    what another study of the same size could have found; a band still rising at the end says more
    trials would likely help."""
    x = np.asarray(values, dtype=float)
    acc = np.maximum.accumulate if direction == "maximize" else np.minimum.accumulate
    if len(x) == 0:
        empty = np.array([])
        return {"observed": empty, "low": empty, "median": empty, "high": empty}
    rng = np.random.default_rng(seed)
    boot = acc(rng.choice(x, size=(n_boot, len(x)), replace=True), axis=1)
    low, median, high = np.percentile(boot, [5, 50, 95], axis=0)
    return {"observed": acc(x), "low": low, "median": median, "high": high}


def doubling_gain(band: dict[str, np.ndarray], direction: str) -> float:
    """Median improvement of the best value between half the trials and all of them."""
    med = band["median"]
    if len(med) < 2:
        return math.nan
    gain = med[-1] - med[len(med) // 2 - 1]
    return float(gain if direction == "maximize" else -gain)
