"""A training loop of your own through `tunelab.tracked_run` (examples/own_loop/train.py): its sweep
prunes and records every trial as tunelab's own runs are recorded; a sweep killed with kill -9
finishes its budget exactly when re-run; a run killed mid-training resumes to the record an
uninterrupted run writes; a non-finite loss fails the run; bad config is refused first."""

from __future__ import annotations

import os
import runpy
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch
from conftest import QUICK_ENV, ROOT, finish_cli, mlflow_runs, start_cli, wait_for_line
from hydra import compose, initialize_config_dir
from mlflow import MlflowClient
from test_sweep_stop import _terminal_like

from tunelab.config import ConfigError
from tunelab.run.context import RunContext
from tunelab.run.loop import DivergedError
from tunelab.tags import (
    DATA_DIGEST,
    ENTRY_POINT,
    FAILURE_REASON,
    OPTUNA_STATE,
    PARENT_RUN_ID,
    ROLE,
    Role,
)
from tunelab.tuning.study_storage import make_storage

EXAMPLE = ROOT / "examples" / "own_loop" / "train.py"
EXPERIMENT = "own_loop"
# README's command, as typed (the median pruner starts after a third of a small budget:
# tuning/settings.py), and a fixed sampler seed: a drawn one leaves a few percent of sweeps
# whose every trial beats the median
DOCUMENTED = ["-m", "search=random", "hydra.sweeper.n_trials=6", "hydra.sweeper.pruner.name=median"]
SWEEP = [*DOCUMENTED, "hydra.sweeper.sampler.seed=0"]


def example_config(workdir: Path, *overrides: str):
    """The example's composed config, recording into workdir."""
    from tunelab.own_loop import tracked_run  # noqa: F401 (makes ${tunelab_conf:} known)

    with initialize_config_dir(str(EXAMPLE.parent / "conf"), version_base="1.3"):
        return compose(
            "train",
            [
                f"tracking.tracking_uri=sqlite:///{workdir}/mlflow.db",
                f"trainer.checkpoint_dir={workdir}/checkpoints",
                *overrides,
            ],
        )


def example_module() -> dict:
    """The example's functions (its data, model and evaluation), without running it."""
    return runpy.run_path(str(EXAMPLE), run_name="own_loop_example")


def study_trials(workdir: Path) -> list[optuna.trial.FrozenTrial]:
    storage = make_storage(f"journal:{workdir / 'optuna.journal'}")
    (summary,) = optuna.get_all_study_summaries(storage)
    return optuna.load_study(study_name=summary.study_name, storage=storage).get_trials()


@pytest.mark.slow
def test_the_example_sweep_prunes_and_records_every_trial_as_tunelab_runs_are(workdir):
    readme = (ROOT / "README.md").read_text()
    assert f"python examples/own_loop/train.py {' '.join(DOCUMENTED)}" in readme
    out = finish_cli(start_cli(*SWEEP, cwd=workdir, script=EXAMPLE), timeout=600)
    assert "study own_loop-random-" in out, out[-3000:]
    states = [t.state.name for t in study_trials(workdir)]
    assert len(states) == 6 and set(states) == {"COMPLETE", "PRUNED"}, states
    runs = mlflow_runs(workdir, EXPERIMENT)
    by_role = {role: [r for r in runs if r.data.tags.get(ROLE) == role] for role in Role.ALL}
    (parent,) = by_role[Role.SWEEP]
    trials, seeds = by_role[Role.TRIAL], by_role[Role.SEED]
    assert len(trials) == 6 and len(seeds) == 6, [r.info.run_name for r in runs]
    assert {t.data.tags[PARENT_RUN_ID] for t in trials} == {parent.info.run_id}
    trial_of = {t.info.run_id: t for t in trials}
    for seed in seeds:
        trial = trial_of[seed.data.tags[PARENT_RUN_ID]]
        assert seed.data.tags[DATA_DIGEST] and seed.data.tags["objective"] == "val/acc"
        assert seed.data.params["optimizer.lr"] == trial.data.params["optimizer.lr"]
        if trial.data.tags[OPTUNA_STATE] == "PRUNED":
            assert seed.info.status == "KILLED" and seed.data.tags["pruned"] == "true"
        else:
            assert seed.info.status == "FINISHED", seed.data.tags
            assert seed.data.metrics["best/val/acc"] == trial.data.metrics["val/acc"]
            assert "test/acc" in seed.data.metrics
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"]


