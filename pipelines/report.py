"""DVC stage `report`: results/report/report.md with figures, also attached to an MLflow run.

    python pipelines/report.py --params params.yaml --tune results/tune --confirm results/confirm \
        --eval results/eval --out results/report
"""

import argparse
import json
from pathlib import Path

import pandas as pd

from tunelab.reports.pipeline import build_report
from tunelab.stages import load_params, stage_run
from tunelab.tracking.mlflow_writer import MlflowWriter


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for flag in ("--tune", "--confirm", "--eval", "--out"):
        ap.add_argument(flag, required=True)
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args()
    cfg, stages = load_params(args.params)
    tune, confirm_dir = Path(args.tune), Path(args.confirm)
    confirm = json.loads((confirm_dir / "runs.json").read_text())
    histories = {
        p.stem.split("_")[1]: json.loads(p.read_text())
        for p in sorted(confirm_dir.glob("seed_*_history.json"))
    }
    path, warnings = build_report(
        Path(args.out),
        trials=pd.read_csv(tune / "trials.csv"),
        bounds=json.loads((tune / "space.json").read_text()),
        summary=json.loads((tune / "summary.json").read_text()),
        metrics=json.loads(Path(args.eval, "metrics.json").read_text()),
        confirm=confirm,
        histories=histories,
        figures_dir=tune / "figures",
        edge_fraction=float(stages.report.edge_fraction),
        confusion_png=Path(args.eval, "confusion_matrix.png")
        if cfg.task.name == "classification"
        else None,
        objective=cfg.objective.metric,
    )
    for w in warnings:
        print("warning:", w)
    writer = MlflowWriter(cfg.tracking.tracking_uri, cfg.experiment)
    with stage_run("report", args.params, role="report", edge_warnings=str(len(warnings))) as ctx:
        run_id = writer.create_run("report", dict(ctx.tags), ctx.parent_run_id)
        writer.log_artifacts(run_id, path.parent, "report")
        writer.end_run(run_id, "FINISHED")
    print(f"report: {path}")


if __name__ == "__main__":
    main()
