"""Throughput of `tunelab.run.api.run` with all tracking on versus a bare PyTorch loop.

Same model, data, batch size, optimizer, schedule, loss and epochs. The two run in lockstep in one
process: after each of run()'s epochs (its reporter hook) the bare loop trains and validates one
epoch of its own. A shared machine's slow phases (other tenants, clock changes) last seconds to
minutes, so two epochs a second apart see the same machine, where two whole runs a minute apart
often do not: whole-run pairs on a 2-core host scattered by ±10 %, more than the overhead measured.

run()'s time is its whole wall time (setup, epochs, checkpoints, MLflow, test evaluation, artifacts)
minus the bare loop's epochs. Before each bare epoch run() sends its pending metrics to the store
and waits for them, so its background MLflow work is charged to run() and never runs during the
bare epoch (its checkpoint files may still be reaching the disk then: I/O, not CPU). That flush
replaces the default 2-second metric batching with one store transaction per epoch, which can only
make run() look slower.

    python bench/overhead.py [--epochs 15] [--repeats 7] [--log-model] [--self-check]
                             [--mlflow-async] [overrides ...]

--mlflow-async sends the per-epoch metric batches through MLflow's own asynchronous logging
(`log_batch(..., synchronous=False)`, flushed by waiting on its operations) instead of tunelab's
writer thread: the comparison behind MlflowWriter's docstring.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from tunelab import build  # noqa: E402
from tunelab.build import build_schedule  # noqa: E402
from tunelab.run.api import run  # noqa: E402
from tunelab.run.context import RunContext  # noqa: E402
from tunelab.tracking.mlflow_tracker import MlflowTracker  # noqa: E402


def compose_cfg(overrides: list[str]):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=overrides)


def bare_epochs(cfg) -> Iterator[float]:
    """The minimal loop, one epoch per next(), yielding that epoch's seconds: shuffle, forward,
    backward, step, schedule, validate; the same model, optimizer (param groups), schedule and
    loss as the configured run. Everything is built here, before any epoch is timed."""
    torch.manual_seed(cfg.seed)
    splits = build.build_data(cfg.data)
    model = build.build_model(cfg.model, splits.input_shape, splits.num_classes)
    opt = build.build_optimizer(model, cfg.optimizer)
    bs, n = cfg.trainer.batch_size, len(splits.y_train)
    smoothing = cfg.trainer.label_smoothing
    sched = build_schedule(
        opt, cfg.scheduler, steps_per_epoch=-(-n // bs), max_epochs=cfg.trainer.max_epochs
    )
    shuffle = torch.Generator().manual_seed(cfg.seed)

    def epochs() -> Iterator[float]:
        for _ in range(cfg.trainer.max_epochs):
            start = time.perf_counter()
            model.train()
            perm = torch.randperm(n, generator=shuffle)
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
            yield time.perf_counter() - start

    return epochs()


class MlflowAsyncMetrics(MlflowTracker):
    """Per-epoch metrics through MLflow's asynchronous logging queue; the rest as usual."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._operations: list = []

    def _send_metrics(self) -> None:
        self._sent_at = time.monotonic()
        if self._pending:
            pending, self._pending = self._pending, []
            client = self.writer.client
            self._operations.append(
                client.log_batch(self.run_id, metrics=pending, synchronous=False)
            )

    def flush(self) -> None:
        self._send_metrics()
        for op in self._operations:
            op.wait()
        self._operations.clear()
        self.writer.flush()


def lockstep(overrides: list[str], mlflow_async: bool = False) -> tuple[float, float]:
    """One run() with the bare loop interleaved epoch by epoch: (bare seconds, run() seconds)."""
    cfg = compose_cfg(overrides)
    bare, bare_s = bare_epochs(cfg), 0.0
    start = time.perf_counter()
    if mlflow_async:
        kw = {k: v for k, v in cfg.tracking.items() if k not in ("name", "_target_")}
        tracker = MlflowAsyncMetrics(**kw)
    else:
        tracker = build.build_tracker(cfg.tracking)

    def after_epoch(epoch: int, value: float) -> None:
        nonlocal bare_s
        tracker.flush()  # run()'s pending MLflow work is done on its own clock
        bare_s += next(bare)

    run(cfg, RunContext(reporter=after_epoch), tracker=tracker)
    return bare_s, time.perf_counter() - start - bare_s


def self_check(overrides: list[str]) -> tuple[float, float]:
    """The method against itself: two bare loops in lockstep, whose ratio should be 1."""
    cfg = compose_cfg(overrides)
    first, second = bare_epochs(cfg), bare_epochs(cfg)
    pairs = [(next(first), next(second)) for _ in range(cfg.trainer.max_epochs)]
    return sum(a for a, _ in pairs), sum(b for _, b in pairs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=15, help="the default recipe trains 15")
    ap.add_argument("--repeats", type=int, default=7, help="lockstep runs")
    ap.add_argument(
        "--log-model", action="store_true", help="include MLflow log_model (about 5 s per call)"
    )
    ap.add_argument(
        "--self-check", action="store_true", help="bare loop vs bare loop: the method's own spread"
    )
    ap.add_argument(
        "--mlflow-async", action="store_true", help="metrics through MLflow's async logging"
    )
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. model=mlp")
    args = ap.parse_args()
    workdir = tempfile.mkdtemp(prefix="tunelab-bench-")
    os.chdir(workdir)
    overrides = [
        f"trainer.max_epochs={args.epochs}",
        "trainer.resume=never",
        "data.cache_dir=" + workdir,
        *args.overrides,
    ]
    if "tracking=none" not in args.overrides:
        overrides.append(f"tracking.log_model={str(args.log_model).lower()}")
    cfg = compose_cfg(overrides)
    samples = args.epochs * len(build.build_data(cfg.data).y_train)
    measure = self_check if args.self_check else partial(lockstep, mlflow_async=args.mlflow_async)
    ours = "bare #2" if args.self_check else ("mlflow-async" if args.mlflow_async else "tunelab")
    measure(overrides)  # warm-up: store schema, imports, data cache
    bare_s, ours_s = [], []
    for r in range(args.repeats):
        b, o = measure(overrides)
        bare_s.append(b)
        ours_s.append(o)
        print(f"run {r + 1}: bare {b:.2f}s  {ours} {o:.2f}s  ratio {b / o:.3f}", flush=True)
    b, o = statistics.median(bare_s), statistics.median(ours_s)
    ratios = sorted(bs / os_ for bs, os_ in zip(bare_s, ours_s, strict=True))
    print(f"bare loop : {samples / b:,.0f} samples/s (median {b:.2f}s for {args.epochs} epochs)")
    recorded = f"tracking={cfg.tracking.name}" + (
        f", log_model={'on' if cfg.tracking.log_model else 'off'}"
        if "log_model" in cfg.tracking
        else ""
    )
    if args.self_check:
        recorded = "the same bare loop, a second instance"
    print(f"{ours:10s}: {samples / o:,.0f} samples/s (median {o:.2f}s, {recorded})")
    extra = statistics.median(os_ - bs for bs, os_ in zip(bare_s, ours_s, strict=True))
    print(f"overhead per run: {extra:+.2f}s (median of the per-run differences)")
    print(
        f"throughput ratio {ours}/bare = {statistics.median(ratios):.3f} "
        f"(median of {len(ratios)} runs, range {ratios[0]:.3f}-{ratios[-1]:.3f})   (target >= 0.95)"
    )


if __name__ == "__main__":
    main()
