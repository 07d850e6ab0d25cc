"""`tunelab ui` as a user meets it: a first line at once, the port its link names, and no server
left behind by Ctrl-C or SIGTERM."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from pathlib import Path

import pytest
from conftest import NO_TELEMETRY
from mlflow import MlflowClient
from test_deploy import process_tree, start_ui


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text()  # a zombie is gone for the user
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_the_server_and_all_its_workers(tmp_path, sig):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(store).create_experiment("tunelab")
    with socket.socket() as taken:  # another server on the port links name by default
        with contextlib.suppress(OSError):  # already taken: the same case
            taken.bind(("127.0.0.1", 5000))
        env = {**os.environ, **NO_TELEMETRY, "MLFLOW_TRACKING_URI": store, "PYTHONUNBUFFERED": "1"}
        env["MLFLOW_WORKERS"] = "2"  # workers of their own, which must stop too
        ui = start_ui(tmp_path, env)
        try:
            t0 = time.monotonic()
            first = ui.stdout.readline()
            assert first.startswith("starting the MLflow UI on sqlite:///"), first
            assert time.monotonic() - t0 < 30
            lines = []
            for line in ui.stdout:
                lines.append(line)
                if "MLflow UI on" in line:
                    break
            said = "".join(lines)
            assert "port 5000 is taken: serving on " in said, said + ui.stderr.read()
            port = said.split("serving on ")[1].split()[0]
            assert f"http://127.0.0.1:{port}/#/experiments/" in said
            tree = process_tree(ui.pid)
            assert len(tree) >= 4, tree  # tunelab, mlflow ui, uvicorn and its 2 workers
        finally:
            ui.send_signal(sig)  # to tunelab alone, as `kill` or a service manager sends it
            ui.communicate(timeout=60)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(_alive(p) for p in tree):
        time.sleep(0.2)
    assert not [c for p, c in tree.items() if _alive(p)]
