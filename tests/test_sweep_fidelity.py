"""Data as a fidelity (`hydra.sweeper.fidelity=data`): successive-halving rungs that train on
nested, seeded fractions of the training split, each trial's fraction recorded, and the settings
refused before anything exists."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import FAST, run_cli
from omegaconf import OmegaConf
from optuna.trial import TrialState
from test_sweep_plugin import load, multirun, write_app

from tunelab.config.sweep_check import sweeper_problems
from tunelab.data.splits import make_splits, train_fraction

# the objective is a known function of lr; each job records the training fraction it was given
APP = """
import json, math, os
import hydra
from hydra.core.hydra_config import HydraConfig


def task(cfg):
    lr, fraction = float(cfg.optimizer.lr), float(cfg.trainer.get("train_fraction", 1.0))
    metrics = {"val/loss": (math.log10(lr) + 2.0) ** 2 + 0.1 / fraction, "fraction": fraction}
    with open(os.path.join(HydraConfig.get().runtime.output_dir, "metrics.json"), "w") as fh:
        json.dump(metrics, fh)
    return metrics["val/loss"]


main = hydra.main(config_path="conf", config_name="config", version_base="1.3")(task)

if __name__ == "__main__":
    main()
"""


@pytest.fixture
def app(tmp_path):
    return write_app(tmp_path, APP)


def test_training_fractions_are_nested_deterministic_and_leave_val_and_test_alone():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(300, 1, 8)).astype(np.float32), rng.integers(0, 3, 300)
    splits = make_splits(x, y, x[:50], y[:50], name="t", val_fraction=0.2, split_seed=0)
    n = len(splits.y_train)

    def rows(s):
        return {tuple(r.tolist()) for r in s.x_train[:, 0]}

    parts = [train_fraction(splits, f, seed=7) for f in (1 / 9, 1 / 3, 1.0)]
    assert [len(p.y_train) for p in parts] == [math.ceil(n / 9), math.ceil(n / 3), n]
    assert rows(parts[0]) < rows(parts[1]) < rows(parts[2])  # each rung's data holds the last's
    again = train_fraction(splits, 1 / 3, seed=7)
    assert rows(again) == rows(parts[1])  # the same seed, the same examples
    assert rows(train_fraction(splits, 1 / 3, seed=8)) != rows(parts[1])
    for p in parts:
        assert p.x_val is splits.x_val and p.x_test is splits.x_test
        assert p.num_classes == splits.num_classes and p.digest == splits.digest


def test_fidelity_settings_are_checked_with_every_problem_named(tmp_path):
    def problems(**sweeper) -> list[str]:
        conf = OmegaConf.create(
            {"hydra": {"sweeper": {"_target_": "hydra_plugins.tunelab_sweeper.x.TunelabSweeper"}}}
        )
        conf.hydra.sweeper.merge_with(sweeper)
        return [p for p in sweeper_problems(conf) if "fidelity" in p or "rungs" in p]

    ok = {"fidelity": "data", "pruner": {"name": "successive_halving", "kwargs": {}}}
    assert problems() == [] and problems(**ok) == []
    assert problems(fidelity="data", pruner={"name": "hyperband"}) == []
    (why,) = problems(fidelity="data", pruner={"name": "median"})
    assert "pruner.name=successive_halving" in why  # names the fix
    assert "hydra.sweeper.fidelity='budget'" in problems(fidelity="budget")[0]
    assert "data_rungs=1" in problems(**ok, data_rungs=1)[0]
    two = [{"metric": "val/acc", "direction": "maximize"}] * 2
    assert "one objective" in problems(**ok, objectives=two)[0]
    eta = {"name": "successive_halving", "kwargs": {"reduction_factor": 1.5}}
    assert "reduction_factor=1.5" in problems(fidelity="data", pruner=eta)[0]
    # from the command line: refused before the sweep directory, journal or store exist
    proc = run_cli(
        "-m", *FAST, "search=random", "hydra.sweeper.fidelity=data", cwd=tmp_path, timeout=120
    )
    assert proc.returncode != 0 and "hydra.sweeper.fidelity=data needs a pruner" in proc.stderr
    assert list(tmp_path.iterdir()) == []


def _fractions(sweep_dir: Path) -> list[float]:
    return [json.loads(p.read_text())["fraction"] for p in sweep_dir.glob("*/metrics.json")]


def test_successive_halving_on_data_rungs_prunes_on_a_fraction_and_records_it(app):
    multirun(
        app,
        "search=random",
        "hydra.sweeper.sampler.seed=0",
        "hydra.sweeper.n_trials=9",
        "hydra.sweeper.figures=false",
        "hydra.sweeper.study_name=f",
        "hydra.sweeper.pruner.name=successive_halving",
        "hydra.sweeper.fidelity=data",
    )
    study = load(app, "f")
    rungs = [1 / 9, 1 / 3, 1.0]
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert pruned and complete and len(pruned) + len(complete) == 9
    for t in complete:  # every rung ran; Optuna holds the rungs' values at steps 1 and 3
        assert t.user_attrs["data_fraction"] == 1.0 and set(t.intermediate_values) == {1, 3}
        assert t.value == pytest.approx((math.log10(t.params["optimizer.lr"]) + 2) ** 2 + 0.1)
    for t in pruned:  # stopped after a rung on part of the data
        fraction = t.user_attrs["data_fraction"]
        assert fraction in rungs[:2]
        assert max(t.intermediate_values) == round(fraction * 9)
    # the jobs trained on those fractions: one job per rung a trial reached
    reached = [rungs.index(t.user_attrs["data_fraction"]) + 1 for t in study.trials]
    ran = sorted(_fractions(app / "multirun"))
    want = sorted(f for n in reached for f in rungs[:n])
    assert ran == pytest.approx(want)


@pytest.mark.slow
def test_a_data_fidelity_sweep_runs_through_train_py_and_its_runs_record_the_fraction(tmp_path):
    proc = run_cli(
        "-m",
        *FAST,
        "search=random",
        "hydra.sweeper.n_trials=4",
        "hydra.sweeper.sampler.seed=0",
        "hydra.sweeper.figures=false",
        "hydra.sweeper.study_name=df",
        "hydra.sweeper.pruner.name=successive_halving",
        "hydra.sweeper.fidelity=data",
        "hydra.sweeper.data_rungs=2",
        cwd=tmp_path,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tunelab")
    trials = client.search_runs([exp.experiment_id], "tags.role = 'trial'", max_results=50)
    seeds = client.search_runs([exp.experiment_id], "tags.role = 'seed'", max_results=50)
    assert len(trials) == 4
    assert {r.data.tags["data_fraction"] for r in trials} <= {"0.333333", "1"}
    by_trial: dict[str, list[str]] = {}
    for s in seeds:
        by_trial.setdefault(s.data.tags["trial"], []).append(
            s.data.params.get("trainer.train_fraction", "all")
        )
    for t in trials:  # the first rung trained on a third of the training split
        fractions = sorted(by_trial[t.data.tags["trial"]])
        expected = ["0.3333333333333333"] + (["all"] if t.data.tags["data_fraction"] == "1" else [])
        assert fractions == sorted(expected)
