"""Nothing runs that the user did not write; no run is left RUNNING by a dead process; a resumed
run carries no stale failure; a failing multirun job fails its parent."""

from __future__ import annotations

import pathlib
import pickle
import signal
import subprocess
import sys

import pytest
import torch
from conftest import (
    FAST,
    compose_cfg,
    finish_cli,
    mlflow_runs,
    run_cli,
    start_cli,
    wait_for_line,
)
from omegaconf import OmegaConf

from tunelab import build
from tunelab.config import ConfigError, validate
from tunelab.config.identity import config_key


class Bomb:
    """Unpickling this touches the sentinel file: the payload every test below must not run."""

    def __init__(self, sentinel: pathlib.Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self):
        return (pathlib.Path.touch, (self.sentinel,))


@pytest.fixture
def sentinel(tmp_path) -> pathlib.Path:
    return tmp_path / "PWNED"


def test_control_the_payloads_do_run_when_unpickled_unsafely(tmp_path, sentinel):
    """Without this, the refusals below would prove nothing."""
    torch.save({"x": Bomb(sentinel)}, tmp_path / "bomb.pt")
    torch.load(tmp_path / "bomb.pt", weights_only=False)
    assert sentinel.exists()
    sentinel.unlink()
    pickle.loads(pickle.dumps(Bomb(sentinel), protocol=2))
    assert sentinel.exists()


@pytest.mark.parametrize(
    "override",
    [
        "+data.evil={_target_:torch.load,f:bomb.pt,weights_only:false}",
        "data._target_=tunelab.run.checkpoint.torch.load",
        "+hydra.callbacks.evil={_target_:torch.load,f:bomb.pt,weights_only:false}",
        "+allowed_targets=[torch.load]",
    ],
)
def test_targets_cannot_be_set_from_the_command_line(tmp_path, sentinel, override):
    torch.save({"x": Bomb(sentinel)}, tmp_path / "bomb.pt")
    proc = run_cli(*FAST, override, cwd=tmp_path)
    assert proc.returncode != 0 and "cannot be set from the command line" in proc.stderr
    assert not sentinel.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bomb.pt"]  # nothing else was created


def test_a_config_file_with_a_foreign_or_nested_target_is_refused(tmp_path, sentinel):
    torch.save({"x": Bomb(sentinel)}, tmp_path / "bomb.pt")
    for node in (
        {"_target_": "torch.load", "f": str(tmp_path / "bomb.pt"), "weights_only": False},
        {
            "_target_": "tunelab.data.sources.synthetic",
            "evil": {"_target_": "torch.load", "f": str(tmp_path / "bomb.pt")},
        },  # fmt: skip
        {"_target_": "tunelab.data.sources.torch.load", "f": str(tmp_path / "bomb.pt")},
    ):
        cfg = compose_cfg(*FAST)
        cfg.data = node
        with pytest.raises(ConfigError, match="data.*_target_.*is not allowed"):
            validate(cfg)
        with pytest.raises(ValueError, match="is not allowed"):
            build.build_data(cfg.data)
    assert not sentinel.exists()


def test_a_crafted_cifar_batch_is_refused_not_run(tmp_path, sentinel):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (root / name).write_bytes(pickle.dumps(Bomb(sentinel), protocol=2))
    cfg = compose_cfg("data=cifar10", f"data.path={root}")
    with pytest.raises(ValueError, match="not a CIFAR-10 python batch.*refused"):
        build.build_data(cfg.data)
    assert not sentinel.exists()


def test_real_cifar_batches_still_load(tmp_path):
    import numpy as np

    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"batch_label": b"x", b"labels": rng.integers(0, 10, 20).tolist(),
                 b"data": rng.integers(0, 256, (20, 3072), dtype=np.uint8),
                 b"filenames": [b"a.png"] * 20}  # fmt: skip
        (root / name).write_bytes(pickle.dumps(batch, protocol=2))
    splits = build.build_data(compose_cfg("data=cifar10", f"data.path={root}").data)
    assert splits.input_shape == (3, 32, 32) and splits.sizes()["test"] == 20


