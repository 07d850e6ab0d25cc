"""Dataset loaders: each returns Splits; each is a `_target_` of a conf/data/*.yaml."""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tunelab.data.images import stream_arrays
from tunelab.data.loader import LoaderSettings, StreamedSplits, choose_mode
from tunelab.data.manifest import build_manifest
from tunelab.data.splits import Splits, make_splits


def mnist1d(
    *,
    val_fraction: float = 0.1,
    split_seed: int = 0,
    num_samples: int = 5000,
    train_split: float = 0.8,
    data_seed: int = 42,
    cache_dir: str | None = None,
    train_subset: int | None = None,
) -> Splits:
    """MNIST-1D generated offline by the `mnist1d` package (official 4,000/1,000 split by default)."""
    raw = _load_or_make_mnist1d(num_samples, train_split, data_seed, cache_dir)
    x, x_test = raw["x"][:, None, :], raw["x_test"][:, None, :]  # (N, 40) -> (N, 1, 40)
    return make_splits(
        x,
        raw["y"],
        x_test,
        raw["y_test"],
        name="mnist1d",
        val_fraction=val_fraction,
        split_seed=split_seed,
        train_subset=train_subset,
    )


def _load_or_make_mnist1d(
    num_samples: int, train_split: float, seed: int, cache_dir: str | None
) -> dict:
    cache = (
        Path(cache_dir) / f"mnist1d_{num_samples}_{train_split}_{seed}.npz" if cache_dir else None
    )
    if cache is not None and cache.exists():
        with np.load(cache) as f:
            return dict(f)
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.train_split, args.seed = num_samples, train_split, seed
    d = make_dataset(args)
    raw = {k: np.asarray(d[k]) for k in ("x", "y", "x_test", "y_test")}
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp.npz")
        np.savez(tmp, **raw)
        tmp.replace(cache)
    return raw


def digits(
    *, val_fraction: float = 0.15, split_seed: int = 0, test_fraction: float = 0.2
) -> Splits:
    """scikit-learn's 8x8 digits (1,797 images), shipped with the package."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = d.images.astype(np.float32)[:, None] / 16.0  # (N, 1, 8, 8)
    rng = np.random.default_rng(12345)  # fixed test split, independent of split_seed
    order = rng.permutation(len(x))
    n_test = int(round(test_fraction * len(x)))
    test, train = order[:n_test], order[n_test:]
    return make_splits(
        x[train],
        d.target[train],
        x[test],
        d.target[test],
        name="digits",
        val_fraction=val_fraction,
        split_seed=split_seed,
    )


def cifar10(
    *,
    path: str,
    val_fraction: float = 0.1,
    split_seed: int = 0,
    train_subset: int | None = None,
    loader: str = "auto",
    memory_limit_mb: float = 1024,
    num_workers: int = 0,
    pin_memory: bool = True,
    persistent_workers: bool = False,
    prefetch_factor: int = 2,
) -> Splits | StreamedSplits:
    """CIFAR-10 from the standard python batches (data_batch_1..5, test_batch) in a local directory:
    in memory as always, or streamed from compact uint8 arrays (`data.loader`)."""
    root = Path(path).expanduser()
    files = [root / f"data_batch_{i}" for i in range(1, 6)] + [root / "test_batch"]
    missing = [f.name for f in files if not f.exists()]
    if missing:
        raise FileNotFoundError(
            f"data.path={str(root)!r}: CIFAR-10 python batches not found (missing {', '.join(missing)}). "
            "Download 'cifar-10-python.tar.gz', extract it and point data.path at the "
            "'cifar-10-batches-py' directory."
        )
    manifest = build_manifest(root, [f.name for f in files])
    batches = [_unpickle(f) for f in files]
    x8 = np.concatenate([b[b"data"] for b in batches[:5]]).reshape(-1, 3, 32, 32)
    y = np.concatenate([b[b"labels"] for b in batches[:5]]).astype(np.int64)
    x8_test = batches[5][b"data"].reshape(-1, 3, 32, 32)
    y_test = np.asarray(batches[5][b"labels"], dtype=np.int64)
    provenance = {"manifest_digest": manifest.digest, "files": manifest.files, "classes": 10}
    n_bytes = (len(y) + len(y_test)) * 3 * 32 * 32 * 4
    if choose_mode(loader, n_bytes, memory_limit_mb) == "stream":
        settings = LoaderSettings(num_workers, pin_memory, persistent_workers, prefetch_factor)
        return stream_arrays(
            x8,
            y,
            x8_test,
            y_test,
            name="cifar10",
            digest=manifest.digest,
            val_fraction=val_fraction,
            split_seed=split_seed,
            train_subset=train_subset,
            settings=settings,
            provenance=provenance,
        )
    splits = make_splits(
        x8.astype(np.float32) / 255.0,
        y,
        x8_test.astype(np.float32) / 255.0,
        y_test,
        name="cifar10",
        val_fraction=val_fraction,
        split_seed=split_seed,
        train_subset=train_subset,
    )
    splits.provenance = provenance
    return splits


class _BatchUnpickler(pickle.Unpickler):
    """Reads what a CIFAR-10 python batch holds (a dict of bytes, lists, ints and one numpy
    array) and nothing else: any other class or function in the file is refused, never called."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how protocol 2 carries bytes when written by Python 3
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refused {module}.{name}: not part of a CIFAR-10 batch")
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            batch = _BatchUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
        raise ValueError(f"data.path: {path} is not a CIFAR-10 python batch ({exc})") from None
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise ValueError(f"data.path: {path} is not a CIFAR-10 python batch (no data and labels)")
    return batch


