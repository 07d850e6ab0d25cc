"""DVC stage `evaluate`: test metrics of the confirmed models (the objective's mean, std, per seed;
every metric of the task; per class and the confusion matrix for classification) and of their
ensemble (mean probability or prediction), as DVC metrics and plots, and an MLflow run that
records them (the ensemble also on the pipeline's run).

    python pipelines/evaluate.py --params params.yaml --confirm results/confirm --tune results/tune --out results/eval
"""

import argparse
import csv
import json
from pathlib import Path

from tunelab.reports.ensemble import ensemble_line
from tunelab.reports.evaluation import (
    confusion_figure,
    evaluate_checkpoints,
    metric_key,
    seeds_of,
)
from tunelab.stages import (
    apply_overrides,
    load_params,
    stage_run,
    use_prepared_data,
    write_json,
)
from tunelab.tags import ENSEMBLE
from tunelab.tracking.mlflow_writer import MlflowWriter


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--confirm", required=True)
    ap.add_argument("--tune", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    cfg, stages = load_params(args.params)
    confirmed = json.loads(Path(args.confirm, "runs.json").read_text())
    cfg = apply_overrides(use_prepared_data(cfg, stages.prepared_dir), confirmed["overrides"])
    objective = str(cfg.objective.metric)
    result = evaluate_checkpoints(cfg, seeds_of(Path(args.confirm)), objective)
    study = json.loads(Path(args.tune, "summary.json").read_text())
    best = study["best"][0] if study["best"] else {"number": -1, "values": {}}
    head = metric_key(result["metric"])
    ensemble = result["ensemble"]
    metrics = {
        "metric": f"test/{result['metric']}",
        **{f"{head}_{s}": result[f"{head}_{s}"] for s in ("mean", "std", "min", "max")},
        f"{head}_per_seed": {str(s): m[head] for s, m in result["per_seed"].items()},
        f"ensemble_{head}": ensemble[head],
        "ensemble_seeds": len(result["per_seed"]),
        "test_mean": _means(result["per_seed"]),  # every test metric of the task, mean over seeds
        "ensemble": ensemble,
        "best_trial": {"number": best["number"], **best["values"]},
        "study": {"name": study["study_name"], **study["counts"]},
    }
    out = Path(args.out)
    write_json(metrics, out / "metrics.json")
    write_json(
        {k: result[k] for k in ("per_seed", "per_class_acc", "confusion", "data_digest", "task")},
        out / "details.json",
    )
    _csv(out / "confusion.csv", ["seed", "actual", "predicted"], result["predictions"])
    _csv(out / "per_class.csv", ["class", "test_acc"], list(enumerate(result["per_class_acc"])))
    writer = MlflowWriter(cfg.tracking.tracking_uri, cfg.experiment)
    confirm_runs = ",".join(r["run_id"] for r in confirmed["runs"].values())
    tags = {"role": "evaluate", "data_digest": result["data_digest"], "confirm_runs": confirm_runs}
    line = ensemble_line(
        f"test/{result['metric']}",
        ensemble[head],
        [m[head] for m in result["per_seed"].values()],
    )
    with stage_run("evaluate", args.params, **tags) as ctx:
        run_id = writer.create_run("evaluate", dict(ctx.tags), ctx.parent_run_id)
        _record(writer, run_id, metrics, confirmed, out, result)
        if ctx.parent_run_id:  # the pipeline's run: the ensemble beside the seeds' mean
            ensembled = {f"ensemble/test/{k[5:]}": v for k, v in ensemble.items()}
            writer.log(ctx.parent_run_id, metrics=ensembled, tags={ENSEMBLE: line})
    _summary(metrics, head, line)


def _means(per_seed: dict) -> dict[str, float]:
    keys = set.intersection(*(set(m) for m in per_seed.values())) if per_seed else set()
    return {k: float(sum(m[k] for m in per_seed.values()) / len(per_seed)) for k in sorted(keys)}


def _record(
    writer: MlflowWriter, run_id: str, metrics: dict, confirmed: dict, out: Path, result: dict
) -> None:
    """The evaluate run's metrics, figure and lineage (what `tunelab trace` reads)."""
    flat = {k: v for k, v in metrics.items() if isinstance(v, float)}
    flat |= {f"ensemble/test/{k[5:]}": v for k, v in result["ensemble"].items()}
    writer.log(run_id, metrics=flat)
    fig = confusion_figure(result["confusion"], result["task"])
    fig.savefig(out / "confusion_matrix.png", dpi=110)
    writer.log_artifact(run_id, out / "confusion_matrix.png")
    lineage = {
        "stage": "evaluate",
        "mlflow_run": run_id,
        "computed_from": [r["run_id"] for r in confirmed["runs"].values()],
        "per_seed": {seed: r["run_id"] for seed, r in confirmed["runs"].items()},
    }
    write_json(lineage, out / "lineage.json")  # `tunelab trace results/eval/metrics.json`
    writer.log_artifact(run_id, out / "metrics.json")
    writer.log_artifact(run_id, out / "lineage.json")
    writer.end_run(run_id, "FINISHED")


def _summary(metrics: dict, head: str, ensemble: str) -> None:
    seeds = ", ".join(metrics[f"{head}_per_seed"])
    name = "test accuracy" if head == "test_acc" else metrics["metric"]
    print(
        f"{name} {metrics[f'{head}_mean']:.4f} ± {metrics[f'{head}_std']:.4f} over seeds {seeds}"
        f"\n{ensemble}"
    )


def _csv(path: Path, header: list[str], rows: list) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


if __name__ == "__main__":
    main()
