"""Throughput of `tunelab.train.run` with all tracking on versus a bare PyTorch loop.

Same model, data, batch size, optimizer, schedule and epochs. Runs come in adjacent pairs (bare then
ours, ours then bare, alternating) in one process, so slow drifts of a shared machine hit both runs
of a pair alike; the figure is the median over pairs of the per-pair throughput ratio, shown with
its range, next to the ratio of the median times.

    python bench/overhead.py [--epochs 15] [--repeats 5] [--log-model]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from tunelab import build  # noqa: E402
from tunelab.optim.schedules import build_schedule  # noqa: E402
from tunelab.train import run  # noqa: E402


def compose_cfg(overrides: list[str]):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=overrides)


def bare_loop(cfg) -> float:
    """The minimal loop: shuffle, forward, backward, step, schedule, validate every epoch; same
    model, optimizer (param groups), schedule and loss as the configured run."""
    torch.manual_seed(cfg.seed)
    splits = build.build_data(cfg.data)
    model = build.build_model(cfg.model, splits.input_shape, splits.num_classes)
    opt = build.build_optimizer(model, cfg.optimizer)
    bs, n = cfg.trainer.batch_size, len(splits.y_train)
    smoothing = cfg.trainer.label_smoothing  # the same loss as the configured run
    sched = build_schedule(
        opt, cfg.scheduler, steps_per_epoch=-(-n // bs), max_epochs=cfg.trainer.max_epochs
    )
    start = time.perf_counter()
    for _ in range(cfg.trainer.max_epochs):
        model.train()
        perm = torch.randperm(n)
        for i in range(0, n, bs):
            idx = perm[i : i + bs]
            loss = F.cross_entropy(
                model(splits.x_train[idx]), splits.y_train[idx], label_smoothing=smoothing
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.after_step()
        model.eval()
        with torch.no_grad():  # in batches of 256, as tunelab's evaluate() does
            pred = torch.cat([model(xb).argmax(1) for xb in splits.x_val.split(256)])
            val_acc = (pred == splits.y_val).float().mean().item()
        sched.after_epoch({"val/acc": val_acc, "val/loss": 0.0})
    return time.perf_counter() - start


def ours(cfg) -> float:
    start = time.perf_counter()
    run(cfg)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=15, help="the default recipe trains 15")
    ap.add_argument("--repeats", type=int, default=5, help="pairs of runs")
    ap.add_argument(
        "--log-model", action="store_true", help="include MLflow log_model (about 5 s per call)"
    )
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. model=mlp")
    args = ap.parse_args()
    workdir = tempfile.mkdtemp(prefix="tunelab-bench-")
    os.chdir(workdir)
    overrides = [
        f"trainer.max_epochs={args.epochs}",
        "trainer.resume=never",
        "data.cache_dir=" + workdir,
        f"tracking.log_model={str(args.log_model).lower()}",
        *args.overrides,
    ]
    cfg = compose_cfg(overrides)
    samples = args.epochs * (len(build.build_data(cfg.data).y_train))
    bare_s, ours_s = [], []
    ours(compose_cfg(overrides))  # warm-up: store schema, imports, data cache
    for r in range(args.repeats):
        pair = [("bare", lambda: bare_loop(cfg)), ("ours", lambda: ours(compose_cfg(overrides)))]
        for name, fn in pair if r % 2 == 0 else pair[::-1]:
            (bare_s if name == "bare" else ours_s).append(fn())
        print(
            f"pair {r + 1}: bare {bare_s[-1]:.2f}s  tunelab {ours_s[-1]:.2f}s  "
            f"ratio {bare_s[-1] / ours_s[-1]:.3f}",
            flush=True,
        )
    b, o = statistics.median(bare_s), statistics.median(ours_s)
    ratios = sorted(bs / os_ for bs, os_ in zip(bare_s, ours_s, strict=True))
    print(f"bare loop : {samples / b:,.0f} samples/s (median {b:.2f}s for {args.epochs} epochs)")
    print(
        f"tunelab   : {samples / o:,.0f} samples/s (median {o:.2f}s, MLflow tracking on, "
        f"log_model={'on' if args.log_model else 'off'})"
    )
    print(f"overhead per run: {o - b:+.2f}s (difference of the medians)")
    print(f"ratio of median times         = {b / o:.3f}")
    print(
        f"throughput ratio tunelab/bare = {statistics.median(ratios):.3f} "
        f"(median of {len(ratios)} pairs, range {ratios[0]:.3f}-{ratios[-1]:.3f})   (target >= 0.95)"
    )


if __name__ == "__main__":
    main()
