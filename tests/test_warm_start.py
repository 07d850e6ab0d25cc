"""Warm start (hydra.sweeper.warm_start): a sweep's first trials are an earlier study's best
configurations, queued once per study, recorded on the sweep's run and in its summary; a missing
or unusable source fails before the sweep creates anything."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf
from optuna.trial import TrialState
from test_sweep_plugin import app, load, multirun  # noqa: F401  (app: the toy app's fixture)

from tunelab.config.sweep_check import sweeper_problems
from tunelab.tags import WARM_START_FROM

FIRST = ["search=random", "hydra.sweeper.figures=false", "hydra.sweeper.study_name=first"]
SECOND = [
    "search=random",
    "hydra.sweeper.figures=false",
    "hydra.sweeper.study_name=second",
    "hydra.sweeper.warm_start={study: first, top_k: 2}",
]


def _best_params(app_dir, name: str, k: int) -> list[dict]:
    done = load(app_dir, name).get_trials(states=(TrialState.COMPLETE,))
    return [t.params for t in sorted(done, key=lambda t: t.value)[:k]]  # val/loss: minimised


def test_a_warm_started_sweep_starts_with_the_earlier_best_and_resuming_adds_none(app):  # noqa: F811
    uri = f"sqlite:///{app / 'mlflow.db'}"
    multirun(app, *FIRST, "hydra.sweeper.n_trials=4", sweep_dir="a")
    best = _best_params(app, "first", 2)
    result = multirun(app, *SECOND, "hydra.sweeper.n_trials=3", f"tracking.tracking_uri={uri}")
    trials = load(app, "second").get_trials()
    assert [t.params for t in trials[:2]] == best  # the earlier best two, best first
    assert all(t.user_attrs[WARM_START_FROM].startswith("first@") for t in trials[:2])
    assert WARM_START_FROM not in trials[2].user_attrs  # then the sampler's own
    source = result[WARM_START_FROM]
    assert source.startswith("first@journal:") and source.endswith("optuna.journal")
    summary = json.loads((app / "multirun" / "summary.json").read_text())
    assert summary[WARM_START_FROM] == source
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("toy")
    (parent,) = client.search_runs([exp.experiment_id], "tags.role = 'sweep'")
    assert parent.data.tags[WARM_START_FROM] == source
    # the same command with a larger budget resumes: the warm start is not queued again
    again = multirun(app, *SECOND, "hydra.sweeper.n_trials=5", sweep_dir="b")
    trials = load(app, "second").get_trials()
    assert again["n_run_here"] == 2 and len(trials) == 5
    assert sum(WARM_START_FROM in t.user_attrs for t in trials) == 2


def test_configurations_outside_the_space_are_skipped_with_their_reason(app):  # noqa: F811
    # the toy's val/loss grows with log10(lr)'s distance from -2: 0.01 is best, then 0.001
    lrs = ["optimizer.lr=choice(0.01,0.001,0.0001)", "optimizer.weight_decay=choice(1e-4)"]
    multirun(app, *FIRST[1:], "search=grid", *lrs)
    (best,) = [t for t in load(app, "first").get_trials() if t.params["optimizer.lr"] == 0.01]
    narrow = [*SECOND, "hydra.sweeper.warm_start.top_k=1", "optimizer.lr=interval(1e-4, 5e-3)"]
    multirun(app, *narrow, "hydra.sweeper.n_trials=2", sweep_dir="b")
    first, second = load(app, "second").get_trials()
    assert (
        first.params == {"optimizer.lr": 0.001, "optimizer.weight_decay": 1e-4}
        and WARM_START_FROM not in second.user_attrs
    )
    record = load(app, "second").user_attrs[WARM_START_FROM]
    said = f"trial {best.number}: optimizer.lr=0.01 outside this space"
    assert record["configs"] == 1 and record["skipped"] == [said]


@pytest.mark.parametrize(
    ("warm", "said"),
    [
        ("{study: nowhere}", "no such study"),
        ("{study: first, storage: 'journal:APP/missing.journal'}", "does not exist"),
        ("{study: second}", "this sweep's own study"),
    ],
)
def test_a_missing_source_fails_before_the_sweep_creates_anything(app, warm, said):  # noqa: F811
    multirun(app, *FIRST, "hydra.sweeper.n_trials=2", sweep_dir="a")
    warm = warm.replace("APP", str(app))
    args = [*SECOND[:3], f"hydra.sweeper.warm_start={warm}", "hydra.sweeper.n_trials=2"]
    with pytest.raises(SystemExit, match=said):
        multirun(app, *args, sweep_dir="b")
    assert not (app / "b").exists() and not (app / "missing.journal").exists()
    from optuna.study import get_all_study_names

    from tunelab.tuning.study_storage import make_storage

    names = get_all_study_names(make_storage(f"journal:{app / 'optuna.journal'}"))
    assert names == ["first"]  # no study "second" was created


def test_warm_start_settings_are_checked_with_every_problem_named():
    def problems(warm) -> list[str]:
        cfg = OmegaConf.create(
            {"hydra": {"sweeper": {"_target_": "hydra_plugins.tunelab_sweeper.x.TunelabSweeper"}}}
        )
        cfg.hydra.sweeper.warm_start = warm
        return [p for p in sweeper_problems(cfg) if "warm_start" in p]

    assert problems(None) == [] and problems({"study": None, "top_k": 5, "storage": None}) == []
    assert problems({"study": "a", "top_k": 3, "storage": "sqlite:///x.db"}) == []
    (bad,) = problems({"study": "", "top_k": 0, "storage": "ftp://x"})
    assert "study: " in bad and "top_k: " in bad and "storage: " in bad
    assert problems({"study": "a", "colour": 1}) != []
