"""A report a person reads: best config, seed spread, search history, importances, and one axis
plot per tuned parameter with a warning when the best value sits at the edge of its range."""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

import pandas as pd

from tunelab.reports.ensemble import ensemble_line
from tunelab.reports.figures import close, plt
from tunelab.reports.stats import scale_for


def edge_warning(
    name: str, best: float, bounds: dict[str, Any], edge_fraction: float
) -> str | None:
    """The playbook's boundary check: a best value near a range edge means the range should grow."""
    if "low" not in bounds:
        return None
    lo, hi, log = float(bounds["low"]), float(bounds["high"]), bool(bounds.get("log"))
    scale = (lambda v: math.log10(v)) if log else (lambda v: v)
    pos = (scale(best) - scale(lo)) / ((scale(hi) - scale(lo)) or 1.0)
    if pos <= edge_fraction:
        return f"best {name}={best:.4g} sits at the LOW edge of [{lo:g}, {hi:g}]: extend the range downwards"
    if pos >= 1 - edge_fraction:
        return f"best {name}={best:.4g} sits at the HIGH edge of [{lo:g}, {hi:g}]: extend the range upwards"
    return None


def axis_plot(
    trials: pd.DataFrame, param: str, bounds: dict[str, Any], objective: str, best_row: pd.Series
) -> Any:
    """Objective against one parameter over all finished trials; the best trial and the range marked."""
    col = f"params_{param}"
    x = trials[col]
    # choices sit at fixed positions: "40" and "60" are labels, not numbers
    if "low" not in bounds:
        labels = [str(c) for c in bounds["choices"]]
        x = x.astype(str).map({c: i for i, c in enumerate(labels)})
    done, pruned = (trials["state"] == "COMPLETE"), (trials["state"] == "PRUNED")
    fig, ax = plt.subplots(figsize=(5, 3.4))
    ax.scatter(x[done], trials["value"][done], s=18, alpha=0.7, label="complete")
    if pruned.any() and trials["value"][pruned].notna().any():
        ax.scatter(
            x[pruned],
            trials["value"][pruned],
            s=14,
            marker="x",
            alpha=0.5,
            label="pruned (last value)",
        )
    if "low" not in bounds:
        ax.set_xticks(range(len(labels)), labels)
    ax.scatter(
        [x[best_row.name]],
        [best_row["value"]],
        s=80,
        facecolors="none",
        edgecolors="red",
        label="best",
    )
    if "low" in bounds:
        for edge in (bounds["low"], bounds["high"]):
            ax.axvline(float(edge), color="grey", ls=":", lw=1)
        if bounds.get("log"):
            ax.set_xscale("log")
    ax.set_xlabel(param)
    ax.set_ylabel(objective)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def build_report(
    out: Path,
    *,
    trials: pd.DataFrame,
    bounds: dict[str, dict],
    summary: dict,
    metrics: dict,
    confirm: dict,
    histories: dict[str, dict],
    figures_dir: Path | None,
    edge_fraction: float,
    confusion_png: Path | None,
    objective: str,
) -> tuple[Path, list[str]]:
    """Write out/report.md and its figures; returns the path and the edge warnings."""
    out.mkdir(parents=True, exist_ok=True)
    lines = ["# Tuning report", ""]
    best = summary["best"][0] if summary["best"] else None
    counts = summary["counts"]
    lines += [
        f"Study `{summary['study_name']}`: {counts.get('complete', 0)} complete, {counts.get('pruned', 0)} "
        f"pruned, {counts.get('fail', 0)} failed trials.",
        "",
    ]
    test = metrics.get("metric", "test/acc")  # the objective's test metric
    head = "test_" + test.removeprefix("test/").replace("/", "_")
    scale, unit = scale_for(test)
    per_seed = metrics[f"{head}_per_seed"]
    shown = (lambda v: f"{v * scale:.2f} %") if unit else (lambda v: f"{v:.4g}")
    lines += [
        "## Result",
        "",
        f"{test} over seeds {', '.join(per_seed)}: "
        f"**{shown(metrics[f'{head}_mean'])} ± {shown(metrics[f'{head}_std'])}** "
        f"(min {shown(metrics[f'{head}_min'])}, max {shown(metrics[f'{head}_max'])}). "
        "The test split was not used for any choice.",
        "",
    ]
    if f"ensemble_{head}" in metrics:
        line = ensemble_line(test, metrics[f"ensemble_{head}"], list(per_seed.values()))
        lines += [
            f"Ensemble (mean {'probability' if unit else 'prediction'} of the confirmed seeds' "
            f"models on the test split): {line}.",
            "",
        ]
    lines += [
        f"| seed | {objective} | {test} | MLflow run |",
        "|---|---|---|---|",
    ]
    for seed, r in confirm["runs"].items():
        lines.append(f"| {seed} | {r[objective]:.4f} | {r[test]:.4f} | `{r['run_id']}` |")
    lines += ["", "## Best configuration", ""]
    if best:
        lines += [
            f"Trial {best['number']}, {objective} = {next(iter(best['values'].values())):.4f}. "
            "Re-run it on top of this pipeline's params with:",
            "",
            "```",
            "python src/train.py " + " ".join(confirm["overrides"]),
            "```",
            "",
            *_best_caveats(trials, best, objective),
        ]
    warnings = []
    if best is not None and len(trials):
        best_row = trials.loc[trials["number"] == best["number"]].iloc[0]
        lines += [
            "## Search space and boundary check",
            "",
            "| parameter | range | best | |",
            "|---|---|---|---|",
        ]
        plots: list[str] = []
        for param, b in bounds.items():
            if f"params_{param}" not in trials:
                continue
            value = best_row[f"params_{param}"]
            warn = edge_warning(param, float(value), b, edge_fraction) if "low" in b else None
            warnings += [warn] if warn else []
            rng = (
                f"[{b['low']:g}, {b['high']:g}]{' log' if b.get('log') else ''}"
                if "low" in b
                else str(b["choices"])
            )
            lines.append(
                f"| `{param}` | {rng} | {value:.4g} | {'⚠ ' + warn if warn else 'inside'} |"
            )
            fig = axis_plot(trials, param, b, objective, best_row)
            name = f"axis_{param.replace('.', '_')}.png"
            fig.savefig(out / name, dpi=110)
            close(fig)
            plots += [f"![{param}]({name})", ""]
        lines += ["", *plots]
    n_complete = int((trials["state"] == "COMPLETE").sum()) if len(trials) else 0
    lines += _figure_section(out, figures_dir, confusion_png, n_complete)
    lines += _curves_section(out, histories, objective)
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path, warnings


