"""The study's report: report.md (figures beside it) and a self-contained report.html, which MLflow's
artifact view renders with its figures inline."""

from __future__ import annotations

import base64
import math
import re
from pathlib import Path
from typing import Any

from tunelab.reports.stats import scale_for

_CSS = (
    "body{font-family:sans-serif;max-width:1000px;margin:1em auto;line-height:1.45}"
    "table{border-collapse:collapse;font-size:0.9em}td,th{border:1px solid #ccc;padding:3px 7px}"
    "img{max-width:100%}code{background:#f3f3f3}blockquote{color:#444;border-left:3px solid #ccc;"
    "margin-left:0;padding-left:1em}"
)


def _v(value: float | None, metric: str) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    scale, _ = scale_for(metric)
    return f"{value * scale:.2f}" if scale != 1.0 else f"{value:.4g}"


def _pm(s: dict[str, float], metric: str) -> str:
    return f"{_v(s['mean'], metric)} ± {_v(s['std'], metric)}"


def _ci(s: dict[str, float], metric: str) -> str:
    return f"[{_v(s['ci_low'], metric)}, {_v(s['ci_high'], metric)}]"


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
        best = " **(best)**" if c["cell"] == summary["best_cell"] else ""
        lines.append(
            f"| `{c['cell']}`{best} | " + " | ".join(cols)
            + f" | {_v(a['min'], m)} | {_v(a['max'], m)} | {_v(a['best_minus_median'], m)}"
            + f" | {_v(c['search_value'], m)} | {int(c['stats'][m]['n'])} |"
        )  # fmt: skip
    return [*lines, ""]


def _comparisons(summary: dict[str, Any]) -> list[str]:
    if not summary["comparisons"]:
        return []
    lines = [
        "## Paired comparisons against the best cell",
        "",
        "Difference = cell − best on the same seeds; ± is the 95% t-interval of the mean "
        "difference; p from a paired t-test, Holm-adjusted over the comparisons of one metric "
        "(raw p and the Wilcoxon signed-rank p beside it: with fewer than 6 seeds Wilcoxon cannot "
        "go below 0.05).",
        "",
    ]
    lines += [f"- {c['verdict']}" for c in summary["comparisons"]]
    lines += [
        "",
        "| cell | metric | difference | ± 95% | p (Holm) | p (t) | p (Wilcoxon) | seeds |",
    ]
    lines += ["|---|---|---|---|---|---|---|---|"]
    for c in summary["comparisons"]:
        m = c["metric"]
        lines.append(
            f"| `{c['cell']}` | {m} | {_v(c['diff'], m)} | {_v(c['ci_half'], m)} | "
            f"{c['p_holm']:.3g} | {c['p_t']:.3g} | {c['p_wilcoxon']:.3g} | {c['n']} |"
        )
    return [*lines, ""]


def _audit(summary: dict[str, Any]) -> list[str]:
    lines = ["## How much is one seed worth?", ""]
    for c in summary["cells"]:
        if c["audit"]["n"] < 2:
            continue
        for m, a in c["audit_by_metric"].items():
            unit = " points" if scale_for(m)[1] else ""
            lines.append(
                f"- `{c['cell']}`, {m} over {int(a['n'])} seeds: {_v(a['mean'], m)} ± "
                f"{_v(a['std'], m)} (95% interval {_ci(a, m)}), min {_v(a['min'], m)}, max "
                f"{_v(a['max'], m)}, range {_v(a['range'], m)}{unit}; the best single seed sits "
                f"{_v(a['best_minus_median'], m)}{unit} above the median run."
            )
        pick, m = c.get("picked_seed"), summary["metric"]
        if pick and pick.get("test/acc") is not None:
            med = c["audit_by_metric"]["test/acc"]["median"]
            lines.append(
                f"- Reporting only the seed with the best {m} (seed {pick['seed']}, "
                f"{_v(pick[m], m)}) would claim test/acc {_v(pick['test/acc'], 'test/acc')}; "
                f"the median seed gets {_v(med, 'test/acc')}."
            )
    return [*lines, "", "![seed spread](figures/seed_spread.png)", ""] if len(lines) > 2 else []


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
            params = ", ".join(f"`{k}={v:.4g}`" if isinstance(v, float) else f"`{k}={v}`"
                               for k, v in c["best_params"].items())  # fmt: skip
            if c["best_trial"] is not None:
                lines.append(
                    f"- Best trial {c['best_trial']}: {params} ({m} {_v(c['search_value'], m)})."
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
        if c.get("enough_trials") is not None:
            verdict = "enough trials" if c["enough_trials"] else "⚠ more trials would likely help"
            lines.append(
                f"- {verdict}: doubling the trials gained {_v(c['doubling_gain'], m)} (bootstrap "
                f"median) against a seed std of {_v(c['stats'][m]['std'], m)}."
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
    sampler = (summary["sampler"] or {}).get("name", "tpe")
    pruner = (summary["pruner"] or {}).get("name", "none")
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
    m = summary["metric"]
    lines = [f"# Study `{summary['study']}`", ""]
    if summary["goal"]:
        lines += [f"> {summary['goal']}", ""]
    cells = ", ".join(f"`{c['cell']}`" for c in summary["cells"])
    single = len(summary["cells"]) == 1
    if not single:
        lines += [f"Scientific hyperparameter **{summary['scientific']}** ∈ {{{cells}}}.", ""]
    best = next((c for c in summary["cells"] if c["cell"] == summary["best_cell"]), None)
    if best is not None and single:
        a = best["audit"]
        lines += [
            f"**One configuration under {int(a['n'])} seeds**: {m} {_pm(a, m)}{_unit(m)}, "
            f"range {_v(a['range'], m)}; the best seed sits {_v(a['best_minus_median'], m)} above "
            "the median run.",
            "",
        ]
    elif best is not None:
        s = best["stats"][m]
        lines += [
            f"**Best: `{best['cell']}`**, {m} {_pm(s, m)}{_unit(m)} over {int(s['n'])} seeds.",
            "",
        ]
        beyond = [c["cell"] for c in summary["comparisons"]
                  if c["metric"] == m and "beyond seed noise" in c["verdict"]]  # fmt: skip
        others = len(summary["ranking"]) - 1
        left_out = [c["cell"] for c in summary["cells"] if c["cell"] not in summary["ranking"]]
        if left_out:
            names = ", ".join(f"`{x}`" for x in left_out)
            lines += [f"⚠ Not compared (no confirmed seed): {names}.", ""]
        if others and not beyond:
            lines += [
                f"No other value of `{summary['scientific']}` differs from it beyond seed noise: "
                "with this budget the study cannot rank them.",
                "",
            ]
        elif beyond:
            names = ", ".join(f"`{b}`" for b in beyond)
            lines += [f"Differing from it beyond seed noise: {names}.", ""]
        lines += [f"- {v}" for v in summary["verdicts"]] + [""]
    else:
        lines += ["**No cell finished a confirmation seed.**", ""]
    lines += _results(summary)
    if single:
        lines += _audit(summary)
    elif summary["figures"].get("isolation"):
        lines += ["## Isolation plot", "",
                  "Best over the nuisance parameters for each value of the scientific one; bars: "
                  "95% interval over seeds, dots: seeds, diamond: the search's best (one seed).",
                  "", "![isolation](figures/isolation.png)", ""]  # fmt: skip
    lines += _comparisons(summary) + ([] if single else _audit(summary))
    lines += _checks(summary) + _setup(summary)
    return "\n".join(lines) + "\n"


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
