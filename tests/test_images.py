"""Image data from disk: an ImageFolder of generated PNGs (scikit-learn's digits at 32x32 RGB, one
JPEG and one grey image among them) and a CIFAR-format batch set; the manifest digest and its
cache; bad layouts refused naming the path before anything exists; the in-memory batches are the
step's own, the streamed ones independent of the worker count and resumable mid-epoch."""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import compose_cfg, mlflow_runs, run_cli

from tunelab import build
from tunelab.config import ConfigError, validate
from tunelab.data import images as I
from tunelab.data import loader as L
from tunelab.data.manifest import CACHE_NAME, build_manifest
from tunelab.data.sources import cifar10
from tunelab.data.splits import Splits, make_splits
from tunelab.run.api import attempt
from tunelab.run.record import RunFailed
from tunelab.tags import FAILURE_MESSAGE, FAILURE_REASON
from tunelab.tracking import NullTracker

PER_CLASS = 30  # 10 classes: 300 images


def write_folder(
    root: Path, per_class: int = PER_CLASS, splits: tuple[str, ...] = ("train",)
) -> Path:
    """digits scaled to 32x32 and tinted per class (RGB), one JPEG and one grey PNG among them."""
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    rng = np.random.default_rng(0)
    for split in splits:
        for label in range(10):
            folder = root / split / f"class_{label}"
            folder.mkdir(parents=True, exist_ok=True)
            idx = np.flatnonzero(d.target == label)[:per_class]
            for k, i in enumerate(idx):
                grey = (d.images[i] / 16.0 * 255).astype(np.uint8)
                big = np.asarray(Image.fromarray(grey).resize((32, 32), Image.NEAREST))
                tint = rng.uniform(0.5, 1.0, size=3)
                rgb = (big[..., None] * tint).astype(np.uint8)
                im = Image.fromarray(rgb, "RGB")
                if split == "train" and label == 3 and k == 0:
                    im.save(folder / f"{k:03d}.jpg", quality=95)
                elif split == "train" and label == 4 and k == 0:
                    Image.fromarray(big, "L").save(folder / f"{k:03d}.png")
                else:
                    im.save(folder / f"{k:03d}.png")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return write_folder(tmp_path_factory.mktemp("imagefolder") / "digits32")


@pytest.fixture
def own_folder(tmp_path) -> Path:
    """A small folder a test may damage."""
    return write_folder(tmp_path / "own", per_class=4)


def test_an_image_folder_loads_in_memory_with_carved_splits_and_its_manifest(folder):
    splits = I.images(path=str(folder))
    assert isinstance(splits, Splits)
    assert splits.input_shape == (3, 32, 32) and splits.num_classes == 10
    assert sum(splits.sizes().values()) == 10 * PER_CLASS
    assert splits.sizes()["test"] == 60 and splits.sizes()["val"] == 24  # 20 % then 10 %
    assert splits.provenance["carved"] == ["test", "val"]
    assert splits.provenance["files"] == 300 and splits.provenance["classes"] == 10
    assert (
        splits.digest
        == splits.provenance["manifest_digest"]
        == build_manifest(folder, [str(p.relative_to(folder)) for p in folder.rglob("*.*g")]).digest
    )
    assert abs(float(splits.x_train.mean())) < 1e-4  # standardised with the training statistics
    again = I.images(path=str(folder))
    assert torch.equal(again.x_train, splits.x_train) and again.digest == splits.digest


def test_given_val_and_test_folders_are_used_as_they_are(tmp_path):
    root = write_folder(tmp_path / "three", per_class=3, splits=("train", "val", "test"))
    splits = I.images(path=str(root))
    assert splits.sizes() == {"train": 30, "val": 30, "test": 30}
    assert splits.provenance["carved"] == []


def test_a_grey_image_in_an_rgb_set_is_converted_and_logged(folder, caplog):
    with caplog.at_level(logging.INFO, logger="tunelab.data.images"):
        splits = I.images(path=str(folder))
    assert splits.input_shape[0] == 3
    assert "1 grey image(s) converted to RGB" in caplog.text and "class_4" in caplog.text
    grey = I.decode(folder / "train/class_4/000.png", 3, (32, 32))
    assert grey.shape == (3, 32, 32) and (grey[0] == grey[1]).all() and (grey[1] == grey[2]).all()


