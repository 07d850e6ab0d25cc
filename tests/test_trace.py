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
