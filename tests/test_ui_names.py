"""What the MLflow UI shows without a browser: run names that say what differs, and tunelab's MLflow
app, whose page defaults the UI to the runs table."""

from __future__ import annotations

import re

import pytest

from tunelab.run import names as run_names
from tunelab.tracking import ui_app


def test_a_trial_is_named_by_its_number_and_short_parameter_names():
    name = run_names.trial_name(7, {"optimizer.lr": 0.0123456, "optimizer.momentum": 0.9})
    assert name == "trial 7 lr=0.0123 momentum=0.9"
    # two keys with the same last part keep their full names
    both = run_names.trial_name(0, {"model.dropout": 0.1, "head.dropout": 0.2, "optimizer": "sgd"})
    assert both == "trial 0 model.dropout=0.1 head.dropout=0.2 optimizer=sgd"


def test_a_job_is_named_by_what_its_sweep_changes():
    shown = ["optimizer=sgd", "trainer.max_epochs=2"]
    assert run_names.job_name(shown, {"swept": "optimizer"}, 0) == "optimizer=sgd"
    assert run_names.job_name(shown, {}, 0) == "optimizer=sgd,trainer.max_epochs=2"
    assert run_names.job_name([], {}, 0) == "default"
    assert run_names.job_name(shown, {"role": "seed", "swept": "optimizer.lr"}, 3) == "seed 3"
    confirm = {"role": "confirm", "cell": "adamw"}
    assert run_names.job_name(shown, confirm, 2) == "cell adamw / seed 2"
    assert len(run_names.job_name([f"k{i}=v" for i in range(200)], {}, 0)) <= 250


def test_tunelabs_mlflow_app_serves_the_ui_defaulting_to_the_runs_table():
    from mlflow.server import app as mlflow_app

    html = mlflow_app.test_client().get("/")  # before: MLflow's own page
    assert ui_app.STORAGE_KEY not in html.get_data(as_text=True)
    app = ui_app.create_app(mlflow_app)
    page = app.test_client().get("/").get_data(as_text=True)
    script = page.index(ui_app.STORAGE_KEY)
    assert script < page.index("<script defer"), "the default must be set before the UI starts"
    # it only fills an empty setting: a browser whose user picked a view keeps it
    assert re.search(r"getItem\(\"mlflow\.workflowType_v1\"\)===null", page)
    assert '"\\"machine_learning\\""' in page  # stored as the UI stores it: JSON


def test_the_app_is_registered_for_mlflow_app_name():
    from mlflow.utils.plugins import get_entry_points

    apps = {a.name: a.value for a in get_entry_points("mlflow.app")}
    assert apps.get("tunelab") == "tunelab.tracking.ui_app:create_app"


def test_tunelabs_app_keeps_the_assistant_closed_unless_the_user_opened_it():
    script = ui_app.default_view_script()
    # MLflow opens its Assistant on a first visit unless this flag says it did; set only if unset
    key = '"mlflow.assistant.fab.autoOpenedOnFirstLoad_v1"'
    assert f'if(localStorage.getItem({key})===null)localStorage.setItem({key},"true")' in script
    assert "panelOpen" not in script  # the user's own open/closed choice is never touched


def test_a_multirun_parent_is_named_by_what_it_sweeps():
    from tunelab.hydra_job import multirun_name

    assert multirun_name(["optimizer=sgd,adam", "trainer.max_epochs=2"]) == "optimizer=sgd,adam"
    both = ["optimizer=sgd,adam", "data=synthetic", "optimizer.lr=0.1,0.01"]
    assert multirun_name(both) == "optimizer=sgd,adam optimizer.lr=0.1,0.01"
    assert multirun_name(["trainer.max_epochs=2"]) == "trainer.max_epochs=2"  # nothing swept


def test_the_links_carry_mlflows_own_url_view_state():
    from urllib.parse import parse_qs, urlsplit

    from tunelab.tracking.mlflow_writer import table_view, ui_link

    def query(link: str) -> tuple[str, dict[str, str]]:
        route, _, qs = urlsplit(link).fragment.partition("?")
        return route, {k: v[0] for k, v in parse_qs(qs).items()}

    route, q = query(ui_link("3", runs=["a", "b"], port=5001))
    assert route == "/compare-runs" and q == {"runs": '["a","b"]', "experiments": '["3"]'}
    route, q = query(ui_link(["3", "1"], runs=["a", "b"], metric="val/acc"))
    assert route == "/metric" and q["metric"] == '"val/acc"' and q["experiments"] == '["1","3"]'
    assert q["plot_metric_keys"] == '["val/acc"]'
    route, q = query(ui_link("3", view_key="p1"))
    assert route == "/experiments/3/runs" and q["viewStateShareKey"] == "p1"
    assert query(ui_link("3", run_id="r1")) == ("/experiments/3/runs/r1", {})
    view = table_view("p1", "val/loss", True, ["test/acc"], ["optimizer.name"])
    assert view == {
        "searchFilter": "tags.mlflow.parentRunId = 'p1'",
        "orderByKey": "metrics.`val/loss`",
        "orderByAsc": True,
        "selectedColumns": ["metrics.`val/loss`", "metrics.`test/acc`", "params.`optimizer.name`"],
    }


def test_ui_compare_finds_a_parents_runs_by_its_id_or_its_name(tmp_path):
    from mlflow import MlflowClient

    from tunelab.commands.common import CommandError
    from tunelab.commands.ui import compared
    from tunelab.tracking.mlflow_reader import MlflowReader

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    store = MlflowReader(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.create_experiment("lr-sweep")
    sweep = client.create_run(exp, run_name="lr-sweep").info.run_id
    trials = [client.create_run(exp, run_name=f"trial {i}").info.run_id for i in range(3)]
    client.set_tag(sweep, "compare.runs", ",".join(trials[:2]))  # the best two
    assert compared(store, "lr-sweep") == (trials[:2], [exp])
    assert compared(store, sweep) == (trials[:2], [exp])
    # a parent without the list: its children
    parent = client.create_run(exp, run_name="optimizer=sgd,adam").info.run_id
    kids = [client.create_run(exp, tags={"mlflow.parentRunId": parent}).info.run_id for _ in "ab"]
    assert sorted(compared(store, "optimizer=sgd,adam")[0]) == sorted(kids)
    with pytest.raises(CommandError, match="no run with that id or name"):
        compared(store, "no-such-sweep")
