"""What a finished sweep leaves behind: trials.csv, best overrides, Pareto front, Optuna's figures and
the summary in the sweep directory, and the record (values, params, tags, files) the sweep puts on
its MLflow run. Works from a SweepOutcome, a frozen copy of what the sweep produced."""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from tunelab.config.identity import override_key
from tunelab.config.secrets import mask
from tunelab.config.space import Param, describe, to_overrides
from tunelab.reports.run_record import RunRecord
from tunelab.reports.runs_table import trial_counts
from tunelab.tags import COMPARE_RUNS, WARM_START_FROM

log = logging.getLogger(__name__)

# Overrides that select the sweep itself; a re-run of the winner leaves them out.
_SWEEP_ONLY = ("search",)


@dataclass(frozen=True)
class SweepOutcome:
    """What a sweep produced, as its reports read it (the study's trials when it ended)."""

    study_name: str
    trials: tuple[FrozenTrial, ...]
    directions: tuple[StudyDirection, ...]
    metrics: tuple[str, ...]
    fixed: tuple[str, ...]  # the overrides every trial ran with
    space: tuple[Param, ...]
    sampler: str
    seeds: tuple[int | None, ...]
    n_trials: int
    n_jobs: int
    storage_url: str
    sweep_dir: Path
    figures: bool  # Optuna's figures are drawn
    utilisation: float  # the share of the workers' time spent in trials
    n_run_here: int  # trials this process ran
    experiment_id: str | None = None  # the sweep's MLflow experiment (None: tracking off)
    warm_start_from: str | None = None  # the earlier study whose best configurations ran first


@dataclass(frozen=True)
class SweepReport:
    summary: dict[str, Any]
    files: tuple[Path, ...]
    record: RunRecord  # for the sweep's MLflow run


def as_study(outcome: SweepOutcome) -> optuna.Study:
    """An in-memory study holding the outcome's trials (Optuna's tables and figures take a study)."""
    study = optuna.create_study(study_name=outcome.study_name, directions=outcome.directions)
    study.add_trials(outcome.trials)
    return study


def feasible(trial: FrozenTrial) -> bool:
    """Whether a trial meets every constraint of its sweep (Optuna's: each value <= 0); a trial of
    a sweep without constraints does."""
    return all(v <= 0 for v in trial.constraints.values())


def constrained(study: optuna.Study) -> bool:
    return any(t.constraints for t in study.get_trials(deepcopy=False))


def write_trials_csv(study: optuna.Study, path: Path) -> Path:
    """Every trial with params, values, state, duration and user attrs (and, in a constrained
    sweep, whether it is feasible: a finished trial that misses a constraint is not)."""
    df = study.trials_dataframe(
        attrs=("number", "value", "state", "duration", "params", "user_attrs")
    )
    if "duration" in df:
        df["duration"] = df["duration"].dt.total_seconds()
    if constrained(study):
        trials = study.get_trials(deepcopy=False)
        df["feasible"] = [feasible(t) if t.constraints else None for t in trials]
    df.to_csv(path, index=False)
    return path


def best_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The best trial (single objective) or the Pareto front (several), among the feasible
    trials of a constrained sweep."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not any(feasible(t) for t in complete):
        return []
    return [study.best_trial] if len(study.directions) == 1 else list(study.best_trials)


def write_best_overrides(
    trial: optuna.trial.FrozenTrial, fixed: list[str], out_dir: Path
) -> list[Path]:
    """`best_overrides.txt` (one override a line: `python src/train.py $(cat …)`) and a YAML twin."""
    keys = [override_key(o) for o in fixed]
    keep = [o for o, k in zip(fixed, keys, strict=True) if k not in _SWEEP_ONLY and not _hydra(k)]
    lines = [mask(o) for o in keep + to_overrides(dict(trial.params))]  # a typed password: ***
    txt = out_dir / "best_overrides.txt"
    txt.write_text("\n".join(lines) + "\n")
    yml = out_dir / "best_overrides.yaml"
    body = [f"# trial {trial.number}, values {trial.values}", "overrides:"]
    body += [f"  - {_yaml_str(line)}" for line in lines]
    yml.write_text("\n".join(body) + "\n")
    return [txt, yml]


