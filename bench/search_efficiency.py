"""Grid vs random vs TPE vs TPE+Hyperband on MNIST-1D: best validation accuracy per trial and per epoch.

The problem is a search without prior knowledge of where the good values lie: an MLP (the
published MNIST-1D MLP baseline is 68%) over learning rate 1e-5..1 (log), weight decay 1e-6..1e-1
(log) and dropout 0..0.5, 27 epochs of AdamW + cosine per full trial, a quarter of the training
data held out for validation. Every method gets the same space and the grid's size in trials
(4 points per axis: 64); study seeds vary the sampler, the training seed is fixed, so every
method sees the same objective. Prints, per method, the final best val/acc (mean ± std over
study seeds), the epochs spent, and the epochs each method needed to reach the grid's best
(target: TPE+Hyperband within a third of the grid's epochs).

    python bench/search_efficiency.py [--epochs 27] [--seeds 0 1 2] [--out results/search_efficiency]
    python bench/search_efficiency.py --methods grid random --out a   # split over processes ...
    python bench/search_efficiency.py --summarize a/curves.csv b/curves.csv   # ... and merge
    python bench/search_efficiency.py --no-space model=cnn   # the presets' own spaces, default model
"""

from __future__ import annotations

import argparse
import csv
import statistics
import tempfile
import time
from pathlib import Path

# The MLP's recipe (conf/recipe/mlp_adamw.yaml) would apply with AdamW: the problem pins its own
# architecture and batch so that its figures stay comparable.
PROBLEM = [
    "data=mnist1d",
    "data.val_fraction=0.25",
    "model=mlp",
    "optimizer=adamw",
    "scheduler=cosine",
    "model.width=256",
    "model.depth=2",
    "model.norm=none",
    "trainer.batch_size=128",
    "trainer.label_smoothing=0.1",
]
SPACE = [
    "optimizer.lr=tag(log, interval(1.0e-5, 1.0))",
    "optimizer.weight_decay=tag(log, interval(1.0e-6, 1.0e-1))",
    "model.dropout=interval(0.0, 0.5)",
]
GRID_POINTS = 4
METHODS = {
    "grid": ["search=grid"],
    "random": ["search=random"],
    "tpe": ["search=tpe", "hydra.sweeper.pruner.name=none"],
    "tpe+hyperband": ["search=tpe"],
}


def run_study(method: str, seed: int, n_trials: int, epochs: int, work: Path, extra: list[str]):
    """One study through the tunelab sweeper in this process; returns its trials in order."""
    import optuna
    from inprocess import multirun

    from tunelab.tuning.study_storage import make_storage

    name = f"{method}-s{seed}"
    storage = f"journal:{work / 'optuna.journal'}"
    overrides = [
        *METHODS[method],
        f"hydra.sweeper.n_trials={n_trials}",
        f"hydra.sweeper.sampler.seed={seed}",
        f"hydra.sweeper.study_name={name}",
        f"hydra.sweeper.storage={storage}",
        "hydra.sweeper.figures=false",
        f"hydra.sweep.dir={work / name}",
        f"hydra.sweeper.grid_points={GRID_POINTS}",
        f"trainer.max_epochs={epochs}",
        "tracking=none",
        "trainer.resume=never",
        "trainer.checkpoint_every_epochs=0",
        *extra,
    ]
    multirun(overrides)
    study = optuna.load_study(study_name=name, storage=make_storage(storage))
    return sorted(study.trials, key=lambda t: t.number)


