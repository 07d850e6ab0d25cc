"""Verdicts that never outrun the numbers: every pair of cells compared on the same seeds, one
family-wise level for the words, the p-values and the intervals, so they cannot disagree.

- Which pairs: all pairs, or every cell against a declared baseline. The leader is never picked
  first and then tested (double dipping).
- Which test: a paired t-test on the per-seed differences. Where they barely vary (their spread
  is below the metric's resolution, common for accuracy on a few hundred examples), the t-test is
  unsafe (zero spread would give p = 0), so it is the exact sign-flip permutation test: its
  smallest p is 2/2^n.
- Which level: Bonferroni over the pairs (and over looks, when seeds were added after a report):
  the adjusted p is at most alpha exactly when the simultaneous interval excludes 0.
- Which words (reports/verdict_words.py): "higher/lower" for a resolved pair; otherwise "not resolved with n seeds;
  compatible with lo to hi". The top set is the leader and every cell not resolved from it.
- How much power: from the pooled paired spread, the smallest difference the seeds resolve with
  80% power, and the seeds a difference of interest would take.

Everything is vectorised over many studies at once, so the null and power simulations in the
tests run through this code.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import stats

from tunelab.reports import verdict_words
from tunelab.reports.stats import scale_for

POWER = 0.8
MAX_EXACT = 14  # seeds up to which every sign flip is enumerated (2^14 = 16,384)


def flips(n: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """Sign patterns (F, n): all 2^n for n <= MAX_EXACT, else 20,000 random ones."""
    if n <= MAX_EXACT:
        return np.array(list(itertools.product((1.0, -1.0), repeat=n)))
    rng = rng or np.random.default_rng(0)
    return rng.choice((1.0, -1.0), size=(20_000, n))


def sign_flip_p(d: np.ndarray) -> np.ndarray:
    """Two-sided exact sign-flip p of mean(d) = 0, for each row of d (S, n); rows go in blocks so
    that the (rows x sign patterns) null stays near 4 million values (32 MB) at any n."""
    s = flips(d.shape[1])
    observed = np.abs(d.mean(axis=1))  # (S,)
    rows = max(1, 4_000_000 // len(s))
    out = np.empty(len(d))
    for i in range(0, len(d), rows):
        null = np.abs(d[i : i + rows] @ s.T) / d.shape[1]  # (rows, F)
        out[i : i + rows] = (null >= observed[i : i + rows, None] - 1e-12).mean(axis=1)
    return out


def paired_p(d: np.ndarray, resolution: float) -> tuple[np.ndarray, np.ndarray]:
    """(p, exact) per row of d (S, n): the t-test, or the exact sign-flip test where the
    differences' spread is below the resolution (or zero)."""
    n = d.shape[1]
    mean, sd = d.mean(axis=1), d.std(axis=1, ddof=1)
    exact = sd < max(resolution, 1e-12)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = mean / (sd / math.sqrt(n))
    p = 2 * stats.t.sf(np.abs(t), n - 1)
    if exact.any():
        p[exact] = sign_flip_p(d[exact])
    return p, exact


def interval(d: np.ndarray, level: float, exact: bool) -> tuple[float, float]:
    """The (1 - level) interval of mean(d) that matches the test: the t-interval, or the
    inversion of the sign-flip test ((-inf, inf) when n seeds cannot reach the level)."""
    n, mean = len(d), float(d.mean())
    if not exact:
        half = stats.t.ppf(1 - level / 2, n - 1) * d.std(ddof=1) / math.sqrt(n)
        return mean - half, mean + half
    if 2.0 / 2**n > level:
        return -math.inf, math.inf
    width = float(np.ptp(d)) + 1e-9 + abs(mean)
    grid = np.linspace(mean - 3 * width, mean + 3 * width, 4001)
    p = sign_flip_p(d[None, :] - grid[:, None])
    kept = grid[p > level]
    return float(kept.min()), float(kept.max())


def power(effect: float, sd: float, n: int, level: float) -> float:
    """Chance a paired t-test at `level` resolves a true difference `effect` over n seeds."""
    if n < 2 or sd <= 0:
        return math.nan
    crit = stats.t.ppf(1 - level / 2, n - 1)
    nc = abs(effect) * math.sqrt(n) / sd
    return float(stats.nct.sf(crit, n - 1, nc) + stats.nct.cdf(-crit, n - 1, nc))


def detectable(sd: float, n: int, level: float) -> float:
    """The smallest difference resolved with POWER at n seeds (NaN when none is)."""
    if n < 2 or not sd > 0:
        return math.nan
    lo, hi = 0.0, 100 * sd
    if power(hi, sd, n, level) < POWER:
        return math.inf
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if power(mid, sd, n, level) < POWER else (lo, mid)
    return hi


