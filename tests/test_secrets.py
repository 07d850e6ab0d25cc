"""Secrets stay on the machine: a password typed on the command line or set in the environment
appears in no log line, MLflow param, tag or artifact, Hydra output file, sweep file, params.yaml
or command line of a process the sweep starts."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
from conftest import FAST, ROOT, reaped, run_cli
from test_reproduce import env as reproduce_env
from test_reproduce import repo  # noqa: F401  (this project in a fresh git repository)

from tunelab.config.secrets import mask, mask_diff
from tunelab.stages import load_params
from tunelab.tuning import pruning
from tunelab.tuning.study_storage import ENV_STORAGE


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
        ("Server=db;Uid=u;Pwd=S3cr3t;Database=x", "Server=db;Uid=u;Pwd=***;Database=x"),
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


def _children(root: int) -> dict[int, bytes]:
    """The command lines (/proc/PID/cmdline: what `ps` shows) of root's live descendants."""
    parent: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            parent[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
    found, todo = {}, [root]
    while todo:
        pid = todo.pop()
        for child in [c for c, p in parent.items() if p == pid]:
            with contextlib.suppress(OSError):
                found[child] = (Path("/proc") / str(child) / "cmdline").read_bytes()
            todo.append(child)
    return {pid: line for pid, line in found.items() if line}  # an exited child's is empty


@pytest.mark.slow
@pytest.mark.xdist_group("postgres")
def test_a_password_typed_on_the_command_line_leaves_no_trace(repo, postgres, tmp_path):  # noqa: F811
    """A sweep whose study database and MLflow store are PostgreSQL URLs with the password typed
    on the command line, from a tree with an uncommitted password: the password is in no file
    under the working directory (Hydra's files, logs, the sweep's files, MLflow artifacts), no
    MLflow param or tag, and no command line of a process the sweep starts."""
    from mlflow import MlflowClient

    secret = postgres.password
    storage, tracking = postgres.url("secrets_optuna"), postgres.url("secrets_mlflow")
    conf = repo / "conf" / "tracking" / "mlflow.yaml"  # tracked: its change goes to git.diff
    conf.write_text(conf.read_text() + f"# team: {tracking}\n# PGPASSWORD={secret}\n")
    work = repo.parent / "work"
    args = [
        sys.executable,
        str(repo / "src" / "train.py"),
        "-m",
        "search=random",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.n_jobs=2",
        "hydra/launcher=joblib",
        f"hydra.sweeper.storage={storage}",
        f"tracking.tracking_uri={tracking}",
        *FAST,
        "trainer.max_epochs=1",
        "tracking.log_model=false",
        "hydra.sweep.dir=multirun/s",
    ]
    proc = reaped(
        subprocess.Popen(
            args,
            cwd=work,
            env=reproduce_env(repo),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
    )
    seen: set[bytes] = set()
    typed = b""
    out = io.BytesIO()
    reader = threading.Thread(target=lambda: out.write(proc.stdout.read()), daemon=True)
    reader.start()
    while proc.poll() is None:  # every process the sweep starts, for as long as it runs
        with contextlib.suppress(OSError):
            typed = typed or Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        seen.update(_children(proc.pid).values())
        time.sleep(0.05)
    reader.join(timeout=60)
    log = out.getvalue().decode()
    assert proc.returncode == 0, log[-3000:]
    assert secret.encode() in typed  # control: a command line holding it would be caught
    assert any(b"loky" in c for c in seen), seen  # the joblib workers were watched
    assert not [c for c in seen if secret.encode() in c]
    assert secret not in log, [line for line in log.splitlines() if secret in line]

    files = [p for p in work.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert {"sweep_context.json", "hydra.yaml", "overrides.yaml", "train.log"} <= names
    assert not [str(p) for p in files if secret.encode() in p.read_bytes()]
    context = json.loads((work / "multirun" / "s" / "sweep_context.json").read_text())
    assert context["storage"] == mask(storage) != storage

    client = MlflowClient(tracking)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    jobs = [r for r in runs if r.data.tags.get("role") == "seed"]
    assert len(jobs) == 2
    for run in runs:
        assert secret not in json.dumps([run.data.params, run.data.tags])
    record = jobs[0]
    assert record.data.params["tracking.tracking_uri"] == mask(tracking)
    for name in ("config.yaml", "overrides.yaml", "git.diff"):
        text = Path(client.download_artifacts(record.info.run_id, name, str(tmp_path))).read_text()
        assert "***" in text and secret not in text, name

    def artifacts(run_id: str, path: str | None = None) -> list[str]:
        found = []
        for a in client.list_artifacts(run_id, path):
            found += artifacts(run_id, a.path) if a.is_dir else [a.path]
        return found

    stored = 0
    for run in runs:  # every artifact of every run: the sweep's reports, each job's records
        where = tmp_path / "artifacts" / run.info.run_id
        where.mkdir(parents=True)
        for path in artifacts(run.info.run_id):
            local = Path(client.download_artifacts(run.info.run_id, path, str(where)))
            assert secret.encode() not in local.read_bytes(), (run.data.tags.get("role"), path)
            stored += 1
    assert stored >= 10, stored  # the records were there to be read

    # the jobs (joblib workers) reached the study through the masked context: they reported
    study = optuna.load_study(study_name=context["study_name"], storage=storage)
    assert all(t.intermediate_values for t in study.trials), study.trials


@pytest.mark.slow
def test_a_plain_multirun_keeps_no_password_in_hydra_files_or_logs(workdir):
    """Hydra writes multirun.yaml and each job's .hydra/*.yaml with the overrides as typed; the
    callback rewrites them masked before the job runs, and Hydra's log lines are masked."""
    url = "postgresql://team:S3cr3tZ@127.0.0.1:5432/optuna"
    args = [
        "-m",
        *FAST,
        "trainer.max_epochs=1",
        "tracking.log_model=false",
        "data.split_seed=0,1",
        f"+hydra.job.env_set.TUNELAB_OPTUNA_STORAGE='{url}'",
        "hydra.sweep.dir=multirun/m",
    ]
    proc = run_cli(*args, cwd=workdir, env={"MLFLOW_DISABLE_TELEMETRY": "true"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "S3cr3tZ" not in proc.stdout + proc.stderr
    files = [p for p in (workdir / "multirun").rglob("*") if p.is_file()]
    assert not [str(p) for p in files if b"S3cr3tZ" in p.read_bytes()]
    masked_form = "postgresql://team:***@127.0.0.1:5432/optuna"
    for name in ("multirun.yaml", "0/.hydra/hydra.yaml", "1/.hydra/hydra.yaml"):
        assert masked_form in (workdir / "multirun" / "m" / name).read_text(), name


def test_the_team_storage_is_read_from_the_environment_module(monkeypatch):
    from tunelab import environment
    from tunelab.tuning.study_storage import default_storage

    monkeypatch.setenv(environment.OPTUNA_STORAGE, "  ")  # blank: not set
    assert environment.optuna_storage() is None
    assert default_storage("sqlite:////srv/mlflow.db") == "/srv/optuna.journal"
    monkeypatch.setenv(environment.OPTUNA_STORAGE, "postgresql://team:S3cret@db/optuna")
    assert default_storage("sqlite:////srv/mlflow.db") == "postgresql://team:S3cret@db/optuna"
