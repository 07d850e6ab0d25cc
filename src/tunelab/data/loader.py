"""The one way a training step gets its batches: `epoch_batches`.

In-memory data (`Splits`) is sliced exactly as the step always sliced it (one `randperm` from the
run's generator per epoch); streamed data (`StreamedSplits`) is read file by file through a
`torch.utils.data.DataLoader` whose order is a function of (seed, epoch) only, so the worker count
changes nothing and an epoch can start at any batch (mid-epoch resume). Streamed examples travel as
uint8, pinned when the device is a GPU, and are standardised on the device."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from tunelab.data.splits import Splits

LOADER_MODES = ("auto", "memory", "stream")


@dataclass(frozen=True)
class LoaderSettings:
    """The `data.*` knobs of torch's DataLoader."""

    num_workers: int = 0
    pin_memory: bool = True
    persistent_workers: bool = False
    prefetch_factor: int = 2


@dataclass
class StreamedSplits:
    """Train/val/test read per example from disk (or from compact uint8 arrays); each dataset
    item is (uint8 tensor shaped input_shape, int label)."""

    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    name: str
    digest: str
    input_shape: tuple[int, ...]
    norm: tuple[float, float]  # (mean, std) of [0, 1] pixels, applied on the device
    settings: LoaderSettings = field(default_factory=LoaderSettings)
    provenance: dict = field(default_factory=dict)
    memory_format: torch.memory_format = torch.contiguous_format  # of the batches on the device
    _loaders: dict = field(default_factory=dict, repr=False)

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def choose_mode(mode: str, nbytes: int, memory_limit_mb: float) -> str:
    """auto: in memory while the decoded float32 inputs fit under the limit, else streamed."""
    if mode not in LOADER_MODES:
        raise ValueError(f"data.loader={mode!r}: choose one of {list(LOADER_MODES)}")
    if mode != "auto":
        return mode
    return "memory" if nbytes <= memory_limit_mb * 2**20 else "stream"


def order_seed(seed: int, epoch: int) -> int:
    """A 63-bit seed from (seed, epoch): the streamed epoch's order depends on nothing else."""
    raw = hashlib.sha256(f"tunelab-order:{seed}:{epoch}".encode()).digest()
    return int.from_bytes(raw[:8], "big") & (2**63 - 1)


def batch_ranges(n: int, batch_size: int, drop_last: bool) -> range:
    """Start offsets of an epoch's batches (a short last batch is kept unless drop_last)."""
    return range(0, n - batch_size + 1 if drop_last and n >= batch_size else n, batch_size)


def epoch_batches(
    data: Splits | StreamedSplits | dict[str, torch.Tensor],
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    generator: torch.Generator | None = None,
    start_batch: int = 0,
    drop_last: bool = False,
    device: torch.device | str = "cpu",
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The training batches (x, y) of one epoch (numbered from 1), from batch `start_batch` on.

    In memory: `generator` is the run's generator, drawn once per epoch exactly as the step draws
    it (its permutation, its slices), and the tensors already sit on `device`. Streamed: the
    order comes from (seed, epoch) alone; x arrives standardised float32 on `device`."""
    if isinstance(data, StreamedSplits):
        return _streamed(data, batch_size, seed, epoch, start_batch, drop_last, device)
    x, y = (
        (data["x_train"], data["y_train"])
        if isinstance(data, dict)
        else (data.x_train, data.y_train)
    )
    if generator is None:
        raise ValueError("in-memory batches need the run's generator (its state is the order)")
    perm = torch.randperm(len(y), generator=generator).to(x.device)  # drawn now, as the step does
    starts = list(batch_ranges(len(y), batch_size, drop_last))[start_batch:]
    return ((x[idx], y[idx]) for idx in (perm[s : s + batch_size] for s in starts))


def split_batches(
    data: StreamedSplits, split: str, batch_size: int = 256, device: torch.device | str = "cpu"
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """A whole split in file order (evaluation, data checks): never all of it at once."""
    dataset = getattr(data, split)
    batches = [
        list(range(s, min(s + batch_size, len(dataset))))
        for s in range(0, len(dataset), batch_size)
    ]
    yield from _load(data, split, batches, device)


def examples(
    data: StreamedSplits, split: str, indices: list[int], device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """The examples at `indices` of a split as one batch (a diagnostic's few examples)."""
    return next(_load(data, split, [list(indices)], device))


def endless_batches(
    data: StreamedSplits,
    batch_size: int,
    *,
    seed: int,
    device: torch.device | str = "cpu",
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Full training batches, epoch after epoch in each epoch's own order (the lr range test's
    steps, which may outlast one epoch)."""
    epoch = 1
    while True:
        yield from _streamed(data, batch_size, seed, epoch, 0, True, device)
        epoch += 1


def _streamed(
    data: StreamedSplits,
    batch_size: int,
    seed: int,
    epoch: int,
    start_batch: int,
    drop_last: bool,
    device: torch.device | str,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    n = len(data.train)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(order_seed(seed, epoch)))
    batches = [order[s : s + batch_size].tolist() for s in batch_ranges(n, batch_size, drop_last)]
    yield from _load(data, "train", batches[start_batch:], device)


class _ListedBatches(Sampler):
    """Yields the batches it was last given; one DataLoader (and its persistent workers) serves
    every epoch, each epoch handing it that epoch's order."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def _load(
    data: StreamedSplits, split: str, batches: list[list[int]], device: torch.device | str
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    device = torch.device(device)
    loader = _loader(data, split, device)
    loader.batch_sampler.batches = batches
    mean, std = data.norm
    for x, y in loader:
        x = x.to(device, non_blocking=True).float().div_(255.0).sub_(mean).div_(std)
        yield x.contiguous(memory_format=data.memory_format), y.to(device, non_blocking=True)


def _loader(data: StreamedSplits, split: str, device: torch.device) -> DataLoader:
    key = (split, device.type)
    if key not in data._loaders:
        s = data.settings
        workers = int(s.num_workers)
        data._loaders[key] = DataLoader(
            getattr(data, split),
            batch_sampler=_ListedBatches(),
            num_workers=workers,
            pin_memory=bool(s.pin_memory) and device.type == "cuda",
            persistent_workers=bool(s.persistent_workers) and workers > 0,
            prefetch_factor=int(s.prefetch_factor) if workers > 0 else None,
            collate_fn=_collate,
        )
    return data._loaders[key]


def _collate(items: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items], dtype=torch.long)


class ArrayDataset(Dataset):
    """Examples held as one compact uint8 array (N, C, H, W): CIFAR-10's batches, streamed."""

    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(np.ascontiguousarray(self.x[i])), int(self.y[i])


def hard_labels(target: torch.Tensor) -> torch.Tensor:
    """Class ids of a target batch: itself, or the argmax of soft (mixed) targets."""
    return target.argmax(1) if target.ndim == 2 else target
