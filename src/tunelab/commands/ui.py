"""Start the MLflow UI on the project's store (a local file or a tracking server's database) on a
free port, as tunelab serves it (experiments open in the runs table), and print the link to the
experiment's runs table."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from typing import Any

from tunelab.commands import common
from tunelab.commands.common import CommandError
from tunelab.config.secrets import mask
from tunelab.tags import COMPARE_RUNS
from tunelab.tracking.mlflow_reader import MlflowReader
from tunelab.tracking.mlflow_writer import ui_link

HELP = "the MLflow UI on the project's store, with the link to its runs"
DEFAULT_PORT = 5000


def add_arguments(p: Any) -> None:
    p.add_argument("--tracking-uri", help="the MLflow store (default: the project's)")
    p.add_argument("--experiment", default="tunelab", help="whose runs table to link")
    p.add_argument(
        "--port",
        type=int,
        default=0,
        help="default: 5000 (what printed links name), else a free one",
    )
    p.add_argument(
        "--check", action="store_true", help="start, check the link answers, stop (for scripts)"
    )
    p.add_argument(
        "--compare",
        metavar="RUN_ID|SWEEP",
        help="also link MLflow's compare view of a multirun's jobs, a sweep's best trials or a "
        "study's confirmed cells (the parent run's id, or the sweep's or study's name)",
    )


def free_port(preferred: int = 0) -> int:
    """`preferred` when it is free on 127.0.0.1, else a port the system picks."""
    for port in (preferred, 0) if preferred else (0,):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise CommandError("no free port on 127.0.0.1")


def compared(store: MlflowReader, target: str) -> tuple[list[str], list[str]]:
    """The runs `--compare` names (the ones its parent run lists, else its children) and their
    experiments. `target`: a parent run's id, or a sweep's or study's run name."""
    parent = store.run(target)
    if parent is None:
        name = target.replace("'", "\\'")
        found = store.search(f"attributes.run_name = '{name}'")
        parents = [r for r in found if r.data.tags.get(COMPARE_RUNS)] or found
        parent = parents[0] if parents else None
    if parent is None:
        raise CommandError(f"--compare {target!r}: no run with that id or name")
    runs = [r for r in parent.data.tags.get(COMPARE_RUNS, "").split(",") if r]
    if not runs:
        runs = [r.info.run_id for r in store.children(parent)]
    if not runs:
        raise CommandError(f"--compare {target!r}: run {parent.info.run_id} has no runs to compare")
    experiments = {common.get_run(store, r).info.experiment_id for r in runs}
    return runs, sorted(experiments)


def run(args: Any) -> int:
    uri = common.store_uri(args.tracking_uri)
    print(f"starting the MLflow UI on {mask(uri)} …", flush=True)
    store = MlflowReader(uri)
    experiment_id = store.experiment_named(args.experiment)
    compare = compared(store, args.compare) if args.compare else None
    if experiment_id is None:
        raise CommandError(f"no experiment {args.experiment!r} in {mask(uri)} (pass --experiment)")
    previous = signal.signal(signal.SIGTERM, _terminated)
    server = None
    try:
        server, port = serve(uri, args.port)
        link = ui_link(experiment_id, port=port)
        print(f"MLflow UI on {mask(uri)}: {link}", flush=True)
        if compare:
            runs, experiments = compare
            print(f"side by side: {ui_link(experiments, runs=runs, port=port)}", flush=True)
        if args.check:
            return 0
        print("Ctrl-C stops it", flush=True)
        server.wait()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        if server is not None:
            stop(server)
    return 0


def serve(uri: str, port: int) -> tuple[subprocess.Popen, int]:
    """`mlflow ui` on `port`, or on 5000 (what printed links name) when free, else on a free
    port (said); answering on /health. Another server taking 5000 first moves it to a free one."""
    for attempt in range(2):
        chosen = port or free_port(DEFAULT_PORT if attempt == 0 else 0)
        if not port and chosen != DEFAULT_PORT:
            print(f"port {DEFAULT_PORT} is taken: serving on {chosen} (its link below)", flush=True)
        server = start(uri, chosen)
        try:
            wait_until_up(server, f"http://127.0.0.1:{chosen}/health")
            return server, chosen
        except CommandError as exc:
            stop(server)
            if port or "address already in use" not in str(exc).lower():
                raise
        except BaseException:
            stop(server)
            raise
    raise CommandError("no free port for the MLflow UI")


def start(uri: str, port: int) -> subprocess.Popen:
    """The server in its own process group (stop() ends it and all its workers). The store's URI
    may hold a password: the environment carries it, not the command line `ps` shows."""
    cmd = [sys.executable, "-m", "mlflow", "ui", "--app-name", "tunelab"]
    cmd += ["--host", "127.0.0.1", "--port", str(port)]
    # one server worker starts in a few seconds and serves one user; MLFLOW_WORKERS overrides it
    env = {"MLFLOW_WORKERS": "1", **os.environ, "MLFLOW_BACKEND_STORE_URI": uri}
    return subprocess.Popen(
        cmd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )


def _terminated(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # SIGTERM ends it as Ctrl-C does


def stop(server: subprocess.Popen) -> None:
    """Stop the server's whole process group (mlflow ui and its workers); kill what lingers."""
    for sig, wait_s in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, sig)
        try:
            server.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            continue
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)  # workers that outlived their parent
        return


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
