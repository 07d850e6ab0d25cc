"""Every word a verdict is written in, and every number format it uses, for the study report and
docs/FINDINGS.md alike: the headline (a top set, never a bare "best"), one pair in plain language,
the power line, the pairwise table, the probability of improvement, the seed audit and a claim's
line. One place, so that the report and the findings document cannot word a verdict differently."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from tunelab.reports.stats import scale_for

if TYPE_CHECKING:
    from tunelab.reports.verdicts import Pair, Verdicts


def v(value: float | None, metric: str) -> str:
    """A value in the metric's reported units: accuracies in percentage points, "–" for none."""
    if value is None or not math.isfinite(value):
        return "–"
    scale, _ = scale_for(metric)
    return f"{value * scale:.2f}" if scale != 1.0 else f"{value:.4g}"


def unit(metric: str) -> str:
    return " points" if scale_for(metric)[1] else ""


def pct(x: float | None) -> str:
    """A share as a percentage (0.9712 -> 97.12), "–" for none: an accuracy's value."""
    return v(x, "acc")


def points(x: float) -> str:
    """A difference of shares in signed percentage points (0.0123 -> +1.23, −0.5 -> −50.00)."""
    if math.isnan(x):
        return "–"
    if not math.isfinite(x):
        return "−∞" if x < 0 else "+∞"
    return f"{x * 100:+.2f}".replace("-", "−")


def points_span(low: float, high: float) -> str:
    """An interval of differences in percentage points: [−0.10, +2.50]."""
    return f"[{points(low)}, {points(high)}]"


def signed(x: float) -> str:
    """A difference already in its reported units, always with its sign."""
    if math.isinf(x):
        return "−∞" if x < 0 else "+∞"
    return f"−{abs(x):.2f}" if x < 0 else f"+{x:.2f}"


def p_value(p: float) -> str:
    return "–" if not math.isfinite(p) else (f"{p:.2f}" if p >= 0.01 else f"{p:.1g}")


def pair_line(p: Pair, v: Verdicts) -> str:
    """One pair in plain language; the interval and p are the family's, so they agree."""
    scale, unit = scale_for(p.metric)
    unit = f" {unit}" if unit else ""
    head = f"{p.a} − {p.b}: {signed(p.diff * scale)}{unit} {p.metric}"
    if p.n < 2:
        return f"{head}, {p.n} common seed(s): no comparison"
    where = f"{signed(p.low * scale)} to {signed(p.high * scale)}{unit}"
    how = f"p = {p_value(p.p_adj)} adjusted ({v.family}), {p.test}, {p.n} seeds"
    if p.resolved:
        side = "higher" if p.diff > 0 else "lower"
        return f"{head}: {p.a} {side}, resolved (interval {where}; {how})"
    if not math.isfinite(p.low):
        smallest = 2.0 / 2**p.n
        return (
            f"{head}: not resolved; {p.n} seeds cannot resolve a difference at this level "
            f"(their smallest p is {smallest:.2g}, {v.level:.2g} needed; {how})"
        )
    return f"{head}: not resolved with {p.n} seeds; compatible with {where} ({how})"


EXPECT_WORDS = {"higher": "higher than", "not_lower": "no lower than", "equal": "equal to"}


def claim_line(
    a: str,
    b: str,
    diff: float,
    low: float,
    high: float,
    n: int,
    word: str,
    expect: str,
    margin: float,
) -> str:
    """A claim's pair judged: `a` − `b`: +1.23 points [−0.10, +2.50], 5 seeds: **not resolved**
    (the article: higher than)."""
    exp = EXPECT_WORDS[expect]
    if n < 2 and word == "one study each":
        return (
            f"`{a}` − `{b}`: {points(diff)} points: **one study each** (both searches are "
            f"deterministic, so there is no spread to judge it by; the article: {exp})"
        )
    tail = f" (margin ±{margin * 100:.1f})" if expect != "higher" else ""
    return (
        f"`{a}` − `{b}`: {points(diff)} points {points_span(low, high)}, {n} seeds: "
        f"**{word}** (the article: {exp}{tail})"
    )


def headline(summary: dict[str, Any]) -> list[str]:
    """The verdict on the held-out split: the top set, each pair, the power line, the caveats."""
    p = summary["primary"]
    judged = summary["judged"].get(p)
    if not judged or judged["leader"] is None:
        return ["**No cell finished a confirmation seed.**", ""]
    top = judged["top_set"]
    names = ", ".join(f"`{c}`" for c in top)
    n = judged["n"]
    if len(top) == 1:
        lines = [
            f"**`{top[0]}` leads on {p}, resolved from every other cell** ({n} seeds, held-out "
            "split).",
            "",
        ]
    else:
        lines = [
            f"**Top set on {p}: {names}**: with {n} seeds these are not resolved from the "
            f"leader `{judged['leader']}` (held-out split; no search saw it).",
            "",
        ]
    lines += [f"- {line}" for line in judged["lines"]] + [""]
    lines += power(judged) + caveats(summary, judged)
    secondary = summary["metric"]
    if secondary != p and secondary in summary["judged"]:
        s = summary["judged"][secondary]
        lines += [
            f"On the selection metric {secondary} (validation, which the search chose on, "
            f"so optimistic): top set {', '.join(f'`{c}`' for c in s['top_set'])}.",
            "",
        ]
    return lines


