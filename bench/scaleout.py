"""Many workers on one study: trials per minute with 1, 2 and 4 sweep processes sharing one
PostgreSQL study and one MLflow tracking server (on PostgreSQL), against the same work on the
embedded default (journal file + SQLite MLflow store, the same processes sharing them), and the
trials lost or duplicated (must be none).

The objective holds each trial for --trial-s seconds without using the CPU (a stand-in for training
on a device), so what the rows compare is the coordination: asking, recording, locking. Each row:
the wall time from starting the workers to the last one's exit, trials per minute, the per-trial
overhead (wall x workers / trials - trial time), and checks that the study has exactly --trials
trials numbered 0..n-1, that MLflow has one sweep parent and one child run per trial.

PostgreSQL is a throwaway local cluster of the system's PostgreSQL (tunelab.localpg); the MLflow
server runs on it with served artifacts, on loopback.

    python bench/scaleout.py [--trials 24] [--trial-s 0.5] [--workers 1 2 4]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

APP = """
import time, math
import hydra

def task(cfg):
    time.sleep(cfg.trial_s)
    return (math.log10(cfg.optimizer.lr) + 2.0) ** 2

main = hydra.main(config_path="conf", config_name="config", version_base="1.3")(task)
if __name__ == "__main__":
    main()
"""
CONFIG = """
defaults:
  - _self_
  - optional search: null
objective: {metric: val/loss, direction: minimize}
optimizer: {lr: 0.01, weight_decay: 0.0}
seed: 0
trial_s: 0.5
experiment: scaleout
tracking: {tracking_uri: null}
hydra:
  searchpath: [file://REPO/conf]
  job_logging: {root: {level: WARNING}}
  hydra_logging: {root: {level: WARNING}}
"""
QUIET = {"MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONWARNINGS": "ignore"}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(backend: str, artifacts: Path, log: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--backend-store-uri",
        backend,
        "--serve-artifacts",
        "--artifacts-destination",
        str(artifacts),
        "--workers",
        "2",
    ]
    with log.open("w") as out:
        server = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **QUIET}
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        if server.poll() is not None:
            raise RuntimeError(f"mlflow server exited: {log.read_text()[-2000:]}")
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2).close()
            return server, url
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError("mlflow server did not answer in 180 s") from None
            time.sleep(0.5)


def run_workers(app: Path, n: int, name: str, storage: str, tracking: str, args) -> float:
    env = {**os.environ, **QUIET, "TUNELAB_OPTUNA_STORAGE": storage}
    cmd = [
        sys.executable,
        "app.py",
        "-m",
        "search=random",
        f"hydra.sweeper.n_trials={args.trials}",
        f"hydra.sweeper.study_name={name}",
        f"trial_s={args.trial_s}",
        f"tracking.tracking_uri={tracking}",
        "hydra.sweeper.figures=false",
        f"experiment={name}",
    ]
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(
            [*cmd, f"hydra.sweep.dir=multirun/{name}/w{i}"],
            cwd=app,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(n)
    ]
    outs = [p.communicate()[0] for p in procs]
    wall = time.perf_counter() - t0
    for p, out in zip(procs, outs, strict=True):
        if p.returncode:
            raise RuntimeError(f"worker failed:\n{out[-3000:]}")
    return wall


def check(name: str, storage: str, tracking: str, trials: int) -> str:
    """'ok' or what was lost or duplicated, in the study and in MLflow."""
    import optuna
    from mlflow.tracking import MlflowClient

    from tunelab.tuning.study_storage import make_storage

    study = optuna.load_study(study_name=name, storage=make_storage(storage))
    numbers = sorted(t.number for t in study.trials)
    client = MlflowClient(tracking)
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id], max_results=5000)
    parents = [r for r in runs if r.data.tags.get("role") == "sweep"]
    children = sorted(int(r.data.tags["trial"]) for r in runs if r.data.tags.get("role") == "trial")
    problems = []
    if numbers != list(range(trials)):
        problems.append(f"study has {len(numbers)} trials")
    if children != list(range(trials)):
        problems.append(f"{len(children)} trial runs ({len(set(children))} distinct)")
    if len(parents) != 1:
        problems.append(f"{len(parents)} sweep parents")
    return "ok" if not problems else "; ".join(problems)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--trials", type=int, default=24)
    ap.add_argument("--trial-s", type=float, default=0.5)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    args = ap.parse_args()
    from tunelab.localpg import LocalPostgres

    with tempfile.TemporaryDirectory() as tmp, LocalPostgres() as pg:
        app = Path(tmp)
        (app / "conf").mkdir()
        (app / "app.py").write_text(APP)
        (app / "conf" / "config.yaml").write_text(CONFIG.replace("REPO", str(ROOT)))
        server, url = start_server(pg.url("mlflow"), app / "artifacts", app / "server.log")
        rows = []
        try:
            for backend in ("embedded", "team"):
                for n in args.workers:
                    name = f"{backend}-{n}"
                    if backend == "team":
                        storage, tracking = pg.url("optuna"), url
                    else:
                        storage = f"journal:{app / name / 'optuna.journal'}"
                        tracking = f"sqlite:///{app / name / 'mlflow.db'}"
                    wall = run_workers(app, n, name, storage, tracking, args)
                    verdict = check(name, storage, tracking, args.trials)
                    overhead = wall * n / args.trials - args.trial_s
                    rows.append((backend, n, wall, args.trials / wall * 60, overhead, verdict))
                    print(f"  {name}: {wall:.1f} s", flush=True)
        finally:
            server.terminate()
            server.wait(timeout=60)
    print(
        f"\n{args.trials} trials of {args.trial_s} s each (the objective sleeps: no CPU), "
        f"{os.cpu_count()} cores"
    )
    print("backend   workers  wall s  trials/min  overhead s/trial  lost or duplicated")
    for backend, n, wall, rate, overhead, verdict in rows:
        print(f"{backend:9} {n:7d} {wall:7.1f} {rate:11.1f} {overhead:17.2f}  {verdict}")
    base = {n: rate for b, n, _, rate, _, _ in rows if b == "embedded"}
    for b, n, _, rate, _, _ in rows:
        if b == "team" and n in base:
            print(f"team/embedded trials per minute with {n} worker(s): {rate / base[n]:.2f}x")


if __name__ == "__main__":
    main()