def curve(trials) -> list[tuple[int, int, float]]:
    """(trial, cumulative epochs, best val/acc so far) after every trial."""
    from optuna.trial import TrialState

    out, epochs, best = [], 0, float("-inf")
    for i, t in enumerate(trials, 1):
        epochs += len(t.intermediate_values)
        if t.state == TrialState.COMPLETE and t.value is not None:
            best = max(best, t.value)
        out.append((i, epochs, best))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--epochs", type=int, default=27, help="per full trial (Hyperband: 1, 3, 9, 27)"
    )
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument(
        "--trials",
        type=int,
        default=GRID_POINTS ** len(SPACE),
        help="budget for every method; default: the grid's size",
    )
    ap.add_argument(
        "--no-space",
        action="store_true",
        help="use the presets' own spaces and the default problem instead",
    )
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument(
        "--grid-seeds",
        type=int,
        nargs="+",
        default=[0],
        help="the grid's points do not depend on the seed, only their order",
    )
    ap.add_argument("--tol", type=float, default=0.005, help="also: epochs to within tol of it")
    ap.add_argument("--summarize", nargs="+", metavar="CSV", help="only tabulate saved curves.csv")
    ap.add_argument("--out", default="results/search_efficiency")
    ap.add_argument("extra", nargs="*", help="more overrides for every trial, e.g. model=mlp")
    args = ap.parse_args()
    import optuna
    import torch

    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    curves: dict[str, list[list[tuple[int, int, float]]]] = {}
    seeds: dict[str, list[int]] = {}
    if args.summarize:
        for path in args.summarize:
            for m, seed, trial, epochs, best in _read(path):
                if seed not in seeds.setdefault(m, []):
                    seeds[m].append(seed)
                    curves.setdefault(m, []).append([])
                curves[m][seeds[m].index(seed)].append((trial, epochs, best))
    else:
        t0 = time.time()
        with tempfile.TemporaryDirectory() as tmp:
            for method in args.methods:
                seeds[method] = args.grid_seeds if method == "grid" else args.seeds
                for seed in seeds[method]:
                    problem = [] if args.no_space else [*PROBLEM, *SPACE]
                    trials = run_study(
                        method, seed, args.trials, args.epochs, Path(tmp), [*problem, *args.extra]
                    )
                    curves.setdefault(method, []).append(curve(trials))
                    c = curves[method][-1][-1]
                    print(
                        f"{method} seed {seed}: best {c[2]:.4f} epochs {c[1]} "
                        f"({time.time() - t0:.0f} s)",
                        flush=True,
                    )
        with open(out / "curves.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["method", "seed", "trial", "epochs", "best_val_acc"])
            for m, runs in curves.items():
                for seed, c in zip(seeds[m], runs, strict=False):
                    w.writerows([m, seed, *row] for row in c)
    grid_best = (
        statistics.mean(c[-1][2] for c in curves.get("grid", [])) if "grid" in curves else None
    )
    grid_epochs = statistics.mean(c[-1][1] for c in curves["grid"]) if grid_best else None
    print(f"\nMNIST-1D, equal budget per study; study seeds {seeds}")
    if not args.summarize:
        print("problem:", " ".join(["data=mnist1d"] if args.no_space else [*PROBLEM, *SPACE]))
    print(
        f"{'method':<15}{'best val/acc':>18}{'epochs':>8}   epochs to reach the grid's best "
        f"(exact | within {args.tol:g})"
    )
    for m, runs in curves.items():
        finals = [c[-1][2] for c in runs]
        spent = statistics.mean(c[-1][1] for c in runs)
        targets = [None if grid_best is None else grid_best - tol for tol in (1e-9, args.tol)]
        reach = [_reach(runs, t, grid_epochs) for t in targets]
        sd = statistics.stdev(finals) if len(finals) > 1 else 0.0
        print(
            f"{m:<15}{statistics.mean(finals):>11.4f} ± {sd:.4f}{spent:>8.0f}   "
            f"{reach[0]} | {reach[1]}"
        )
    _plot(curves, out / "best_vs_epochs.png")
    print(f"\ncurves: {out / 'curves.csv'}, figure: {out / 'best_vs_epochs.png'}")


def _reach(runs, target: float | None, grid_epochs: float | None) -> str:
    """Mean epochs until the best so far reaches `target` (over the seeds that reach it)."""
    if target is None:
        return "-"
    hits = [next((e for _, e, b in c if b >= target), None) for c in runs]
    got = [h for h in hits if h is not None]
    if not got:
        return "never"
    mean = statistics.mean(got)
    ratio = f" = {mean / grid_epochs:.2f}x grid" if grid_epochs else ""
    return f"{mean:.0f} ({len(got)}/{len(runs)} seeds){ratio}"


def _read(path: str):
    with open(path) as fh:
        for row in csv.DictReader(fh):
            yield (
                row["method"],
                int(row["seed"]),
                int(row["trial"]),
                int(row["epochs"]),
                float(row["best_val_acc"]),
            )


def _plot(curves, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for m, runs in curves.items():
        for k, c in enumerate(runs):
            kw = {"label": m} if k == 0 else {}
            color = f"C{list(curves).index(m)}"
            best = [r[2] if r[2] > float("-inf") else float("nan") for r in c]
            axes[0].step([r[0] for r in c], best, where="post", color=color, alpha=0.7, **kw)
            axes[1].step([r[1] for r in c], best, where="post", color=color, alpha=0.7)
    axes[0].set(xlabel="trials", ylabel="best val/acc so far")
    axes[1].set(xlabel="epochs spent", ylabel="best val/acc so far")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)


if __name__ == "__main__":
    main()
