"""trainer.replicas=K as users run it: K seeds in one process, each recorded as the MLflow run its
plain `seed=s` run records (params, per-epoch metrics, checkpoint, test metrics), tagged with
one replica_group; what cannot batch trains one seed after another and says why; a diverging seed
is FAILED while the others finish; kill -9 mid-group and a re-run resumes every seed's run."""

from __future__ import annotations

import logging
import shutil
import signal
import time

import pytest
from conftest import (
    FAST,
    NO_MODEL,
    compose_cfg,
    finish_cli,
    mlflow_runs,
    run_cli,
    start_cli,
    wait_for_line,
)
from mlflow import MlflowClient

from tunelab.config import ConfigError
from tunelab.run.api import run
from tunelab.run.context import RunContext

ARGS = [*FAST, "data.noise=2.5", "trainer.max_epochs=4", "optimizer.lr=0.003"]
VOLATILE = ("perf/", "system/")


def cfg(*overrides: str):
    return compose_cfg(*ARGS, *overrides)


def history(client: MlflowClient, run_id: str) -> dict[str, list[float]]:
    keys = client.get_run(run_id).data.metrics
    return {
        k: [m.value for m in sorted(client.get_metric_history(run_id, k), key=lambda m: m.step)]
        for k in keys
        if not k.startswith(VOLATILE)
    }


def by_seed(runs: list) -> dict[int, object]:
    return {int(r.data.params["seed"]): r for r in runs}


def test_each_replica_is_recorded_as_its_plain_seed_run(in_tmp):
    group = run(cfg("trainer.replicas=3", "seed=5"), RunContext(log_model=False))
    assert [r.status for r in group.replicas] == ["FINISHED"] * 3
    assert group.metrics["val/acc"] == pytest.approx(
        sum(r.metrics["val/acc"] for r in group.replicas) / 3
    )
    assert "val/acc_std" in group.metrics
    grouped = by_seed(mlflow_runs(in_tmp))
    assert sorted(grouped) == [5, 6, 7]
    assert len({r.data.tags["replica_group"] for r in grouped.values()}) == 1
    assert {r.data.tags["replica"] for r in grouped.values()} == {"1/3", "2/3", "3/3"}

    plain_dir = in_tmp / "plain"
    plain_dir.mkdir()
    client = MlflowClient(f"sqlite:///{in_tmp}/mlflow.db")
    for seed in (5, 6, 7):
        tracking = f"tracking.tracking_uri=sqlite:///{plain_dir}/mlflow.db"
        one = run(cfg(f"seed={seed}", tracking, f"trainer.checkpoint_dir={plain_dir}/ck"),
                  RunContext(log_model=False))  # fmt: skip
        replica = grouped[seed]
        want = MlflowClient(f"sqlite:///{plain_dir}/mlflow.db").get_run(one.run_id)
        skip = {"tracking.tracking_uri", "trainer.checkpoint_dir"}
        assert {k: v for k, v in replica.data.params.items() if k not in skip} == {
            k: v for k, v in want.data.params.items() if k not in skip
        }
        got = history(client, replica.info.run_id)
        expected = history(MlflowClient(f"sqlite:///{plain_dir}/mlflow.db"), one.run_id)
        assert got.keys() == expected.keys()
        for key in expected:
            assert got[key] == pytest.approx(expected[key], abs=1e-4, rel=0), key
        artifacts = {a.path for a in client.list_artifacts(replica.info.run_id)}
        assert {"config.yaml", "history.json", "checkpoints"} <= artifacts
        assert replica.info.status == "FINISHED"


def test_what_cannot_batch_trains_one_seed_after_another_and_says_why(in_tmp, caplog):
    group = run(cfg("trainer.replicas=[3,9]", "model.dropout=0.2"), RunContext(log_model=False))
    assert "one after another" in caplog.text and "dropout p=0.2" in caplog.text
    runs = by_seed(mlflow_runs(in_tmp))
    assert sorted(runs) == [3, 9] and [r.status for r in group.replicas] == ["FINISHED"] * 2
    assert len({r.data.tags["replica_group"] for r in runs.values()}) == 1


