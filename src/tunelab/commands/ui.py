"""Start the MLflow UI on the project's store (a local file or a tracking server's database) on a
free port, as tunelab serves it (experiments open in the runs table), and print the link to the
experiment's runs table."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from typing import Any

from tunelab.commands import common
from tunelab.commands.common import CommandError
from tunelab.config.secrets import mask

HELP = "the MLflow UI on the project's store, with the link to its runs"


def add_arguments(p: Any) -> None:
    p.add_argument("--tracking-uri", help="the MLflow store (default: the project's)")
    p.add_argument("--experiment", default="tunelab", help="whose runs table to link")
    p.add_argument("--port", type=int, default=0, help="default: a free port")
    p.add_argument(
        "--check", action="store_true", help="start, check the link answers, stop (for scripts)"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(args: Any) -> int:
    uri = common.store_uri(args.tracking_uri)
    exp = common.client(uri).get_experiment_by_name(args.experiment)
    if exp is None:
        raise CommandError(f"no experiment {args.experiment!r} in {mask(uri)} (pass --experiment)")
    port = args.port or free_port()
    # the store's URI may hold a password: the environment carries it, the command line (which
    # `ps` shows every user) does not
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--app-name",
        "tunelab",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    env = {**os.environ, "MLFLOW_BACKEND_STORE_URI": uri}
    server = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        wait_until_up(server, f"http://127.0.0.1:{port}/health")
        link = common.run_link(exp.experiment_id, port=port)
        print(f"MLflow UI on {mask(uri)}: {link}", flush=True)
        if args.check:
            return 0
        print("Ctrl-C stops it", flush=True)
        server.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.terminate()
        server.wait(timeout=30)
    return 0


def wait_until_up(server: subprocess.Popen, url: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise CommandError(f"mlflow ui exited: {mask((server.stderr.read() or '')[-1500:])}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise CommandError(f"mlflow ui did not answer at {url} within {timeout_s:.0f} s")
