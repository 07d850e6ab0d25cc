"""The study's report: report.md (figures beside it) and a self-contained report.html, which MLflow's
artifact view renders with its figures inline."""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any

from tunelab.reports import verdict_words as words
from tunelab.reports.stats import scale_for

_CSS = (
    "body{font-family:sans-serif;max-width:1000px;margin:1em auto;line-height:1.45}"
    "table{border-collapse:collapse;font-size:0.9em}td,th{border:1px solid #ccc;padding:3px 7px}"
    "img{max-width:100%}code{background:#f3f3f3}blockquote{color:#444;border-left:3px solid #ccc;"
    "margin-left:0;padding-left:1em}"
)


def _pm(s: dict[str, float], metric: str) -> str:
    return f"{words.v(s['mean'], metric)} ± {words.v(s['std'], metric)}"


def _ci(s: dict[str, float], metric: str) -> str:
    return f"[{words.v(s['ci_low'], metric)}, {words.v(s['ci_high'], metric)}]"


def _unit(metric: str) -> str:
    return " (points)" if scale_for(metric)[1] else ""


def _results(summary: dict[str, Any]) -> list[str]:
    m, metrics = summary["metric"], summary["metrics"]
    head = "| cell | " + " | ".join(f"{x} mean ± std | 95% interval" for x in metrics)
    head += " | min | max | best seed − median | search best | seeds |"
    lines = [
        "## Results over seeds",
        "",
        f"Each cell's best configuration re-run under seeds {summary['seeds']}: the same seeds for "
        f"every cell, so differences are paired. Values{_unit(m)}.",
        "",
        head,
        "|---" * (len(metrics) * 2 + 6) + "|",
    ]
    for c in summary["cells"]:
        cols = [f"{_pm(c['stats'][x], x)} | {_ci(c['stats'][x], x)}" for x in metrics]
        a = c["audit"]
        best = " **(top set)**" if c["cell"] in summary["top_set"] else ""
        lines.append(
            f"| `{c['cell']}`{best} | "
            + " | ".join(cols)
            + f" | {words.v(a['min'], m)} | {words.v(a['max'], m)} | {words.v(a['best_minus_median'], m)}"
            + f" | {words.v(c['search_value'], m)} | {int(c['stats'][m]['n'])} |"
        )
    return [*lines, "", *_ensembles(summary)]


def _ensembles(summary: dict[str, Any]) -> list[str]:
    """Each cell's confirmed seeds as one model (the mean of their probabilities, or of their
    predictions for regression) beside the single-seed mean ± sd, on the test split."""
    cells = [c for c in summary["cells"] if c.get("ensemble")]
    if not cells:
        return []
    lines = [
        "Seed ensembles (seed 003): each cell's confirmed models averaged (class probabilities; "
        "predictions for regression), on the test split:",
        "",
    ]
    lines += [f"- `{c['cell']}`: {c['ensemble']['line']}" for c in cells]
    return [*lines, ""]


def _checks(summary: dict[str, Any]) -> list[str]:
    m = summary["metric"]
    lines = ["## Playbook checks", ""]
    if summary["figures"].get("best_so_far"):
        lines += [
            "Best value so far against the number of finished trials: a band still rising at the "
            "end means more trials would likely find better nuisance settings.",
            "",
            "![best so far](figures/best_so_far.png)",
            "",
        ]
    for c in summary["cells"]:
        lines += [f"### `{c['cell']}`", ""]
        inf = c["infeasible"]
        if inf["n"]:
            reasons = ", ".join(f"{k}: {v}" for k, v in inf["reasons"].items()) or "none"
            lines.append(
                f"- Nuisance search: {inf['n']} trials, {inf['pruned']} pruned, {inf['failed']} "
                f"infeasible ({inf['fraction']:.0%}; reasons: {reasons})."
            )
            params = ", ".join(
                f"`{k}={v:.4g}`" if isinstance(v, float) else f"`{k}={v}`"
                for k, v in c["best_params"].items()
            )
            if c["best_trial"] is not None:
                lines.append(
                    f"- Best trial {c['best_trial']}: {params} ({m} {words.v(c['search_value'], m)})."
                )
            else:
                lines.append(
                    "- ⚠ No trial finished: this value is infeasible in the searched space (move "
                    "or widen the ranges); it is left out of the comparisons."
                )
        else:
            lines.append("- No nuisance search: the cell's configuration is fixed.")
        if c.get("stopped"):
            lines.append(f"- ⚠ search stopped early: {c['stopped']}")
        for w in c["edge_warnings"]:
            lines.append(f"- ⚠ {w}")
        if c["best_trial"] is not None and not c["edge_warnings"]:
            lines.append("- Boundary check: the best trial is inside every searched range.")
        if c.get("budget"):
            lines.append(f"- ⚠ {c['budget']}.")
        for inert in c.get("inert") or []:
            lines.append(f"- ⚠ a fixed setting cannot act: {inert}.")
        if c.get("enough_trials") is not None:
            verdict = "enough trials" if c["enough_trials"] else "⚠ more trials would likely help"
            lines.append(
                f"- {verdict}: doubling the trials gained {words.v(c['doubling_gain'], m)} (bootstrap "
                f"median) against a seed std of {words.v(c['stats'][m]['std'], m)}."
            )
        for label, codes in (c.get("curve_flags") or {}).items():
            lines.append(f"- Curves of {label}: {', '.join(codes) or 'healthy'}.")
        if c["confirm_failures"]:
            lines.append(f"- ⚠ confirmation seeds that did not finish: {c['confirm_failures']}")
        lines.append("")
        lines += [f"![{f}](figures/{f})" for f in c["axis_figures"]]
        if c.get("curves_figure"):
            lines.append(f"![curves](figures/{c['curves_figure']})")
        lines.append("")
    return lines