def test_the_median_pruner_starts_after_a_third_of_a_small_budget():
    """Optuna's n_startup_trials=5 would leave a 6-trial sweep one trial to prune."""
    from tunelab.tuning.settings import sweep_settings

    def startup(n_trials: int, name: str = "median", **kwargs: int) -> dict:
        pruner = {"name": name, "kwargs": kwargs}
        return sweep_settings({"n_trials": n_trials, "pruner": pruner}).pruner.kwargs

    assert startup(6) == {"n_startup_trials": 2} and startup(2) == {"n_startup_trials": 1}
    assert startup(30) == startup(15) == {"n_startup_trials": 5}  # Optuna's default
    assert startup(12, "percentile", percentile=25) == {"percentile": 25, "n_startup_trials": 4}
    assert startup(6, n_startup_trials=1) == {"n_startup_trials": 1}  # a setting is kept
    assert startup(6, "hyperband") == {}


@pytest.mark.slow
def test_a_sweep_killed_with_sigkill_mid_trial_finishes_its_budget_exactly_when_rerun(workdir):
    sweep = start_cli(*SWEEP, cwd=workdir, script=EXAMPLE, start_new_session=True)
    wait_for_line(sweep, "job #2")
    wait_for_line(sweep, "epoch 1/8")  # a trial is training
    os.killpg(sweep.pid, signal.SIGKILL)
    sweep.wait(timeout=60)

    out = finish_cli(start_cli(*SWEEP, cwd=workdir, script=EXAMPLE), timeout=600)
    assert "left RUNNING by a dead sweep" in out, out[-3000:]
    states = [t.state.name for t in study_trials(workdir)]
    assert sum(s in ("COMPLETE", "PRUNED") for s in states) == 6, states
    assert not [
        r.info.run_name for r in mlflow_runs(workdir, EXPERIMENT) if r.info.status == "RUNNING"
    ]


KILLING_RUN = """
import os, runpy, signal, sys
import tunelab.own_loop as own

log_epoch = own.TrackedRun.log_epoch


def log_then_die(self, epoch, metrics):
    log_epoch(self, epoch, metrics)
    if epoch == {kill_at}:
        os.kill(os.getpid(), signal.SIGKILL)


own.TrackedRun.log_epoch = log_then_die
sys.argv = [{example!r}, *sys.argv[1:]]
runpy.run_path({example!r}, run_name="__main__")
"""


def stores(tmp_path: Path, schema: Path, *names: str) -> list[Path]:
    """Working directories, each with its own copy of the migrated MLflow store."""
    dirs = [tmp_path / n for n in names]
    for d in dirs:
        d.mkdir()
        shutil.copy(schema, d / "mlflow.db")
    return dirs


def metric_histories(workdir: Path) -> tuple[str, dict[str, list[tuple[int, float]]]]:
    (run,) = mlflow_runs(workdir, EXPERIMENT)
    assert run.info.status == "FINISHED", run.data.tags
    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    names = ("train/loss", "val/loss", "val/acc")
    return run.info.run_id, {
        m: sorted((h.step, h.value) for h in client.get_metric_history(run.info.run_id, m))
        for m in names
    }


@pytest.mark.slow
def test_a_run_killed_mid_training_resumes_to_the_record_an_uninterrupted_run_writes(
    tmp_path, mlflow_schema
):
    args = ["trainer.max_epochs=6", "trainer.num_threads=1", "optimizer.lr=0.01"]
    whole, killed = stores(tmp_path, mlflow_schema, "whole", "killed")
    script = tmp_path / "kill_at_3.py"
    script.write_text(KILLING_RUN.format(kill_at=3, example=str(EXAMPLE)))

    finish_cli(start_cli(*args, cwd=whole, script=EXAMPLE))
    dead = start_cli(*args, cwd=killed, script=script)
    finish_cli(dead)
    assert dead.returncode == -signal.SIGKILL
    out = finish_cli(start_cli(*args, cwd=killed, script=EXAMPLE))
    assert "resuming from" in out, out[-3000:]

    _, expected = metric_histories(whole)
    run_id, resumed = metric_histories(killed)
    assert resumed == expected  # bit-identical on CPU: every epoch of every metric
    assert [s for s, _ in resumed["val/acc"]] == [1, 2, 3, 4, 5, 6]
    tags = MlflowClient(f"sqlite:///{killed}/mlflow.db").get_run(run_id).data.tags
    assert tags["resumed"] == "true"  # the same MLflow run continued
    best = [
        torch.load(next(d.glob("checkpoints/*/best.pt")), weights_only=True)["model"]
        for d in (whole, killed)
    ]
    assert all(torch.equal(best[0][k], best[1][k]) for k in best[0])