def npz(
    *,
    path: str,
    val_fraction: float = 0.1,
    split_seed: int = 0,
    standardize: bool = True,
    x_key: str = "x_train",
    y_key: str = "y_train",
    x_test_key: str = "x_test",
    y_test_key: str = "y_test",
) -> Splits:
    """Any local arrays: an .npz with train and test inputs/labels (keys configurable)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"data.path={str(file)!r}: no such .npz file")
    if not zipfile.is_zipfile(file):
        raise ValueError(f"data.path={str(file)!r}: not an .npz archive (numpy.savez writes one)")
    with np.load(file, allow_pickle=False) as f:
        keys = (x_key, y_key, x_test_key, y_test_key)
        absent = [k for k in keys if k not in f.files]
        if absent:
            raise KeyError(f"data.path={str(file)!r} lacks arrays {absent}; it has {f.files}")
        x, y, x_test, y_test = (f[k] for k in keys)
    x, x_test = (a[:, None] if a.ndim == 2 else a for a in (x, x_test))  # (N, F) -> (N, 1, F)
    if x.shape[1:] != x_test.shape[1:]:
        raise ValueError(
            f"data.path={str(file)!r}: train inputs {x.shape[1:]} and test inputs "
            f"{x_test.shape[1:]} differ in shape"
        )
    return make_splits(
        x.astype(np.float32),
        y,
        x_test.astype(np.float32),
        y_test,
        name=file.stem,
        val_fraction=val_fraction,
        split_seed=split_seed,
        standardize=standardize,
    )


def synthetic(
    *,
    num_samples: int = 512,
    num_classes: int = 4,
    length: int = 16,
    noise: float = 0.5,
    val_fraction: float = 0.25,
    split_seed: int = 0,
    data_seed: int = 0,
) -> Splits:
    """Tiny learnable 1-D signals (class-specific templates plus noise), for tests."""
    rng = np.random.default_rng(data_seed)
    templates = rng.normal(size=(num_classes, length)).astype(np.float32)
    n_total = num_samples + num_samples // 4
    labels = rng.integers(0, num_classes, size=n_total)
    x = templates[labels] + noise * rng.normal(size=(n_total, length)).astype(np.float32)
    x = x[:, None, :]  # (N, 1, L)
    return make_splits(
        x[:num_samples],
        labels[:num_samples],
        x[num_samples:],
        labels[num_samples:],
        name="synthetic",
        val_fraction=val_fraction,
        split_seed=split_seed,
    )


def prepared(*, path: str, name: str | None = None, source: dict | None = None) -> Splits:
    """Splits written by `export_splits` (the DVC prepare stage): loaded as they are, no re-split.

    `source` records the data config the splits were made from; it is not used to load them."""
    file = Path(path).expanduser() / "splits.npz"
    if not file.is_file():
        raise FileNotFoundError(
            f"data.path={path!r}: no splits.npz there (run the prepare stage: dvc repro prepare)"
        )
    with np.load(file, allow_pickle=False) as f:
        arrays = {k: torch.from_numpy(f[k]) for k in SPLIT_KEYS}
        meta = json.loads(str(f["meta"]))
    return Splits(
        **arrays,
        num_classes=int(meta["num_classes"]),
        name=name or meta["name"],
        digest=meta["digest"],
    )


SPLIT_KEYS = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")


def export_splits(splits: Splits, out_dir: str | Path) -> Path:
    """Write the splits (already standardised) plus name, class count and digest to out_dir/splits.npz."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "name": splits.name,
        "digest": splits.digest,
        "num_classes": splits.num_classes,
        **splits.sizes(),
    }
    tmp = out / ".splits.tmp.npz"
    np.savez(
        tmp, **{k: getattr(splits, k).numpy() for k in SPLIT_KEYS}, meta=np.array(json.dumps(meta))
    )
    tmp.replace(out / "splits.npz")
    (out / "data.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out / "splits.npz"
