"""The training step on streamed data and augmentation: batches from data/loader.epoch_batches,
augment= applied per (seed, epoch, batch), soft-target loss for mixup, evaluation streamed; the
worker count changes nothing, a killed run resumes bit-identically, workers take their share of
the cores, and the run records its augmentation and loader mode."""

from __future__ import annotations

import logging
import random
import shutil
import signal
import time
from pathlib import Path

import pytest
import torch
from conftest import FAST, compose_cfg, finish_cli, mlflow_runs, run_cli, start_cli, wait_for_line
from test_crash_resume import checkpoints, metric_history
from test_images import write_folder

from tunelab.build import build_training
from tunelab.data import images as I
from tunelab.data import loader as L
from tunelab.data.loader import epoch_batches
from tunelab.run import prepare
from tunelab.run.api import run
from tunelab.run.context import RunContext
from tunelab.run.loop import Objective, TrainState, fit
from tunelab.run.replica_rules import config_reason, data_reason
from tunelab.tracking.base import NullTracker

CNN = ["model=cnn", "model.width=8", "model.depth=2", "trainer.batch_size=32"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return write_folder(tmp_path_factory.mktemp("pipeline") / "digits32", per_class=12)


def cfg_for(folder: Path, *overrides: str):
    return compose_cfg(
        "data=images", f"data.path={folder}", *CNN, "tracking=none", "seed=3", *overrides
    )


def train(cfg) -> tuple[dict[str, list[float]], dict[str, torch.Tensor]]:
    """What api.train runs (minus the store and tracking): setup, augmentation, fit."""
    s = prepare.setup(cfg, RunContext())
    data = prepare.run_data(s.splits, torch.device("cpu"))
    optimizer, schedule = build_training(s.model, cfg, s.splits.sizes()["train"], allow=s.allow)
    state = fit(
        s.model,
        optimizer,
        schedule,
        data,
        cfg.trainer,
        objective=Objective(cfg.objective.metric, cfg.objective.direction),
        generator=torch.Generator().manual_seed(int(cfg.seed)),
        state=TrainState(),
        tracker=NullTracker(),
        augment=prepare.build_augment(cfg, s.splits),
        seed=int(cfg.seed),
    )
    history = {k: v for k, v in state.history.items() if not k.startswith("perf/")}
    return history, s.model.state_dict()


@pytest.fixture
def kept_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_streamed_augmented_training_does_not_depend_on_the_worker_count(folder, kept_threads):
    runs = [
        train(
            cfg_for(
                folder,
                "data.loader=stream",
                f"data.num_workers={w}",
                "augment=standard",
                "trainer.max_epochs=2",
                "trainer.num_threads=1",  # the worker count would change the thread count
            )
        )
        for w in (0, 2)
    ]
    (h0, w0), (h2, w2) = runs
    assert h0 == h2 and len(h0["val/acc"]) == 2
    assert all(torch.equal(w0[k], w2[k]) for k in w0)


def test_augment_is_applied_to_in_memory_training(folder, kept_threads):
    plain, _ = train(cfg_for(folder, "data.loader=memory", "trainer.max_epochs=1"))
    augmented, _ = train(
        cfg_for(folder, "data.loader=memory", "augment=standard", "trainer.max_epochs=1")
    )
    assert plain["train/loss"] != augmented["train/loss"]
    assert plain["val/loss"] != augmented["val/loss"]


@pytest.mark.parametrize("augment", ["mixup", "cutmix"])
def test_soft_target_augmentations_train_on_class_probabilities(folder, kept_threads, augment):
    history, _ = train(
        cfg_for(folder, "data.loader=stream", f"augment={augment}", "trainer.max_epochs=2")
    )
    losses = history["train/loss"]
    assert all(torch.isfinite(torch.tensor(losses))) and all(v > 0 for v in losses)
    assert all(0.0 <= a <= 1.0 for a in history["train/acc"])


def test_mixup_trains_flat_features_in_memory(kept_threads):
    """Mixup fits data of any shape: the digits' flat features train with it."""
    cfg = compose_cfg(
        "data=digits", "model=mlp", "model.width=16", "trainer.max_epochs=2", "augment=mixup"
    )
    history, _ = train(cfg)
    plain, _ = train(
        compose_cfg("data=digits", "model=mlp", "model.width=16", "trainer.max_epochs=2")
    )
    assert history["train/loss"] != plain["train/loss"]
    assert all(0.0 <= a <= 1.0 for a in history["train/acc"])


def test_loader_workers_take_their_share_of_the_torch_threads(folder, kept_threads):
    assert prepare.loader_threads(2, 2) == 1 and prepare.loader_threads(16, 2) == 14
    torch.set_num_threads(2)
    prepare.setup(cfg_for(folder, "data.loader=stream", "data.num_workers=2"), RunContext())
    assert torch.get_num_threads() == 1  # 2 cores, 2 workers: one thread, not oversubscribed
    prepare.setup(
        cfg_for(folder, "data.loader=stream", "data.num_workers=2", "trainer.num_threads=2"),
        RunContext(),
    )
    assert torch.get_num_threads() == 2  # an explicit count is kept
    torch.set_num_threads(2)
    prepare.setup(cfg_for(folder, "data.loader=memory", "data.num_workers=2"), RunContext())
    assert torch.get_num_threads() == 2  # in memory no worker runs


def test_replicas_train_one_after_another_with_streamed_data_or_augmentation(folder):
    assert config_reason(cfg_for(folder, "augment=mixup")) is not None
    assert config_reason(cfg_for(folder)) is None
    assert data_reason(I.images(path=str(folder), loader="stream")) is not None
    assert data_reason(I.images(path=str(folder), loader="memory")) is None


@pytest.mark.slow
def test_a_folder_trains_from_disk_with_workers_and_records_its_augmentation(folder, tmp_path):
    """The README's command: from disk with two workers and augment=standard; zero workers give
    the same metrics."""
    metrics = []
    for workers in (2, 0):
        work = tmp_path / f"w{workers}"
        work.mkdir()
        proc = run_cli(
            "data=images",
            f"data.path={folder}",
            "data.loader=stream",
            "augment=standard",
            *CNN,
            "trainer.max_epochs=2",
            f"data.num_workers={workers}",
            "trainer.num_threads=1",  # else 2 workers leave fewer threads: other float sums
            cwd=work,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        (run,) = mlflow_runs(work)
        assert run.data.params["augment.name"] == "standard"
        assert run.data.params["augment.pad"] == "4"
        assert run.data.tags["data_loader"] == "stream"
        metrics.append({k: v for k, v in run.data.metrics.items() if not k.startswith("perf/")})
    assert metrics[0] == metrics[1]


EPOCHS = 10
RESUME_ARGS = [
    "data=images",
    "data.loader=stream",
    "data.num_workers=2",
    "augment=cutmix",
    *CNN,
    "trainer.batch_size=16",
    f"trainer.max_epochs={EPOCHS}",
    "trainer.num_threads=1",
]


@pytest.mark.slow
def test_sigkill_mid_epoch_with_workers_and_augmentation_resumes_bit_identically(
    folder, tmp_path, mlflow_schema, session_seed
):
    ref_dir, crash_dir = tmp_path / "reference", tmp_path / "crash"
    for d in (ref_dir, crash_dir):
        d.mkdir()
        shutil.copy(mlflow_schema, d / "mlflow.db")
    args = [*RESUME_ARGS, f"data.path={folder}"]
    reference = start_cli(*args, cwd=ref_dir)
    victim = start_cli(*args, cwd=crash_dir)
    rng = random.Random(session_seed)  # the seed is printed with a failure
    killed_after = rng.randint(1, EPOCHS // 2)
    wait_for_line(victim, f"epoch {killed_after}/{EPOCHS}")
    deadline = time.monotonic() + 30
    while not list(crash_dir.glob("checkpoints/*/last.pt")) and time.monotonic() < deadline:
        time.sleep(0.005)  # checkpoints are written on a background thread
    time.sleep(rng.uniform(0.05, 0.3))  # inside the next epoch: workers and augmentation at work
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=60)
    out = finish_cli(start_cli(*args, cwd=crash_dir))
    assert "resuming from" in out, out[-3000:]
    assert finish_cli(reference) and reference.returncode == 0, "".join(reference.output)[-3000:]
    (ref,), (resumed,) = mlflow_runs(ref_dir), mlflow_runs(crash_dir)
    note = f"killed after epoch {killed_after}"
    assert resumed.info.status == "FINISHED" and resumed.data.tags["resumed"] == "true", note
    want = metric_history(ref_dir, ref.info.run_id)
    assert metric_history(crash_dir, resumed.info.run_id) == want, note
    assert len(want["val/acc"]) == EPOCHS
    a, b = checkpoints(ref_dir), checkpoints(crash_dir)
    for name in a:
        assert all(torch.equal(a[name][k], b[name][k]) for k in a[name]), (name, note)


@pytest.mark.parametrize("mode", ["memory", "stream"])
def test_channels_last_puts_image_models_and_batches_in_nhwc(folder, kept_threads, mode):
    cfg = cfg_for(
        folder, f"data.loader={mode}", "trainer.channels_last=true", "trainer.max_epochs=1"
    )
    s = prepare.setup(cfg, RunContext())
    nhwc = torch.channels_last
    convs = [p for p in s.model.parameters() if p.ndim == 4]
    assert convs and all(p.is_contiguous(memory_format=nhwc) for p in convs)
    data = prepare.run_data(s.splits, torch.device("cpu"))
    x, _ = next(epoch_batches(data, 32, seed=3, epoch=1, generator=torch.Generator()))
    assert x.is_contiguous(memory_format=nhwc) and not x.is_contiguous()
    default = cfg_for(
        folder, f"data.loader={mode}", "trainer.max_epochs=1", "trainer.num_threads=1"
    )
    cl = cfg_for(
        folder,
        f"data.loader={mode}",
        "trainer.max_epochs=1",
        "trainer.num_threads=1",
        "trainer.channels_last=true",
    )
    (h_default, _), (h_cl, _) = train(default), train(cl)
    for key in ("train/loss", "val/loss"):  # the same arithmetic in another memory order
        assert h_cl[key] == pytest.approx(h_default[key], rel=1e-4), key


def test_channels_last_is_ignored_and_logged_for_sequences(kept_threads, caplog):
    cfg = compose_cfg("data=synthetic", "model=mlp", "trainer.channels_last=true", "tracking=none")
    with caplog.at_level(logging.WARNING, logger="tunelab.run.prepare"):
        s = prepare.setup(cfg, RunContext())
    assert "trainer.channels_last=true ignored" in caplog.text
    assert s.splits.x_train.is_contiguous()


class CompileProbe(torch.nn.Module):
    """A linear layer that notes whether its forward ran under torch.compile's tracer."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 2)
        self.traced: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.traced.append(torch.compiler.is_compiling())
        return self.linear(x)


@pytest.mark.slow
def test_compile_compiles_in_place_and_a_run_records_it(in_tmp, kept_threads):
    x = torch.randn(8, 4)
    plain, compiled = CompileProbe(), CompileProbe()
    compiled.load_state_dict(plain.state_dict())
    prepare.compile_model(plain, compose_cfg().trainer)  # off by default
    prepare.compile_model(compiled, compose_cfg("trainer.compile=true").trainer)
    assert torch.allclose(plain(x), compiled(x), atol=1e-6)
    assert plain.traced == [False] and compiled.traced == [True]
    assert list(compiled.state_dict()) == ["linear.weight", "linear.bias"]  # checkpoints as before
    cfg = compose_cfg(*FAST, "trainer.compile=true", "trainer.device=cpu", "tracking=none")
    result = run(cfg, tracker=(tracker := NullTracker()))
    assert result.status == "FINISHED" and result.checkpoint is not None
    (params,) = [a[0] for c, a in tracker.calls if c == "log_params"]
    assert params["trainer.compile"] is True and params["trainer.channels_last"] is False


def test_streamed_batches_travel_as_uint8_pinned_for_a_gpu_and_are_standardised_on_the_device(
    folder,
):
    data = I.images(path=str(folder), loader="stream", num_workers=1)
    assert L._loader(data, "val", torch.device("cuda")).pin_memory  # built, never iterated here
    assert not L._loader(data, "val", torch.device("cpu")).pin_memory
    loader = L._loader(data, "val", torch.device("cpu"))
    loader.batch_sampler.batches = [[0, 1, 2, 3]]
    (pixels, _) = list(loader)[0]  # what a worker hands over: the undecoded uint8 pixels
    assert pixels.dtype == torch.uint8
    x, _ = next(L.split_batches(data, "val", 4))
    mean, std = data.norm
    assert torch.allclose(x, (pixels.float() / 255.0 - mean) / std)