def _hydra(key: str) -> bool:
    return key.startswith(("hydra.", "hydra/"))


def _yaml_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def write_pareto_csv(study: optuna.Study, metrics: list[str], path: Path) -> Path:
    """The Pareto-optimal trials of a multi-objective study."""
    rows = ["number," + ",".join(metrics) + ",params"]
    for t in sorted(study.best_trials, key=lambda t: t.number):
        params = ";".join(to_overrides(dict(t.params)))
        rows.append(f"{t.number}," + ",".join(repr(v) for v in t.values) + f',"{params}"')
    path.write_text("\n".join(rows) + "\n")
    return path


def write_figures(study: optuna.Study, metrics: list[str], out_dir: Path) -> list[Path]:
    """History, importances, parallel coordinates, slice, contour (and Pareto front) as PNGs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as vis

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 2:
        return []
    names = {p for t in complete for p in t.params}
    multi = len(study.directions) > 1
    kw: dict[str, Any] = (
        {"target": lambda t: t.values[0], "target_name": metrics[0]}
        if multi
        else {"target_name": metrics[0]}
    )
    plots = {
        "history": lambda: vis.plot_optimization_history(study, **kw),
        "parallel_coordinates": lambda: vis.plot_parallel_coordinate(study, **kw),
        "slice": lambda: vis.plot_slice(study, **kw),
        "intermediate_values": lambda: vis.plot_intermediate_values(study),
    }
    if len(names) >= 2:
        plots["importances"] = lambda: vis.plot_param_importances(study, **kw)
        params = sorted(names)[:4]
        plots["contour"] = lambda: vis.plot_contour(study, params=params, **kw)
    if multi:
        plots["pareto_front"] = lambda: vis.plot_pareto_front(study, target_names=metrics)
    out = []
    for name, make in plots.items():
        if name == "intermediate_values" and multi:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                make()
            fig = plt.gcf()
            fig.set_size_inches(max(fig.get_size_inches()[0], 8), max(fig.get_size_inches()[1], 5))
            path = out_dir / f"{name}.png"
            fig.savefig(path, dpi=90, bbox_inches="tight")
            out.append(path)
        except Exception as e:  # a figure that cannot be drawn is skipped, not fatal
            log.warning("figure %s skipped: %s", name, e)
        finally:
            plt.close("all")
    return out


def summary(study: optuna.Study, metrics: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Counts per state, best values and params (for logs and the sweep run)."""
    trials = study.get_trials(deepcopy=False)
    counts = trial_counts(trials)
    out: dict[str, Any] = {"counts": counts, "best": []}
    if constrained(study):
        out["infeasible"] = sorted(t.number for t in trials if not feasible(t))
    for t in best_trials(study):
        out["best"].append(
            {
                "number": t.number,
                "values": dict(zip(metrics, t.values, strict=False)),
                "params": t.params,
            }
        )
    return out


def finalize(outcome: SweepOutcome) -> SweepReport:
    """Write every result file into the sweep dir; the record lists them for the sweep's run."""
    study, out_dir = as_study(outcome), outcome.sweep_dir
    metrics = list(outcome.metrics)
    files = [write_trials_csv(study, out_dir / "trials.csv")]
    best = best_trials(study)
    if best:
        top = best[0] if len(best) == 1 else max(best, key=lambda t: t.values[0] * _sign(study, 0))
        files += write_best_overrides(top, list(outcome.fixed), out_dir)
    if len(study.directions) > 1 and best:
        files.append(write_pareto_csv(study, metrics, out_dir / "pareto_front.csv"))
    if outcome.figures:
        fig_dir = out_dir / "figures"
        fig_dir.mkdir(exist_ok=True)
        files += write_figures(study, metrics, fig_dir)
    result = summary(study, metrics)
    result.update(
        study_name=outcome.study_name,
        storage=mask(outcome.storage_url),
        n_run_here=outcome.n_run_here,
        worker_utilisation=round(outcome.utilisation, 3),
        n_jobs=outcome.n_jobs,
        sweep_dir=str(out_dir),
    )
    if outcome.warm_start_from:
        result[WARM_START_FROM] = outcome.warm_start_from
    (out_dir / "summary.json").write_text(json.dumps(result, indent=1, default=str))
    files.append(out_dir / "summary.json")
    return SweepReport(result, tuple(files), _record(outcome, study, result, best, files))


