"""docs/FINDINGS.md, written from the MLflow store and claims.yaml only: the verdicts at a glance,
then one section per claim (the article's words, the command, the budget, each dataset's table,
verdicts, figure and runs, the conclusion). Nothing in it is typed by hand except claims.yaml."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from tunelab.findings import search_section, study_section
from tunelab.findings.spec import Claim, Spec
from tunelab.findings.store import Reader
from tunelab.findings.study_section import DATA, Section
from tunelab.findings.verdict import drifted
from tunelab.tags import ROLE, Role

ARTICLES = {
    "000": "seed 000, the deep learning tuning playbook (Chinese summary)",
    "002": "seed 002, 深度学习训练tricks总结 (ResNet-18 on CIFAR-10)",
    "003": "seed 003, 深度学习如炼丹，你有哪些迷信做法 (a Reddit thread on ML superstitions)",
    "004": "seed 004, 深度学习调参常用方法总结 (tuning methods)",
}
GLANCE = [
    "claim",
    "data",
    "comparison (a − b)",
    "test/acc difference, points",
    "interval (family level)",
    "judged on",
    "verdict",
]


@dataclass
class Written:
    path: Path
    figures: list[Path]
    run_ids: list[str]
    spans: list[tuple[float, float]]
    drift: list[str]  # conclusions whose declared verdicts the runs no longer give


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def commands(spec: Spec, budget: str, claim: Claim) -> list[str]:
    jobs = spec.jobs(budget, [claim.id])
    if claim.kind == "search":  # one line per method, at its first study seed
        jobs = [
            j for j in jobs if j.name.endswith(f"-s{spec.budget(budget).search['study_seeds'][0]}")
        ]
    exp = f"hydra.sweeper.experiment={spec.experiment_for(budget)}"
    return [shlex.join(["python", "src/train.py", "-m", *j.overrides, exp]) for j in jobs]


def judged_on(spec: Spec, budget: str, claim: Claim) -> str:
    """What the claim is about, and so what its runs' budget means."""
    if claim.about == "short_budget":
        return (
            "**Judged on**: a short budget. The article's claim is about speed, so each run trains "
            "the preset's fixed epochs; runs still improving when they stop are the point, not a flaw."
        )
    extra = spec.budget(budget).final_quality
    how = f" (`{' '.join(extra)}`)" if extra else " (not at this budget: it adds no stopping rule)"
    return (
        "**Judged on**: final quality. The article's claim is about what training reaches, so at the "
        f"document's budget runs train until validation stops improving{how}; a verdict drawn from "
        "runs the curve diagnosis still finds improving is marked so."
    )


def still_improving(parts: list[Section], claims: list[Claim]) -> str:
    """How many cell rows of final-quality claims were still improving when their runs stopped."""
    rows = [p for p, c in zip(parts, claims, strict=True) if c.about == "final_quality"]
    cells, improving = sum(p.cells for p in rows), sum(p.improving for p in rows)
    return (
        f"{improving} of the {cells} cell rows of final-quality claims have runs the curve "
        "diagnosis finds still improving when they stopped"
    )


def section(
    spec: Spec, budget: str, claim: Claim, reader: Reader, fig_dir: Path, number: int
) -> Section:
    out = Section(
        [
            f"## {number}. {claim.title}",
            "",
            f"> {claim.quote}",
            ">",
            f"> — {ARTICLES.get(claim.article, 'seed ' + claim.article)}. In English: {claim.says}",
            "",
            "Re-tested with:",
            "",
            "```bash",
            *commands(spec, budget, claim),
            "```",
            "",
            judged_on(spec, budget, claim),
            "",
            *([claim.note, ""] if claim.note else []),
        ]
    )
    given: dict[str, list[str]] = {}
    for d in claim.datasets:
        if claim.kind == "search":
            part = search_section.search(
                reader, claim, d, spec.budget(budget), fig_dir, spec.margin
            )
        elif claim.kind == "audit":
            part = study_section.audit(reader, claim, d, fig_dir)
        else:
            part = study_section.study(reader, claim, d, fig_dir, spec.margin)
        out.lines += part.lines
        out.glance += part.glance
        out.run_ids += part.run_ids
        out.spans += part.spans
        out.cells += part.cells
        out.improving += part.improving
        given[d] = part.verdicts
    out.drift = [f"{claim.id}, {d}" for d in drifted(claim, given)] if budget == "full" else []
    if out.drift:
        out.lines += [
            "**What it shows.** *(The conclusion written in claims.yaml is not printed: it rests on "
            "verdicts these runs no longer give (" + "; ".join(out.drift) + "). It needs "
            "rewriting from the tables above.)*",
            "",
        ]
    elif budget == "full" and claim.conclusion:
        out.lines += ["**What it shows.** " + " ".join(claim.conclusion.split()), ""]
    elif claim.conclusion:
        out.lines += [
            "*(The conclusion is written for the full budget; at this budget the numbers "
            "do not support one.)*",
            "",
        ]
    return out


