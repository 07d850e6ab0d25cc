"""Verdicts a statistician would sign: simulated under no true difference they resolve nothing
more often than the level allows; the power line predicts how often a true one is resolved; the
words, the p-values and the intervals never disagree."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from tunelab.reports import verdicts as vd
from tunelab.reports.study_verdicts import one_run, with_failures

STUDIES = 5000  # for the power simulation (vectorised)
NULL_STUDIES = 1000  # per cell and seed count, each through compare()
ALPHA = 0.05
TOLERANCE = 3 * math.sqrt(ALPHA * (1 - ALPHA) / NULL_STUDIES)  # three Monte Carlo standard errors


@pytest.mark.slow
@pytest.mark.parametrize(("k", "n"), list(itertools.product((2, 4, 5), (2, 3, 5, 10))))
def test_no_true_difference_rarely_gets_a_verdict_from_compare(k, n, monkeypatch):
    """1,000 simulated studies per cell count and seed count through compare(), the function a
    study's report calls: values quantised to 1/400 (400 validation examples, so compare() infers
    the step itself), seed-to-seed spread of half a point, every cell the same. Any resolved pair
    is a false verdict; their share is at most alpha (within three Monte Carlo standard errors).
    The power line (detectable()) decides nothing and is stubbed: it costs 90 % of the time."""
    monkeypatch.setattr(vd, "detectable", lambda *args: math.nan)
    rng = np.random.default_rng(k * 100 + n)
    false_verdicts = 0
    for _ in range(NULL_STUDIES):
        base = rng.normal(0.9, 0.02, size=n)  # shared per seed: pairing
        x = np.round((base + rng.normal(0.0, 0.005, size=(k, n))) * 400) / 400
        values = {f"c{i}": {s: float(x[i, s]) for s in range(n)} for i in range(k)}
        v = vd.compare(values, "val/acc", "maximize", alpha=ALPHA)
        false_verdicts += any(p.resolved for p in v.pairs)
    rate = false_verdicts / NULL_STUDIES
    assert rate <= ALPHA + TOLERANCE, rate


@pytest.mark.parametrize(("n", "effect"), [(5, 1.0), (5, 1.5), (10, 0.8), (3, 2.0)])
def test_the_power_line_predicts_how_often_a_true_difference_is_resolved(n, effect):
    d = np.random.default_rng(n).normal(effect, 1.0, size=(STUDIES, n))
    p, _ = vd.paired_p(d, resolution=0.0)
    simulated = float((p <= 0.05).mean())
    assert abs(vd.power(effect, 1.0, n, 0.05) - simulated) <= 0.03, simulated


def test_zero_spread_never_gives_p_zero():
    """Every seed one validation example apart: the t statistic is infinite, the exact test
    says what two or three seeds can say."""
    for n in (2, 3, 5, 8):
        d = np.full((1, n), 1 / 400)
        p, exact = vd.paired_p(d, resolution=1 / 400)
        assert exact[0] and p[0] == pytest.approx(2 / 2**n) and p[0] > 0


def test_the_momentum_case_is_not_called_within_noise():
    """All three per-seed differences negative, an unadjusted interval that excludes zero: the
    report must not say the cells are the same."""
    values = {  # momentum - adam: -8.9, -6.9, -4.9 points (t = 6, unadjusted p = 0.03)
        "momentum": {1: 0.811, 2: 0.851, 3: 0.891},
        "adam": {1: 0.90, 2: 0.92, 3: 0.94},
        "adamw": {1: 0.895, 2: 0.925, 3: 0.93},
        "nadam": {1: 0.89, 2: 0.915, 3: 0.935},
    }
    v = vd.compare(values, "val/acc", "maximize")
    line = next(p.verdict for p in v.pairs if {p.a, p.b} == {"momentum", "adam"})
    assert "within seed noise" not in line and "not resolved with 3 seeds" in line
    assert "compatible with" in line and v.top_set[0] == "adam" and "adamw" in v.top_set


def test_words_p_and_interval_agree():
    rng = np.random.default_rng(7)
    for _ in range(300):
        n, k = int(rng.integers(2, 9)), int(rng.integers(2, 5))
        base = rng.normal(0.9, 0.02, n)
        values = {
            f"c{i}": {s: float(np.round((base[s] + rng.normal(0.01 * i, 0.01)) * 400) / 400)
                      for s in range(n)}
            for i in range(k)
        }  # fmt: skip
        for p in vd.compare(values, "test/acc", "maximize").pairs:
            excluded = not (p.low <= 0.0 <= p.high)
            assert p.resolved == (p.p_adj <= 0.05) == excluded, p
            assert ("resolved (" in p.verdict) == p.resolved


def test_a_declared_baseline_compares_every_cell_with_it_only():
    values = {c: {s: 0.9 + 0.01 * i + 0.001 * s for s in range(6)} for i, c in enumerate("abc")}
    v = vd.compare(values, "test/acc", "maximize", baseline="a")
    assert {(p.a, p.b) for p in v.pairs} == {("b", "a"), ("c", "a")} and v.family == "against a"
    with pytest.raises(ValueError, match="baseline"):
        vd.compare(values, "test/acc", "maximize", baseline="z")


def test_failed_seeds_count_at_the_worst_value():
    confirm = {
        "stable": {1: {"kind": "complete", "values": {"test/acc": 0.9}},
                   2: {"kind": "complete", "values": {"test/acc": 0.92}}},
        "unstable": {1: {"kind": "complete", "values": {"test/acc": 0.95}},
                     2: {"kind": "diverged", "values": {}}},
    }  # fmt: skip
    values, failures = with_failures(confirm, "test/acc", "maximize")
    assert values["unstable"] == {1: 0.95, 2: 0.9} and failures == {"stable": 0, "unstable": 1}


def test_more_looks_cost_level():
    values = {c: {s: 0.9 + 0.004 * i + 0.001 * ((s * 7) % 3) for s in range(8)}
              for i, c in enumerate("ab")}  # fmt: skip
    once, twice = (vd.compare(values, "test/acc", "maximize", looks=k) for k in (1, 2))
    assert twice.level == once.level / 2 and twice.pairs[0].p_adj >= once.pairs[0].p_adj


def test_one_more_run_is_predicted_wider_than_the_mean():
    values = [0.90, 0.92, 0.91, 0.95, 0.93]
    out = one_run(values, n_split=1000)
    half = (out["high"] - out["low"]) / 2
    sem = np.std(values, ddof=1) / math.sqrt(len(values))
    assert half > 2.5 * sem and out["split_se"] == pytest.approx(math.sqrt(0.922 * 0.078 / 1000))


def test_numbers_are_printed_one_way_for_reports_and_findings():
    from tunelab.reports import verdict_words as w

    assert w.v(0.9712, "test/acc") == w.pct(0.9712) == "97.12"
    assert w.v(0.1234567, "val/loss") == "0.1235"
    assert w.v(None, "val/acc") == w.pct(math.nan) == w.points(math.nan) == "–"
    assert (w.points(-0.0123), w.points(0.02)) == ("−1.23", "+2.00")
    assert w.points_span(-math.inf, 0.01) == "[−∞, +1.00]"
    assert (w.signed(-1.5), w.signed(math.inf), w.p_value(0.004), w.p_value(0.5)) == (
        "−1.50",
        "+∞",
        "0.004",
        "0.50",
    )


def test_the_power_line_reads_the_same_wherever_it_is_written():
    from tunelab.findings import study_section
    from tunelab.reports import verdict_words

    judged = {
        "power": {
            "sd": 0.01,
            "detectable": 0.02,
            "seeds_for_min_effect": 12,
            "min_effect": 0.005,
            "n": 5,
        },
        "metric": "test/acc",
        "level": 0.0167,
        "family": "all pairs",
    }
    line = (
        "Power: with 5 seeds and a paired spread of 1.00 points, differences smaller than ±2.00 "
        "points are not resolved with 80% power (each pair tested at 0.017: all pairs, "
        "Bonferroni); resolving 0.50 points (study.min_effect) would take 12 seeds."
    )
    assert verdict_words.power(judged) == [line, ""]
    assert not hasattr(study_section, "_power")  # the findings document has no words of its own


def test_a_pair_is_worded_with_its_sign_interval_and_adjusted_p():
    values = {
        "a": {s: 0.90 + 0.01 * s for s in range(6)},
        "b": {s: 0.88 + 0.01 * s for s in range(6)},
    }
    values["b"][0] += 0.0025  # spread under the 1/400 step: the exact sign-flip test
    (p,) = vd.compare(values, "test/acc", "maximize").pairs
    assert p.verdict == (
        "a − b: +1.96 points test/acc: a higher, resolved (interval +1.75 to +2.00 points; "
        "p = 0.03 adjusted (all pairs), exact sign-flip, 6 seeds)"
    )