def _record(
    outcome: SweepOutcome,
    study: optuna.Study,
    result: dict[str, Any],
    best: list,
    files: list[Path],
) -> RunRecord:
    """Best value and params, the trial counts and every result file, for the sweep's run."""
    metrics: dict[str, float] = {"sweep/worker_utilisation": result["worker_utilisation"]}
    tags = {f"trials.{k}": str(v) for k, v in result["counts"].items()}
    names = outcome.metrics
    if len(best) == 1:
        metrics.update({f"best/{m}": v for m, v in zip(names, best[0].values, strict=False)})
        tags.update({f"best.{k}": str(v) for k, v in best[0].params.items()})
        tags["best.trial"] = str(best[0].number)
        values = ", ".join(f"{m} {v:.4g}" for m, v in zip(names, best[0].values, strict=False))
        chosen = " ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in best[0].params.items()
        )
        head = f"Best: {values} at trial {best[0].number}: {chosen}"
    elif best:
        tags["pareto.trials"] = ",".join(str(t.number) for t in best)
        head = f"Pareto front: trials {tags['pareto.trials']} (pareto_front.csv)"
    elif result.get("infeasible"):
        head = "No finished trial meets the constraints."
    else:
        head = "No trial finished."
    if "infeasible" in result:
        tags["trials.infeasible"] = str(len(result["infeasible"]))
    counts = ", ".join(f"{v} {k}" for k, v in result["counts"].items() if v)
    compare = compare_best(outcome, study)
    tags["mlflow.note.content"] = (
        f"{head}\n\nTrials: {counts}. In the artifacts: trials.csv, best_overrides.txt "
        "(`python src/train.py $(cat best_overrides.txt)`) and Optuna's figures."
        + (f"\n\nThe best {len(compare[0])} trials, {compare[1]}" if compare else "")
    )
    if compare:
        tags[COMPARE_RUNS] = ",".join(compare[0])
        log.info("the best %d trials, %s", len(compare[0]), compare[1])
    params = {
        "n_trials": outcome.n_trials,
        "sampler": outcome.sampler,
        "seeds": list(outcome.seeds),
        **{f"space.{k}": v for k, v in describe(list(outcome.space)).items()},
    }
    shelved = tuple((p, "figures" if str(p).endswith(".png") else None) for p in files)
    return RunRecord(metrics=metrics, params=params, tags=tags, files=shelved)


def compare_best(
    outcome: SweepOutcome, study: optuna.Study, most: int = 10
) -> tuple[list[str], str] | None:
    """The MLflow runs of the best finished trials (at most `most`, best first, by the first
    objective) and the printed links to them side by side and to their objective's curves."""
    from tunelab.tracking.mlflow_writer import compare_hint

    if outcome.experiment_id is None:
        return None
    done = [t for t in study.trials if t.state == TrialState.COMPLETE and t.values and feasible(t)]
    done = [t for t in done if t.user_attrs.get("mlflow_run_id")]
    done.sort(key=lambda t: -_sign(study, 0) * t.values[0])
    runs = [str(t.user_attrs["mlflow_run_id"]) for t in done[:most]]
    if not runs:
        return None
    return runs, compare_hint(outcome.experiment_id, runs, outcome.metrics[0])


def _sign(study: optuna.Study, i: int) -> float:
    return 1.0 if study.directions[i] == optuna.study.StudyDirection.MAXIMIZE else -1.0
