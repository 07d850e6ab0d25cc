"""After the cells: statistics over seeds, paired verdicts, playbook checks, figures, the report, and
the records the study puts on its MLflow runs. Works from a StudyOutcome, a frozen copy of what the
study produced."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from optuna.trial import TrialState

from tunelab.config.secrets import mask
from tunelab.config.space import build_space, to_overrides
from tunelab.config.tasks import test_metric
from tunelab.reports import study_plots as checks
from tunelab.reports import study_verdicts as sv
from tunelab.reports import verdict_words
from tunelab.reports.run_record import RunRecord
from tunelab.reports.stats import audit, describe, doubling_gain
from tunelab.tags import COMPARE_RUNS, ENSEMBLE

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StudyOutcome:
    """What a playbook study produced, as its report reads it."""

    spec: Any  # tuning.study_spec.StudySpec
    cells: tuple[Any, ...]  # tuning.study.CellResult, one per cell
    out_dir: Path  # <sweep dir>/study
    storage_url: str
    run_id: str | None  # the study's MLflow run (None: tracking off)
    looks: int  # reports so far with more seeds, this one included
    experiment_id: str | None = None
    # (run id, artifact path) -> that JSON artifact or None; None: tracking off
    read_json: Callable[[str, str], Any] | None = None


@dataclass(frozen=True)
class StudyReport:
    summary: dict[str, Any]
    files: tuple[Path, ...]
    record: RunRecord  # for the study's run
    cell_records: dict[str, RunRecord]  # cell run id -> its record


def _direction(spec: Any, metric: str) -> str:
    """The objective's direction, for it and its test counterpart (config/tasks.py)."""
    return spec.direction if metric in (spec.metric, test_metric(spec.metric)) else "maximize"


def _n_split(result: Any, metric: str) -> float | None:
    """Examples behind an accuracy: the split it was measured on (from the confirmation runs)."""
    key = "data/n_test" if metric.startswith("test/") else "data/n_val"
    sizes = [r["values"][key] for r in result.confirm.values() if key in r.get("values", {})]
    return float(sizes[0]) if sizes and metric.endswith("acc") else None


def _picked(per_seed: dict[str, dict[int, float]], metric: str, direction: str) -> dict | None:
    """The seed a cherry-picker would report (best on the objective) and its test accuracy."""
    values, test = per_seed[metric], test_metric(metric)
    if not values or test not in per_seed or metric == test:
        return None
    pick = (max if direction == "maximize" else min)(values, key=values.get)
    return {"seed": pick, metric: values[pick], test: per_seed[test].get(pick)}


def rerun_command(spec: Any, result: Any, seed: int | None = None) -> str:
    """The single-run command that trains this cell's confirmed configuration."""
    _, fixed = build_space(result.cell.space, spec.cell_arguments(result.cell))
    ovs = fixed + to_overrides(result.best_params)
    if seed is not None:
        ovs.append(f"seed={seed}")
    return "python src/train.py " + " ".join(shlex.quote(o) for o in ovs)


def _curves_runs(run: StudyOutcome, result: Any, top_k: int) -> list[tuple[str, dict]]:
    """Histories of the cell's top trials (their first seed), or of its confirmation runs."""
    if run.read_json is None:
        return []
    out = []
    complete = [t for t in result.trials if t.state == TrialState.COMPLETE]
    rev = run.spec.direction == "maximize"
    for t in sorted(complete, key=lambda t: t.value, reverse=rev)[:top_k]:
        job_run = next(iter(t.user_attrs.get("mlflow_seed_run_ids") or []), None)
        h = run.read_json(job_run, "history.json") if job_run else None
        if h:
            out.append((f"trial {t.number}", h))
    if not complete:
        for seed in run.spec.seeds[:top_k]:
            job_run = _confirm_run(result, seed)
            h = run.read_json(job_run, "history.json") if job_run else None
            if h:
                out.append((f"seed {seed}", h))
    return out


def _confirm_run(result: Any, seed: int) -> str | None:
    """The MLflow run of one finished confirmation seed of a cell."""
    record = result.confirm.get(seed) or {}
    return record.get("run_id") if record.get("kind") == "complete" else None


