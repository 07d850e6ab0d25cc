"""A playbook study's checks as figures and findings: axis plots with boundary warnings, infeasible
trials, best-so-far with a bootstrap band, curves of the top runs, isolation and seed-spread plots."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from tunelab.config.space import Param, bounds
from tunelab.reports.figures import close, plt
from tunelab.reports.pipeline import axis_plot, edge_warning
from tunelab.reports.stats import best_so_far_band, scale_for

FLAGS = ("overfitting", "still_improving", "unstable_val", "diverged", "plateaued", "underfitting")


def trials_frame(trials: list[FrozenTrial]) -> pd.DataFrame:
    """number, state, value (a pruned trial's last reported value), params_<name>."""
    rows = []
    for t in trials:
        value = t.value if t.state == TrialState.COMPLETE else None
        if t.state == TrialState.PRUNED and t.intermediate_values:
            value = t.intermediate_values[max(t.intermediate_values)]
        rows.append(
            {"number": t.number, "state": t.state.name, "value": value}
            | {f"params_{k}": v for k, v in t.params.items()}
        )
    return pd.DataFrame(rows)


def infeasible(trials: list[FrozenTrial]) -> dict[str, Any]:
    """Fraction of trials that failed or diverged, with the reasons counted."""
    failed = [t for t in trials if t.state == TrialState.FAIL]
    reasons = Counter(str(t.user_attrs.get("fail_reason", "?")).split(":")[0] for t in failed)
    n = len(trials)
    return {
        "n": n,
        "failed": len(failed),
        "pruned": sum(t.state == TrialState.PRUNED for t in trials),
        "fraction": len(failed) / n if n else math.nan,
        "reasons": dict(reasons),
    }


def axis_checks(
    cell: str,
    trials: list[FrozenTrial],
    space: list[Param],
    best: FrozenTrial,
    metric: str,
    edge_fraction: float,
    out: Path,
) -> tuple[list[str], list[str]]:
    """One axis plot per nuisance parameter; returns (figure file names, boundary warnings)."""
    df = trials_frame(trials)
    best_row = df.loc[df["number"] == best.number].iloc[0]
    names, warnings = [], []
    for param, b in bounds(space).items():
        col = f"params_{param}"
        if col not in df or best_row.get(col) is None:
            continue
        if "low" in b:
            df[col] = pd.to_numeric(df[col], errors="coerce")
            warn = edge_warning(param, float(best_row[col]), b, edge_fraction)
            if warn:
                warnings.append(warn)
        else:
            df[col] = df[col].astype(str)
            best_row = df.loc[df["number"] == best.number].iloc[0]
        fig = axis_plot(df, param, b, metric, best_row)
        fig.axes[0].set_title(f"{cell}: {param}", fontsize=9)
        fig.tight_layout()
        name = f"axis_{cell}_{param.replace('.', '_')}.png"
        fig.savefig(out / name, dpi=100)
        close(fig)
        names.append(name)
    return names, warnings


def best_so_far(
    series: dict[str, list[float]], direction: str, metric: str, n_boot: int, out: Path
) -> tuple[str | None, dict[str, dict[str, np.ndarray]]]:
    """Best-so-far vs trials per cell with a 5-95% bootstrap band; returns (file, bands)."""
    bands = {c: best_so_far_band(v, direction, n_boot) for c, v in series.items() if v}
    if not bands:
        return None, {}
    scale, unit = scale_for(metric)
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for i, (cell, b) in enumerate(bands.items()):
        x = np.arange(1, len(b["observed"]) + 1)
        color = f"C{i % 10}"
        ax.fill_between(x, b["low"] * scale, b["high"] * scale, color=color, alpha=0.15)
        ax.plot(x, b["median"] * scale, color=color, ls="--", lw=1)
        ax.plot(x, b["observed"] * scale, color=color, marker=".", label=cell)
    # early, poor trials would squeeze the part that matters
    if direction == "maximize":
        ax.set_ylim(bottom=min(b["low"][len(b["low"]) // 3] for b in bands.values()) * scale)
    else:
        ax.set_ylim(top=max(b["high"][len(b["high"]) // 3] for b in bands.values()) * scale)
    ax.set_xlabel("finished trials")
    ax.set_ylabel(f"best {metric} so far" + (f" ({unit})" if unit else ""))
    ax.set_title("best so far (solid), bootstrap median and 5-95% band", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "best_so_far.png", dpi=100)
    close(fig)
    return "best_so_far.png", bands


def curves(
    cell: str, runs: list[tuple[str, dict[str, list[float]]]], out: Path
) -> tuple[str, dict[str, list[str]]]:
    """Loss and accuracy per epoch of a cell's top runs, labelled with their curve diagnosis."""
    from tunelab.diagnostics.curves import diagnose_curves

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    flags: dict[str, list[str]] = {}
    for i, (label, h) in enumerate(runs):
        codes = [f.code for f in diagnose_curves(h)]
        flags[label] = codes
        color = f"C{i % 10}"
        tag = f"{label} [{', '.join(codes) or 'healthy'}]"
        for ax, key, style in (
            (axes[0], "train/loss", {"label": f"{tag} train"}),
            (axes[0], "val/loss", {"ls": "--", "label": "val"}),
            (axes[1], "train/acc", {"alpha": 0.5}),
            (axes[1], "val/acc", {"ls": "--", "label": tag}),
        ):
            values = h.get(key, [])
            ax.plot(range(1, len(values) + 1), values, color=color, **style)
    axes[0].set_title(f"{cell}: loss (solid train, dashed val)", fontsize=9)
    axes[1].set_title(f"{cell}: accuracy (faint train, dashed val)", fontsize=9)
    for ax in axes:
        ax.set_xlabel("epoch")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    name = f"curves_{cell}.png"
    fig.savefig(out / name, dpi=100)
    close(fig)
    return name, flags


def isolation(
    cells: list[str],
    per_seed: dict[str, dict[str, dict[int, float]]],
    stats_: dict[str, dict[str, dict[str, float]]],
    search_best: dict[str, float],
    metrics: list[str],
    scientific: str,
    out: Path,
) -> str:
    """Best over nuisance per scientific value: mean and 95% interval over seeds, seeds as dots."""
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 3.8), squeeze=False)
    x = np.arange(len(cells))
    for ax, metric in zip(axes[0], metrics, strict=True):
        scale, unit = scale_for(metric)
        for i, cell in enumerate(cells):
            s = stats_[cell][metric]
            vals = list(per_seed[cell][metric].values())
            ax.scatter(
                np.full(len(vals), i) + np.linspace(-0.08, 0.08, len(vals)),
                np.array(vals) * scale,
                s=10,
                color="grey",
                alpha=0.7,
            )
            if math.isfinite(s["mean"]):
                err = (s["ci_high"] - s["mean"]) * scale if math.isfinite(s["ci_high"]) else 0
                ax.errorbar(i, s["mean"] * scale, yerr=err, fmt="o", color="C0", capsize=5)
            if metric == metrics[0] and cell in search_best:
                ax.scatter(
                    i + 0.2,
                    search_best[cell] * scale,
                    marker="D",
                    facecolors="none",
                    edgecolors="C3",
                    label="search best" if i == 0 else None,
                )
        ax.set_xticks(x, cells, rotation=20)
        ax.set_xlabel(scientific)
        ax.set_ylabel(metric + (f" ({unit})" if unit else ""))
        ax.set_title(f"{metric}: mean and 95% interval over seeds", fontsize=9)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "isolation.png", dpi=100)
    close(fig)
    return "isolation.png"


def seed_spread(
    per_seed: dict[str, dict[int, float]], metric: str, direction: str, out: Path
) -> str:
    """Every seed's value per cell, labelled with its seed (ties stacked); median and best marked."""
    scale, unit = scale_for(metric)
    fig, ax = plt.subplots(figsize=(6.5, 1.4 + 0.8 * len(per_seed)))
    for i, values in enumerate(per_seed.values()):
        if not values:
            continue
        vals = np.array(list(values.values())) * scale
        seen: Counter = Counter()
        for s, v in zip(values, vals, strict=True):
            y = i - 0.3 + 0.12 * seen[round(float(v), 6)]
            seen[round(float(v), 6)] += 1
            ax.scatter([v], [y], color="C0", s=16)
            ax.annotate(str(s), (v, y), xytext=(4, -2), textcoords="offset points", fontsize=6)
        ax.plot([np.median(vals)] * 2, [i - 0.4, i + 0.4], color="k", lw=1.5)
        best = vals.max() if direction == "maximize" else vals.min()
        ax.scatter([best], [i - 0.3], s=70, facecolors="none", edgecolors="C3")
    ax.set_yticks(range(len(per_seed)), list(per_seed))
    ax.set_ylim(-0.6, len(per_seed) - 0.2)
    ax.set_xlabel(metric + (f" ({unit})" if unit else ""))
    ax.set_title("per-seed results (labels: seed; bar: median; circle: best seed)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "seed_spread.png", dpi=100)
    close(fig)
    return "seed_spread.png"
