"""Seconds per trial that the tunelab sweeper adds beyond training, against a plain Optuna loop.

Both sides call `tunelab.run.api.run` with MLflow tracking on (sqlite), on the same random-search
trials. Per-trial overhead = time between consecutive `run()` calls (ask/tell, storage, MLflow
trial runs, Hydra job setup), averaged; the sweep's one-off setup and final analysis are shown apart.

    python bench/sweep_overhead.py [--trials 12] [--epochs 1]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SPACE = {"optimizer.lr": (1.0e-4, 1.0e-1), "optimizer.weight_decay": (1.0e-6, 1.0e-2)}


def _timed_run(spans: list[tuple[float, float]]):
    import tunelab.run.api

    real = tunelab.run.api.run

    def run(cfg, *args, **kw):
        t0 = time.perf_counter()
        try:
            return real(cfg, *args, **kw)
        finally:
            spans.append((t0, time.perf_counter()))

    return run


def _gaps(spans: list[tuple[float, float]]) -> float:
    """Mean time outside run() between consecutive trials."""
    spans = sorted(spans)
    gaps = [b[0] - a[1] for a, b in zip(spans, spans[1:], strict=False)]
    return sum(gaps) / max(1, len(gaps))


def sweep(trials: int, epochs: int, seed: int) -> dict:
    """`train.py -m` with the tunelab sweeper, in this process (basic launcher)."""
    from inprocess import multirun

    import tunelab.run.api

    spans: list[tuple[float, float]] = []
    tunelab.run.api.run = _timed_run(spans)
    overrides = [
        "hydra/sweeper=tunelab",
        "hydra.sweeper.sampler.name=random",
        f"hydra.sweeper.sampler.seed={seed}",
        f"hydra.sweeper.n_trials={trials}",
        "data=synthetic",
        f"trainer.max_epochs={epochs}",
        "trainer.resume=never",
        "hydra.sweep.dir=multirun",
        "hydra.sweeper.study_name=bench",
        *[f"{k}=tag(log, interval({lo}, {hi}))" for k, (lo, hi) in SPACE.items()],
    ]
    t0 = time.perf_counter()
    multirun(overrides)
    t1 = time.perf_counter()
    return {
        "per_trial_s": _gaps(spans),
        "setup_s": spans[0][0] - t0,
        "finish_s": t1 - max(e for _, e in spans),
        "train_s": sum(e - s for s, e in spans) / len(spans),
    }


def plain(trials: int, epochs: int, seed: int) -> dict:
    """optuna.optimize calling run() directly, same trials, in-memory study."""
    import optuna
    from hydra import compose, initialize_config_dir

    from tunelab.run.context import RunContext

    with initialize_config_dir(str(REPO / "conf"), job_name="train", version_base="1.3"):
        base = compose(
            "train",
            overrides=["data=synthetic", f"trainer.max_epochs={epochs}", "trainer.resume=never"],
        )
    spans: list[tuple[float, float]] = []
    run = _timed_run(spans)

    def objective(trial: optuna.Trial) -> float:
        cfg = base.copy()
        for key, (lo, hi) in SPACE.items():
            group, name = key.split(".")
            cfg[group][name] = trial.suggest_float(key, lo, hi, log=True)

        def reporter(epoch: int, value: float) -> None:
            trial.report(value, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()

        return run(cfg, RunContext(reporter=reporter, log_model=False)).value

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed))
    study.optimize(objective, n_trials=trials)
    return {"per_trial_s": _gaps(spans), "train_s": sum(e - s for s, e in spans) / len(spans)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mode", choices=["sweep", "plain"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.mode:
        import torch

        torch.set_num_threads(1)
        fn = sweep if args.mode == "sweep" else plain
        print(json.dumps(fn(args.trials, args.epochs, args.seed)))
        return
    results = {}
    for mode in ("plain", "sweep"):
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [
                sys.executable,
                __file__,
                "--mode",
                mode,
                "--trials",
                str(args.trials),
                "--epochs",
                str(args.epochs),
                "--seed",
                str(args.seed),
            ]
            out = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, env=os.environ)
            if out.returncode != 0:
                sys.exit(out.stderr[-3000:])
            results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    p, s = results["plain"], results["sweep"]
    print(
        f"trials={args.trials} epochs={args.epochs} (synthetic data, MLflow sqlite on both sides)"
    )
    print(
        f"plain optuna.optimize + run(): {p['per_trial_s']:.3f} s/trial outside run() "
        f"(run() {p['train_s']:.2f} s)"
    )
    print(
        f"tunelab sweeper (train.py -m): {s['per_trial_s']:.3f} s/trial outside run() "
        f"(run() {s['train_s']:.2f} s)"
    )
    print(f"extra per trial: {s['per_trial_s'] - p['per_trial_s']:.3f} s (target <= 0.15)")
    print(
        f"sweep one-off costs: setup {s['setup_s']:.2f} s, final analysis + figures "
        f"{s['finish_s']:.2f} s"
    )


if __name__ == "__main__":
    main()
