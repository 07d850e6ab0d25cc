"""Seed 004's search methods on one budget, read back from their sweeps: per method and study seed
the best validation accuracy found, the held-out accuracy of the trial it chose, the epochs spent;
the methods compared on the held-out accuracy, paired over study seeds; best-so-far curves."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from tunelab.findings.spec import Budget, Claim
from tunelab.findings.store import Reader, Trial
from tunelab.findings.study_section import DATA, Section, glance_row
from tunelab.findings.verdict import Judged, judge, line
from tunelab.reports.verdict_words import pct
from tunelab.reports.verdicts import compare
from tunelab.tags import Role

TOL = 0.005  # "reached the grid's best": within half a point of it


def curve(trials: list[Trial]) -> list[tuple[int, float]]:
    """(epochs spent, best val/acc so far) after each trial."""
    out, spent, best = [], 0, float("nan")
    for t in trials:
        spent += t.epochs
        if t.state == "COMPLETE" and t.val is not None and not best >= t.val:
            best = t.val
        out.append((spent, best))
    return out


def chosen(trials: list[Trial]) -> Trial | None:
    done = [t for t in trials if t.state == "COMPLETE" and t.val is not None]
    return max(done, key=lambda t: (t.val, -t.number)) if done else None


def _sd(x: list[float]) -> float:
    return statistics.stdev(x) if len(x) > 1 else 0.0


def search(
    reader: Reader, claim: Claim, dataset: str, budget: Budget, fig_dir: Path, margin: float
) -> Section:
    seeds = list(budget.search["study_seeds"])
    out = Section([f"### {DATA[dataset]}", ""])
    curves: dict[str, list[list[tuple[int, float]]]] = {}
    val: dict[str, dict[int, float]] = {}
    test: dict[str, dict[int, float]] = {}
    runs: dict[str, list[str]] = {}
    for m in claim.methods:
        ran = seeds if m.seeded else seeds[:1]
        for seed in ran:
            run = reader.require(Role.SWEEP, f"{claim.id}-{dataset}-{m.name}-s{seed}")
            out.spans.append(reader.span(run))
            trials = reader.trials(run)
            best = chosen(trials)
            runs.setdefault(m.name, []).append(run.info.run_id)
            out.run_ids += [run.info.run_id] + ([best.run_id] if best else [])
            curves.setdefault(m.name, []).append(curve(trials))
            if best is not None:  # an unseeded method's one study stands for every study seed
                for s in seeds if not m.seeded else [seed]:
                    val.setdefault(m.name, {})[s] = best.val
                    test.setdefault(m.name, {})[s] = best.test
    grid = statistics.mean(val["grid"].values()) if val.get("grid") else None
    out.lines += _table(claim, seeds, curves, val, test, runs, grid) + [""]
    verdicts = compare({m: v for m, v in test.items() if v}, "test/acc", "maximize")
    pairs = [p.as_dict() for p in verdicts.pairs]
    top = ", ".join(f"`{c}`" for c in verdicts.top_set)
    out.lines += [
        f"Held-out verdict (test accuracy of the trial each search chose, paired over "
        f"study seeds {seeds}): top set {top}.",
        "",
    ]
    seeded = {m.name for m in claim.methods if m.seeded}
    for check in claim.checks:
        j = judge(pairs, check, margin)
        if not {check.a, check.b} & seeded:  # two deterministic searches: one study each
            j = Judged(check, j.diff, math.nan, math.nan, False, 1, "one study each")
        out.lines.append(f"- {line(j, margin)}")
        out.glance.append(glance_row(claim, dataset, j))
        out.verdicts.append(j.word)
    name = f"{claim.id}-{dataset}-best_so_far.png"
    _plot(curves, fig_dir / name)
    out.lines += [
        "",
        f"![best so far against epochs spent, {DATA[dataset]}]({fig_dir.name}/{name})",
        "",
    ]
    return out


def _table(claim, seeds, curves, val, test, runs, grid) -> list[str]:
    rows = [
        "| method | studies | best val/acc % found | test/acc % of the chosen trial | epochs spent "
        f"| epochs to within {TOL * 100:.1f} of the grid's best | sweep runs |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in claim.methods:
        vs = [
            val[m.name][s] for s in (seeds if m.seeded else seeds[:1]) if s in val.get(m.name, {})
        ]
        ts = [
            test[m.name][s] for s in (seeds if m.seeded else seeds[:1]) if s in test.get(m.name, {})
        ]
        spent = statistics.mean(c[-1][0] for c in curves[m.name]) if curves[m.name] else 0
        reach = [
            next((e for e, b in c if grid is not None and b >= grid - TOL), None)
            for c in curves[m.name]
        ]
        hit = [r for r in reach if r is not None]
        reached = f"{statistics.mean(hit):.0f} ({len(hit)}/{len(reach)})" if hit else "never"
        ids = ", ".join(f"`{r}`" for r in runs[m.name])
        rows.append(
            f"| `{m.name}` | {len(curves[m.name])} | {pct(statistics.mean(vs)) if vs else '–'} ± "
            f"{pct(_sd(vs))} | {pct(statistics.mean(ts)) if ts else '–'} ± {pct(_sd(ts))} | "
            f"{spent:.0f} | {reached} | {ids} |"
        )
    return rows


def _plot(curves: dict[str, list[list[tuple[int, float]]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (m, runs) in enumerate(curves.items()):
        for k, c in enumerate(runs):
            ax.step(
                [e for e, _ in c],
                [b * 100 for _, b in c],
                where="post",
                color=f"C{i}",
                alpha=0.75,
                label=m if k == 0 else None,
            )
    ax.set(xlabel="epochs spent", ylabel="best val/acc so far (%)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
