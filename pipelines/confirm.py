"""DVC stage `confirm`: retrain the tuned configuration under the same N seeds every time (with
`confirm.refit: train+val` each seed is then refit on train ∪ val; its checkpoint is the refit's).

python pipelines/confirm.py --params params.yaml --best results/tune/best_overrides.yaml --out results/confirm
"""

import argparse
import json
import shutil
from pathlib import Path

from tunelab.reports.evaluation import headline, write_curves
from tunelab.run.api import run
from tunelab.stages import (
    apply_overrides,
    load_params,
    read_overrides,
    stage_run,
    use_prepared_data,
    write_json,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--best", required=True, help="best_overrides.yaml of the tune stage")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    cfg, stages = load_params(args.params)
    overrides = read_overrides(args.best)
    cfg = apply_overrides(use_prepared_data(cfg, stages.prepared_dir), overrides)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs, histories = {}, {}
    tuned = json.loads(Path(args.best).with_name("summary.json").read_text())
    best = tuned["best"][0]["number"] if tuned["best"] else None
    tags = {"role": "confirm", "sweep": tuned["study_name"], "trial": str(best)}
    seeds = [int(s) for s in stages.confirm.seeds]
    objective = str(cfg.objective.metric)
    cfg.seed, cfg.trainer.replicas = seeds[0], seeds  # one process; batched where the model allows
    with stage_run("confirm", args.params, **tags) as stage:
        # named and tagged by what it trains: the seeds and the tuned values
        group = run(cfg, stage.derive(overrides=(f"trainer.replicas={seeds}", *overrides)))
        results = group.replicas or [group]
        failed = [
            f"seed {s}: {r.reason}"
            for s, r in zip(seeds, results, strict=True)
            if r.status != "FINISHED"
        ]
        for seed, result in zip(seeds, results, strict=True):
            if result.status != "FINISHED":
                continue
            shutil.copyfile(result.checkpoint, out / f"seed_{seed}.pt")
            histories[seed] = result.history
            write_json(result.history, out / f"seed_{seed}_history.json")
            runs[str(seed)] = {"run_id": result.run_id, **result.metrics}
            m, test = result.metrics, "test/" + headline(objective)
            print(f"seed {seed}: {objective}={m[objective]:.4f} {test}={m[test]:.4f}", flush=True)
        if failed:
            raise SystemExit("confirm: " + "; ".join(failed))
    write_curves(histories, out / "curves.csv", objective)
    write_json(
        {"overrides": overrides, "seeds": list(stages.confirm.seeds), "runs": runs},
        out / "runs.json",
    )


if __name__ == "__main__":
    main()
