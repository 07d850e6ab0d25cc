"""Constrained search (`hydra.sweeper.constraints`): the grammar and its refusal before anything
exists, the best trial chosen among the feasible ones, infeasible trials marked in the study, the
sweep's files and MLflow, and the line search closing on the constraint's boundary."""

import csv
import json
import math

import pytest
from conftest import FAST, run_cli
from omegaconf import OmegaConf
from test_sweep_plugin import load, multirun, write_app

from tunelab.config.constraints import parse, parse_all
from tunelab.config.sweep_check import sweeper_problems

# val/loss is smallest at lr = 1e-2; val/recall/1 = min(1, 20 lr) reaches 0.9 at lr = 0.045
APP = """
import json, math, os
import hydra
from hydra.core.hydra_config import HydraConfig


def task(cfg):
    lr = float(cfg.optimizer.lr)
    metrics = {"val/loss": (math.log10(lr) + 2.0) ** 2, "val/recall/1": min(1.0, 20.0 * lr),
               "perf/epoch_s": 0.5}
    with open(os.path.join(HydraConfig.get().runtime.output_dir, "metrics.json"), "w") as fh:
        json.dump(metrics, fh)
    return metrics["val/loss"]


main = hydra.main(config_path="conf", config_name="config", version_base="1.3")(task)

if __name__ == "__main__":
    main()
"""
BOUNDARY = math.log10(0.9 / 20.0)


@pytest.fixture
def app(tmp_path):
    return write_app(tmp_path, APP)


def _problems(values, **cfg) -> list[str]:
    conf = OmegaConf.create(
        {"hydra": {"sweeper": {"_target_": "hydra_plugins.tunelab_sweeper.x.TunelabSweeper"}}}
    )
    conf.hydra.sweeper.constraints = values
    conf.merge_with(cfg)
    return [p for p in sweeper_problems(conf) if "constraints" in p]


def test_constraints_parse_and_every_bad_entry_is_named_at_once():
    (c, why) = parse("val/recall/1 >= 0.90")
    assert why is None and (c.metric, c.op, c.bound) == ("val/recall/1", ">=", 0.9)
    assert c.violation({"val/recall/1": 0.85}) == pytest.approx(0.05)  # > 0: infeasible
    assert c.violation({"val/recall/1": 0.95}) == pytest.approx(-0.05)
    assert parse("perf/epoch_s<=2")[0].violation({"perf/epoch_s": 1.5}) == pytest.approx(-0.5)
    assert _problems(["val/recall/1 >= 0.90", "perf/epoch_s <= 2"]) == []
    found = _problems(["val/recall/1 > 0.9", "val/acc >= high", "val/nosuch <= 1", "val/acc"])
    assert len(found) == 4
    assert "constraints[0]" in found[0] and "operator in ['>=', '<=']" in found[0]
    assert "constraints[1]" in found[1] and "a number after >=" in found[1]
    assert "constraints[2]" in found[2] and "'val/nosuch' is not a metric of task=classification"
    assert "constraints[3]" in found[3] and "the form" in found[3]
    # a class the data does not have, a metric of another task, a metric bounded twice
    assert "10 classes" in _problems(["val/recall/10 >= 0.9"], data={"_target_": _MNIST1D})[0]
    assert _problems(["val/recall/9 >= 0.9"], data={"_target_": _MNIST1D}) == []
    assert "task=binary" in _problems(["val/recall/1 >= 0.9"], task={"name": "binary"})[0]
    assert _problems(["val/recall >= 0.9"], task={"name": "binary"}) == []
    assert "repeats" in _problems(["val/acc >= 0.5", "val/acc >= 0.6"])[0]
    assert _problems("val/acc >= 0.5") != []  # not a list
    with pytest.raises(ValueError, match=r"constraints\[1\]"):
        parse_all(["val/acc >= 0.5", "val/acc ~ 1"])


_MNIST1D = "tunelab.data.sources.mnist1d"