def _cell_summary(
    run: StudyOutcome, result: Any, out: Path, per_seed: dict[str, dict[int, float]]
) -> dict[str, Any]:
    spec, cell = run.spec, result.cell
    info: dict[str, Any] = {
        "cell": cell.name,
        "overrides": list(cell.overrides),
        "space": dict(cell.space),
        "study_name": result.study_name,
        "mlflow_run_id": result.run_id,
        "best_trial": result.best.number if result.best is not None else None,
        "search_value": result.best.value if result.best is not None else None,
        "best_params": result.best_params,
        "per_seed": per_seed,
        "stats": {m: describe(list(v.values())) for m, v in per_seed.items()},
        "audit": audit(list(per_seed[spec.metric].values()), spec.direction),
        "audit_by_metric": {
            m: audit(list(v.values()), spec.direction if m == spec.metric else "maximize")
            for m, v in per_seed.items()
        },
        "picked_seed": _picked(per_seed, spec.metric, spec.direction),
        "ensemble": getattr(result, "ensemble", None) or {},
        "infeasible": checks.infeasible(result.trials),
        "stopped": result.stopped,
        "confirm_failures": {
            str(s): r.get("reason", r.get("kind"))
            for s, r in result.confirm.items()
            if r.get("kind") != "complete"
        },
        "confirm_runs": {
            str(s): _confirm_run(result, s) for s in spec.seeds if _confirm_run(result, s)
        },
        "failure_rate": sum(r.get("kind") != "complete" for r in result.confirm.values())
        / max(1, len(result.confirm)),
        "rerun": rerun_command(spec, result, spec.seeds[0]) if result.feasible else None,
        "edge_warnings": [],
        "axis_figures": [],
        "budget": sv.budget_check(_tried(result.trials), dict(cell.space))
        if result.space
        else None,
        "inert": sv.inert_settings(result.config),
        "one_run": {
            m: sv.one_run(list(v.values()), _n_split(result, m)) for m, v in per_seed.items()
        },
    }
    info["bias"] = sv.bias_checks(info, spec.metric)
    if result.best is not None and result.space:
        names, warns = checks.axis_checks(
            cell.name,
            result.trials,
            result.space,
            result.best,
            spec.metric,
            spec.checks["edge_fraction"],
            out,
        )
        info.update(axis_figures=names, edge_warnings=warns)
    runs = _curves_runs(run, result, spec.checks["top_k"])
    if runs:
        name, flags = checks.curves(cell.name, runs, out)
        info.update(curves_figure=name, curve_flags=flags)
    return info


def analyse(run: StudyOutcome, out: Path) -> dict[str, Any]:
    """Everything the report shows, as JSON-able data; figures are written into `out`."""
    spec, results = run.spec, run.cells
    test = test_metric(spec.metric)
    metrics = [spec.metric] + ([test] if spec.metric != test else [])
    confirm = {r.cell.name: r.confirm for r in results}
    judged = sv.verdicts(spec, confirm, run.looks)
    per_metric = {m: sv.with_failures(confirm, m, _direction(spec, m))[0] for m in metrics}
    cells = [
        _cell_summary(run, r, out, {m: per_metric[m][r.cell.name] for m in metrics})
        for r in results
    ]
    primary = judged.get(judged["primary"]) or {}
    comparisons = [p for m in metrics for p in (judged.get(m) or {}).get("pairs", [])]
    series = {
        r.cell.name: [t.value for t in r.trials if t.state == TrialState.COMPLETE]
        for r in results
        if r.space
    }
    bso_fig, bands = checks.best_so_far(
        series, spec.direction, spec.metric, spec.checks["bootstrap"], out
    )
    for c in cells:
        if c["cell"] in bands:
            gain = doubling_gain(bands[c["cell"]], spec.direction)
            noise = c["stats"][spec.metric]["std"]
            c["doubling_gain"] = gain
            judgeable = math.isfinite(noise) and c["budget"] is None  # >= 10 trials per dimension
            c["enough_trials"] = bool(gain <= noise) if judgeable else None
    names = [c["cell"] for c in cells]
    per_seed = {c["cell"]: c["per_seed"] for c in cells}
    figures = {"best_so_far": bso_fig}
    if any(c["per_seed"][spec.metric] for c in cells):
        figures["isolation"] = checks.isolation(
            names,
            per_seed,
            {c["cell"]: c["stats"] for c in cells},
            {c["cell"]: c["search_value"] for c in cells if c["search_value"] is not None},
            metrics,
            spec.scientific,
            out,
        )
        figures["seed_spread"] = checks.seed_spread(
            {c["cell"]: c["per_seed"][spec.metric] for c in cells}, spec.metric, spec.direction, out
        )
    return {
        "study": spec.name,
        "goal": spec.goal,
        "scientific": spec.scientific,
        "metric": spec.metric,
        "direction": spec.direction,
        "metrics": metrics,
        "seeds": spec.seeds,
        "search_seeds": spec.search_seeds,
        "n_trials": spec.n_trials,
        "sampler": dataclasses.asdict(spec.settings.sampler),
        "pruner": dataclasses.asdict(spec.settings.pruner),
        "fixed": spec.fixed,
        "arguments": spec.arguments,
        "storage": mask(run.storage_url),
        "mlflow_run_id": run.run_id,
        "primary": judged["primary"],
        "leader": primary.get("leader"),
        "top_set": primary.get("top_set", []),
        "judged": {m: judged[m] for m in metrics if m in judged},
        "looks": judged["looks"],
        "baseline": spec.baseline,
        "few_seeds": len(spec.seeds) < sv.MIN_SEEDS,
        "cells": cells,
        "comparisons": comparisons,
        "verdicts": primary.get("lines", []),
        "figures": {k: v for k, v in figures.items() if v},
    }


