"""Statistics over seeds: mean, spread, t-intervals, paired tests and the verdict a reader gets."""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats


def scale_for(metric: str) -> tuple[float, str]:
    """Accuracies are reported in percentage points, everything else in its own units."""
    return (100.0, "points") if metric.split("/")[-1].endswith("acc") else (1.0, "")


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


@dataclass
class Comparison:
    """Paired comparison of one cell against the best cell over their common seeds."""

    cell: str
    best: str
    metric: str
    n: int
    diff: float  # mean of (cell - best), in the metric's units
    diff_std: float
    ci_half: float  # 95% t-interval half-width of the mean difference
    p_t: float  # paired t-test
    p_wilcoxon: float
    verdict: str
    p_holm: float = math.nan  # the t-test p adjusted for the comparisons of this metric (Holm)

    def as_dict(self) -> dict:
        return asdict(self)


def _p_values(d: np.ndarray) -> tuple[float, float]:
    if len(d) < 2:
        return math.nan, math.nan
    if np.allclose(d, d[0]):  # no spread: the t statistic is undefined
        return (1.0, 1.0) if abs(d[0]) < 1e-12 else (0.0, math.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p_t = float(stats.ttest_1samp(d, 0.0).pvalue)
        try:
            p_w = float(stats.wilcoxon(d).pvalue) if np.any(d != 0) else 1.0
        except ValueError:
            p_w = math.nan
    return p_t, p_w


def paired(
    cell: str,
    best: str,
    metric: str,
    values: dict[int, float],
    best_values: dict[int, float],
    alpha: float = 0.05,
) -> Comparison:
    """`cell` against `best` on the seeds both finished; verdict in plain language."""
    seeds = sorted(set(values) & set(best_values))
    d = np.array([values[s] - best_values[s] for s in seeds], dtype=float)
    n = len(d)
    mean = float(d.mean()) if n else math.nan
    std = float(d.std(ddof=1)) if n > 1 else math.nan
    half = float(stats.t.ppf(0.975, n - 1)) * std / math.sqrt(n) if n > 1 else math.nan
    p_t, p_w = _p_values(d)
    return Comparison(
        cell,
        best,
        metric,
        n,
        mean,
        std,
        half,
        p_t,
        p_w,
        verdict(cell, best, metric, mean, half, p_t, n, alpha),
    )


def holm(comparisons: list[Comparison], alpha: float = 0.05) -> None:
    """Holm-adjust the t-test p-values of comparisons on one metric and restate their verdicts."""
    valid = [c for c in comparisons if math.isfinite(c.p_t)]
    running = 0.0
    for rank, c in enumerate(sorted(valid, key=lambda c: c.p_t)):
        running = max(running, min(1.0, (len(valid) - rank) * c.p_t))
        c.p_holm = running
    if len(valid) > 1:
        for c in valid:
            c.verdict = verdict(
                c.cell, c.best, c.metric, c.diff, c.ci_half, c.p_holm, c.n, alpha, len(valid)
            )


def verdict(
    cell: str,
    best: str,
    metric: str,
    diff: float,
    half: float,
    p: float,
    n: int,
    alpha: float,
    adjusted_over: int = 1,
) -> str:
    """E.g. "adam vs momentum: −0.4 ± 0.6 points, within seed noise (p = 0.41)"."""
    scale, unit = scale_for(metric)
    unit = f" {unit}" if unit else ""
    if n == 0:
        return f"{cell} vs {best}: no common finished seeds, no comparison"
    size = f"{_signed(diff * scale)}" + (f" ± {half * scale:.2f}" if math.isfinite(half) else "")
    head = f"{cell} vs {best}: {size}{unit} {metric}"
    if n < 2 or not math.isfinite(p):
        return f"{head}, one seed only: cannot tell from seed noise"
    how = f"p = {p:.2f}" if p >= 0.01 else f"p = {p:.1g}"
    how += f" Holm-adjusted over {adjusted_over} pairs" if adjusted_over > 1 else ""
    if p >= alpha:
        return f"{head}, within seed noise ({how}, {n} seeds)"
    side = "higher" if diff > 0 else "lower"
    return f"{head}, {side} beyond seed noise ({how}, {n} seeds)"


def _signed(x: float) -> str:
    return f"−{abs(x):.2f}" if x < 0 else f"+{x:.2f}"


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