def test_convolutions_on_a_cpu_train_one_after_another_unless_asked_to_batch(in_tmp, caplog):
    caplog.set_level(logging.INFO, logger="tunelab")
    cnn = ["model=cnn", "model.width=8", "trainer.replicas=2", "trainer.max_epochs=1"]
    run(cfg(*cnn), RunContext(log_model=False))
    assert "slower than one run after another" in caplog.text
    caplog.clear()
    run(cfg(*cnn, "trainer.batch_replicas=true"), RunContext(log_model=False))
    assert "train as one batched computation" in caplog.text
    assert len(mlflow_runs(in_tmp)) == 4


def test_a_diverging_seed_fails_with_its_reason_and_the_others_finish(in_tmp):
    """lr=1e6 with plain SGD and no clipping: every seed diverges; at lr=50, some do."""
    group = run(cfg("optimizer=sgd", "optimizer.lr=60", "trainer.replicas=6", "data.noise=0.0"),
                RunContext(log_model=False))  # fmt: skip
    failed = [r for r in group.replicas if r.status == "FAILED"]
    finished = [r for r in group.replicas if r.status == "FINISHED"]
    assert failed and finished, [r.reason for r in group.replicas]
    runs = {r.info.run_id: r for r in mlflow_runs(in_tmp)}
    for r in failed:
        assert "non-finite training loss" in r.reason
        assert runs[r.run_id].info.status == "FAILED"
        assert runs[r.run_id].data.tags["failure_reason"] == "nonfinite_loss"
    assert all(runs[r.run_id].info.status == "FINISHED" for r in finished)


@pytest.mark.parametrize(
    ("value", "message"),
    [("0", "a count of seeds >= 1"), ("[1,1]", "distinct integer seeds"), ("[]", "non-empty")],
)
def test_a_bad_replicas_value_is_refused_before_anything_runs(in_tmp, value, message):
    with pytest.raises(ConfigError, match=f"trainer.replicas.*{message}"):
        run(cfg(f"trainer.replicas={value}"))
    assert not (in_tmp / "mlflow.db").exists()


@pytest.mark.slow
def test_kill_9_mid_group_then_rerun_records_what_the_uninterrupted_group_records(
    tmp_path, mlflow_schema
):
    args = [*ARGS, "data.num_samples=4096", "trainer.max_epochs=12", "trainer.batch_size=32",
            "trainer.replicas=3", "trainer.num_threads=1"]  # fmt: skip
    ref_dir, crash_dir = tmp_path / "reference", tmp_path / "crash"
    for d in (ref_dir, crash_dir):
        d.mkdir()
        shutil.copy(mlflow_schema, d / "mlflow.db")
    victim = start_cli(*args, cwd=crash_dir)
    wait_for_line(victim, "epoch 4/12")
    deadline = time.monotonic() + 30
    while not list(crash_dir.glob("checkpoints/*/group.pt")) and time.monotonic() < deadline:
        time.sleep(0.01)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=60)
    dead = by_seed(mlflow_runs(crash_dir))
    assert {r.info.status for r in dead.values()} == {"RUNNING"}

    out = finish_cli(start_cli(*args, cwd=crash_dir))
    assert "resuming from" in out, out[-3000:]
    reference = start_cli(*args, cwd=ref_dir)
    assert finish_cli(reference) and reference.returncode == 0
    ref, resumed = by_seed(mlflow_runs(ref_dir)), by_seed(mlflow_runs(crash_dir))
    assert sorted(resumed) == [0, 1, 2]
    for seed, run_ in resumed.items():
        assert run_.info.run_id == dead[seed].info.run_id  # the same runs, continued
        assert run_.info.status == "FINISHED" and run_.data.tags["resumed"] == "true"
        want = history(MlflowClient(f"sqlite:///{ref_dir}/mlflow.db"), ref[seed].info.run_id)
        got = history(MlflowClient(f"sqlite:///{crash_dir}/mlflow.db"), run_.info.run_id)
        assert got == want, seed  # bit-identical: no epoch twice, none missing, same values
        assert len(got["val/acc"]) == 12