def _tables(summary: dict[str, Any], out: Path) -> None:
    rows = []
    for c in summary["cells"]:
        row: dict[str, Any] = {"cell": c["cell"], "best_trial": c["best_trial"]}
        for m, s in c["stats"].items():
            row.update({f"{m}_{k}": v for k, v in s.items()})
        row.update({f"audit_{k}": c["audit"][k] for k in ("range", "best_minus_median")})
        row["infeasible_fraction"] = c["infeasible"]["fraction"]
        rows.append(row)
    pd.DataFrame(rows).to_csv(out / "cells.csv", index=False)
    pd.DataFrame(summary["comparisons"]).to_csv(out / "comparisons.csv", index=False)
    (out / "summary.json").write_text(
        json.dumps(summary, indent=1, default=str, ensure_ascii=False)
    )


def _records(run: StudyOutcome, summary: dict[str, Any]) -> tuple[RunRecord, dict[str, RunRecord]]:
    """The study run's record (per-cell statistics, the setup, the report's folder) and each
    confirmed cell run's (its statistics and best trial)."""
    spec = run.spec
    study_metrics: dict[str, float] = {}
    cell_records = {}
    for c in summary["cells"]:
        cell_metrics = {}
        for m, s in c["stats"].items():
            for k in ("mean", "std", "ci_low", "ci_high"):
                cell_metrics[f"confirm/{m}_{k}"] = s[k]
                study_metrics[f"{c['cell']}/{m}_{k}"] = s[k]
        ensemble = c["ensemble"]
        if ensemble:
            for k, v in ensemble["metrics"].items():
                cell_metrics[f"ensemble/{k}"] = v
                study_metrics[f"{c['cell']}/ensemble/{k}"] = v
        if c["mlflow_run_id"]:
            tags = {"best_trial": str(c["best_trial"])}
            tags |= {ENSEMBLE: ensemble["line"]} if ensemble else {}
            cell_records[c["mlflow_run_id"]] = RunRecord(metrics=cell_metrics, tags=tags)
    params = {
        "scientific": spec.scientific,
        "cells": ",".join(c.name for c in spec.cells),
        "seeds": spec.seeds,
        "search_seeds": spec.search_seeds,
        "n_trials_per_cell": spec.n_trials,
        "sampler": spec.settings.sampler.name,
        "pruner": spec.settings.pruner.name,
        **{f"fixed.{o.split('=', 1)[0]}": o.split("=", 1)[1] for o in spec.fixed},
        **{f"nuisance.{c.name}": json.dumps(c.space) for c in spec.cells},
    }
    tags = {
        "top_set": ",".join(summary["top_set"]),
        "n_cells": str(len(spec.cells)),
        "mlflow.note.content": _description(summary),
    }
    cells = [c["mlflow_run_id"] for c in summary["cells"] if c["mlflow_run_id"]]
    if cells and run.experiment_id is not None:  # the confirmed cells side by side
        from tunelab.tracking.mlflow_writer import ui_link

        link = ui_link(run.experiment_id, runs=cells)
        tags[COMPARE_RUNS] = ",".join(cells)
        tags["mlflow.note.content"] += f"\n\nThe confirmed cells side by side: {link}"
        log.info("the confirmed cells side by side: %s", link)
    record = RunRecord(metrics=study_metrics, params=params, tags=tags, folders=(run.out_dir,))
    return record, cell_records


def _description(summary: dict[str, Any]) -> str:
    """What the MLflow UI shows above the study run: the top set, the verdicts, where the report is."""
    head = f"Top set on {summary['primary']}: {', '.join(summary['top_set'])}"
    lines = [head + f" (leader {summary['leader']}).", "", *[f"- {v}" for v in summary["verdicts"]]]
    return "\n".join(
        [*lines, "", "Report: report.html (and report.md, figures/) in the artifacts."]
    )


def finalize(run: StudyOutcome) -> StudyReport:
    """Analyse, write the report, tables and figures into run.out_dir; the records list what the
    study's runs get."""
    from tunelab.reports.study_report import write_report

    out = run.out_dir
    (out / "figures").mkdir(parents=True, exist_ok=True)
    summary = analyse(run, out / "figures")
    _tables(summary, out)
    write_report(summary, out)
    for line in summary["verdicts"]:
        log.info("verdict: %s", line)
    if summary["few_seeds"]:
        log.warning("%s", verdict_words.few_seeds(summary))
    log.info("study report: %s", out / "report.md")
    files = tuple(sorted(p for p in out.rglob("*") if p.is_file()))
    record, cell_records = _records(run, summary)
    return StudyReport(summary, files, record, cell_records)


def _tried(trials: list) -> int:
    """Trials the search finished (complete or pruned): what the budget check judges, whatever
    n_trials says now (a study resumed with a smaller or larger n_trials keeps its trials)."""
    return sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
