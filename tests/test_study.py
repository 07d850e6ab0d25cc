"""Playbook studies, fast parts: study config parsing, statistics and verdicts, every preset composes."""

import math

import numpy as np
import pytest
from conftest import CONF
from hydra import compose, initialize_config_dir
from scipy import stats as sps

from tunelab.reports import stats
from tunelab.tuning.settings import StudySweeperConf, sweep_settings
from tunelab.tuning.study_spec import merge_overrides, parse

PRESETS = sorted(p.stem for p in (CONF / "study").glob("*.yaml"))


def _study_settings(conf: dict) -> StudySweeperConf:
    """A playbook study's settings from the keys a test sets (the others at their defaults)."""
    return sweep_settings(conf, StudySweeperConf)


def _config(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=True)


def test_presets_cover_the_seed_articles():
    assert {"optimizer_comparison", "seed_audit", "lr_momentum", "schedules", "l2"} <= set(PRESETS)
    assert {"batch_size", "dropout"} <= set(PRESETS)


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_composes_and_parses(name):
    cfg = _config(f"study={name}")
    assert cfg.hydra.sweeper._target_.endswith("study_sweeper.StudySweeper")
    spec = parse(sweep_settings(cfg.hydra.sweeper), cfg, [f"study={name}"])
    assert spec.cells and spec.seeds and spec.goal
    recipes = {}
    for cell in spec.cells:
        args = spec.cell_arguments(cell)
        assert f"study={name}" in args and f"experiment={spec.experiment}" in args
        # the cell's jobs compose (its overrides and a point of its nuisance space)
        job = _config(*[a for a in args if not a.startswith("hydra.")])
        steps = job.trainer.max_epochs * min(1, 128 / job.trainer.batch_size)  # epochs at batch 128
        assert steps <= max(15, _recipe_epochs(job))
        recipe = job.hydra.runtime.choices.get("recipe")
        applied = recipe is not None and (CONF / "recipe" / f"{recipe}.yaml").exists()
        recipes[(job.model.name, job.optimizer.name)] = recipe if applied else None
    if len(recipes) > 1:  # cells on different models or optimizers: no recipe may differ by cell
        assert set(recipes.values()) == {None}, recipes


def _recipe_epochs(job) -> int:
    """The epochs of the model's own recipe (conf/recipe/), which a preset may keep."""
    import yaml

    path = CONF / "recipe" / f"{job.model.name}_{job.optimizer.name}.yaml"
    return yaml.safe_load(path.read_text())["trainer"]["max_epochs"] if path.exists() else 0


def test_list_values_become_cells_with_conditional_nuisance():
    cfg = _config()
    conf = {
        "study_name": "s",
        "scientific": {"name": "optimizer.weight_decay", "values": [1.0e-5, 0.1]},
        "nuisance": {"common": {"optimizer.lr": "interval(0.1, 1)"},
                     "cells": {"1e-05": {"optimizer.momentum": "interval(0.5, 0.9)"}}},
        "fixed": {"trainer.max_epochs": 3, "model.kernel": [3, 5]},
        "seeds": 2,
    }  # fmt: skip
    spec = parse(_study_settings(conf), cfg, ["trainer.max_epochs=4"])
    assert [c.name for c in spec.cells] == ["1e-05", "0.1"]
    assert spec.cells[0].overrides == ("optimizer.weight_decay=1e-05",)
    assert set(spec.cells[0].space) == {"optimizer.lr", "optimizer.momentum"}
    assert set(spec.cells[1].space) == {"optimizer.lr"}
    assert spec.seeds == [1, 2]
    args = spec.cell_arguments(spec.cells[1])
    assert (
        "trainer.max_epochs=4" in args and "trainer.max_epochs=3" not in args
    )  # command line wins
    assert "model.kernel=[3,5]" in args
    with pytest.raises(ValueError, match="unknown cells"):
        parse(_study_settings({**conf, "nuisance": {"cells": {"nope": {}}}}), cfg, [])


def test_merge_overrides_last_wins_per_key():
    assert merge_overrides(["a=1", "b=2"], ["+a=3"], ["c=4"]) == ["b=2", "+a=3", "c=4"]


def test_describe_matches_scipy_t_interval():
    x = [0.91, 0.93, 0.92, 0.95]
    d = stats.describe(x)
    lo, hi = sps.t.interval(0.95, len(x) - 1, loc=np.mean(x), scale=sps.sem(x))
    assert d["mean"] == pytest.approx(np.mean(x)) and d["std"] == pytest.approx(np.std(x, ddof=1))
    assert (d["ci_low"], d["ci_high"]) == pytest.approx((lo, hi))
    assert math.isnan(stats.describe([0.9])["std"])