def test_the_jpeg_decodes_among_the_pngs(folder):
    x = I.decode(folder / "train/class_3/000.jpg", 3, (32, 32))
    assert x.dtype == np.uint8 and x.shape == (3, 32, 32) and x.max() > 100


def test_a_second_scan_hashes_nothing_and_a_changed_file_is_rehashed(own_folder):
    rels = [str(p.relative_to(own_folder)) for p in own_folder.rglob("*.*g")]
    first = build_manifest(own_folder, rels)
    assert first.hashed == 40 and (own_folder / CACHE_NAME).is_file()
    second = build_manifest(own_folder, rels)
    assert second.hashed == 0 and second.digest == first.digest
    changed = own_folder / "train/class_0/001.png"
    changed.write_bytes(changed.read_bytes() + b"\0")
    third = build_manifest(own_folder, rels)
    assert third.hashed == 1 and third.digest != first.digest


def test_a_read_only_folder_caches_its_manifest_under_the_user_cache(
    own_folder, tmp_path, monkeypatch
):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # root writes anywhere
    rels = [str(p.relative_to(own_folder)) for p in own_folder.rglob("*.*g")]
    first = build_manifest(own_folder, rels)
    assert first.cache_path.parent == tmp_path / "cache/tunelab/manifests"
    assert not (own_folder / CACHE_NAME).exists()
    assert build_manifest(own_folder, rels).hashed == 0


def empty_class(root: Path) -> Path:
    shutil.rmtree(root / "train/class_2")
    (root / "train/class_2").mkdir()
    return root / "train/class_2"


def no_class_folders(root: Path) -> Path:
    shutil.rmtree(root / "train")
    (root / "train").mkdir()
    return root / "train"


def classes_differ(root: Path) -> Path:
    (root / "val/class_9").rename(root / "val/class_nine")
    return root / "val"


def no_train(root: Path) -> Path:
    shutil.rmtree(root / "train")
    return root / "train"


BAD_LAYOUTS = [
    (empty_class, "empty class folder"),
    (no_class_folders, "no class folders"),
    (classes_differ, "its classes differ"),
    (no_train, "no such directory"),
]


@pytest.mark.parametrize(
    ("damage", "needle"), BAD_LAYOUTS, ids=[b[0].__name__ for b in BAD_LAYOUTS]
)
def test_a_bad_layout_is_refused_at_validation_naming_the_path(tmp_path, damage, needle):
    root = write_folder(tmp_path / "bad", per_class=2, splits=("train", "val"))
    where = damage(root)
    with pytest.raises(ConfigError) as err:
        validate(
            compose_cfg("data=images", f"data.path={root}", "model=cnn"),
            check_files=build.file_problems,
        )
    assert needle in str(err.value) and str(where) in str(err.value), str(err.value)


def test_a_missing_root_is_refused_naming_it(tmp_path):
    with pytest.raises(ConfigError, match=f"data.path='{tmp_path / 'nowhere'}'"):
        validate(compose_cfg("data=images", f"data.path={tmp_path / 'nowhere'}"))
    with pytest.raises(I.DataError, match="no such directory"):
        I.scan(tmp_path / "nowhere")


def test_the_cli_leaves_no_trace_of_a_bad_layout(tmp_path):
    root = write_folder(tmp_path / "bad", per_class=2)
    where = empty_class(root)
    work = tmp_path / "work"
    work.mkdir()
    proc = run_cli("data=images", f"data.path={root}", cwd=work, timeout=300)
    assert proc.returncode != 0
    assert f"{where}: empty class folder" in proc.stderr, proc.stderr[-2000:]
    assert list(work.iterdir()) == []  # no outputs/, mlflow.db, mlruns/ or checkpoints/


def test_a_non_image_file_is_refused_naming_it(own_folder):
    bad = own_folder / "train/class_1/notes.png"
    bad.write_text("not an image")
    with pytest.raises(I.DataError, match=f"{bad}: not a readable image"):
        I.images(path=str(own_folder))