def test_a_non_finite_loss_ends_the_run_failed_and_a_rerun_starts_over(workdir):
    from tunelab import tracked_run

    example = example_module()
    cfg = example_config(workdir, "trainer.max_epochs=3")
    data = example["load_data"]()

    def train(losses: list[float]) -> None:
        with tracked_run(cfg, data=data, ctx=RunContext(log_model=False)) as run:
            model = example["make_model"](8)
            run.resume(model, torch.optim.SGD(model.parameters(), lr=0.1))
            for epoch, loss in zip(run.epochs(), losses, strict=False):
                run.log_epoch(epoch, {"train/loss": loss, "val/acc": 0.5})

    with pytest.raises(DivergedError, match="epoch 2"):
        train([1.0, float("nan")])
    (run,) = mlflow_runs(workdir, EXPERIMENT)
    assert run.info.status == "FAILED"
    assert run.data.tags[FAILURE_REASON] == "nonfinite_loss"
    assert run.data.tags["diverged_at_epoch"] == "2"
    train([1.0, 0.9, 0.8])  # a diverged run is a result: the same config trains a new run
    statuses = sorted(r.info.status for r in mlflow_runs(workdir, EXPERIMENT))
    assert statuses == ["FAILED", "FINISHED"]


def test_an_own_loop_run_gets_the_curve_diagnosis_tunelab_runs_get(workdir):
    """Val loss rising while train loss falls: the run's tags say `diagnosis=overfitting,…`,
    since the epoch diagnose_curves names, with its advice."""
    from tunelab import tracked_run
    from tunelab.diagnostics.curves import diagnose_curves

    example = example_module()
    cfg = example_config(workdir, "trainer.max_epochs=12")
    val = [1.0, 0.8, 0.6, 0.5, 0.45, 0.44, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    history = {"train/loss": [1 / e for e in range(1, 13)], "val/loss": val, "val/acc": [0.5] * 12}
    with tracked_run(cfg, data=example["load_data"](), ctx=RunContext(log_model=False)) as run:
        model = example["make_model"](8)
        run.resume(model, torch.optim.SGD(model.parameters(), lr=0.1))
        for epoch in run.epochs():
            run.log_epoch(epoch, {k: v[epoch - 1] for k, v in history.items()})
    findings = diagnose_curves(history, optimizer="sgd")  # overfitting, then plateaued
    (recorded,) = mlflow_runs(workdir, EXPERIMENT)
    tags = recorded.data.tags
    assert findings[0].code == "overfitting", findings
    assert tags["diagnosis"] == ",".join(f.code for f in findings), tags
    assert tags["diagnosis.overfitting.since_epoch"] == str(findings[0].since_epoch)
    assert tags["diagnosis.recommendation"] == findings[0].recommendation


def test_the_config_tracked_run_reads_is_checked_first_every_problem_at_once(tmp_path):
    from tunelab import tracked_run

    cfg = example_config(
        tmp_path,
        "objective.direction=up",
        "trainer.resume=sometimes",
        "trainer.replicas=3",
        "seed=-1",
    )
    with pytest.raises(ConfigError) as err, tracked_run(cfg, data=None, ctx=RunContext()):
        pass
    for key in ("objective.direction", "trainer.resume", "trainer.replicas", "seed"):
        assert key in str(err.value)
    assert list(tmp_path.iterdir()) == []  # no store, checkpoint directory or lock


def test_tracked_run_is_tunelab_public_api_and_import_tunelab_stays_light():
    code = "import sys, tunelab; assert 'torch' not in sys.modules; print(tunelab.tracked_run)"
    env = {**os.environ, **QUICK_ENV}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert "tracked_run" in out.stdout


LIGHTNING = ROOT / "examples" / "lightning" / "train.py"


@pytest.mark.slow
def test_a_lightning_module_tuned_through_the_callback_records_what_the_plain_loop_records(
    tmp_path, mlflow_schema
):
    args = ["trainer.max_epochs=4", "trainer.num_threads=1"]
    plain, lightning = stores(tmp_path, mlflow_schema, "plain", "lightning")
    finish_cli(start_cli(*args, cwd=plain, script=EXAMPLE))
    out = finish_cli(start_cli(*args, cwd=lightning, script=LIGHTNING))
    _, expected = metric_histories(plain)
    _, recorded = metric_histories(lightning)
    assert [s for s, _ in recorded["val/acc"]] == [1, 2, 3, 4], out[-3000:]
    assert recorded["val/acc"] == expected["val/acc"]  # the same weights, epoch by epoch
    assert recorded["val/loss"] == expected["val/loss"]
    for (step, value), (_, want) in zip(
        recorded["train/loss"], expected["train/loss"], strict=True
    ):
        assert value == pytest.approx(want, rel=1e-6), step  # Lightning averages in float32


@pytest.mark.slow
def test_a_lightning_run_killed_mid_training_resumes_to_the_uninterrupted_record(
    tmp_path, mlflow_schema
):
    args = ["trainer.max_epochs=5", "trainer.num_threads=1"]
    whole, killed = stores(tmp_path, mlflow_schema, "whole", "killed")
    script = tmp_path / "kill_at_3.py"
    script.write_text(KILLING_RUN.format(kill_at=3, example=str(LIGHTNING)))
    finish_cli(start_cli(*args, cwd=whole, script=LIGHTNING))
    finish_cli(start_cli(*args, cwd=killed, script=script))
    out = finish_cli(start_cli(*args, cwd=killed, script=LIGHTNING))
    assert "resuming from" in out, out[-3000:]
    assert metric_histories(killed)[1] == metric_histories(whole)[1]


@pytest.mark.slow
@pytest.mark.parametrize("script", [EXAMPLE, LIGHTNING], ids=["own_loop", "lightning"])
def test_ctrl_c_ends_the_run_killed_under_lightning_as_under_the_own_loop(script, workdir):
    """A terminal's Ctrl-C (SIGINT to the process group) mid-training: the run KILLED,
    `interrupted`, and the process ends by the KeyboardInterrupt (Hydra's exit status 1), not by
    Lightning's `sys.exit(1)`."""
    args = ["trainer.max_epochs=100000", "trainer.num_threads=1"]
    proc = start_cli(*args, cwd=workdir, script=script, preexec_fn=_terminal_like)
    wait_for_line(proc, "epoch 2/100000")
    os.killpg(proc.pid, signal.SIGINT)
    out = finish_cli(proc, timeout=120)
    (run,) = mlflow_runs(workdir, EXPERIMENT)
    assert run.info.status == "KILLED", (run.data.tags, out[-3000:])
    assert run.data.tags[FAILURE_REASON] == "interrupted"
    assert proc.returncode == 1 and out.rstrip().endswith("KeyboardInterrupt"), out[-3000:]


def test_tunelab_lightning_without_lightning_says_how_to_install_it():
    code = "import sys; sys.modules['lightning'] = None; import tunelab.lightning"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode != 0
    assert 'pip install -e ".[lightning]"' in proc.stderr, proc.stderr[-2000:]


@pytest.mark.slow
def test_a_run_of_the_example_reproduces_identically_from_its_commit(tmp_path):
    from test_reproduce import env, git, make_repo, runs

    repo = make_repo(tmp_path / "repo")
    shutil.copytree(
        EXAMPLE.parent, repo / "examples" / "own_loop", ignore=shutil.ignore_patterns("__py*")
    )
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "own loop")
    work = repo.parent / "work"
    script = repo / "examples" / "own_loop" / "train.py"
    args = ["trainer.max_epochs=2", "trainer.num_threads=1"]
    proc = subprocess.run(
        [sys.executable, str(script), *args],
        cwd=work,
        env=env(repo),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = runs(work)
    assert run.data.tags[ENTRY_POINT] == "examples/own_loop/train.py"
    cmd = [sys.executable, "-m", "tunelab", "reproduce", run.info.run_id, "--repo", str(repo)]
    quiet = {"capture_output": True, "text": True, "timeout": 600, "stdin": subprocess.DEVNULL}
    refused = subprocess.run(cmd, cwd=work, env=env(repo), **quiet)  # the tag alone: not enough
    assert refused.returncode != 0, refused.stdout
    assert "--trust-script examples/own_loop/train.py" in refused.stderr + refused.stdout
    assert len(runs(work)) == 1  # refused before anything trained
    trusted = [*cmd, "--trust-script", "examples/own_loop/train.py"]
    ok = subprocess.run(trusted, cwd=work, env=env(repo), **quiet)
    assert ok.returncode == 0 and "identical" in ok.stdout, ok.stdout + ok.stderr


def test_reproduce_runs_only_a_python_file_the_recorded_commit_holds(tmp_path):
    from test_reproduce import git

    from tunelab.commands.reproduce import _committed_script

    (tmp_path / "train.py").write_text("print('hi')\n")
    (tmp_path / "notes.txt").write_text("x\n")
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-qm", "one")
    sha = git(tmp_path, "rev-parse", "HEAD")
    assert _committed_script(tmp_path, sha, "train.py")
    for planted in ("../train.py", str(tmp_path / "train.py"), "other.py", "notes.txt"):
        assert not _committed_script(tmp_path, sha, planted), planted