USER_DATA = """
from tunelab.data.sources import synthetic

def make(**knobs):
    return synthetic(**knobs)
"""
USER_CONF = """# @package _global_
data:
  name: mine
  _target_: mydata.make
  num_samples: 128
allowed_targets: [mydata.make]
"""


def test_a_users_own_dataset_runs_through_a_config_file_and_allowed_targets(tmp_path):
    (tmp_path / "mydata.py").write_text(USER_DATA)
    (tmp_path / "my_conf" / "data").mkdir(parents=True)
    (tmp_path / "my_conf" / "data" / "mine.yaml").write_text(USER_CONF)
    args = [*FAST[1:], "tracking=none", "hydra.searchpath=[file://my_conf]", "data=mine"]
    proc = run_cli(*args, cwd=tmp_path, env={"PYTHONPATH": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    (tmp_path / "my_conf" / "data" / "mine.yaml").write_text(
        USER_CONF.replace("allowed_targets: [mydata.make]", "")
    )
    proc = run_cli(*args, "trainer.resume=never", cwd=tmp_path, env={"PYTHONPATH": str(tmp_path)})
    assert proc.returncode != 0 and "data._target_='mydata.make' is not allowed" in proc.stderr


DIES_WITH_A_RUN = """
import os, sys
from tunelab.tracking.mlflow_writer import MlflowWriter
writer = MlflowWriter(sys.argv[1], "orphans")
print(writer.create_run("orphan", {"role": "single"}), flush=True)
os._exit(9)  # like SIGKILL: no cleanup of any kind
"""


def test_a_run_whose_process_died_is_killed_by_the_next_tunelab_process(tmp_path):
    from mlflow import MlflowClient

    from tunelab.tracking.mlflow_writer import MlflowWriter

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    out = subprocess.run(
        [sys.executable, "-c", DIES_WITH_A_RUN, uri], capture_output=True, text=True, check=False
    )
    run_id = out.stdout.strip()
    assert MlflowClient(uri).get_run(run_id).info.status == "RUNNING"
    MlflowWriter(uri, "any experiment")  # any tunelab command opening the store
    run = MlflowClient(uri).get_run(run_id)
    assert run.info.status == "KILLED" and run.data.tags["failure_reason"] == "process_died"


@pytest.mark.slow
def test_a_corrupt_checkpoint_does_not_leave_the_killed_run_running(workdir):
    args = [*FAST, "trainer.max_epochs=40", "data.num_samples=4096", "trainer.num_threads=1"]
    first = start_cli(*args, cwd=workdir)
    wait_for_line(first, "epoch 3/40")
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=60)
    cfg = compose_cfg(*args)
    (workdir / "checkpoints" / config_key(cfg) / "last.pt").write_text("not a checkpoint")
    again = run_cli(*args, cwd=workdir)
    assert again.returncode != 0 and "not a tunelab checkpoint" in again.stderr
    (dead,) = mlflow_runs(workdir)
    assert dead.info.status == "KILLED" and dead.data.tags["failure_reason"] == "process_died"


@pytest.mark.slow
def test_a_failing_job_fails_its_multirun_parent(workdir):
    proc = run_cli("-m", *FAST, "optimizer=sgd", "optimizer.lr=1.0e6,0.01", cwd=workdir)
    assert proc.returncode != 0  # the diverged job fails the multirun
    runs = {r.data.tags.get("role"): r for r in mlflow_runs(workdir)}
    assert runs["multirun"].info.status == "FAILED"
    assert "optimizer.lr=1000000.0" in runs["multirun"].data.tags["failure_reason"]
    assert not [r for r in mlflow_runs(workdir) if r.info.status == "RUNNING"]


@pytest.mark.slow
def test_a_signal_stopped_run_that_resumes_ends_without_a_failure_reason(workdir):
    args = [*FAST, "trainer.max_epochs=30", "data.num_samples=4096", "trainer.num_threads=1"]
    first = start_cli(*args, cwd=workdir)
    wait_for_line(first, "epoch 2/30")
    first.send_signal(signal.SIGTERM)
    assert "is recorded KILLED" in finish_cli(first)
    (stopped,) = mlflow_runs(workdir)
    assert stopped.data.tags["failure_reason"] == "terminated"
    assert run_cli(*args, cwd=workdir).returncode == 0
    (resumed,) = mlflow_runs(workdir)
    assert resumed.info.status == "FINISHED" and "failure_reason" not in resumed.data.tags


def test_a_killed_log_model_leaves_one_model_after_the_rerun(workdir):
    """A model left half-logged (PENDING) is replaced, a complete one is not logged twice."""
    from mlflow import MlflowClient

    from tunelab.tracking.mlflow_tracker import MlflowTracker

    uri = f"sqlite:///{workdir}/mlflow.db"
    tracker = MlflowTracker(uri, "models")
    run_id = tracker.start("r", {})
    client = MlflowClient(uri)
    client.create_logged_model(tracker.experiment_id, source_run_id=run_id)  # killed mid-log
    net = torch.nn.Linear(3, 2)
    tracker.log_model(net, torch.zeros(1, 3).numpy())
    again = MlflowTracker(uri, "models")
    again.start("r", {}, run_id=run_id)
    again.log_model(net, torch.zeros(1, 3).numpy())
    models = client.search_logged_models([tracker.experiment_id])
    assert [str(m.status).rsplit(".", 1)[-1] for m in models] == ["READY"]


def test_messages_say_what_a_file_is_not(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    with pytest.raises(ConfigError, match="not an .npz archive"):
        validate(compose_cfg("data=npz", f"data.path={text}"), check_files=build.file_problems)
    from tunelab.run.checkpoint import CheckpointError, load_safe

    with pytest.raises(CheckpointError, match="not a tunelab checkpoint"):
        load_safe(text)


def test_the_refusal_lists_every_problem_at_once():
    cfg = compose_cfg("+optimizer.foo=1", "objective.metric=nosuch", "model.activation=nosuch")
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    text = str(err.value)
    for needle in ("optimizer.foo is not a setting", "objective.metric='nosuch'",
                   "model.activation='nosuch'"):  # fmt: skip
        assert needle in text
    assert OmegaConf.select(cfg, "optimizer.foo") == 1  # the config itself is left as it was


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["search=random", "hydra.sweeper.n_trials=0"], "hydra.sweeper.n_trials=0"),
        (["search=random", "hydra.sweeper.n_trials=-1"], "hydra.sweeper.n_trials=-1"),
        (["search=random", "hydra.sweeper.sampler.name=nosuch"], "hydra.sweeper.sampler.name"),
        (["search=random", "hydra.sweeper.pruner.name=nosuch"], "hydra.sweeper.pruner.name"),
        (["search=random", "hydra.sweeper.storage=ftp://x/y"], "hydra.sweeper.storage"),
        (["optimizer.lr=-1,0.01"], "optimizer.lr=-1"),
        (["hydra/sweeper=tunelab", "optimizer.lr=interval(-1, 0.1)"], "optimizer.lr=-1"),
        (["study=l2", "hydra.sweeper.seeds=0"], "hydra.sweeper.seeds"),
    ],
)
def test_a_bad_sweep_is_refused_before_anything_exists(tmp_path, args, needle):
    proc = run_cli("-m", *FAST, *args, cwd=tmp_path, timeout=120)
    assert proc.returncode != 0 and needle in proc.stderr, proc.stderr[-2000:]
    assert list(tmp_path.iterdir()) == []  # no multirun/, journal, mlflow.db, study