def test_a_truncated_image_fails_naming_the_file_when_read(own_folder):
    bad = own_folder / "train/class_5/002.png"
    bad.write_bytes(bad.read_bytes()[:-40])  # the header survives: found when decoded
    with pytest.raises(I.DataError, match=f"{bad}: not a readable image"):
        I.images(path=str(own_folder), loader="memory")
    streamed = I.images(path=str(own_folder), loader="stream")
    with pytest.raises(I.DataError, match=f"{bad}: not a readable image"):
        for split in ("train", "val", "test"):  # wherever the carving put it
            for _ in L.split_batches(streamed, split, 8):
                pass


SMALL_CNN = ["model=cnn", "model.width=4", "model.depth=1", "trainer.batch_size=16"]


class StartRecorder(NullTracker):
    """NullTracker that also keeps the run's start (its tags) and its end status."""

    def start(self, run_name, tags, parent_run_id=None, run_id=None):
        self.calls.append(("start", (tags,)))
        return super().start(run_name, tags, parent_run_id, run_id)


def test_a_non_image_file_stops_a_run_before_it_starts_naming_it(own_folder, in_tmp):
    bad = own_folder / "train/class_1/notes.png"
    bad.write_text("not an image")
    cfg = compose_cfg("data=images", f"data.path={own_folder}", *SMALL_CNN, "tracking=none")
    with pytest.raises(I.DataError, match=f"{bad}: not a readable image"):
        attempt(cfg, tracker=(tracker := StartRecorder()))
    assert tracker.calls == [] and [p.name for p in in_tmp.iterdir()] == ["own"]  # no checkpoints/


def test_an_unreadable_file_is_refused_naming_it(own_folder, monkeypatch):
    from PIL import Image

    locked = own_folder / "train/class_6/001.png"
    real_open = Image.open

    def guarded(path, *args, **kwargs):  # as chmod 000 does for a user who is not root
        if Path(path) == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(Image, "open", guarded)
    with pytest.raises(I.DataError, match=f"{locked}: not a readable image.*Permission denied"):
        I.images(path=str(own_folder), loader="stream")


@pytest.mark.parametrize("workers", [0, 1])
def test_a_truncated_image_ends_a_streamed_run_failed_naming_the_file(own_folder, in_tmp, workers):
    bad = own_folder / "train/class_5/002.png"
    bad.write_bytes(bad.read_bytes()[:-40])  # the header survives: found when decoded
    cfg = compose_cfg(
        "data=images",
        f"data.path={own_folder}",
        "data.loader=stream",
        f"data.num_workers={workers}",
        *SMALL_CNN,
        "trainer.max_epochs=1",
        "tracking=none",
    )
    outcome = attempt(cfg, tracker=(tracker := StartRecorder()))
    assert isinstance(outcome, RunFailed) and isinstance(outcome.cause, I.DataError)
    tags = {k: v for c, a in tracker.calls if c == "set_tags" for k, v in a[0].items()}
    assert tags[FAILURE_REASON] == "DataError"
    assert f"{bad}: not a readable image" in tags[FAILURE_MESSAGE]
    assert tracker.calls[0][0] == "start" and tracker.calls[-1] == ("end", ("FAILED",))


def test_a_sweep_over_a_bad_layout_leaves_no_trace(tmp_path):
    root = write_folder(tmp_path / "bad", per_class=2, splits=("train", "val"))
    where = classes_differ(root)
    work = tmp_path / "work"
    work.mkdir()
    args = ["-m", "data=images", f"data.path={root}", "optimizer.lr=0.01,0.1"]
    proc = run_cli(*args, cwd=work, timeout=300)
    assert proc.returncode != 0
    assert f"{where}: its classes differ" in proc.stderr, proc.stderr[-2000:]
    assert list(work.iterdir()) == []  # no multirun/, journal, mlflow.db or study


def test_an_image_of_another_size_is_refused_naming_it(own_folder):
    from PIL import Image

    odd = own_folder / "train/class_7/000.png"
    Image.new("RGB", (28, 28)).save(odd)
    with pytest.raises(I.DataError, match=f"{odd}: 28x28 pixels"):
        I.images(path=str(own_folder))


def loop_batches(x, y, generator, bs, drop_last):
    """The batches run/loop.py's fit() slices (its randperm and its ranges), written out."""
    n = len(y)
    perm = torch.randperm(n, generator=generator).to(x.device)
    for start in range(0, n - bs + 1 if drop_last and n >= bs else n, bs):
        idx = perm[start : start + bs]
        yield x[idx], y[idx]