def power(judged: dict[str, Any]) -> list[str]:
    pw, m = judged["power"], judged["metric"]
    if not math.isfinite(pw["sd"]):
        return []
    level = f"each pair tested at {judged['level']:.2g}: {judged['family']}, Bonferroni"
    found = (
        f"differences smaller than ±{v(pw['detectable'], m)}{unit(m)} are not resolved with "
        f"80% power"
        if math.isfinite(pw["detectable"])
        else "no difference can be resolved"
    )
    need = pw["seeds_for_min_effect"]
    plan = (
        f"resolving {v(pw['min_effect'], m)}{unit(m)} (study.min_effect) would take {need} seeds"
        if need
        else f"resolving {v(pw['min_effect'], m)}{unit(m)} would take over 200 seeds"
    )
    return [
        f"Power: with {pw['n']} seeds and a paired spread of {v(pw['sd'], m)}{unit(m)}, "
        f"{found} ({level}); {plan}.",
        "",
    ]


def few_seeds(summary: dict[str, Any]) -> str:
    return (
        f"Fewer than 5 confirmation seeds ({len(summary['seeds'])}): expect most differences to "
        "stay unresolved; add seeds before drawing conclusions."
    )


def caveats(summary: dict[str, Any], judged: dict[str, Any]) -> list[str]:
    out = []
    if summary["few_seeds"]:
        out.append(f"⚠ {few_seeds(summary)}")
    if summary["looks"] > 1:
        out.append(
            f"⚠ Seeds were added after an earlier report ({summary['looks']} looks): the "
            "level is divided over the looks, so adding seeds until something is "
            "significant cannot manufacture a verdict."
        )
    for cell, k in judged["failures"].items():
        if k:
            out.append(
                f"⚠ `{cell}` did not finish {k} seed(s): they count at the worst value any "
                "cell reached, not as missing."
            )
    return [*(f"- {c}" for c in out), ""] if out else []


def pairs_table(summary: dict[str, Any]) -> list[str]:
    if not summary["comparisons"]:
        return []
    judged = summary["judged"][summary["primary"]]
    lines = [
        "## Pairwise comparisons",
        "",
        f"Difference = first − second on the seeds both finished. Compared: {judged['family']}; "
        f"the interval and p are both at the family's level (Bonferroni, {judged['level']:.2g} per "
        "pair), so a pair is resolved exactly when its interval excludes 0. Test: a paired t-test, "
        "or the exact sign-flip test where the differences barely vary (its smallest p is 2/2^n).",
        "",
        "| pair | metric | difference | interval | p (adjusted) | test | seeds | resolved |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in summary["comparisons"]:
        m = c["metric"]
        bounded = math.isfinite(c["low"]) and math.isfinite(c["high"])
        span = f"[{v(c['low'], m)}, {v(c['high'], m)}]" if bounded else "unbounded at this level"
        lines.append(
            f"| `{c['a']}` − `{c['b']}` | {m} | {v(c['diff'], m)} | {span} | {c['p_adj']:.3g} | "
            f"{c['test']} | {c['n']} | {'yes' if c['resolved'] else 'no'} |"
        )
    extra = []
    for metric, j in summary["judged"].items():
        for pair, pb in (j.get("prob_better") or {}).items():
            extra.append(
                f"- P({pair}) on {metric}: {pb['p']:.2f} [{pb['low']:.2f}, "
                f"{pb['high']:.2f}] (paired bootstrap over seeds)"
            )
        for cell, q in (j.get("iqm") or {}).items():
            extra.append(
                f"- `{cell}` interquartile mean of {metric}: {v(q['iqm'], metric)} "
                f"[{v(q['low'], metric)}, {v(q['high'], metric)}]"
            )
    return [*lines, "", *extra, ""] if extra else [*lines, ""]


def audit(summary: dict[str, Any]) -> list[str]:
    """How much is one seed worth: the prediction interval of one more run, the split's own
    sampling error, and what cherry-picking a seed buys."""
    lines = ["## How much is one seed worth?", ""]
    p = summary["primary"]
    for c in summary["cells"]:
        if c["audit"]["n"] < 2:
            continue
        for m, a in c["audit_by_metric"].items():
            one = c["one_run"].get(m, {})
            split = (
                f"; the {m.split('/')[0]} split alone is measured to ±{v(one['split_se'], m)}"
                f"{unit(m)} (binomial standard error)"
                if math.isfinite(one.get("split_se", math.nan))
                else ""
            )
            lines.append(
                f"- `{c['cell']}`, {m} over {int(a['n'])} seeds: mean {v(a['mean'], m)}, sd "
                f"{v(a['std'], m)}; one more run would land in [{v(one.get('low'), m)}, "
                f"{v(one.get('high'), m)}] (95% prediction interval){split}. The best single seed "
                f"sits {v(a['best_minus_median'], m)}{unit(m)} above the median run."
            )
        pick, m = c.get("picked_seed"), summary["metric"]
        if pick and pick.get(p) is not None and m != p:
            med = c["audit_by_metric"][p]["median"]
            lines.append(
                f"- Reporting only the seed with the best {m} (seed {pick['seed']}, "
                f"{v(pick[m], m)}) would claim {p} {v(pick[p], p)}; the median seed gets "
                f"{v(med, p)}."
            )
    return [*lines, "", "![seed spread](figures/seed_spread.png)", ""] if len(lines) > 2 else []
