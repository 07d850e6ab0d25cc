"""One study claim on one dataset, read back from its study run: the cells' table with the runs
behind each row, the claim's comparisons judged, the power line and the isolation figure."""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.findings.spec import Claim
from tunelab.findings.store import Reader
from tunelab.findings.verdict import Judged, judge, line
from tunelab.reports import verdict_words
from tunelab.reports.verdict_words import pct, points
from tunelab.tags import Role

TEST, VAL = "test/acc", "val/acc"
STILL_IMPROVING = "still_improving"  # the curve diagnosis' code for a run cut short
ABOUT = {"final_quality": "final quality", "short_budget": "short budget"}


@dataclass
class Section:
    lines: list[str]
    glance: list[list[str]] = field(default_factory=list)
    run_ids: list[str] = field(default_factory=list)
    spans: list[tuple[float, float]] = field(default_factory=list)  # each study's or sweep's run
    verdicts: list[str] = field(default_factory=list)  # one word per check, in the claim's order
    cells: int = 0  # cell rows of a study
    improving: int = 0  # of them, rows whose best runs the curve diagnosis says still improve
    drift: list[str] = field(default_factory=list)  # where the conclusion no longer holds


def figure(
    reader: Reader, run_id: str, name: str | None, fig_dir: Path, as_name: str
) -> str | None:
    """Copy a study figure out of the store into the document's figures; its file name."""
    if not name:
        return None
    data = reader.artifact(run_id, f"figures/{name}")
    if data is None:
        return None
    fig_dir.mkdir(parents=True, exist_ok=True)
    (fig_dir / as_name).write_bytes(data)
    return as_name


def _params(best: dict[str, Any]) -> str:
    return (
        ", ".join(
            f"`{k.split('.')[-1]}={v:.3g}`" if isinstance(v, float) else f"`{k}={v}`"
            for k, v in (best or {}).items()
        )
        or "–"
    )


