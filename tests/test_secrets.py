"""Secrets stay on the machine: a password typed on the command line or set in the environment
appears in no log line, MLflow param, tag or artifact, Hydra output file, sweep file, params.yaml
or command line of a process the sweep starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT

from tunelab.config.secrets import mask, mask_diff
from tunelab.stages import load_params
from tunelab.tuning import pruning
from tunelab.tuning.storage import ENV_STORAGE


@pytest.mark.parametrize(
    ("text", "want"),
    [
        (
            "postgresql://u@db/optuna?password=S3cr3t&sslmode=require",
            "postgresql://u@db/optuna?password=***&sslmode=require",
        ),
        (
            "mysql+pymysql://u@h/d?charset=utf8&PWD=S3cr3t#x",
            "mysql+pymysql://u@h/d?charset=utf8&PWD=***#x",
        ),
        ("http://h:5000/?Token=S3cr3t", "http://h:5000/?Token=***"),
        ("x https://h/?passwd=S3cr3t&secret=S3cr3t y", "x https://h/?passwd=***&secret=*** y"),
        ("postgresql://u:S3cr3t@h/d?sslpassword=S3cr3t", "postgresql://u:***@h/d?sslpassword=***"),
        (
            "storage: 'postgresql://u@h/d?password=S3cr3t'",
            "storage: 'postgresql://u@h/d?password=***'",
        ),
    ],
)
def test_mask_hides_passwords_in_url_queries(text, want):
    assert mask(text) == want
    assert "S3cr3t" not in mask(text)


def test_mask_leaves_text_without_secrets_alone():
    for text in (
        "journal:/tmp/optuna.journal",
        "sqlite:///a.db?mode=ro",
        "pwd is /tmp",
        "http://h/?tokens_seen=3",
        "a=1&b=2",
        "n_secret=3 secret=4",
    ):
        assert mask(text) == text


DIFF = """\
diff --git a/conf/local.py b/conf/local.py
--- a/conf/local.py
+++ b/conf/local.py
@@ -1,3 +1,6 @@
 keep = "postgresql://team:Committed1@db/optuna"
-password = "OldPass1"
+password = "S3cr3t"
+os.environ["PGPASSWORD"] = "S3cr3t"
+export PGPASSWORD=S3cr3t
+cfg = {"api_token": 'S3cr3t', "n_tokens": 3}
+uri = "postgresql://team:S3cr3t@db/optuna?sslpassword=S3cr3t"
+token_count = 3
"""


def test_a_diff_keeps_no_secret_of_its_added_lines_and_still_applies():
    out = mask_diff(DIFF)
    assert "S3cr3t" not in out
    added = [line for line in out.splitlines() if line.startswith("+") and "+++" not in line]
    assert added == [
        '+password = "***"',
        '+os.environ["PGPASSWORD"] = "***"',
        "+export PGPASSWORD=***",
        '+cfg = {"api_token": \'***\', "n_tokens": 3}',
        '+uri = "postgresql://team:***@db/optuna?sslpassword=***"',
        "+token_count = 3",
    ]
    # context and removed lines are left as committed, so the diff still applies to its commit
    assert ' keep = "postgresql://team:Committed1@db/optuna"' in out
    assert '-password = "OldPass1"' in out


def test_the_sweep_context_file_names_the_storage_masked_and_a_job_finds_its_password(
    tmp_path, monkeypatch
):
    url = "postgresql://team:S3cr3t@db.example.org:5432/optuna"
    path = tmp_path / "sweep_context.json"
    pruning.write_context(
        str(path), {"study_name": "s", "storage": url, "directions": ["maximize"]}
    )
    recorded = json.loads(path.read_text())["storage"]
    assert recorded == "postgresql://team:***@db.example.org:5432/optuna"
    assert "S3cr3t" not in path.read_text() and path.stat().st_mode & 0o077 == 0
    monkeypatch.delenv(ENV_STORAGE, raising=False)
    with pytest.raises(LookupError, match="not passed on any other way"):
        pruning.storage_url(recorded)  # nowhere to take the password from
    monkeypatch.setenv(ENV_STORAGE, "postgresql://team:Other1@db.example.org:5432/optuna")
    with pytest.raises(LookupError):
        pruning.storage_url("postgresql://team:***@elsewhere:5432/optuna")  # another database
    monkeypatch.setenv(ENV_STORAGE, url)  # where the sweeper took it from
    assert pruning.storage_url(recorded) == url
    journal = f"journal:{tmp_path / 'optuna.journal'}"  # nothing secret: used as written
    assert pruning.storage_url(journal) == journal


def test_params_yaml_keeps_the_environment_out(tmp_path, monkeypatch):
    """A team's MLFLOW_TRACKING_URI (with its password) when composing params.yaml: the file keeps
    the interpolation; the stages still read the server from the environment."""
    uri = "postgresql://tunelab:S3cr3t@db.example.org:5432/mlflow"
    out = tmp_path / "params.yaml"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    compose = [sys.executable, str(ROOT / "pipelines" / "compose_params.py"), "--out", str(out)]
    subprocess.run(compose, env=env, check=True, capture_output=True)
    text = out.read_text()
    assert "S3cr3t" not in text
    assert "tracking_uri: ${oc.env:MLFLOW_TRACKING_URI,sqlite:///mlflow.db}" in text
    # params.yaml is up to date whatever the environment, and equal to the committed file
    check = subprocess.run([*compose, "--check"], env=env, capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    assert text == (ROOT / "params.yaml").read_text()
    cfg, _ = load_params(out)  # what a stage reads: the server of its environment
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert cfg.tracking.tracking_uri == uri
