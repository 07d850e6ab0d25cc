"""The streaming input path against pre-decoded tensors: one epoch of the default CNN over 32x32
PNGs read from disk (one DataLoader worker, augment=standard on the device) versus the same
batches from the same images held in memory, each epoch run/loop.py's train_epoch (the step every
run trains with) with the default config's optimizer and schedule.

Both paths augment alike, so the ratio is what reading and decoding files costs a training epoch;
the epoch without augmentation is printed beside it, and the loader's images/s alone (decode and
collate, no model). Epochs of the two paths alternate, so a shared machine's slow phases hit both.

    python bench/input_pipeline.py [--path FOLDER] [--per-class 48] [--epochs 3] [--workers 1]
                                   [--device cpu]

bench/gpu.py runs the same measurement on a GPU (--device cuda: models and in-memory tensors on
the device, streamed batches pinned and copied to it).

Without --path, an ImageFolder of scikit-learn's digits at 32x32 RGB PNGs is written to a
temporary directory (the generator of tests/test_images.py)."""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))

from tunelab import build  # noqa: E402
from tunelab.data import images  # noqa: E402
from tunelab.data.augment import make_augment  # noqa: E402
from tunelab.data.loader import epoch_batches  # noqa: E402
from tunelab.optim.lr_schedule import batches_per_epoch  # noqa: E402
from tunelab.run.loop import Trained, augmented, train_epoch  # noqa: E402
from tunelab.run.prepare import loader_threads, run_data  # noqa: E402


def one_epoch(model, training, trainer, batches, n: int, aug, seed: int, epoch: int) -> int:
    """One epoch of run/loop.py's train_epoch (what fit() runs), augmented as fit() augments;
    returns the examples seen."""
    optimizer, schedule = training
    model.train()
    batches = augmented(batches, aug, seed, epoch)
    n_batches = batches_per_epoch(n, trainer)
    trained = Trained(model, list(model.parameters()))
    totals = train_epoch(trained, batches, n_batches, optimizer, schedule, trainer)
    if next(model.parameters()).is_cuda:
        torch.cuda.synchronize()  # the epoch ends when the device is done, not when it is queued
    return totals.seen


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--path", default=None, help="an ImageFolder (default: generated digits)")
    p.add_argument("--per-class", type=int, default=48)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.path
        if path is None:
            from test_images import write_folder

            path = str(write_folder(Path(tmp) / "digits32", per_class=args.per_class))
        measure(path, args)


def measure(path: str, args: argparse.Namespace) -> dict[str, float]:
    """Print and return the loader's images/s, each path's epoch images/s and their ratios."""
    device = torch.device(getattr(args, "device", "cpu"))
    memory = images.images(path=path, loader="memory")
    stream = images.images(
        path=path, loader="stream", num_workers=args.workers, persistent_workers=args.workers > 0
    )
    n, bs = len(memory.y_train), args.batch_size
    on_device = run_data(memory, device)
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        run_cfg = compose(
            "train", overrides=["model=cnn", "augment=standard", f"trainer.batch_size={bs}"]
        )
    cfg, trainer = run_cfg.model, run_cfg.trainer
    standard = OmegaConf.to_container(run_cfg.augment)
    shape, k = memory.input_shape, memory.num_classes
    aug_mem = make_augment(standard, shape, k, memory.norm)
    aug_str = make_augment(standard, shape, k, stream.norm)
    cores = torch.get_num_threads()  # a run's threads: its loader workers take their share
    stream_threads = loader_threads(cores, args.workers) if args.workers else cores
    print(
        f"{n} training images {shape}, batch {bs}, torch threads {torch.get_num_threads()} "
        f"(streamed: {stream_threads}), "
        f"loader workers {args.workers}, device {device}"
    )

    def loader_only() -> float:
        t0 = time.perf_counter()
        for _ in epoch_batches(stream, bs, seed=0, epoch=1, device=device):
            pass
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    loader_only()  # workers started, files in the page cache
    t_load = statistics.median(loader_only() for _ in range(3))
    print(f"loader alone (decode + collate, {args.workers} worker): {n / t_load:,.0f} images/s")

    times: dict[str, list[float]] = {"stream+aug": [], "memory+aug": [], "memory": []}
    runs = {
        "stream+aug": lambda g, e: epoch_batches(stream, bs, seed=0, epoch=e, device=device),
        "memory+aug": lambda g, e: epoch_batches(on_device, bs, seed=0, epoch=e, generator=g),
        "memory": lambda g, e: epoch_batches(on_device, bs, seed=0, epoch=e, generator=g),
    }
    augs = {"stream+aug": aug_str, "memory+aug": aug_mem, "memory": None}
    threads = {"stream+aug": stream_threads, "memory+aug": cores, "memory": cores}
    state = {}
    for name in runs:
        torch.manual_seed(0)
        model = build.build_model(cfg, shape, k).to(device)
        state[name] = (model, build.build_training(model, run_cfg, n))
    for epoch in range(args.epochs + 1):  # epoch 0 warms up each path, not counted
        for name, batches in runs.items():
            model, training = state[name]
            g = torch.Generator().manual_seed(epoch)
            t0 = time.perf_counter()
            torch.set_num_threads(threads[name])
            one_epoch(model, training, trainer, batches(g, epoch + 1), n, augs[name], 0, epoch + 1)
            if epoch:
                times[name].append(time.perf_counter() - t0)
    med = {name: statistics.median(t) for name, t in times.items()}
    for name, t in med.items():
        print(
            f"epoch {name:<11} {t:7.2f} s  {n / t:8,.0f} images/s  (epochs: "
            f"{', '.join(f'{v:.2f}' for v in times[name])})"
        )
    ratio, plain = med["stream+aug"] / med["memory+aug"], med["stream+aug"] / med["memory"]
    print(f"ratio stream+aug / memory+aug: {ratio:.3f}")
    print(f"ratio stream+aug / memory (no augmentation): {plain:.3f}")
    return {
        "loader_images_per_s": n / t_load,
        **{f"{name}_images_per_s": n / t for name, t in med.items()},
        "ratio_stream_aug_over_memory_aug": ratio,
    }


if __name__ == "__main__":
    main()