def seeds_needed(effect: float, sd: float, level: float, most: int = 200) -> int | None:
    """The fewest seeds that resolve `effect` with POWER (None: more than `most`)."""
    if not (effect > 0 and sd > 0):
        return None
    return next((n for n in range(2, most + 1) if power(effect, sd, n, level) >= POWER), None)


@dataclass
class Pair:
    a: str
    b: str
    metric: str
    n: int
    diff: float  # mean of a - b over the common seeds, in the metric's units
    sd: float
    low: float  # simultaneous interval (the family's level)
    high: float
    p: float  # raw
    p_adj: float  # Bonferroni over the family
    test: str
    resolved: bool
    verdict: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Verdicts:
    metric: str
    direction: str
    pairs: list[Pair]
    leader: str | None
    top_set: list[str]
    family: str  # "all pairs" or "against <baseline>"
    level: float  # per-pair level: alpha / (pairs x looks)
    sd: float  # pooled paired spread
    n: int
    detectable: float
    failures: dict[str, int] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        out = asdict(self)
        out["pairs"] = [p.as_dict() for p in self.pairs]
        return out


def resolution_of(values: dict[str, dict[int, float]]) -> float:
    """The metric's step: the smallest gap between distinct observed values (accuracy on N
    examples moves in steps of 1/N)."""
    flat = np.unique(np.round([v for cell in values.values() for v in cell.values()], 12))
    gaps = np.diff(flat)
    return float(gaps[gaps > 0].min()) if (gaps > 0).any() else 0.0


def compare(
    values: dict[str, dict[int, float]],
    metric: str,
    direction: str,
    alpha: float = 0.05,
    baseline: str | None = None,
    looks: int = 1,
    failures: dict[str, int] | None = None,
) -> Verdicts:
    """Every pair (or every cell against `baseline`) on the seeds both cells share."""
    cells = list(values)
    if baseline is not None and baseline not in values:
        raise ValueError(f"baseline {baseline!r} is not a cell of the study: {cells}")
    pairs_of = (
        [(c, baseline) for c in cells if c != baseline]
        if baseline
        else list(itertools.combinations(cells, 2))
    )
    m = max(1, len(pairs_of))
    level = alpha / (m * max(1, looks))
    res = resolution_of(values) if scale_for(metric)[1] else 0.0  # a continuous metric: none
    pairs, spreads = [], []
    for a, b in pairs_of:
        seeds = sorted(set(values[a]) & set(values[b]))
        d = np.array([values[a][s] - values[b][s] for s in seeds], dtype=float)
        if len(d) < 2:
            pairs.append(
                Pair(
                    a,
                    b,
                    metric,
                    len(d),
                    _mean(d),
                    math.nan,
                    -math.inf,
                    math.inf,
                    math.nan,
                    math.nan,
                    "none",
                    False,
                )
            )
            continue
        (p,), (exact,) = paired_p(d[None, :], res)
        low, high = interval(d, level, bool(exact))
        p_adj = min(1.0, p * m * max(1, looks))
        resolved = bool(p_adj <= alpha) and not (low <= 0.0 <= high)
        sd = float(d.std(ddof=1))
        spreads.append((sd, len(d)))
        test = "exact sign-flip" if exact else "paired t"
        pairs.append(
            Pair(
                a,
                b,
                metric,
                len(d),
                float(d.mean()),
                sd,
                low,
                high,
                float(p),
                p_adj,
                test,
                resolved,
            )
        )
    sign = 1.0 if direction == "maximize" else -1.0
    means = {c: _mean(np.array(list(v.values()))) for c, v in values.items()}
    ranked = sorted((c for c in cells if math.isfinite(means[c])), key=lambda c: -sign * means[c])
    leader = ranked[0] if ranked else None
    top = [c for c in ranked if c == leader or not _resolved(pairs, c, leader)]
    pooled = _pooled(spreads)
    n = max((p.n for p in pairs), default=0)
    family = f"against {baseline}" if baseline else "all pairs"
    v = Verdicts(
        metric,
        direction,
        pairs,
        leader,
        top,
        family,
        level,
        pooled,
        n,
        detectable(pooled, n, level),
        dict(failures or {}),
    )
    for p in pairs:
        p.verdict = verdict_words.pair_line(p, v)
    v.lines = [p.verdict for p in pairs]
    return v


def _mean(x: np.ndarray) -> float:
    return float(x.mean()) if len(x) else math.nan


def _resolved(pairs: list[Pair], x: str, y: str | None) -> bool:
    return any(p.resolved and {p.a, p.b} == {x, y} for p in pairs)


def _pooled(spreads: list[tuple[float, int]]) -> float:
    """Pooled paired SD (weighted by degrees of freedom)."""
    dof = sum(n - 1 for _, n in spreads)
    return math.sqrt(sum((n - 1) * s * s for s, n in spreads) / dof) if dof else math.nan
