"""Image datasets from disk: an ImageFolder layout (`<root>/train/<class>/*.png|jpg`, optional
`val/` and `test/`), decoded with Pillow, in memory below a size limit or streamed per file.

The layout is checked before anything else happens (missing root, no class folders, an empty
class folder, class sets that differ between splits: each refused naming the path); every file's
header is read up front, so a non-image is refused before the run; a file that is truncated or
corrupt past its header is refused, naming it, when it is decoded."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from tunelab.data import loader as L
from tunelab.data.manifest import build_manifest
from tunelab.data.splits import Splits, validate_arrays

log = logging.getLogger(__name__)

SUFFIXES = (".png", ".jpg", ".jpeg")
SPLITS = ("train", "val", "test")
GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")
TEST_SEED = 12345  # a carved test split is fixed, independent of split_seed (as for digits)
NORM_SAMPLE = 1024  # streamed data: mean/std from at most this many training images


class DataError(ValueError):
    """A data folder that cannot be trained on; the message names the path."""


@dataclass(frozen=True)
class ImageFolder:
    """The files of each present split as (path relative to root, class index)."""

    root: Path
    classes: tuple[str, ...]
    files: dict[str, list[tuple[str, int]]]


def scan(path: str | Path) -> ImageFolder:
    """Read the layout under `path`; refuse, naming the path, what cannot be trained on."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DataError(f"data.path={str(root)!r}: no such directory")
    if not (root / "train").is_dir():
        raise DataError(f"{root / 'train'}: no such directory (expected <root>/train/<class>/*)")
    class_sets, files = {}, {}
    for split in SPLITS:
        d = root / split
        if not d.is_dir():
            continue
        classes = sorted(p.name for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not classes:
            raise DataError(f"{d}: no class folders (expected {d}/<class>/<image files>)")
        class_sets[split] = classes
        files[split] = []
        for label, name in enumerate(classes):
            found = sorted(
                p for p in (d / name).iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES
            )
            if not found:
                raise DataError(f"{d / name}: empty class folder (no {'/'.join(SUFFIXES)} files)")
            files[split] += [(str(p.relative_to(root)), label) for p in found]
    for split, classes in class_sets.items():
        if classes != class_sets["train"]:
            only_here = sorted(set(classes) - set(class_sets["train"]))
            missing = sorted(set(class_sets["train"]) - set(classes))
            raise DataError(
                f"{root / split}: its classes differ from {root / 'train'} "
                f"(only in {split}: {only_here}; missing from {split}: {missing})"
            )
    return ImageFolder(root, tuple(class_sets["train"]), files)


def probe(path: Path) -> tuple[str, tuple[int, int]]:
    """(mode, (height, width)) from the file's header, or a DataError naming the file."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.mode, (im.height, im.width)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: not a readable image ({exc})") from None


def decode(path: Path, channels: int, size: tuple[int, int]) -> np.ndarray:
    """uint8 (C, H, W) pixels of one file: grey expanded to RGB in an RGB set, or a DataError
    naming the file when it is truncated, corrupt or of another size."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("RGB" if channels == 3 else "L")
            a = np.array(im, dtype=np.uint8)  # a copy torch may own
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: not a readable image ({exc})") from None
    if a.shape[:2] != tuple(size):
        raise DataError(f"{path}: {a.shape[1]}x{a.shape[0]} pixels, the set is {size[1]}x{size[0]}")
    return np.ascontiguousarray(a.transpose(2, 0, 1)) if a.ndim == 3 else a[None]


class FileDataset(Dataset):
    """One decoded file per item, as (uint8 tensor (C, H, W), label)."""

    def __init__(
        self, root: Path, items: list[tuple[str, int]], channels: int, size: tuple[int, int]
    ) -> None:
        self.root, self.items, self.channels, self.size = root, items, channels, size

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        rel, label = self.items[i]
        return torch.from_numpy(decode(self.root / rel, self.channels, self.size)), label


def carve(
    folder: ImageFolder, val_fraction: float, split_seed: int, test_fraction: float
) -> tuple[dict[str, list[tuple[str, int]]], list[str]]:
    """train/val/test file lists: a missing test split is carved from train with a fixed seed,
    then a missing validation split with split_seed (as make_splits carves it); says which."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"data.val_fraction={val_fraction}: must be in (0, 1)")
    train, carved = list(folder.files["train"]), []
    out = {}
    if "test" in folder.files:
        out["test"] = folder.files["test"]
    else:
        order = np.random.default_rng(TEST_SEED).permutation(len(train))
        n_test = max(1, int(round(test_fraction * len(train))))
        out["test"] = [train[i] for i in order[:n_test]]
        train = [train[i] for i in order[n_test:]]
        carved.append("test")
        log.info(
            "%s: no test/ folder; %d training files carved as the test split", folder.root, n_test
        )
    if "val" in folder.files:
        out["val"] = folder.files["val"]
    else:
        order = np.random.default_rng(split_seed).permutation(len(train))
        n_val = max(1, int(round(val_fraction * len(train))))
        out["val"] = [train[i] for i in order[:n_val]]
        train = [train[i] for i in order[n_val:]]
        carved.append("val")
    out["train"] = train
    return out, carved


def images(
    *,
    path: str,
    val_fraction: float = 0.1,
    split_seed: int = 0,
    test_fraction: float = 0.2,
    train_subset: int | None = None,
    loader: str = "auto",
    memory_limit_mb: float = 1024,
    num_workers: int = 0,
    pin_memory: bool = True,
    persistent_workers: bool = False,
    prefetch_factor: int = 2,
) -> Splits | L.StreamedSplits:
    """A folder of PNG/JPEG images in class subfolders; its digest is the folder's manifest."""
    folder = scan(path)
    rels = [rel for items in folder.files.values() for rel, _ in items]
    manifest = build_manifest(folder.root, rels)
    channels, size = _image_format(folder, rels)
    parts, carved = carve(folder, val_fraction, split_seed, test_fraction)
    if train_subset:
        parts["train"] = parts["train"][:train_subset]
    provenance = {
        "manifest_digest": manifest.digest,
        "files": manifest.files,
        "classes": len(folder.classes),
        "carved": carved,
    }
    shape = (channels, *size)
    nbytes = sum(len(v) for v in parts.values()) * int(np.prod(shape)) * 4
    mode = L.choose_mode(loader, nbytes, memory_limit_mb)
    datasets = {s: FileDataset(folder.root, parts[s], channels, size) for s in SPLITS}
    settings = L.LoaderSettings(num_workers, pin_memory, persistent_workers, prefetch_factor)
    if mode == "stream":
        return L.StreamedSplits(
            **datasets,
            num_classes=len(folder.classes),
            name=folder.root.name,
            digest=manifest.digest,
            input_shape=shape,
            norm=_sample_norm(datasets["train"]),
            settings=settings,
            provenance=provenance,
        )
    arrays = {s: _decode_all(datasets[s]) for s in SPLITS}
    return _standardised(arrays, len(folder.classes), folder.root.name, manifest.digest, provenance)


def _image_format(folder: ImageFolder, rels: list[str]) -> tuple[int, tuple[int, int]]:
    """(channels, (H, W)) of the set from every file's header: RGB when any file has colour;
    grey files in an RGB set are converted (and the log says how many)."""
    modes, first = {}, None
    for rel in rels:
        mode, size = probe(folder.root / rel)
        modes[rel] = mode
        first = first or (rel, size)
        if size != first[1]:
            raise DataError(
                f"{folder.root / rel}: {size[1]}x{size[0]} pixels, but {folder.root / first[0]} "
                f"is {first[1][1]}x{first[1][0]}: every image of a set has one size"
            )
    grey = [rel for rel, m in modes.items() if m in GREY_MODES]
    channels = 1 if len(grey) == len(rels) else 3
    if channels == 3 and grey:
        log.info(
            "%s: %d grey image(s) converted to RGB (first: %s)", folder.root, len(grey), grey[0]
        )
    return channels, first[1]


def _decode_all(dataset: FileDataset) -> tuple[np.ndarray, np.ndarray]:
    x = np.stack(
        [decode(dataset.root / rel, dataset.channels, dataset.size) for rel, _ in dataset.items]
    )
    return x, np.asarray([label for _, label in dataset.items], dtype=np.int64)


def _standardised(
    arrays: dict[str, tuple[np.ndarray, np.ndarray]],
    num_classes: int,
    name: str,
    digest: str,
    provenance: dict,
) -> Splits:
    """In-memory Splits of uint8 images: [0, 1] floats standardised with the training mean/std."""
    floats = {s: (x.astype(np.float32) / 255.0, y) for s, (x, y) in arrays.items()}
    for split, (x, y) in floats.items():
        validate_arrays(x, y, split)
    mean = float(floats["train"][0].mean())
    std = float(floats["train"][0].std()) or 1.0
    tensors = {}
    for split, (x, y) in floats.items():
        tensors[f"x_{split}"] = torch.from_numpy((x - mean) / std).float()
        tensors[f"y_{split}"] = torch.from_numpy(y).long()
    return Splits(
        **tensors,
        num_classes=num_classes,
        name=name,
        digest=digest,
        norm=(mean, std),
        provenance=provenance,
    )


def _sample_norm(train: Dataset) -> tuple[float, float]:
    """Mean/std of [0, 1] pixels over at most NORM_SAMPLE evenly spaced training images: streamed
    data is standardised on the device without reading the whole set first."""
    n = len(train)
    idx = np.unique(np.linspace(0, n - 1, num=min(n, NORM_SAMPLE)).round().astype(int))
    x = torch.stack([train[int(i)][0] for i in idx]).double() / 255.0
    return float(x.mean()), float(x.std(unbiased=False)) or 1.0


def stream_arrays(
    x: np.ndarray,
    y: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    *,
    name: str,
    digest: str,
    val_fraction: float,
    split_seed: int,
    train_subset: int | None,
    settings: L.LoaderSettings,
    provenance: dict,
) -> L.StreamedSplits:
    """uint8 arrays (N, C, H, W) streamed through the DataLoader, carved as make_splits carves."""
    validate_arrays(x, y, "train")
    validate_arrays(x_test, y_test, "test")
    order = np.random.default_rng(split_seed).permutation(len(y))
    n_val = max(1, int(round(val_fraction * len(y))))
    val_idx, train_idx = order[:n_val], order[n_val:]
    if train_subset:
        train_idx = train_idx[:train_subset]
    train = L.ArrayDataset(x[train_idx], y[train_idx])
    x01 = x[train_idx[: NORM_SAMPLE * 8]].astype(np.float64) / 255.0
    return L.StreamedSplits(
        train=train,
        val=L.ArrayDataset(x[val_idx], y[val_idx]),
        test=L.ArrayDataset(x_test, y_test),
        num_classes=int(max(y.max(), y_test.max())) + 1,
        name=name,
        digest=digest,
        input_shape=tuple(x.shape[1:]),
        norm=(float(x01.mean()), float(x01.std()) or 1.0),
        settings=settings,
        provenance=provenance,
    )
