"""Start the MLflow UI on the project's store (a local file or a tracking server's database) on a
free port, as tunelab serves it (experiments open in the runs table), and print the link to the
experiment's runs table."""

from __future__ import annotations

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
    p.add_argument(
        "--compare",
        metavar="RUN_ID|SWEEP",
        help="also link MLflow's compare view of a multirun's jobs, a sweep's best trials or a "
        "study's confirmed cells (the parent run's id, or the sweep's or study's name)",
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def compared(client: Any, target: str) -> tuple[list[str], list[str]]:
    """The runs `--compare` names (the ones its parent run lists, else its children) and their
    experiments. `target`: a parent run's id, or a sweep's or study's run name."""
    from mlflow.exceptions import MlflowException

    from tunelab.tracking.mlflow_writer import COMPARE_TAG

    try:
        parents = [client.get_run(target)]
    except MlflowException:
        ids = [e.experiment_id for e in client.search_experiments()]
        name = target.replace("'", "\\'")
        found = client.search_runs(ids, f"attributes.run_name = '{name}'") if ids else []
        parents = [r for r in found if r.data.tags.get(COMPARE_TAG)] or found
    if not parents:
        raise CommandError(f"--compare {target!r}: no run with that id or name")
    parent = parents[0]
    runs = [r for r in parent.data.tags.get(COMPARE_TAG, "").split(",") if r]
    if not runs:
        children = client.search_runs(
            [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
        )
        runs = [r.info.run_id for r in children]
    if not runs:
        raise CommandError(f"--compare {target!r}: run {parent.info.run_id} has no runs to compare")
    experiments = {client.get_run(r).info.experiment_id for r in runs}
    return runs, sorted(experiments)


def run(args: Any) -> int:
    uri = common.store_uri(args.tracking_uri)
    exp = common.client(uri).get_experiment_by_name(args.experiment)
    compare = compared(common.client(uri), args.compare) if args.compare else None
    if exp is None:
        raise CommandError(f"no experiment {args.experiment!r} in {mask(uri)} (pass --experiment)")
    port = args.port or free_port()
    cmd = [sys.executable, "-m", "mlflow", "ui", "--app-name", "tunelab", "--backend-store-uri",
           uri, "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_until_up(server, f"http://127.0.0.1:{port}/health")
        link = common.run_link(exp.experiment_id, port=port)
        print(f"MLflow UI on {mask(uri)}: {link}", flush=True)
        if compare:
            from tunelab.tracking.mlflow_writer import ui_link

            runs, experiments = compare
            print(f"side by side: {ui_link(experiments, runs=runs, port=port)}", flush=True)
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
            raise CommandError(f"mlflow ui exited: {(server.stderr.read() or '')[-1500:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise CommandError(f"mlflow ui did not answer at {url} within {timeout_s:.0f} s")