@pytest.mark.parametrize("drop_last", [False, True])
def test_in_memory_batches_are_the_steps_own(folder, drop_last):
    splits = I.images(path=str(folder))
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    for epoch in (1, 2):  # the generator advances per epoch exactly as the step's does
        ours = list(
            L.epoch_batches(splits, 32, seed=7, epoch=epoch, generator=g1, drop_last=drop_last)
        )
        theirs = list(loop_batches(splits.x_train, splits.y_train, g2, 32, drop_last))
        assert len(ours) == len(theirs)
        for (xa, ya), (xb, yb) in zip(ours, theirs, strict=True):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    as_dict = {"x_train": splits.x_train, "y_train": splits.y_train}
    g3, g4 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    tail = list(L.epoch_batches(as_dict, 32, seed=3, epoch=1, generator=g3, start_batch=2))
    full = list(loop_batches(splits.x_train, splits.y_train, g4, 32, False))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(tail, full[2:], strict=True))


def test_streamed_batches_depend_on_seed_and_epoch_only_and_resume_mid_epoch(folder):
    zero = I.images(path=str(folder), loader="stream", num_workers=0)
    two = I.images(path=str(folder), loader="stream", num_workers=2, persistent_workers=True)
    assert isinstance(zero, L.StreamedSplits) and zero.digest == two.digest
    a = list(L.epoch_batches(zero, 32, seed=5, epoch=2))
    b = list(L.epoch_batches(two, 32, seed=5, epoch=2))
    assert len(a) == 7 and [len(y) for _, y in a][-1] == 216 - 6 * 32
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb) and xa.dtype == torch.float32
    resumed = list(L.epoch_batches(two, 32, seed=5, epoch=2, start_batch=4))
    assert all(torch.equal(r[0], f[0]) for r, f in zip(resumed, a[4:], strict=True))
    other = next(iter(L.epoch_batches(zero, 32, seed=5, epoch=3)))
    assert not torch.equal(other[1], a[0][1])  # another epoch, another order


def test_streamed_and_in_memory_examples_hold_the_same_pixels(folder):
    memory, streamed = I.images(path=str(folder)), I.images(path=str(folder), loader="stream")
    assert memory.sizes() == streamed.sizes() and streamed.input_shape == memory.input_shape
    x, y = next(iter(L.split_batches(streamed, "val", batch_size=1000)))
    (mm, ms), (sm, ss) = memory.norm, streamed.norm
    assert torch.equal(y, memory.y_val)
    assert torch.allclose(x * ss + sm, memory.x_val * ms + mm, atol=1e-5)


def test_auto_keeps_small_sets_in_memory_and_streams_large_ones():
    assert L.choose_mode("auto", 10 * 2**20, 1024) == "memory"
    assert L.choose_mode("auto", 2048 * 2**20, 1024) == "stream"
    assert L.choose_mode("stream", 1, 1024) == "stream"
    with pytest.raises(ValueError, match="data.loader='disk'"):
        L.choose_mode("disk", 1, 1024)


def write_cifar(root: Path, per_batch: int = 20) -> Path:
    """A CIFAR-10 python batch set (protocol 2, as the real one), random pixels."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {
            b"data": rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8),
            b"labels": [int(v) for v in rng.integers(0, 10, size=per_batch)],
        }
        with open(root / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    return root


def test_cifar10_in_memory_is_unchanged_and_streams_through_the_same_loader(tmp_path):
    root = write_cifar(tmp_path / "cifar")
    memory = cifar10(path=str(root))
    assert memory.sizes() == {"train": 90, "val": 10, "test": 20}
    batches = [_read_batch(root / f"data_batch_{i}") for i in range(1, 6)]
    x, y = np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])
    today = make_splits(
        x, y, *_read_batch(root / "test_batch"), name="cifar10", val_fraction=0.1, split_seed=0
    )
    assert memory.digest == today.digest and torch.equal(memory.x_train, today.x_train)
    streamed = cifar10(path=str(root), loader="stream", num_workers=1)
    assert streamed.sizes() == memory.sizes() and streamed.input_shape == (3, 32, 32)
    assert streamed.provenance["manifest_digest"] == memory.provenance["manifest_digest"]
    assert sum(len(y) for _, y in L.epoch_batches(streamed, 16, seed=0, epoch=1)) == 90
    xs, ys = next(iter(L.split_batches(streamed, "val", 64)))
    (mm, ms), (sm, ss) = memory.norm, streamed.norm
    assert torch.equal(ys, memory.y_val)
    assert torch.allclose(xs * ss + sm, memory.x_val * ms + mm, atol=1e-5)


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A batch as today's reader decodes it: [0, 1] floats (N, 3, 32, 32) and int64 labels."""
    with open(path, "rb") as f:
        b = pickle.load(f, encoding="bytes")
    x = b[b"data"].reshape(-1, 3, 32, 32).astype(np.float32) / 255.0
    return x, np.asarray(b[b"labels"], dtype=np.int64)