def test_a_sweeps_seeds_train_together_one_group_per_trial(workdir):
    proc = run_cli("-m", *ARGS, "search=random", "hydra.sweeper.n_trials=2",
                   "hydra.sweeper.seeds=[0,1,2]", "hydra.sweeper.figures=false",
                   cwd=workdir, env=NO_MODEL)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "train as one batched computation" in proc.stdout + proc.stderr
    runs = mlflow_runs(workdir)
    trials = {r.info.run_id: r for r in runs if r.data.tags.get("role") == "trial"}
    seeds = [r for r in runs if r.data.tags.get("role") == "seed"]
    assert len(trials) == 2 and len(seeds) == 6
    groups: dict[str, list] = {}
    for r in seeds:
        groups.setdefault(r.data.tags["replica_group"], []).append(r)
    assert len(groups) == 2
    for members in groups.values():
        (parent,) = {r.data.tags["mlflow.parentRunId"] for r in members}
        assert sorted(r.data.tags["replicate"] for r in members) == ["0", "1", "2"]
        assert sorted(int(r.data.params["seed"]) for r in members) == [0, 1, 2]
        mean = sum(r.data.metrics["val/acc"] for r in members) / 3
        assert trials[parent].data.metrics["val/acc"] == pytest.approx(mean)


def test_a_pruned_group_ends_every_seed_run_killed_as_pruned(in_tmp):
    """The first seed reports to the pruner (as the first replicate does in a sweep); pruned at
    its second epoch, the whole group stops and every seed's run records it."""
    from tunelab.run.loop import Pruned

    def reporter(epoch: int, value: float) -> None:
        if epoch == 2:
            raise Pruned(f"pruned at epoch {epoch}")

    with pytest.raises(Pruned):
        run(cfg("trainer.replicas=3"), RunContext(log_model=False, reporter=reporter))
    runs = mlflow_runs(in_tmp)
    assert len(runs) == 3
    assert {r.info.status for r in runs} == {"KILLED"}
    assert {r.data.tags.get("pruned") for r in runs} == {"true"}


def test_a_group_trained_one_seed_after_another_keeps_its_finished_seeds_after_a_crash(
    in_tmp, monkeypatch
):
    """The third seed's run crashes (a full disk, say); the same command again keeps the two
    finished seeds' runs and trains only the third."""
    from tunelab.run import api

    plain_train, calls = api.train, []

    def crashing_train(cfg_, ctx, tracker=None):
        calls.append(int(cfg_.seed))
        if int(cfg_.seed) == 2 and calls.count(2) == 1:
            raise OSError("No space left on device")
        return plain_train(cfg_, ctx, tracker)

    monkeypatch.setattr(api, "train", crashing_train)
    args = ("trainer.replicas=3", "model.dropout=0.2")
    with pytest.raises(OSError):
        run(cfg(*args), RunContext(log_model=False))
    group = run(cfg(*args), RunContext(log_model=False))
    assert calls == [0, 1, 2, 2]
    assert [r.status for r in group.replicas] == ["FINISHED"] * 3
    runs = by_seed(mlflow_runs(in_tmp))
    assert sorted(runs) == [0, 1, 2]
    assert [runs[s].info.run_id for s in (0, 1, 2)] == [r.run_id for r in group.replicas]
    assert len({r.data.tags["replica_group"] for r in runs.values()}) == 1


@pytest.mark.slow
def test_a_seed_audit_confirms_its_seeds_as_one_group(workdir):
    proc = run_cli("-m", "study=seed_audit", *ARGS, "hydra.sweeper.seeds=3",
                   "hydra.sweep.dir=audit", cwd=workdir, env=NO_MODEL)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "train as one batched computation" in proc.stdout + proc.stderr
    confirms = [
        r for r in mlflow_runs(workdir, "seed_audit") if r.data.tags.get("role") == "confirm"
    ]
    assert sorted(int(r.data.params["seed"]) for r in confirms) == [0, 1, 2]
    assert len({r.data.tags["replica_group"] for r in confirms}) == 1
    assert {r.info.status for r in confirms} == {"FINISHED"}
    assert list(workdir.glob("audit/**/summary.json"))
