"""One GPU, two ways to fill it: K replicas in one computation, and N trials side by side.

1. Training throughput (samples/s, all replicas together) of K = 1, 4, 16 vmapped replicas of the
   default CNN on MNIST-1D (tunelab.run.replicas.fit_replicas), last epoch of --epochs.
2. Trials per minute with 1, 2, 4 concurrent trials on the one GPU: N worker processes, each
   calling tunelab.run.api.run (tracking=none, no model logging) for --trials trials of the same
   small config with its own seeds; the wall time runs from launch (CUDA start-up included) to the
   last trial's end. Each worker reports its peak GPU memory (torch.cuda.max_memory_allocated).

Both use bf16 autocast (trainer.precision=bf16: prepare.autocast_for, CUDA only). On a machine without
CUDA it says so and exits 0. About 2-4 minutes on one GPU.

    python bench/gpu.py [--epochs 3] [--trials 2] [overrides ...]
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

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from hydra import compose, initialize_config_dir  # noqa: E402

from tunelab import build  # noqa: E402
from tunelab.run import api, prepare  # noqa: E402
from tunelab.run.context import RunContext  # noqa: E402
from tunelab.run.replica_rules import build_replicas  # noqa: E402
from tunelab.run.replicas import fit_replicas  # noqa: E402

BASE = ["data=mnist1d", "model=cnn", "trainer.device=cuda", "trainer.precision=bf16"]
BASE += ["tracking=none", "trainer.resume=never", "trainer.checkpoint_every_epochs=0"]


def compose_cfg(overrides: list[str]):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=overrides)


def replica_throughput(overrides: list[str], ks: list[int]) -> None:
    cfg = compose_cfg(overrides)
    splits = build.build_data(cfg.data)
    device = torch.device("cuda")
    data = {k: getattr(splits, k).to(device) for k in prepare.SPLIT_KEYS}
    autocast = prepare.autocast_for(cfg.trainer, device)
    print(f"{'replicas':>8} {'samples/s':>12} {'per replica':>12} {'peak GPU MB':>12}")
    for k in ks:
        torch.cuda.reset_peak_memory_stats()
        models = build_replicas(cfg, list(range(k)), splits.input_shape, splits.num_classes)
        reps = fit_replicas(models, list(range(k)), cfg, data, autocast=autocast)
        torch.cuda.synchronize()
        per = reps[0].state.history["perf/samples_per_s"][-1]  # last epoch: warmed up
        peak = torch.cuda.max_memory_allocated() / 2**20
        print(f"{k:>8} {k * per:>12.0f} {per:>12.0f} {peak:>12.1f}")


def worker(overrides: list[str], trials: int, first_seed: int) -> None:
    """Run `trials` trials in this process; print one JSON line for the parent."""
    t0 = time.perf_counter()
    for i in range(trials):
        api.run(compose_cfg([*overrides, f"seed={first_seed + i}"]), RunContext(log_model=False))
    peak = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps({"peak_mb": peak, "wall_s": time.perf_counter() - t0}), flush=True)


def concurrent_trials(overrides: list[str], ns: list[int], trials: int, root: Path) -> None:
    print(
        f"\n{'concurrent':>10} {'trials':>7} {'wall s':>8} {'trials/min':>11} {'peak MB/trial':>14}"
    )
    for n in ns:
        t0, procs = time.perf_counter(), []
        for i in range(n):
            cwd = root / f"n{n}_w{i}"
            cwd.mkdir()
            cmd = [sys.executable, __file__, "--worker", "--trials", str(trials)]
            cmd += ["--first-seed", str(100 * i), *overrides]
            procs.append(subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, text=True))
        results = []
        for p in procs:
            out, _ = p.communicate(timeout=600)
            if p.returncode != 0:
                raise SystemExit(f"a worker failed (exit {p.returncode}):\n{out[-2000:]}")
            results.append(json.loads(out.strip().splitlines()[-1]))
        wall = time.perf_counter() - t0
        peak = max(r["peak_mb"] for r in results)
        print(f"{n:>10} {n * trials:>7} {wall:>8.1f} {60 * n * trials / wall:>11.1f} {peak:>14.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--trials", type=int, default=2, help="trials per concurrent worker")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--first-seed", type=int, default=0, help=argparse.SUPPRESS)
    args, extra = ap.parse_known_args()
    if args.worker:
        return worker(extra, args.trials, args.first_seed)
    if not torch.cuda.is_available():
        print("no CUDA device is present: nothing to measure (bench/gpu.py needs a GPU)")
        return None
    root = Path(tempfile.mkdtemp(prefix="bench_gpu_"))
    os.chdir(root)  # checkpoints and the data cache land here, not in the repository
    cache = root / "cache"  # one MNIST-1D cache for every worker: generated once, here
    overrides = [*BASE, f"trainer.max_epochs={args.epochs}", f"data.cache_dir={cache}", *extra]
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}; {' '.join(overrides)}")
    replica_throughput(overrides, [1, 4, 16])
    concurrent_trials(overrides, [1, 2, 4], args.trials, root)
    return None


if __name__ == "__main__":
    main()
