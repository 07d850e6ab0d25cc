"""DVC stage `confirm`: retrain the tuned configuration under the same N seeds every time.

python pipelines/confirm.py --params params.yaml --best results/tune/best_overrides.yaml --out results/confirm
"""

import argparse
import json
import os
import shutil
from pathlib import Path

from tunelab.checkpoint import load_safe
from tunelab.evaluation import write_curves
from tunelab.run_store import RunStore
from tunelab.stages import (
    apply_overrides,
    load_params,
    read_overrides,
    stage_tags,
    use_prepared_data,
    write_json,
)
from tunelab.train import run


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
    runs = {}
    for seed in stages.confirm.seeds:
        cfg.seed = int(seed)
        os.environ["TUNELAB_RUN_TAGS"] = json.dumps({**stage_tags("confirm"), "role": "confirm"})
        metrics = run(cfg)
        store = RunStore.for_config(cfg)
        shutil.copyfile(store.best_path, out / f"seed_{seed}.pt")
        write_json(
            load_safe(store.last_path)["state"]["history"], out / f"seed_{seed}_history.json"
        )
        runs[str(seed)] = {"run_id": json.loads(store.done_path.read_text())["run_id"], **metrics}
        print(
            f"seed {seed}: val/acc={metrics['val/acc']:.4f} test/acc={metrics['test/acc']:.4f}",
            flush=True,
        )
    write_curves(
        {s: json.loads((out / f"seed_{s}_history.json").read_text()) for s in stages.confirm.seeds},
        out / "curves.csv",
    )
    write_json(
        {"overrides": overrides, "seeds": list(stages.confirm.seeds), "runs": runs},
        out / "runs.json",
    )


if __name__ == "__main__":
    main()
