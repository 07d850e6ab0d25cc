"""DVC stage `tune`: the Optuna study of params.yaml, run through the Hydra multirun entry.

The composed params become a generated primary config, so the study is exactly
`python src/train.py -m search=<preset>` on these params. The study storage persists between
runs: an interrupted tune resumes, and a larger `pipeline.tune.n_trials` runs only the extra trials.

    python pipelines/tune.py --params params.yaml --study results/study --out results/tune
"""

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

from omegaconf import OmegaConf

from tunelab.config.identity import config_key
from tunelab.config.space import search_bounds
from tunelab.stages import (
    load_params,
    stage_run,
    sweep_params_of,
    use_prepared_data,
    write_json,
)

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--study", required=True, help="persistent directory of the Optuna journal")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    cfg, stages = load_params(args.params)
    tune = stages.tune
    cfg = use_prepared_data(cfg, stages.prepared_dir)
    cfg.confirm.refit = None  # trials select; only the confirm stage refits (confirm.refit)
    study_name = f"pipeline-{config_key(cfg)}-{tune.search}"  # new params: new study; same: resume
    out, conf_dir = Path(args.out), Path(args.out) / "config"
    shutil.rmtree(out, ignore_errors=True)
    sweeper = {
        "study_name": study_name,
        "storage": f"journal:{Path(args.study) / 'optuna.journal'}",
        "n_trials": int(tune.n_trials),
        "n_jobs": int(tune.n_jobs),
        "sampler": {"seed": int(tune.sampler_seed)},
        "baseline": True,  # trial 0: the params' own values, so the report can show what tuning gained
    }
    if tune.params:
        sweeper["params"] = OmegaConf.to_container(tune.params)
    launcher = (
        ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={int(tune.n_jobs)}"]
        if tune.n_jobs > 1
        else []
    )
    primary = OmegaConf.merge(
        {"defaults": [{"search": tune.search}, "_self_"]},
        cfg,
        {
            "hydra": {
                "sweep": {"dir": str(out.resolve()), "subdir": "jobs/${hydra.job.num}"},
                "callbacks": {"tunelab": {"_target_": "tunelab.hydra_job.TunelabCallback"}},
                "sweeper": sweeper,
            }
        },
    )
    conf_dir.mkdir(parents=True)
    (conf_dir / "tune.yaml").write_text(OmegaConf.to_yaml(primary))
    cmd = [
        sys.executable,
        str(ROOT / "src" / "train.py"),
        "--config-dir",
        str(conf_dir.resolve()),
        "--config-name",
        "tune",
        "-m",
        *launcher,
    ]
    print("running:", " ".join(cmd), flush=True)
    with stage_run("tune", args.params) as ctx:
        subprocess.run(cmd, check=True, env={**os.environ, **ctx.to_env()})
    write_json(search_bounds(sweep_params_of(out)), out / "space.json")


if __name__ == "__main__":
    main()
