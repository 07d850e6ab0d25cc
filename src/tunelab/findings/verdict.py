"""A claim's comparison judged against what the article expects, in one word and one line.

The difference and its interval are the study's own pairwise verdict on the held-out test split
(paired over seeds; the interval at the family's Bonferroni level), oriented as the claim reads it
(a − b). `margin` is what counts as "no difference" for claims of equality."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tunelab.findings.spec import Check, Claim
from tunelab.reports import verdict_words


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
        return verdict_words.points_span(self.low, self.high)


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


def line(j: Judged, margin: float) -> str:
    """The claim's line in the words of reports/verdict_words.py."""
    c = j.check
    return verdict_words.claim_line(c.a, c.b, j.diff, j.low, j.high, j.n, j.word, c.expect, margin)


def drifted(claim: Claim, given: dict[str, list[str]]) -> list[str]:
    """Where the verdicts the runs give (per dataset, one per check) differ from those the
    claim's hand-written conclusion declares it rests on: one line each, empty when none."""
    out = []
    for d, words in claim.rests_on.items():
        now = given.get(d, [])
        for k, (check, was) in enumerate(zip(claim.checks, words, strict=True)):
            got = now[k] if k < len(now) else "missing"
            if got != was:
                out.append(f"{d} `{check.a}` − `{check.b}`: written for {was}, the runs give {got}")
    return out
