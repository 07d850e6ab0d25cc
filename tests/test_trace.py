"""`tunelab trace RUN_ID` names a run's parent once, and refuses a study name it cannot search."""

from __future__ import annotations

import json

from mlflow import MlflowClient

from tunelab.commands import main


def test_a_parent_is_named_once(tmp_path, capsys):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(store)
    exp = client.create_experiment("tunelab")
    for role, name in (("trial", "trial 3 lr=0.01"), ("pipeline", "pipeline")):
        parent = client.create_run(exp, run_name=name, tags={"role": role}).info.run_id
        child = client.create_run(exp, tags={"mlflow.parentRunId": parent, "role": "seed"})
        assert main(["trace", child.info.run_id, "--tracking-uri", store]) == 0
        line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("parent:"))
        assert line == f"parent: {parent} ({name})"


def test_a_study_name_with_a_quote_never_reaches_a_search(tmp_path, capsys):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(store).create_experiment("tunelab")
    sweep = tmp_path / "multirun"
    sweep.mkdir()
    (sweep / "summary.json").write_text(json.dumps({"study_name": "x' or tags.role != '"}))
    assert main(["trace", str(sweep), "--tracking-uri", store]) == 2
    assert "names no usable study" in capsys.readouterr().err


def test_a_sweep_directory_lists_its_seed_runs_in_every_experiment(tmp_path, capsys):
    from tunelab.tags import ROLE, SWEEP, Role

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(store)
    seeds = []
    for experiment in ("tunelab", "tunelab-sweeps"):
        exp = client.create_experiment(experiment)
        tags = {SWEEP: "lr-sweep", ROLE: Role.SEED}
        seeds.append(client.create_run(exp, tags=tags).info.run_id)
        client.create_run(exp, tags={SWEEP: "lr-sweep", ROLE: Role.TRIAL})  # not a seed run
        client.create_run(exp, tags={SWEEP: "other", ROLE: Role.SEED})  # another sweep's
    sweep = tmp_path / "multirun"
    sweep.mkdir()
    (sweep / "summary.json").write_text(json.dumps({"study_name": "lr-sweep"}))
    assert main(["trace", str(sweep), "--tracking-uri", store]) == 0
    out = capsys.readouterr().out
    assert out.startswith("2 run(s)") and all(s in out for s in seeds)
    assert main(["trace", "no-such-run", "--tracking-uri", store]) == 2
    assert f"run no-such-run is not in {store}" in capsys.readouterr().err
