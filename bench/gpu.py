"""One GPU, two ways to fill it (K replicas in one computation, N trials side by side), the
streaming input path feeding it, and seed 002's CIFAR-10 ResNet-18 against airbench's 94 %.

1. Training throughput (samples/s, all replicas together) of K = 1, 4, 16 vmapped replicas of the
   default CNN on MNIST-1D (tunelab.run.replicas.fit_replicas), last epoch of --epochs.
2. Trials per minute with 1, 2, 4 concurrent trials on the one GPU: N worker processes, each
   calling tunelab.run.api.run (tracking=none, no model logging) for --trials trials of the same
   small config with its own seeds; the wall time runs from launch (CUDA start-up included) to the
   last trial's end. Each worker reports its peak GPU memory (torch.cuda.max_memory_allocated).
3. The streaming path (bench/input_pipeline.py's measurement on the device): images/s of the
   DataLoader alone (--workers processes) and of an epoch of the default CNN over 32x32 PNGs from
   disk with augment=standard, against the same images as tensors already on the device.
4. Time to 94 % on CIFAR-10: `+preset=cifar10_resnet18 data=cifar10 data.path=--cifar`, wall time
   from the call to the first epoch whose val/acc reaches 0.94 (and the test accuracy at the end);
   skipped, saying so, when --cifar is not given or holds no CIFAR-10 batches.

1 and 2 use bf16 autocast (trainer.precision=bf16: prepare.autocast_for, CUDA only). Each section
prints its ratios (K replicas and N trials against one, streamed against in-memory). Without CUDA
it says so and exits 0, unless --device cpu: the same code on the CPU (--quick: fewer replicas,
trials, epochs and images), a check that the script runs, not a GPU figure. About 2-4 minutes on
one GPU without CIFAR-10; the preset's 30 epochs of ResNet-18 add their own time.

    python bench/gpu.py [--device cuda|cpu] [--quick] [--epochs 3] [--trials 2] [--workers 4]
                        [--images FOLDER] [--cifar /path/to/cifar-10-batches-py] [overrides ...]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))

from hydra import compose, initialize_config_dir  # noqa: E402

from tunelab import build  # noqa: E402
from tunelab.run import api, prepare  # noqa: E402
from tunelab.run.context import RunContext  # noqa: E402
from tunelab.run.replica_rules import build_replicas  # noqa: E402
from tunelab.run.replicas import fit_replicas  # noqa: E402

QUIET = ["tracking=none", "trainer.resume=never", "trainer.checkpoint_every_epochs=0"]
TARGET = 0.94  # airbench's CIFAR-10 target


def base(device: str) -> list[str]:
    precision = "bf16" if device == "cuda" else "fp32"
    return ["data=mnist1d", "model=cnn", f"trainer.device={device}"] + [
        f"trainer.precision={precision}",
        *QUIET,
    ]


def peak_mb() -> float:
    """Peak GPU memory of this process so far (NaN on the CPU)."""
    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else math.nan


def compose_cfg(overrides: list[str]):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=overrides)


def replica_throughput(overrides: list[str], ks: list[int]) -> None:
    cfg = compose_cfg(overrides)
    splits = build.build_data(cfg.data)
    device = torch.device(cfg.trainer.device)
    data = prepare.run_data(splits, device)
    autocast = prepare.autocast_for(cfg.trainer, device)
    print(
        f"{'replicas':>8} {'samples/s':>12} {'per replica':>12} {'vs K=1':>7} {'peak GPU MB':>12}"
    )
    one = None
    for k in ks:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        models = [
            m.to(device)
            for m in build_replicas(cfg, list(range(k)), splits.input_shape, splits.num_classes)
        ]
        reps = fit_replicas(models, list(range(k)), cfg, data, autocast=autocast)
        if device.type == "cuda":
            torch.cuda.synchronize()
        per = reps[0].state.history["perf/samples_per_s"][-1]  # last epoch: warmed up
        one = one or k * per
        print(f"{k:>8} {k * per:>12.0f} {per:>12.0f} {k * per / one:>6.2f}x {peak_mb():>12.1f}")


def worker(overrides: list[str], trials: int, first_seed: int) -> None:
    """Run `trials` trials in this process; print one JSON line for the parent."""
    t0 = time.perf_counter()
    for i in range(trials):
        api.run(compose_cfg([*overrides, f"seed={first_seed + i}"]), RunContext(log_model=False))
    print(json.dumps({"peak_mb": peak_mb(), "wall_s": time.perf_counter() - t0}), flush=True)


def concurrent_trials(overrides: list[str], ns: list[int], trials: int, root: Path) -> None:
    print(
        f"\n{'concurrent':>10} {'trials':>7} {'wall s':>8} {'trials/min':>11} {'vs 1':>6} "
        f"{'peak MB/trial':>14}"
    )
    one = None
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
        rate = 60 * n * trials / wall
        one = one or rate
        print(
            f"{n:>10} {n * trials:>7} {wall:>8.1f} {rate:>11.1f} {rate / one:>5.2f}x {peak:>14.1f}"
        )


def streaming(device: str, workers: int, folder: str | None, quick: bool, root: Path) -> None:
    """Section 3: bench/input_pipeline.py's epoch comparison, on `device`."""
    from input_pipeline import measure
    from test_images import write_folder

    print(f"\nstreaming path: data=images augment=standard, {workers} loader worker(s), {device}")
    path = folder or str(write_folder(root / "digits32", per_class=12 if quick else 48))
    args = argparse.Namespace(
        workers=workers, batch_size=128, epochs=1 if quick else 3, device=device
    )
    measure(path, args)


