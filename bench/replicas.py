"""K seeds in one pass (tunelab.run.replicas) versus K sequential runs of the same seeds.

For K = 1, 4, 8, 16 and each model, the same process trains the K seeds twice, side by side: once
as K sequential loop.fit runs (each seeded and built as api.setup builds it, with the optimizer,
schedule and batch-order generator api.train gives it) and once as K vmapped replicas
(build_replicas + fit_replicas). Both sides get the same data (built once), the same torch thread
count and deterministic setting, and are timed from model building to the last epoch (no
tracking, no checkpoints on either side). The replicas' losses are checked against the sequential
runs' (max |difference| of the per-epoch train/loss; float32).

Models, on MNIST-1D (data=mnist1d, generated locally into a temporary directory):
  mlp: conf/model/mlp.yaml's network (norm none, dropout 0). model=mlp with the default adamw
       brings the MLP recipe's dropout 0.109, which cannot batch (the masks come from the global
       RNG); the recipe's lr, batch size and label smoothing stay.
  mlp64: the same MLP 64 wide: less arithmetic per step, so per-step overhead (what batching
       saves) weighs more; where a 5x speed-up is reachable on a 2-core CPU.
  cnn: the default CNN (conf/model/cnn.yaml: norm batch) with its recipe; BatchNorm batches
       (its running statistics are batched buffers).

    python bench/replicas.py [--epochs 2] [--threads 2] [--ks 1 4 8 16] [--models mlp cnn]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from tunelab import build  # noqa: E402
from tunelab.build import build_training  # noqa: E402
from tunelab.run.api import SPLIT_KEYS  # noqa: E402
from tunelab.run.loop import Objective, TrainState, fit  # noqa: E402
from tunelab.run.replica_rules import build_replicas, can_batch, config_reason  # noqa: E402
from tunelab.run.replicas import fit_replicas  # noqa: E402
from tunelab.tracking.base import NullTracker  # noqa: E402

MODELS = {
    "mlp": ["model=mlp", "model.norm=none", "model.dropout=0.0"],
    "mlp64": ["model=mlp", "model.norm=none", "model.dropout=0.0", "model.width=64"],
    "cnn": ["model=cnn"],
}
TARGETS = {"mlp": 5.0, "mlp64": 5.0, "cnn": 2.0}  # the speed-up targets at K=8


def compose_cfg(overrides: list[str]):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=overrides)


def sequential(cfg, seeds: list[int], splits, data) -> tuple[float, list[TrainState]]:
    """K runs one after the other, each as api.train runs it (minus store and tracking)."""
    t0, states = time.perf_counter(), []
    for seed in seeds:
        (model,) = build_replicas(cfg, [seed], splits.input_shape, splits.num_classes)
        optimizer, schedule = build_training(model, cfg, len(splits.y_train))
        state = fit(
            model,
            optimizer,
            schedule,
            data,
            cfg.trainer,
            objective=Objective(cfg.objective.metric, cfg.objective.direction),
            generator=torch.Generator().manual_seed(seed),
            state=TrainState(),
            tracker=NullTracker(),
        )
        states.append(state)
    return time.perf_counter() - t0, states


def batched(cfg, seeds: list[int], splits, data) -> tuple[float, list[TrainState]]:
    t0 = time.perf_counter()
    models = build_replicas(cfg, seeds, splits.input_shape, splits.num_classes)
    reps = fit_replicas(models, seeds, cfg, data)
    return time.perf_counter() - t0, [r.state for r in reps]


def end_to_end(args: argparse.Namespace) -> None:
    """What a user gets: `trainer.replicas=K` against K plain runs, both through api.run with
    everything recorded in MLflow (sqlite, model logging off as in sweeps) and checkpoints."""
    from mlflow import MlflowClient

    from tunelab.run.api import run
    from tunelab.run.context import RunContext
    from tunelab.run.group import batching_reason

    k = args.end_to_end
    uri = f"sqlite:///{Path.cwd() / 'mlflow.db'}"
    MlflowClient(uri).search_experiments()  # the schema, created before either side is timed
    print(f"\nrecorded runs (api.run, MLflow sqlite, checkpoints), {k} seeds:")
    print(
        f"{'model':6} {'K runs s':>9} {'replicas s':>11} {'speed-up':>9}  how the replicas trained"
    )
    for name in args.models:
        base = [
            "data=mnist1d",
            *MODELS[name],
            f"trainer.max_epochs={args.epochs}",
            f"tracking.tracking_uri={uri}",
            f"tracking.experiment=bench-{name}",
        ]
        ctx = RunContext(log_model=False)
        run(compose_cfg([*base, "seed=1000", "trainer.checkpoint_dir=ck-warm"]), ctx)  # warm-up
        t0 = time.perf_counter()
        for seed in range(k):
            run(compose_cfg([*base, f"seed={seed}", "trainer.checkpoint_dir=ck-plain"]), ctx)
        plain_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        group = compose_cfg([*base, f"trainer.replicas={k}", "trainer.checkpoint_dir=ck-group"])
        run(group, ctx)
        group_s = time.perf_counter() - t0
        model = build.build_model(group.model, (1, 40), 10)
        how = batching_reason(group, model, torch.device("cpu")) or "batched"
        print(f"{name:6} {plain_s:>9.2f} {group_s:>11.2f} {plain_s / group_s:>8.2f}x  {how}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ks", type=int, nargs="+", default=[1, 4, 8, 16])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument(
        "--end-to-end",
        type=int,
        default=8,
        metavar="K",
        help="also time K recorded runs: trainer.replicas=K vs K api.run calls (0: skip)",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)  # the same pinned thread count on both sides
    os.chdir(tempfile.mkdtemp(prefix="bench_replicas_"))  # data/cache lands here, not in the repo
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.epochs} epochs")
    recipe_mlp = compose_cfg(["data=mnist1d", "model=mlp"]).model
    splits0 = build.build_data(compose_cfg(["data=mnist1d"]).data)
    mlp_recipe = build.build_model(recipe_mlp, splits0.input_shape, splits0.num_classes)
    print(f"model=mlp as composed (its recipe) cannot batch: {can_batch(mlp_recipe)}")
    print(
        f"{'model':6} {'K':>3} {'sequential s':>13} {'replicas s':>11} {'speed-up':>9} "
        f"{'max|dloss|':>11} {'val/acc seq':>12} {'val/acc rep':>12}"
    )
    at8 = {}
    for name in args.models:
        overrides = ["data=mnist1d", *MODELS[name], f"trainer.max_epochs={args.epochs}"]
        cfg = compose_cfg([*overrides, "tracking=none"])
        splits = build.build_data(cfg.data)
        model = build.build_model(cfg.model, splits.input_shape, splits.num_classes)
        reason = config_reason(cfg) or can_batch(model)
        if reason:
            print(f"{name}: cannot batch ({reason})")
            continue
        if cfg.trainer.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        data = {k: getattr(splits, k) for k in SPLIT_KEYS}
        for k in args.ks:
            seeds = list(range(k))
            rep_s, rep_states = batched(cfg, seeds, splits, data)
            seq_s, seq_states = sequential(cfg, seeds, splits, data)
            dloss = max(
                abs(a - b)
                for r, s in zip(rep_states, seq_states, strict=True)
                for a, b in zip(r.history["train/loss"], s.history["train/loss"], strict=True)
            )
            accs = [
                sum(s.history["val/acc"][-1] for s in st) / k for st in (seq_states, rep_states)
            ]
            print(
                f"{name:6} {k:>3} {seq_s:>13.2f} {rep_s:>11.2f} {seq_s / rep_s:>8.2f}x "
                f"{dloss:>11.1e} {accs[0]:>12.4f} {accs[1]:>12.4f}"
            )
            if k == 8:
                at8[name] = seq_s / rep_s
    if args.end_to_end:
        end_to_end(args)
    for name, ratio in at8.items():
        verdict = "met" if ratio >= TARGETS[name] else "NOT met"
        print(
            f"K=8 {name}: replicas take {1 / ratio:.2f}x the time of 8 sequential runs, a "
            f"speed-up of {ratio:.2f}x (target >= {TARGETS[name]:g}x: {verdict})"
        )


if __name__ == "__main__":
    main()