def compute(spans: list[tuple[float, float]]) -> str:
    """Summed and elapsed hours of the studies and sweeps, and how many ran at once at most."""
    total = sum(end - start for start, end in spans)
    edges = sorted(
        [(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans], key=lambda x: (x[0], x[1])
    )
    elapsed, running, most, last = 0.0, 0, 0, None
    for t, step in edges:
        if running and last is not None:
            elapsed += t - last
        running += step
        most, last = max(most, running), t
    return (
        f"{total / 3600:.2f} hours summed over the {len(spans)} studies and sweeps (each its own "
        f"process), {elapsed / 3600:.2f} hours elapsed with up to {most} running at a time"
    )


def environment(reader: Reader) -> str:
    runs = reader.search({ROLE: Role.CONFIRM})
    if not runs:
        return "no training run found"
    t = runs[0].data.tags
    return (
        f"device {t.get('device', '?')}, torch threads per run {t.get('threads', '?')}, torch "
        f"{t.get('version.torch', '?')}, MLflow {t.get('version.mlflow', '?')}, Optuna "
        f"{t.get('version.optuna', '?')}, commit {t.get('git_sha', '?')[:10]}"
    )


def write(spec: Spec, budget: str, reader: Reader, out: Path) -> Written:
    fig_dir = out.parent / "findings"
    parts = [section(spec, budget, c, reader, fig_dir, i) for i, c in enumerate(spec.claims, 1)]
    spans = [s for p in parts for s in p.spans]
    b = spec.budget(budget)
    head = [
        "# Findings: the seed articles' tuning folklore, re-tested",
        "",
        f"Written by `tunelab findings write` from the MLflow experiment `{reader.experiment_name}` (of "
        "the findings' own store, `results/findings/mlflow.db`, unless `--tracking-uri` names another) and "
        "`docs/findings/claims.yaml`; every number is computed from the runs the document names "
        "(`tunelab trace <run id>` shows where each came from, from the store or, without it, from the "
        "record `findings/record.parquet` beside this file: every run as data, from which `tunelab "
        "findings write` regenerates this file). Regenerate the runs with `tunelab findings run` (it "
        "runs only what the store lacks, then writes this file and the record).",
        "",
        f"- **Budget `{budget}`**: {' '.join(b.about.split())}.",
        f"- **Compute**: {compute(spans)}, on {' '.join(b.machine.split())} ({environment(reader)}).",
        f"- **Budgets**: each claim is judged on final quality (runs train until validation stops "
        f"improving) or on a short budget (where speed is the article's point); "
        f"{still_improving(parts, spec.claims)}.",
        "- **Data**: MNIST-1D (4,000 generated 1-D sequences, 10 classes; the published baselines are "
        "32 % logistic, 68 % MLP, 94 % CNN) and scikit-learn's digits (1,797 8×8 images). Both are "
        "small: a verdict here says what holds for small models on small data at a few epochs, and "
        "travels to ResNets on CIFAR-10 only as a hypothesis to re-test there.",
        "- **How to read a verdict**: every cell's tuned configuration is re-run under the same seeds, "
        "so differences are paired. The primary verdict is on the held-out test split, which no "
        "search saw. An interval is the study's simultaneous interval for a − b at its family's "
        "Bonferroni level (all pairs of the study); *supported* means the resolved difference goes "
        "the article's way (or, for claims of no difference, the interval lies inside ± the margin), "
        "*contradicted* the opposite, *not resolved* that these seeds cannot tell.",
        "",
        "## Verdicts at a glance",
        "",
        _row(GLANCE),
        "|---" * len(GLANCE) + "|",
        *(_row(r) for p in parts for r in p.glance),
        "",
    ]
    body = [line for p in parts for line in p.lines]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(head + body).rstrip() + "\n")
    figures = sorted(fig_dir.glob("*.png")) if fig_dir.is_dir() else []
    ids = [i for p in parts for i in p.run_ids]
    return Written(out, figures, ids, spans, [d for p in parts for d in p.drift])


__all__ = ["DATA", "Written", "commands", "write"]