def cifar_time_to_target(device: str, path: str | None, workers: int, quick: bool) -> None:
    """Section 4: seed 002's preset until val/acc reaches TARGET (or its epochs end)."""
    print(f"\ntime to {TARGET:.0%} on CIFAR-10 (+preset=cifar10_resnet18, {device})")
    if not path or not (Path(path) / "data_batch_1").is_file():
        where = f"no CIFAR-10 python batches under {path}" if path else "no --cifar given"
        print(f"  skipped: {where} (pass --cifar /path/to/cifar-10-batches-py)")
        return
    overrides = ["+preset=cifar10_resnet18", "data=cifar10", f"data.path={path}", *QUIET]
    overrides += [f"trainer.device={device}", f"data.num_workers={workers}"]
    if device == "cuda":
        overrides += ["trainer.precision=bf16", "trainer.channels_last=true"]
    if quick:
        overrides += ["trainer.max_epochs=1", "data.train_subset=2000"]
    reached: dict[str, float] = {}
    t0 = time.perf_counter()

    def report(epoch: int, value: float) -> None:
        if value >= TARGET and "s" not in reached:
            reached.update(s=time.perf_counter() - t0, epoch=epoch)
        reached["best"] = max(reached.get("best", 0.0), value)

    result = api.run(compose_cfg(overrides), RunContext(log_model=False, reporter=report))
    wall = time.perf_counter() - t0
    if "s" in reached:
        print(f"  val/acc {TARGET:.0%} at epoch {reached['epoch']:.0f} after {reached['s']:.1f} s")
    else:
        print(f"  val/acc {TARGET:.0%} not reached (best {reached.get('best', 0.0):.4f})")
    print(f"  {wall:.1f} s in all; test/acc {result.metrics['test/acc']:.4f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--device", default="cuda", help="cuda | cpu (cpu: the script runs, no GPU figures)"
    )
    ap.add_argument("--quick", action="store_true", help="fewer replicas, trials, epochs, images")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--trials", type=int, default=2, help="trials per concurrent worker")
    ap.add_argument("--workers", type=int, default=4, help="loader workers of the streaming path")
    ap.add_argument("--images", default=None, help="an ImageFolder (default: generated digits)")
    ap.add_argument("--cifar", default=None, help="CIFAR-10 python batches (time to 94 %%)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--first-seed", type=int, default=0, help=argparse.SUPPRESS)
    args, extra = ap.parse_known_args()
    if args.worker:
        return worker(extra, args.trials, args.first_seed)
    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            "no CUDA device is present: nothing to measure (bench/gpu.py needs a GPU; "
            "--device cpu --quick checks that the script runs)"
        )
        return None
    quick = args.quick
    epochs, trials = (1, 1) if quick else (args.epochs, args.trials)
    root = Path(tempfile.mkdtemp(prefix="bench_gpu_"))
    os.chdir(root)  # checkpoints and the data cache land here, not in the repository
    cache = root / "cache"  # one MNIST-1D cache for every worker: generated once, here
    overrides = [*base(args.device), f"trainer.max_epochs={epochs}", f"data.cache_dir={cache}"]
    overrides += extra
    name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU (not a GPU figure)"
    print(f"{name}, torch {torch.__version__}; {' '.join(overrides)}")
    replica_throughput(overrides, [1, 4] if quick else [1, 4, 16])
    concurrent_trials(overrides, [1, 2] if quick else [1, 2, 4], trials, root)
    streaming(args.device, args.workers, args.images, quick, root)
    cifar_time_to_target(args.device, args.cifar, args.workers, quick)
    return None


if __name__ == "__main__":
    main()