def _best_caveats(trials: pd.DataFrame, best: dict, objective: str) -> list[str]:
    """What the best trial's value does not say: a tie, and how it compares with the untuned
    baseline trial (the config's own values), when the study ran one."""
    done = trials[trials["state"] == "COMPLETE"]
    value = next(iter(best["values"].values()))
    out = []
    ties = done[done["value"] == value]
    if len(ties) > 1:
        numbers = ", ".join(str(n) for n in ties["number"])
        out.append(
            f"Trials {numbers} tie for the best {objective} ({value:.4f}); on a finite validation "
            "split a tie is common, and the first of them was confirmed."
        )
    flags = trials.get("user_attrs_baseline")
    baseline = trials[flags.astype(str) == "True"] if flags is not None else trials.iloc[0:0]
    if len(baseline) and baseline.iloc[0]["state"] == "COMPLETE":
        b = float(baseline.iloc[0]["value"])
        out.append(
            f"The untuned configuration (trial {int(baseline.iloc[0]['number'])}, the config's own "
            f"values) reached {objective} = {b:.4f}: tuning changed it by {value - b:+.4f}."
        )
    return [*(f"- {line}" for line in out), ""] if out else []


def _figure_section(
    out: Path, figures_dir: Path | None, confusion_png: Path | None, n_complete: int = 0
) -> list[str]:
    lines = []
    for name, title in (
        ("history.png", "Optimisation history"),
        ("importances.png", "Parameter importances"),
        ("parallel_coordinates.png", "Parallel coordinates"),
    ):
        src = figures_dir / name if figures_dir else None
        if src is not None and src.exists():
            shutil.copyfile(src, out / name)
            lines += [f"## {title}", "", f"![{title}]({name})", ""]
            if name == "importances.png" and n_complete < 10:
                lines += [
                    f"⚠ Importances from {n_complete} complete trials: with fewer than about 10 "
                    "their ranking is mostly noise.",
                    "",
                ]
    if confusion_png is not None and confusion_png.exists():
        shutil.copyfile(confusion_png, out / "confusion_matrix.png")
        lines += [
            "## Confusion matrix (test, all seeds)",
            "",
            "![confusion](confusion_matrix.png)",
            "",
        ]
    return lines


def _curves_section(out: Path, histories: dict[str, dict], objective: str = "val/acc") -> list[str]:
    if not histories:
        return []
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    for seed, h in histories.items():
        epochs = range(1, len(h[objective]) + 1)  # epochs count from 1, as in the log and MLflow
        axes[0].plot(epochs, h["train/loss"], label=f"train seed {seed}", alpha=0.8)
        axes[0].plot(epochs, h["val/loss"], ls="--", label=f"val seed {seed}", alpha=0.8)
        axes[1].plot(epochs, h[objective], label=f"seed {seed}")
    axes[0].set_title("loss")
    axes[1].set_title(objective)
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "learning_curves.png", dpi=110)
    close(fig)
    return ["## Learning curves of the confirmed runs", "", "![curves](learning_curves.png)", ""]
