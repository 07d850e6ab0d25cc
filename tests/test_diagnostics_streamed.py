"""The diagnostics on data streamed from disk (`data.loader=stream`): the data check, the lr range
test, the overfit and gradient checks and the per-class accuracies read a generated ImageFolder a
batch at a time, never the whole set at once."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch
from conftest import compose_cfg
from test_images import write_folder

from tunelab.data import images as I
from tunelab.data import loader as L
from tunelab.diagnostics import datacheck
from tunelab.diagnostics.command import DIAGNOSTICS
from tunelab.run.api import run
from tunelab.tracking import NullTracker

CNN = ["model=cnn", "model.width=8", "model.depth=2", "trainer.batch_size=32"]


@pytest.fixture(scope="module")
def leaky(tmp_path_factory) -> Path:
    """train/, val/ and test/ folders, one training image copied into val/ (a leak to find)."""
    root = write_folder(tmp_path_factory.mktemp("streamed") / "digits32", 6, I.SPLITS)
    shutil.copy(root / "train/class_0/001.png", root / "val/class_0/leak.png")
    return root


def streamed_cfg(root: Path, *overrides: str):
    return compose_cfg(
        "data=images", f"data.path={root}", "data.loader=stream", *CNN, "tracking=none", *overrides
    )


class Recording(NullTracker):
    """NullTracker that also keeps the tags the run starts with."""

    def start(self, run_name, tags, parent_run_id=None, run_id=None):
        self.calls.append(("set_tags", (tags,)))
        return super().start(run_name, tags, parent_run_id, run_id)


def tags_of(tracker: NullTracker) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, args in tracker.calls:
        if name == "set_tags":
            out.update(args[0])
    return out


def test_the_data_check_streams_a_batch_at_a_time_and_counts_what_memory_counts(leaky, monkeypatch):
    streamed = I.images(path=str(leaky), loader="stream")
    largest = []

    def spied(data, split, batch_size, device="cpu"):
        for x, y in L.split_batches(data, split, batch_size, device):
            largest.append(len(x))
            yield x, y

    monkeypatch.setattr(datacheck, "split_batches", spied)
    report = datacheck.check_data(streamed, batch_size=16)
    assert largest and max(largest) <= 16 and len(largest) > 3  # never a whole split
    in_memory = datacheck.check_data(I.images(path=str(leaky), loader="memory"))
    for key in ("sizes", "class_counts", "duplicates", "num_classes"):
        assert report.stats[key] == in_memory.stats[key], key
    assert report.stats["duplicates"]["train-val"] == 1
    assert any("val examples also appear in train" in w for w in report.warnings)
    values = report.stats["values"]["train"]
    assert abs(values["mean"]) < 0.1 and 0.9 < values["std"] < 1.1  # standardised on the way


def test_batched_moments_equal_the_one_pass_moments():
    x = torch.randn(100, 3, 4) * 3 + 1
    x[5, 0, 0], x[7, 1, 1] = float("nan"), float("inf")
    whole, parts = datacheck._Moments(), datacheck._Moments()
    whole.add(x)
    for chunk in x.split(7):
        parts.add(chunk)
    a, b = whole.stats(), parts.stats()
    assert (a["nan"], a["inf"], b["nan"], b["inf"]) == (1, 1, 1, 1)
    for key in ("min", "max", "mean", "std"):
        assert math.isclose(a[key], b[key], rel_tol=1e-12), key
    finite = x[torch.isfinite(x)].double()
    assert math.isclose(b["std"], float(finite.std()), rel_tol=1e-12)


@pytest.mark.parametrize("name", sorted(DIAGNOSTICS))
def test_every_diagnostic_runs_on_streamed_data(leaky, name, in_tmp):
    knobs = {
        "lr_range": ["diagnose.num_steps=12", "diagnose.batch_size=16"],
        "overfit": ["diagnose.max_steps=3", "diagnose.target_loss=100", "diagnose.n_examples=8"],
        "gradcheck": ["diagnose.n_examples=2", "diagnose.max_params_per_tensor=2"],
    }
    cfg = streamed_cfg(leaky, f"diagnose={name}", *knobs.get(name, []))
    result = run(cfg, tracker=(tracker := Recording()))
    assert result.status == "FINISHED" and math.isfinite(result.value)
    tags = tags_of(tracker)
    assert tags["data_loader"] == "stream"
    if name == "lr_range":  # 60 training files: 3 full batches an epoch, the next epoch follows
        assert result.metrics["diagnose/steps"] > 3 and float(tags["diagnose.suggested_lr"]) > 0
    if name == "datacheck":
        assert tags["data_check"] == "warnings" and "also appear in" in tags["data_check.first"]
    if name == "overfit":
        (report,) = [a[0] for c, a in tracker.calls if c == "log_dict" and "overfit" in a[1]]
        assert "on 8 examples" in report["message"]


def test_a_streamed_run_records_per_class_accuracy_and_its_data_check(leaky, in_tmp):
    result = run(streamed_cfg(leaky, "trainer.max_epochs=1"), tracker=(tracker := Recording()))
    assert result.status == "FINISHED"
    logged = {k for c, a in tracker.calls if c == "log_metrics" for k in a[0]}
    assert {f"val/acc_class_{c}" for c in range(10)} <= logged
    tags = tags_of(tracker)
    assert tags["data_check"] == "warnings" and "also appear in" in tags["data_check.first"]