def test_a_bad_constraint_is_refused_before_anything_exists(tmp_path):
    proc = run_cli(
        "-m",
        *FAST,
        "search=random",
        "hydra.sweeper.constraints=['val/recal/1 >= 0.9','perf/epoch_s < 2']",
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "hydra.sweeper.constraints[0]" in proc.stderr, proc.stderr[-2000:]
    assert "hydra.sweeper.constraints[1]" in proc.stderr  # both named at once
    assert list(tmp_path.iterdir()) == []  # no multirun/, journal, mlflow.db, study


@pytest.mark.parametrize("sampler", ["grid", "tpe"])
def test_the_best_trial_is_the_best_feasible_one_and_infeasible_trials_are_marked(app, sampler):
    uri = f"sqlite:///{app / 'mlflow.db'}"
    more = ["+hydra.sweeper.sampler.kwargs.n_startup_trials=3"] if sampler == "tpe" else []
    result = multirun(
        app,
        "hydra/sweeper=tunelab",
        f"hydra.sweeper.sampler.name={sampler}",
        "hydra.sweeper.sampler.seed=0",
        "hydra.sweeper.n_trials=5",
        "hydra.sweeper.grid_points=5",
        "hydra.sweeper.figures=false",
        "hydra.sweeper.study_name=c",
        "optimizer.lr=tag(log, interval(1.0e-4, 1.0))",
        "hydra.sweeper.constraints=['val/recall/1 >= 0.9']",
        f"tracking.tracking_uri={uri}",
        *more,
    )
    study = load(app, "c")
    done = [t for t in study.trials if t.values]
    recall = {t.number: min(1.0, 20 * t.params["optimizer.lr"]) for t in done}
    feasible = {n for n, r in recall.items() if r >= 0.9}
    for t in done:  # Optuna's convention, and a user attr by the constraint's text
        assert t.constraints == {"val/recall/1 >= 0.9": pytest.approx(0.9 - recall[t.number])}
        assert t.user_attrs["constraints"] == t.constraints
    unconstrained = min(done, key=lambda t: t.value)
    assert unconstrained.number not in feasible  # lr = 1e-2 has recall 0.2 ...
    best = min((t for t in done if t.number in feasible), key=lambda t: t.value)
    assert study.best_trial.number == best.number  # ... the best feasible trial wins
    assert result["best"][0]["number"] == best.number
    assert result["infeasible"] == sorted(set(recall) - feasible)
    out = app / "multirun"
    assert json.loads((out / "summary.json").read_text())["best"][0]["number"] == best.number
    lr = (out / "best_overrides.txt").read_text().split("optimizer.lr=")[1].split()[0]
    assert float(lr) == pytest.approx(best.params["optimizer.lr"])
    with open(out / "trials.csv") as fh:
        rows = {int(r["number"]): r["feasible"] for r in csv.DictReader(fh)}
    assert {n for n, f in rows.items() if f == "True"} == feasible
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("toy")
    runs = client.search_runs([exp.experiment_id], "tags.role = 'trial'", max_results=100)
    tags = {int(r.data.tags["trial"]): r.data.tags["feasible"] for r in runs}
    assert tags == {n: str(n in feasible).lower() for n in recall}
    (parent,) = client.search_runs([exp.experiment_id], "tags.role = 'sweep'")
    assert parent.data.tags["best.trial"] == str(best.number)
    assert parent.data.tags["trials.infeasible"] == str(len(recall) - len(feasible))


def test_the_line_search_closes_on_the_constraint_boundary(app):
    """Unconstrained, golden section finds lr = 1e-2; constrained to recall >= 0.9 it closes on
    the smallest feasible lr, 0.045 (the loss grows with lr beyond 1e-2)."""
    multirun(
        app,
        "search=line",
        "hydra.sweeper.n_trials=14",
        "hydra.sweeper.figures=false",
        "hydra.sweeper.study_name=line",
        "hydra.sweeper.constraints=['val/recall/1 >= 0.9']",
    )
    study = load(app, "line")
    best = study.best_trial
    assert all(v <= 0 for v in best.constraints.values())
    assert abs(math.log10(best.params["optimizer.lr"]) - BOUNDARY) < 0.02
    # it spent its trials near the boundary, not near the unconstrained optimum
    lrs = [math.log10(t.params["optimizer.lr"]) for t in study.trials]
    assert sum(abs(x - BOUNDARY) < 0.1 for x in lrs) >= 6


def test_a_constrained_study_is_not_resumed_under_other_constraints(app):
    multirun(
        app,
        "search=random",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.figures=false",
        "hydra.sweeper.study_name=s",
        "hydra.sweeper.constraints=['val/recall/1 >= 0.9']",
    )
    with pytest.raises(SystemExit, match="other fixed settings"):
        multirun(
            app,
            "search=random",
            "hydra.sweeper.n_trials=3",
            "hydra.sweeper.figures=false",
            "hydra.sweeper.study_name=s",
            "hydra.sweeper.constraints=['val/recall/1 >= 0.5']",
        )


@pytest.mark.slow
def test_the_class_weight_preset_finds_a_weight_that_meets_the_recall_floor(tmp_path):
    """search=class_weight_line (seed 004's example) end to end, on a smaller budget: digit 3
    against the rest, task.pos_weight by golden section under a recall floor."""
    proc = run_cli(
        "-m",
        "search=class_weight_line",
        "hydra.sweeper.n_trials=3",
        "trainer.max_epochs=2",
        "hydra.sweeper.study_name=cw",
        "hydra.sweeper.constraints=['val/recall >= 0.5']",
        "hydra.sweeper.figures=false",
        cwd=tmp_path,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    import optuna

    study = optuna.load_study(study_name="cw", storage=_journal(tmp_path))
    assert len(study.trials) == 3 and all(t.values for t in study.trials)
    assert all(set(t.constraints) == {"val/recall >= 0.5"} for t in study.trials)
    weights = [t.params["task.pos_weight"] for t in study.trials]
    assert all(1.0 <= w <= 30.0 for w in weights)
    feasible = [t for t in study.trials if t.constraints["val/recall >= 0.5"] <= 0]
    summary = json.loads(next(tmp_path.glob("multirun/*/*/summary.json")).read_text())
    if feasible:
        best = max(feasible, key=lambda t: t.value)
        assert summary["best"][0]["number"] == best.number
        assert summary["best"][0]["values"]["val/precision"] == pytest.approx(best.value)
    else:
        assert summary["best"] == [] and len(summary["infeasible"]) == 3


def _journal(directory):
    from tunelab.tuning.study_storage import make_storage

    return make_storage(f"journal:{directory / 'optuna.journal'}")


def test_task_positive_class_turns_one_class_against_the_rest(tmp_path):
    """task=binary task.positive_class=k: class k is 1, the others 0, in every split (the
    imbalanced task of search=class_weight_line); a class the data lacks is refused."""
    import numpy as np

    from tunelab.data.splits import make_splits, one_vs_rest

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(200, 1, 8)).astype(np.float32), rng.integers(0, 4, 200)
    splits = make_splits(x, y, x[:40], y[:40], name="t", val_fraction=0.2, split_seed=0)
    binary = one_vs_rest(splits, 3)
    assert binary.num_classes == 2
    for k in ("y_train", "y_val", "y_test"):
        assert getattr(binary, k).tolist() == (getattr(splits, k) == 3).long().tolist()
    with pytest.raises(ValueError, match="task.positive_class=4"):
        one_vs_rest(splits, 4)
    proc = run_cli(*FAST, "task=binary", "task.positive_class=9", cwd=tmp_path, timeout=300)
    assert proc.returncode != 0 and "task.positive_class=9" in proc.stderr, proc.stderr[-2000:]