def test_cifar10_still_refuses_a_batch_that_would_run_code(tmp_path):
    root = write_cifar(tmp_path / "cifar", per_batch=2)

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo owned",))

    with open(root / "data_batch_3", "wb") as f:
        pickle.dump({b"data": Payload(), b"labels": []}, f, protocol=2)
    with pytest.raises(ValueError, match="refused .*system"):
        cifar10(path=str(root), loader="stream")


def test_the_resnet_is_the_cifar_resnet18():
    from torch import nn

    from tunelab.models.nets import resnet

    model = resnet((3, 32, 32), 10)
    stem = model.backbone[0]
    assert isinstance(stem, nn.Conv2d) and stem.kernel_size == (3, 3) and stem.stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    assert sum(p.numel() for p in model.parameters()) == 11_173_962  # ResNet-18 for 10 classes
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_the_seed_002_preset_composes_and_validates(tmp_path):
    cfg = compose_cfg("+preset=cifar10_resnet18", f"data.path={write_cifar(tmp_path / 'c', 2)}")
    validate(cfg)
    assert (cfg.data.name, cfg.model.name, cfg.optimizer.name, cfg.augment.name) == (
        "cifar10",
        "resnet",
        "momentum",
        "standard",
    )
    assert (cfg.optimizer.lr, cfg.optimizer.momentum, cfg.optimizer.weight_decay) == (
        0.1,
        0.9,
        5e-4,
    )
    assert cfg.trainer.batch_size == 128 and cfg.model.blocks_per_stage == [2, 2, 2, 2]
    study = compose_cfg(
        "study=lr_momentum",
        "+preset=cifar10_resnet18",
        f"data.path={tmp_path / 'c'}",
        "~model.depth",
    )
    validate(study)
    assert study.model.width == 64


@pytest.mark.slow
def test_data_images_trains_from_disk_through_the_cli(folder, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    proc = run_cli(
        "data=images",
        f"data.path={folder}",
        "model=cnn",
        "model.width=8",
        "model.depth=2",
        "trainer.max_epochs=1",
        cwd=work,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "grey image(s) converted to RGB" in proc.stderr + proc.stdout
    (run,) = mlflow_runs(work)
    manifest = build_manifest(folder, [str(p.relative_to(folder)) for p in folder.rglob("*.*g")])
    assert run.data.tags["data_digest"] == manifest.digest and manifest.hashed == 0
    (dataset,) = run.inputs.dataset_inputs
    profile = json.loads(dataset.dataset.profile)
    assert profile["manifest_digest"] == manifest.digest
    assert (profile["files"], profile["classes"], profile["carved"]) == (300, 10, ["test", "val"])


def test_auto_streams_a_set_above_the_memory_limit(folder):
    assert isinstance(I.images(path=str(folder), memory_limit_mb=0.5), L.StreamedSplits)
    assert isinstance(I.images(path=str(folder), memory_limit_mb=64), Splits)


def test_augmented_streamed_batches_do_not_depend_on_the_worker_count(folder):
    from tunelab.data.augment import make_augment

    standard = {"name": "standard", "pad": 4, "flip": True, "cutmix_alpha": 1.0}
    seen = []
    for workers in (0, 2):
        data = I.images(path=str(folder), loader="stream", num_workers=workers)
        aug = make_augment(standard, data.input_shape, data.num_classes, data.norm)
        batches = L.epoch_batches(data, 64, seed=1, epoch=3, start_batch=1)
        seen.append([aug(x, y, 1, 3, b) for b, (x, y) in enumerate(batches, start=1)])
    for (xa, ta), (xb, tb) in zip(*seen, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ta, tb)
