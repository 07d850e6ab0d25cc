"""A claim's comparison judged against what the article expects, in one word and one line.

The difference and its interval are the study's own pairwise verdict on the held-out test split
(paired over seeds; the interval at the family's Bonferroni level), oriented as the claim reads it
(a − b). `margin` is what counts as "no difference" for claims of equality."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from tunelab.findings.spec import Check


@dataclass
class Judged:
    check: Check
    diff: float
    low: float
    high: float
    resolved: bool
    n: int
    word: str  # supported, contradicted, not resolved, no comparison

    def interval(self) -> str:
        return f"[{points(self.low)}, {points(self.high)}]"


def points(x: float) -> str:
    if math.isnan(x):
        return "–"
    if not math.isfinite(x):
        return "−∞" if x < 0 else "+∞"
    return f"{x * 100:+.2f}".replace("-", "−")


def oriented(pairs: list[dict[str, Any]], check: Check) -> dict[str, Any] | None:
    """The pair a − b from the study's pairs, flipped when the study compared b − a."""
    for p in pairs:
        if (p["a"], p["b"]) == (check.a, check.b):
            return p
        if (p["a"], p["b"]) == (check.b, check.a):
            return {
                **p,
                "a": check.a,
                "b": check.b,
                "diff": -p["diff"],
                "low": -p["high"],
                "high": -p["low"],
            }
    return None


def judge(pairs: list[dict[str, Any]], check: Check, margin: float) -> Judged:
    p = oriented(pairs, check)
    if p is None:
        cells = sorted({x for q in pairs for x in (q["a"], q["b"])})
        raise KeyError(f"no comparison {check.a} − {check.b} in the study (its cells: {cells})")
    diff, low, high, resolved = p["diff"], p["low"], p["high"], bool(p["resolved"])
    if p["n"] < 2:
        word = "no comparison"
    elif check.expect == "higher":
        word = ("supported" if diff > 0 else "contradicted") if resolved else "not resolved"
    elif check.expect == "not_lower":
        word = (
            "contradicted"
            if resolved and diff < 0
            else "supported"
            if low > -margin or (resolved and diff > 0)
            else "not resolved"
        )
    else:  # equal
        word = (
            "contradicted"
            if resolved
            else "supported"
            if -margin <= low and high <= margin
            else "not resolved"
        )
    return Judged(check, diff, low, high, resolved, int(p["n"]), word)


EXPECT_WORDS = {"higher": "higher than", "not_lower": "no lower than", "equal": "equal to"}


def line(j: Judged, margin: float) -> str:
    """`a` − `b`: +1.23 points [−0.1, +2.5] → not resolved (expected: higher)."""
    exp = EXPECT_WORDS[j.check.expect]
    if j.n < 2 and j.word == "one study each":
        return (
            f"`{j.check.a}` − `{j.check.b}`: {points(j.diff)} points: **one study each** (both "
            f"searches are deterministic, so there is no spread to judge it by; the article: {exp})"
        )
    tail = f" (margin ±{margin * 100:.1f})" if j.check.expect != "higher" else ""
    return (
        f"`{j.check.a}` − `{j.check.b}`: {points(j.diff)} points {j.interval()}, "
        f"{j.n} seeds: **{j.word}** (the article: {exp}{tail})"
    )
