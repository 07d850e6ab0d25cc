"""DVC stage `evaluate`: test metrics of the confirmed models (mean, std, per seed, per class),
the confusion matrix, as DVC metrics and plots, and an MLflow run that records them.

    python pipelines/evaluate.py --params params.yaml --confirm results/confirm --tune results/tune --out results/eval
"""

import argparse
import csv
import json
from pathlib import Path

from tunelab.reports.evaluation import confusion_figure, evaluate_checkpoints, seeds_of
from tunelab.stages import (
    apply_overrides,
    load_params,
    stage_run,
    use_prepared_data,
    write_json,
)
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
    result = evaluate_checkpoints(cfg, seeds_of(Path(args.confirm)))
    study = json.loads(Path(args.tune, "summary.json").read_text())
    best = study["best"][0] if study["best"] else {"number": -1, "values": {}}
    metrics = {
        "test_acc_mean": result["test_acc_mean"],
        "test_acc_std": result["test_acc_std"],
        "test_acc_min": result["test_acc_min"],
        "test_acc_max": result["test_acc_max"],
        "test_acc_per_seed": {str(s): m["test_acc"] for s, m in result["per_seed"].items()},
        "best_trial": {"number": best["number"], **best["values"]},
        "study": {"name": study["study_name"], **study["counts"]},
    }
    out = Path(args.out)
    write_json(metrics, out / "metrics.json")
    write_json(
        {k: result[k] for k in ("per_seed", "per_class_acc", "confusion", "data_digest")},
        out / "details.json",
    )
    _csv(out / "confusion.csv", ["seed", "actual", "predicted"], result["predictions"])
    _csv(out / "per_class.csv", ["class", "test_acc"], list(enumerate(result["per_class_acc"])))
    writer = MlflowWriter(cfg.tracking.tracking_uri, cfg.experiment)
    confirm_runs = ",".join(r["run_id"] for r in confirmed["runs"].values())
    tags = {"role": "evaluate", "data_digest": result["data_digest"], "confirm_runs": confirm_runs}
    with stage_run("evaluate", args.params, **tags) as ctx:
        run_id = writer.create_run("evaluate", dict(ctx.tags), ctx.parent_run_id)
        _record(writer, run_id, metrics, confirmed, out, result)
    _summary(metrics)


def _record(
    writer: MlflowWriter, run_id: str, metrics: dict, confirmed: dict, out: Path, result: dict
) -> None:
    """The evaluate run's metrics, figure and lineage (what `tunelab trace` reads)."""
    writer.log(run_id, metrics={k: v for k, v in metrics.items() if isinstance(v, float)})
    fig = confusion_figure(result["confusion"])
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


def _summary(metrics: dict) -> None:
    seeds = ", ".join(metrics["test_acc_per_seed"])
    print(
        f"test accuracy {metrics['test_acc_mean']:.4f} ± {metrics['test_acc_std']:.4f} "
        f"over seeds {seeds}"
    )


def _csv(path: Path, header: list[str], rows: list) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


if __name__ == "__main__":
    main()