def test_seed_audit_gap_between_best_seed_and_median():
    a = stats.audit([0.90, 0.92, 0.91, 0.97], "maximize")
    assert a["best"] == 0.97 and a["best_minus_median"] == pytest.approx(0.97 - 0.915)
    assert stats.audit([0.3, 0.1, 0.2], "minimize")["best_minus_median"] == pytest.approx(0.1)


def test_best_so_far_band_is_monotone_and_brackets_the_median():
    vals = list(np.random.default_rng(0).uniform(0.5, 0.9, size=12))
    band = stats.best_so_far_band(vals, "maximize", n_boot=200)
    assert np.all(np.diff(band["observed"]) >= 0) and np.all(np.diff(band["median"]) >= 0)
    assert np.all(band["low"] <= band["median"]) and np.all(band["median"] <= band["high"])
    assert stats.doubling_gain(band, "maximize") >= 0


def test_axis_plots_place_numeric_choices_as_labels(caplog):
    """`trainer.max_epochs=choice(20, 40, 60)`: three labelled positions, the best trial on its own,
    and no matplotlib notice about strings that parse as numbers."""
    import pandas as pd

    from tunelab.reports.pipeline import axis_plot

    trials = pd.DataFrame({
        "number": [0, 1, 2, 3], "state": ["COMPLETE", "COMPLETE", "PRUNED", "COMPLETE"],
        "value": [0.7, 0.8, 0.5, 0.6], "params_trainer.max_epochs": [40, 60, 20, 40],
    })  # fmt: skip
    best = trials.iloc[1]
    with caplog.at_level("INFO"):
        fig = axis_plot(trials, "trainer.max_epochs", {"choices": [20, 40, 60]}, "val/acc", best)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["20", "40", "60"]
    assert not [r for r in caplog.records if "categorical units" in r.getMessage()]
    best_marker = ax.collections[-1].get_offsets()[0]
    assert tuple(best_marker) == (2.0, 0.8)


def _failing_study(workdir, monkeypatch, fail) -> tuple[str, object]:
    """A preset study, run in this process, whose first cell calls `fail(run)`; (tracking URI,
    the StudyRun)."""
    from omegaconf import open_dict

    from tunelab.tuning.study import StudyRun

    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    cfg = _config("study=optimizer_comparison", f"tracking.tracking_uri={uri}")
    with open_dict(cfg):
        cfg.hydra.sweep.dir = str(workdir / "sweep")
    run = StudyRun(sweep_settings(cfg.hydra.sweeper), cfg, None, ["study=optimizer_comparison"])
    monkeypatch.setattr(run, "run_cell", lambda cell: fail(run))
    return uri, run


def test_a_failing_study_leaves_its_run_to_the_last_worker(workdir, monkeypatch):
    """An error in the study: its run stays RUNNING while another process works on it (here one
    of another host), and ends KILLED when this process was the last; the error is raised."""
    from mlflow import MlflowClient

    from tunelab.tracking.run_owners import worker_tag

    other = "elsewhere:1:-"

    def fail(run, joined: bool) -> None:
        if joined:
            run.writer.set_tags(run.run_id, {worker_tag(other): other})
        else:
            run.writer.delete_tags(run.run_id, [worker_tag(other)])
        raise RuntimeError("boom")

    for joined, status in ((True, "RUNNING"), (False, "KILLED")):
        uri, run = _failing_study(workdir, monkeypatch, lambda r, j=joined: fail(r, j))
        with pytest.raises(RuntimeError, match="boom"):
            run.run()
        got = MlflowClient(uri).get_run(run.run_id)
        assert got.info.status == status
        assert "failure_reason" not in got.data.tags  # an error, not a signal


@pytest.mark.parametrize(
    ("sig", "code", "reason"), [(2, 130, "interrupted"), (15, 143, "terminated")]
)
def test_a_signal_stops_the_study_like_a_sweep(workdir, monkeypatch, sig, code, reason):
    """SIGINT or SIGTERM between the study's jobs: it stops at once, exits 130 or 143 (as a sweep
    and a single run do) and its run ends KILLED with the signal's reason."""
    import os

    from mlflow import MlflowClient

    def signalled(run) -> None:
        os.kill(os.getpid(), sig)
        raise AssertionError("the study went on after the signal")

    uri, run = _failing_study(workdir, monkeypatch, signalled)
    with pytest.raises(SystemExit) as stopped:
        run.run()
    assert stopped.value.code == code
    got = MlflowClient(uri).get_run(run.run_id)
    assert got.info.status == "KILLED" and got.data.tags["failure_reason"] == reason
