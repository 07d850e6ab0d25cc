"""Every option of every config group composes, passes validation and builds its objects, without
training: data, model, optimizer, schedule, tracker, fine-tuning, diagnostics, search presets and
playbook studies."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import CONF
from hydra import compose, initialize_config_dir

from tunelab import build
from tunelab.build import build_schedule
from tunelab.config import validate
from tunelab.config.space import build_space
from tunelab.diagnostics.command import DIAGNOSTICS, prepare
from tunelab.run.api import load_backbone
from tunelab.run.checkpoint import serialize, write_atomic
from tunelab.tuning.samplers import make_pruner, make_sampler
from tunelab.tuning.settings import StudySweeperConf, TunelabSweeperConf, sweep_settings
from tunelab.tuning.study_spec import parse

GROUPS = (
    "data", "model", "optimizer", "scheduler", "trainer", "tracking", "finetune", "diagnose",
    "search", "study", "launcher",
)  # fmt: skip
SMALL = ["data=synthetic", "model=mlp", "model.width=8", "trainer.max_epochs=2"]


def every_option() -> list[tuple[str, str]]:
    return [(g, p.stem) for g in GROUPS for p in sorted((CONF / g).glob("*.yaml"))]


def compose_with_hydra(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=True)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Local files the path-taking options need: CIFAR-10-style batches, arrays, a checkpoint."""
    root = tmp_path_factory.mktemp("local")
    rng = np.random.default_rng(0)
    cifar = root / "cifar-10-batches-py"
    cifar.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (20, 3072), dtype=np.uint8),
                 b"labels": rng.integers(0, 10, 20).tolist()}  # fmt: skip
        (cifar / name).write_bytes(pickle.dumps(batch))
    np.savez(root / "arrays.npz", x_train=rng.normal(size=(40, 6)), y_train=rng.integers(0, 3, 40),
             x_test=rng.normal(size=(10, 6)), y_test=rng.integers(0, 3, 10))  # fmt: skip
    table = {"a": rng.normal(size=40), "b": rng.choice(["x", "y"], 40), "y": rng.integers(0, 3, 40)}
    pd.DataFrame(table).to_csv(root / "table.csv", index=False)
    from PIL import Image

    for label in ("a", "b"):  # an ImageFolder: train/<class>/*.png
        (root / "images" / "train" / label).mkdir(parents=True)
        for i in range(6):
            pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / "images" / "train" / label / f"{i}.png")
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=SMALL)
    splits = build.build_data(cfg.data)
    model = build.build_model(cfg.model, splits.input_shape, splits.num_classes)
    write_atomic(serialize({"model": model.state_dict()}), root / "backbone.pt")
    return {
        "cifar": cifar,
        "npz": root / "arrays.npz",
        "table": root / "table.csv",
        "ckpt": root / "backbone.pt",
        "images": root / "images",
    }


def overrides_for(group: str, option: str, files: dict) -> list[str]:
    extra = {
        ("data", "cifar10"): [f"data.path={files['cifar']}"],
        ("data", "npz"): [f"data.path={files['npz']}"],
        ("data", "table"): [f"data.path={files['table']}", "data.target=y", "data.categorical=[b]"],
        ("data", "images"): [f"data.path={files['images']}"],
    }.get((group, option), [])
    if group == "finetune" and option != "none":
        extra = [f"finetune.init_checkpoint={files['ckpt']}"]
    base = [] if group in ("data", "model") else SMALL
    return [*base, f"{group}={option}", *extra]


@pytest.mark.parametrize(("group", "option"), every_option())
def test_every_option_composes_validates_and_builds(group, option, files, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a tracker's store lands here
    cfg = compose_with_hydra(*overrides_for(group, option, files))
    validate(cfg, check_files=build.file_problems)
    build_objects(cfg)
    if group == "finetune" and cfg.finetune.init_checkpoint:
        net = build.build_model(cfg.model, (1, 16), 4)
        load_backbone(net, cfg.finetune.init_checkpoint)
        groups = build.build_optimizer(net, cfg.optimizer, cfg.finetune.backbone_lr_mult)
        lrs = {g["role"]: g["lr"] for g in groups.param_groups}
        assert lrs["backbone"] == pytest.approx(cfg.optimizer.lr * cfg.finetune.backbone_lr_mult)
    if group == "tracking":
        tracker = build.build_tracker(cfg.tracking)
        assert type(tracker).__name__ == {"mlflow": "MlflowTracker", "none": "NullTracker"}[option]
    if group == "diagnose":
        assert option in DIAGNOSTICS and prepare(cfg).diagnose.name == option
    if group == "search":
        settings = sweep_settings(cfg.hydra.sweeper)
        assert isinstance(settings, TunelabSweeperConf)
        space, _ = build_space(settings.params, [], settings.conditional)
        assert space, f"search={option} searches nothing"
        make_sampler(settings.sampler, 0, {p.name: [0] for p in space})
        make_pruner(settings.pruner)
    if group == "launcher":  # trials as cluster jobs, one GPU each
        assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
        assert cfg.hydra.launcher.gpus_per_node == 1
    if group == "study":
        settings = sweep_settings(cfg.hydra.sweeper)
        assert isinstance(settings, StudySweeperConf)
        spec = parse(settings, cfg, [])
        assert spec.cells and spec.seeds
        for cell in spec.cells:
            build_space(cell.space, spec.cell_arguments(cell))
        make_sampler(settings.sampler, 0)
        make_pruner(settings.pruner)


def build_objects(cfg) -> None:
    """Data, model, optimizer and schedule of a composed config, and one forward pass."""
    splits = build.build_data(cfg.data)
    model = build.build_model(cfg.model, splits.input_shape, splits.num_classes)
    optimizer = build.build_optimizer(model, cfg.optimizer)
    schedule = build_schedule(
        optimizer, cfg.scheduler, steps_per_epoch=3, max_epochs=int(cfg.trainer.max_epochs)
    )
    assert schedule.lr > 0
    with torch.no_grad():
        logits = model.eval()(splits.x_val[:2])
    assert logits.shape == (min(2, len(splits.y_val)), splits.num_classes)
