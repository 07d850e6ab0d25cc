"""What the MLflow UI shows without a browser: run names that say what differs, and tunelab's MLflow
app, whose page defaults the UI to the runs table."""

from __future__ import annotations

import re

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
