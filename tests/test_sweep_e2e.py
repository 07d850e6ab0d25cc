"""`python src/train.py -m search=…` with the real training entry on the synthetic data set."""

import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from omegaconf import OmegaConf
from optuna.trial import TrialState

from tunelab.tuning.study_storage import make_storage

REPO = Path(__file__).resolve().parents[1]
TRAIN = str(REPO / "src" / "train.py")
TINY = ["data=synthetic", "trainer.max_epochs=2", "hydra.sweeper.figures=false"]


def _train(cwd: Path, *args: str, timeout: int = 400) -> str:
    proc = subprocess.run(
        [sys.executable, TRAIN, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def _study(cwd: Path, name: str) -> optuna.Study:
    return optuna.load_study(
        study_name=name, storage=make_storage(f"journal:{cwd / 'optuna.journal'}")
    )


@pytest.mark.slow
def test_tpe_sweep_records_mlflow_and_best_overrides_reproduce(tmp_path):
    _train(tmp_path, "-m", "search=tpe", *TINY, "hydra.sweeper.n_trials=3",
           "hydra.sweep.dir=multirun", "hydra.sweeper.study_name=e2e")  # fmt: skip
    study = _study(tmp_path, "e2e")
    assert len(study.trials) == 3
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tunelab")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    roles: dict[str, list] = {}
    for r in runs:
        roles.setdefault(r.data.tags.get("role"), []).append(r)
    (parent,) = roles["sweep"]
    trial_ids = {r.info.run_id for r in roles["trial"]}
    assert len(trial_ids) == 3 and len(roles["seed"]) == 3
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in roles["trial"])
    assert all(r.data.tags["mlflow.parentRunId"] in trial_ids for r in roles["seed"])
    assert all(r.data.tags["sweep"] == "e2e" for r in roles["seed"] + roles["trial"])
    note = parent.data.tags["mlflow.note.content"]  # the parent's summary, shown in the UI
    assert note.startswith(
        f"Best: val/acc {study.best_value:.4g} at trial {study.best_trial.number}"
    )
    assert "trials.csv" in note and "best_overrides.txt" in note
    # the searched keys on every trial, and each seed run's values in its description
    assert {r.data.tags["swept"] for r in roles["trial"]} == {"optimizer.lr,optimizer.weight_decay"}
    for r in roles["seed"]:
        note = r.data.tags["mlflow.note.content"]
        assert note.startswith("swept: optimizer.lr=") and "optimizer.weight_decay=" in note, note
    # the winner, re-run as a single job from the overrides file
    best = study.best_trial
    overrides = (tmp_path / "multirun" / "best_overrides.txt").read_text().split()
    _train(tmp_path, *overrides, "tracking=none", "hydra.run.dir=rerun", "trainer.resume=never")
    metrics = json.loads((tmp_path / "rerun" / "metrics.json").read_text())
    assert metrics["val/acc"] == pytest.approx(best.value)


@pytest.mark.slow
def test_diverging_trial_fails_cleanly_in_joblib_workers(tmp_path):
    out = _train(
        tmp_path, "-m", "search=grid", *TINY, "tracking=none", "optimizer=sgd",
        "optimizer.lr=choice(1.0e-2, 1.0e30)", "optimizer.weight_decay=0.0", "scheduler=constant",
        "hydra/launcher=joblib", "hydra.sweeper.n_jobs=2", "hydra.sweeper.study_name=div",
    )  # fmt: skip
    trials = {t.params["optimizer.lr"]: t for t in _study(tmp_path, "div").trials}
    assert trials[1e30].state == TrialState.FAIL, out[-2000:]
    assert trials[1e30].user_attrs["fail_reason"].startswith("diverged")
    assert trials[1e-2].state == TrialState.COMPLETE


PRESETS = sorted(p.stem for p in (REPO / "conf" / "search").glob("*.yaml"))


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_composes_and_searches_existing_keys(preset):
    from hydra import compose, initialize_config_dir

    from tunelab.config.space import build_space

    with initialize_config_dir(str(REPO / "conf"), job_name="train", version_base="1.3"):
        cfg = compose("train", overrides=[f"search={preset}"], return_hydra_config=True)
        sweeper = cfg.hydra.sweeper
        assert sweeper._target_.endswith("TunelabSweeper")
        conditional = OmegaConf.to_container(sweeper.conditional)
        space, _ = build_space(dict(sweeper.params), [], conditional)
        for p in space:
            if p.name in cfg.hydra.runtime.choices:  # a config group: every choice composes
                for choice in p.dist.choices:
                    compose("train", overrides=[f"search={preset}", f"{p.name}={choice}"])
                continue
            branch = [f"{p.condition[0]}={p.condition[1]}"] if p.condition else []
            job = compose("train", overrides=[f"search={preset}", *branch]) if branch else cfg
            assert OmegaConf.select(job, p.name) is not None, f"{preset}: no key {p.name}"


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["basic", "joblib"])
def test_a_pruned_trial_is_pruned_in_the_study_and_tagged_in_mlflow(tmp_path, launcher):
    """A learning rate that learns nothing, tried after two that learn (grid order, seed 5):
    median pruning stops it, with either launcher; its study trial is PRUNED and its run KILLED
    with pruned=true and the epoch."""
    jobs = ["hydra/launcher=joblib", "hydra.sweeper.n_jobs=2"] if launcher == "joblib" else []
    out = _train(
        tmp_path, "-m", "search=grid", *TINY, "trainer.max_epochs=4", "optimizer=adam",
        "optimizer.lr=choice(3.0e-3, 2.0e-3, 1.0e-6)", "optimizer.weight_decay=0.0",
        "scheduler=constant", "hydra.sweeper.sampler.seed=5", "hydra.sweeper.pruner.name=median",
        "++hydra.sweeper.pruner.kwargs.n_startup_trials=1", "hydra.sweeper.study_name=pr",
        "tracking.log_model=false", *jobs,
    )  # fmt: skip
    trials = {t.params["optimizer.lr"]: t for t in _study(tmp_path, "pr").trials}
    assert trials[1e-6].number == 2 and trials[1e-6].state == TrialState.PRUNED, out[-3000:]
    # the other two may prune each other (median of one finished trial), never fail
    pruned = {lr for lr, t in trials.items() if t.state == TrialState.PRUNED}
    assert {t.state for t in trials.values()} <= {TrialState.COMPLETE, TrialState.PRUNED}
    assert f"{3 - len(pruned)} complete, {len(pruned)} pruned, 0 failed" in out
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tunelab")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    tagged = [r for r in runs if r.data.tags.get("pruned") == "true"]
    assert {float(r.data.params["optimizer.lr"]) for r in tagged} == pruned, out[-3000:]
    assert all(r.info.status == "KILLED" for r in tagged)
    seeds = [r for r in tagged if r.data.tags.get("role") == "seed"]  # the runs that trained
    assert len(seeds) == len(pruned), [r.data.tags.get("role") for r in tagged]
    assert {int(r.data.tags["pruned_at_epoch"]) for r in seeds} <= {1, 2, 3}  # before the last
    others = [(r.data.tags.get("role"), r.info.status) for r in runs if r not in tagged]
    assert all(status == "FINISHED" for _, status in others), others
