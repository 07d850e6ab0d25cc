"""optuna-dashboard opens the project's Optuna storages as they are: the journal file next to
mlflow.db and a database URL, and lists their studies."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
from conftest import reaped

from tunelab.tuning.study_storage import make_storage


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _studies(target: str, cwd: Path) -> list[str]:
    """Start the dashboard on `target` (a journal path or a storage URL) and list its studies."""
    port = _free_port()
    exe = Path(sys.executable).parent / "optuna-dashboard"
    proc = reaped(subprocess.Popen(
        [str(exe), target, "--host", "127.0.0.1", "--port", str(port)],
        cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    ))  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"optuna-dashboard exited: {proc.stdout.read()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as r:
                    return [s["study_name"] for s in json.load(r)["study_summaries"]]
            except OSError:
                time.sleep(0.5)
        raise AssertionError("optuna-dashboard did not answer within 60 s")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_optuna_dashboard_lists_our_studies(kind, tmp_path):
    url = {
        "journal": f"journal:{tmp_path / 'optuna.journal'}",
        "sqlite": f"sqlite:///{tmp_path / 'optuna.db'}",
    }[kind]
    study = optuna.create_study(study_name="sweep-lr", storage=make_storage(url))
    study.optimize(lambda t: t.suggest_float("optimizer.lr", 1e-4, 1e-1, log=True), n_trials=2)
    target = str(tmp_path / "optuna.journal") if kind == "journal" else url
    assert _studies(target, tmp_path) == ["sweep-lr"]