def _cells_table(summary: dict[str, Any], secs: dict[str, list[float]]) -> list[str]:
    top = set(summary["top_set"])
    rows = [
        "| cell | test/acc % mean ± sd | 95% interval | val/acc % mean | tuned nuisance | s per run "
        "| curves | top set | cell run |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in summary["cells"]:
        t, v = c["stats"][TEST], c["stats"][VAL]
        s = secs.get(c["cell"], [])
        took = f"{statistics.median(s):.1f}" if s else "–"
        rows.append(
            f"| `{c['cell']}` | {pct(t['mean'])} ± {pct(t['std'])} | [{pct(t['ci_low'])}, "
            f"{pct(t['ci_high'])}] | {pct(v['mean'])} | {_params(c['best_params'])} | {took} | "
            f"{_flags(c.get('curve_flags') or {})} | {'yes' if c['cell'] in top else ''} | "
            f"`{c['mlflow_run_id']}` |"
        )
    return rows


def _flags(flags: dict[str, list[str]]) -> str:
    """The curve diagnosis of the cell's best runs: `unstable 2/3` or `healthy 3/3`."""
    if not flags:
        return "–"
    counts = Counter(code for codes in flags.values() for code in codes)
    if not counts:
        return f"healthy {len(flags)}/{len(flags)}"
    return ", ".join(f"{code} {n}/{len(flags)}" for code, n in sorted(counts.items()))


def still_improving(summary: dict[str, Any]) -> dict[str, str]:
    """Each cell whose best runs were still improving when training stopped: `2/3`."""
    out = {}
    for c in summary["cells"]:
        flags = c.get("curve_flags") or {}
        n = sum(STILL_IMPROVING in codes for codes in flags.values())
        if n:
            out[c["cell"]] = f"{n}/{len(flags)}"
    return out


def improving_note(check: Any, improving: dict[str, str]) -> str | None:
    """The cells of a comparison whose runs were still improving, or None."""
    cells = [f"`{x}` {improving[x]}" for x in (check.a, check.b) if x in improving]
    return ", ".join(cells) if cells else None


def _seed_runs(summary: dict[str, Any]) -> tuple[list[str], list[str]]:
    lines, ids = (
        ["<details><summary>The seed runs behind each row (MLflow run ids)</summary>", ""],
        [],
    )
    for c in summary["cells"]:
        runs = c.get("confirm_runs", {})
        ids += [c["mlflow_run_id"], *runs.values()]
        lines.append(f"- `{c['cell']}`: " + ", ".join(f"seed {s} `{r}`" for s, r in runs.items()))
    return [*lines, "", "</details>", ""], ids


def study(reader: Reader, claim: Claim, dataset: str, fig_dir: Path, margin: float) -> Section:
    name = f"{claim.id}-{dataset}"
    run = reader.require(Role.STUDY, name)
    summary = reader.summary(run)
    judged = summary["judged"].get(TEST)
    if judged is None:
        raise KeyError(f"study {name} has no verdict on {TEST}: no cell finished a seed")
    out = Section([f"### {DATA[dataset]}", ""], spans=[reader.span(run)])
    out.lines += [
        f"Study run `{run.info.run_id}`; {len(summary['seeds'])} confirmation seeds "
        f"{summary['seeds']}, {summary['n_trials']} nuisance trials per cell; "
        f"{reader.training(name)}.",
        "",
    ]
    out.lines += _cells_table(summary, reader.seconds_by_cell(name)) + [""]
    top = ", ".join(f"`{c}`" for c in judged["top_set"])
    out.lines += [f"Held-out verdict (test split, which no search saw): top set {top}.", ""]
    improving = still_improving(summary)
    out.cells, out.improving = len(summary["cells"]), len(improving)
    for check in claim.checks:
        j = judge(judged["pairs"], check, margin)
        note = improving_note(check, improving)
        drawn = f" *Drawn from runs still improving ({note}).*" if note else ""
        out.lines.append(f"- {line(j, margin)}{drawn}")
        out.glance.append(glance_row(claim, dataset, j, note is not None))
        out.verdicts.append(j.word)
    out.lines += ["", *verdict_words.power(judged)]
    warned = sorted({c["budget"] for c in summary["cells"] if c.get("budget")})
    edges = [f"`{c['cell']}`: {w}" for c in summary["cells"] for w in c.get("edge_warnings", [])]
    out.lines += [f"- Search budget: {w}." for w in warned] + [f"- Range edge, {w}." for w in edges]
    out.lines += [""] if warned or edges else []
    fig = figure(
        reader,
        run.info.run_id,
        summary["figures"].get("isolation"),
        fig_dir,
        f"{name}-isolation.png",
    )
    if fig:
        out.lines += [f"![{claim.title}, {DATA[dataset]}]({fig_dir.name}/{fig})", ""]
    details, ids = _seed_runs(summary)
    out.lines += details
    out.run_ids = [run.info.run_id, *ids]
    return out


def glance_row(claim: Claim, dataset: str, j: Judged, improving: bool = False) -> list[str]:
    """One comparison at a glance; `improving`: drawn from runs that were still improving."""
    return [
        claim.title,
        DATA[dataset],
        f"`{j.check.a}` − `{j.check.b}`",
        f"{points(j.diff)}",
        j.interval(),
        ABOUT[claim.about] + (", runs still improving" if improving else ""),
        f"{j.word}",
    ]


def audit(reader: Reader, claim: Claim, dataset: str, fig_dir: Path) -> Section:
    """The seed audit: the spread of one configuration over seeds, one run's prediction interval,
    what the luckiest seed (and seed 42) would have claimed."""
    name = f"{claim.id}-{dataset}"
    run = reader.require(Role.STUDY, name)
    summary = reader.summary(run)
    c = summary["cells"][0]
    a, one = c["audit_by_metric"][TEST], c["one_run"][TEST]
    per = {int(s): v for s, v in c["per_seed"][TEST].items()}
    ranked = sorted(per, key=lambda s: -per[s])
    out = Section([f"### {DATA[dataset]}", ""], spans=[reader.span(run)])
    out.lines += [
        f"Study run `{run.info.run_id}`: one configuration (the default recipe) under {len(per)} "
        f"seeds {sorted(per)}; the data split stays fixed, seeds differ in initialisation and data order.",
        "",
        "| test/acc % | mean ± sd | min | median | max | best − median | one run's 95% prediction interval | split's own standard error |",
        "|---|---|---|---|---|---|---|---|",
        f"| {DATA[dataset]} | {pct(a['mean'])} ± {pct(a['std'])} | {pct(a['min'])} | {pct(a['median'])} "
        f"| {pct(a['max'])} | {points(a['best_minus_median'])} | [{pct(one['low'])}, {pct(one['high'])}] "
        f"| ±{pct(one['split_se'])} |",
        "",
    ]
    if 42 in per:
        out.lines.append(
            f"- Seed 42 ranks {ranked.index(42) + 1} of {len(per)} on test/acc "
            f"({pct(per[42])} %; the median run {pct(a['median'])} %)."
        )
    pick = c.get("picked_seed") or {}
    if pick.get(TEST) is not None:
        out.lines.append(
            f"- Picking the seed with the best validation accuracy (seed {pick['seed']}) "
            f"would report test/acc {pct(pick[TEST])} %."
        )
    out.lines.append("")
    fig = figure(
        reader,
        run.info.run_id,
        summary["figures"].get("seed_spread"),
        fig_dir,
        f"{name}-seed_spread.png",
    )
    if fig:
        out.lines += [f"![seed spread, {DATA[dataset]}]({fig_dir.name}/{fig})", ""]
    runs = c.get("confirm_runs", {})
    out.lines += [
        "<details><summary>The seed runs (MLflow run ids)</summary>",
        "",
        ", ".join(f"seed {s} `{r}`" for s, r in runs.items()),
        "",
        "</details>",
        "",
    ]
    out.run_ids = [run.info.run_id, *runs.values()]
    out.glance.append(
        [
            claim.title,
            DATA[dataset],
            "best seed − median seed",
            points(a["best_minus_median"]),
            f"one run: [{pct(one['low'])}, {pct(one['high'])}] %",
            ABOUT[claim.about],
            f"spread {pct(a['max'] - a['min'])} points",
        ]
    )
    return out


DATA = {"mnist1d": "MNIST-1D", "digits": "digits (8×8)"}