def _setup(summary: dict[str, Any]) -> list[str]:
    sampler, pruner = summary["sampler"]["name"], summary["pruner"]["name"]
    lines = [
        "## Setup and caveats",
        "",
        f"- Scientific hyperparameter: `{summary['scientific']}`; objective `{summary['metric']}` "
        f"({summary['direction']}), selected on validation; test accuracy is never used to choose.",
        f"- Nuisance search per cell: {summary['n_trials']} trials, sampler `{sampler}`, pruner "
        f"`{pruner}`, search seeds {summary['search_seeds'] or 'the config seed'}; "
        f"confirmation seeds {summary['seeds']}.",
        "- Fixed for every cell (the conclusions hold for these values only): "
        + (", ".join(f"`{f}`" for f in summary["fixed"]) or "nothing beyond the base config")
        + ".",
        "- Command-line overrides: " + (" ".join(f"`{a}`" for a in summary["arguments"]) or "none"),
        "",
        "| cell | selects | nuisance space |",
        "|---|---|---|",
    ]
    for c in summary["cells"]:
        space = "<br>".join(f"`{k}={v}`" for k, v in c["space"].items()) or "(none)"
        lines.append(f"| `{c['cell']}` | {' '.join(f'`{o}`' for o in c['overrides'])} | {space} |")
    lines += ["", "Re-run a cell's confirmed configuration:", ""]
    for c in summary["cells"]:
        if c["rerun"]:
            lines += [f"- `{c['cell']}`: `{c['rerun']}`"]
    return [*lines, ""]


def markdown(summary: dict[str, Any]) -> str:
    lines = [f"# Study `{summary['study']}`", ""]
    if summary["goal"]:
        lines += [f"> {summary['goal']}", ""]
    cells = ", ".join(f"`{c['cell']}`" for c in summary["cells"])
    single = len(summary["cells"]) == 1
    if single:
        lines += words.audit(summary) + words.caveats(summary, _primary(summary))
    else:
        lines += [f"Scientific hyperparameter **{summary['scientific']}** ∈ {{{cells}}}.", ""]
        lines += words.headline(summary)
    lines += _results(summary)
    if not single and summary["figures"].get("isolation"):
        lines += [
            "## Isolation plot",
            "",
            "Best over the nuisance parameters for each value of the scientific one; bars: "
            "95% interval over seeds, dots: seeds, diamond: the search's best (one seed).",
            "",
            "![isolation](figures/isolation.png)",
            "",
        ]
    if not single:
        lines += words.pairs_table(summary) + words.audit(summary)
    lines += _bias(summary) + _checks(summary) + _setup(summary)
    return "\n".join(lines) + "\n"


def _primary(summary: dict[str, Any]) -> dict[str, Any]:
    return summary["judged"].get(summary["primary"]) or {"failures": {}}


def _bias(summary: dict[str, Any]) -> list[str]:
    """Selection bias, measured: validation against held-out, the search against confirmation."""
    m = summary["metric"]
    rows = [
        f"| `{c['cell']}` | {words.v(c['bias'].get('validation_minus_test'), m)} | "
        f"{words.v(c['bias'].get('search_minus_confirmed'), m)} | {c['failure_rate']:.0%} |"
        for c in summary["cells"]
    ]
    return [
        "## Bias checks",
        "",
        f"{m} chose the configurations, so it flatters them: the gap to the held-out split, and "
        "from the search's best (one seed, the best of many tries) to the confirmed mean.",
        "",
        f"| cell | {m} − test/acc | search − confirmed | seeds that failed |",
        "|---|---|---|---|",
        *rows,
        "",
    ]


def html(md: str, base: Path) -> str:
    """Render the markdown with every figure inlined (MLflow shows HTML artifacts in a frame)."""
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark", {"html": True}).enable("table").render(md)

    def inline(match: re.Match) -> str:
        path = base / match.group(1)
        if not path.is_file():
            return match.group(0)
        data = base64.b64encode(path.read_bytes()).decode()
        return f'src="data:image/png;base64,{data}"'

    body = re.sub(r'src="([^"]+\.png)"', inline, body)
    return f"<!doctype html><html><head><meta charset='utf-8'><style>{_CSS}</style></head><body>{body}</body></html>"


def write_report(summary: dict[str, Any], out: Path) -> Path:
    md = markdown(summary)
    (out / "report.md").write_text(md)
    (out / "report.html").write_text(html(md, out))
    return out / "report.md"
