"""The team deployment (deploy/) against the real thing: the shipped database init applied to a
throwaway PostgreSQL gives each part only what it needs, the MLflow server speaks HTTPS, and no
secret appears in any process's command line, where `ps` shows it to every user."""

from __future__ import annotations

import base64
import os
import signal
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import psycopg
import pytest
import yaml
from conftest import NO_TELEMETRY, free_port, reaped, wait_for_health

from tunelab.localpg import LocalPostgres

# the PostgreSQL cluster and the MLflow server (session fixtures) start on one worker only
pytestmark = pytest.mark.xdist_group("postgres")

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
ROLES = {"mlflow": "Mlflow-Db-Pass-2718", "tunelab_worker": "Worker:Db\\Pass-1618"}


@pytest.fixture(scope="module")
def team_db(postgres, tmp_path_factory):
    """A cluster of its own (the init creates fixed database names) after deploy/postgres-init.sh,
    the file compose runs; its superuser is `postgres`, as in the image. Whether PostgreSQL tests
    run here at all is the session cluster's (`postgres`) decision."""
    pg = LocalPostgres(user="postgres").start()
    try:
        secret_file = tmp_path_factory.mktemp("secrets") / "worker_db_password"
        secret_file.write_text(ROLES["tunelab_worker"] + "\n")  # as a Docker secret, from a file
        env = {
            **os.environ,
            "PGHOST": "127.0.0.1",
            "PGPORT": str(pg.port),
            "PGPASSWORD": pg.password,
            "POSTGRES_USER": pg.user,
            "MLFLOW_DB_PASSWORD": ROLES["mlflow"],
            "TUNELAB_WORKER_DB_PASSWORD_FILE": str(secret_file),
        }
        proc = subprocess.run(
            ["bash", str(DEPLOY / "postgres-init.sh")],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        assert not any(pw in proc.stdout + proc.stderr for pw in ROLES.values())
        yield pg
    finally:
        pg.stop()


def connect(pg: LocalPostgres, role: str, db: str, password: str | None = None):
    password = pg.password if role == pg.user else ROLES[role] if password is None else password
    return psycopg.connect(
        host="127.0.0.1", port=pg.port, user=role, password=password, dbname=db, autocommit=True
    )


def url(pg: LocalPostgres, role: str, db: str, with_password: bool = True) -> str:
    auth = f"{role}:{ROLES[role]}" if with_password else role
    return f"postgresql://{auth}@127.0.0.1:{pg.port}/{db}"


def role_powers(conn) -> tuple[bool, bool, bool]:
    """(superuser, may create roles, may create databases) of the connected role."""
    return conn.execute(
        "SELECT rolsuper, rolcreaterole, rolcreatedb FROM pg_roles WHERE rolname = current_user"
    ).fetchone()


def test_the_init_gives_the_worker_the_optuna_database_only(team_db):
    import optuna

    from tunelab.tuning.study_storage import make_storage

    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        connect(team_db, "tunelab_worker", "optuna", password="wrong")
    for db in ("mlflow", "mlflow_auth", "postgres"):
        with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
            connect(team_db, "tunelab_worker", db)
    # the same password opens optuna, where Optuna creates its tables and runs a study
    storage = make_storage(url(team_db, "tunelab_worker", "optuna"))
    study = optuna.create_study(study_name="deploy", storage=storage)
    study.optimize(lambda t: t.suggest_float("x", -1, 1) ** 2, n_trials=2)
    assert len(optuna.load_study(study_name="deploy", storage=storage).trials) == 2
    marker = team_db.root / "ran"  # the server's directory: its OS user may write there
    payload = f"cat > /dev/null; touch {marker}"
    with connect(team_db, "tunelab_worker", "optuna") as conn:
        assert role_powers(conn) == (False, False, False)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(f"COPY (SELECT 1) TO PROGRAM '{payload}'")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("CREATE ROLE intruder SUPERUSER")
    assert not marker.exists()
    # control: the superuser's session runs the same payload
    with connect(team_db, team_db.user, "postgres") as conn:
        conn.execute(f"COPY (SELECT 1) TO PROGRAM '{payload}'")
    assert marker.exists()


def test_the_init_gives_the_mlflow_server_its_two_databases_and_no_superuser(team_db):
    for db in ("mlflow", "mlflow_auth"):
        with connect(team_db, "mlflow", db) as conn:
            owner = conn.execute(
                "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()"
            ).fetchone()
            assert owner == ("mlflow",)
            conn.execute("CREATE TABLE t (x int)")  # an owner's schema: MLflow's migrations
            conn.execute("DROP TABLE t")
    with connect(team_db, "mlflow", "mlflow") as conn:
        assert role_powers(conn) == (False, False, False)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("COPY (SELECT 1) TO PROGRAM 'true'")
    for db in ("optuna", "postgres"):
        with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
            connect(team_db, "mlflow", db)


def process_tree(root: int) -> dict[int, str]:
    """pid -> command line of root and every process below it."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    tree, todo = {}, [root]
    while todo:
        pid = todo.pop()
        try:
            tree[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        todo += children.get(pid, [])
    return tree


def self_signed(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


@pytest.mark.slow
def test_the_team_server_speaks_https_and_no_secret_is_on_a_command_line(
    team_db, tmp_path, monkeypatch
):
    from mlflow import MlflowClient

    cert, key = self_signed(tmp_path)
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    admin_pw, flask_key = "Admin-Pass-27182", "f1a5k" * 12
    (secrets / "db").write_text(ROLES["mlflow"] + "\n")
    (secrets / "flask").write_text(flask_key + "\n")
    port = free_port()
    # the URIs carry no password: the database password comes from a file, as compose passes it
    env = {
        **os.environ,
        **NO_TELEMETRY,
        "MLFLOW_BACKEND_URI": url(team_db, "mlflow", "mlflow", False),
        "MLFLOW_AUTH_DB_URI": url(team_db, "mlflow", "mlflow_auth", False),
        "MLFLOW_DB_PASSWORD_FILE": str(secrets / "db"),
        "MLFLOW_AUTH_ADMIN_PASSWORD": admin_pw,
        "MLFLOW_FLASK_SERVER_SECRET_KEY_FILE": str(secrets / "flask"),
        "PORT": str(port),
        "TLS_CERT_FILE": str(cert),
        "TLS_KEY_FILE": str(key),
        "ARTIFACTS_DIR": str(tmp_path / "artifacts"),
        "WORKERS": "1",
    }
    log = tmp_path / "server.log"
    with log.open("w") as out:
        server = reaped(
            subprocess.Popen(
                ["bash", str(DEPLOY / "team-server.sh")],
                env=env,
                cwd=tmp_path,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        )
    base = f"https://127.0.0.1:{port}"
    search = "/api/2.0/mlflow/experiments/search?max_results=5"
    trusted = ssl.create_default_context(cafile=str(cert))

    def status(scheme_url: str, auth: str | None, context: ssl.SSLContext | None = trusted) -> int:
        req = urllib.request.Request(scheme_url + search)
        if auth:
            req.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
        try:
            with urllib.request.urlopen(req, timeout=120, context=context) as resp:
                return resp.status
        except urllib.error.HTTPError as exc:
            return exc.code

    try:
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # the health check trusts the certificate
        wait_for_health(server, base, log)
        monkeypatch.delenv("SSL_CERT_FILE")  # from here on each request names what it trusts
        assert status(base, None) == 401
        assert status(base, "admin:wrong") == 401
        assert status(base, f"admin:{admin_pw}") == 200
        # a worker's MLflow client trusts the certificate by MLFLOW_TRACKING_SERVER_CERT_PATH
        monkeypatch.setenv("MLFLOW_TRACKING_SERVER_CERT_PATH", str(cert))
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", admin_pw)
        client = MlflowClient(base)
        assert client.get_experiment(client.create_experiment("tls")).name == "tls"
        # nothing answers in clear, and a client that does not trust the certificate refuses it
        with pytest.raises((OSError, urllib.error.HTTPError)):
            status(f"http://127.0.0.1:{port}", f"admin:{admin_pw}")
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            status(base, None, ssl.create_default_context(cafile=None, capath=None, cadata=None))
        tree = process_tree(server.pid)
        assert any(" -m uvicorn " in c and "--ssl-certfile" in c for c in tree.values()), tree
        for secret in (ROLES["mlflow"], admin_pw, flask_key):
            assert not [c for c in tree.values() if secret in c], tree
        # control: the secrets the server needs reach it, by its environment
        (uvicorn,) = [p for p, c in tree.items() if " -m uvicorn " in c]
        environ = Path(f"/proc/{uvicorn}/environ").read_bytes().decode(errors="replace")
        assert admin_pw in environ and flask_key in environ
        assert ROLES["mlflow"] not in environ  # the database's is in a private password file
    finally:
        server.terminate()
        server.wait(timeout=60)
    assert not any(s in log.read_text() for s in (ROLES["mlflow"], admin_pw, flask_key))


def test_the_team_server_refuses_to_serve_the_network_without_tls(tmp_path):
    env = {
        **os.environ,
        "MLFLOW_BACKEND_URI": "postgresql://mlflow@db/mlflow",
        "MLFLOW_AUTH_DB_URI": "postgresql://mlflow@db/mlflow_auth",
        "MLFLOW_AUTH_ADMIN_PASSWORD": "x",
        "MLFLOW_FLASK_SERVER_SECRET_KEY": "y",
        "HOST": "0.0.0.0",
        "ALLOWED_HOSTS": "mlflow.example.org",
    }
    proc = subprocess.run(
        ["bash", str(DEPLOY / "team-server.sh")],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2 and "set TLS_CERT_FILE" in proc.stderr, proc.stderr


def start_ui(cwd: Path, env: dict[str, str]) -> subprocess.Popen:
    """`tunelab ui` as a user starts it from a terminal (a suite started in the background
    inherits SIGINT ignored), its output readable line by line."""
    return reaped(
        subprocess.Popen(
            [sys.executable, "-m", "tunelab", "ui"],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
    )


@pytest.mark.slow
def test_tunelab_ui_puts_no_password_on_a_command_line(team_db, tmp_path):
    from mlflow import MlflowClient

    store = url(team_db, "mlflow", "mlflow")
    if MlflowClient(store).get_experiment_by_name("tunelab") is None:
        MlflowClient(store).create_experiment("tunelab")
    # the user hands the URI by the environment; tunelab hands it on the same way
    # (one server worker, MLFLOW_WORKERS, instead of 4: the tests' machine is small)
    env = {
        **os.environ,
        **NO_TELEMETRY,
        "MLFLOW_TRACKING_URI": store,
        "PYTHONUNBUFFERED": "1",
        "MLFLOW_WORKERS": "1",
    }
    ui = start_ui(tmp_path, env)
    try:
        first = ui.stdout.readline()  # printed at once, before the server starts
        assert "starting the MLflow UI on postgresql://mlflow:***@" in first, first
        # then, once it answers (after a line naming another port if 5000 is taken)
        ready = next((line for line in ui.stdout if line.startswith("MLflow UI on")), "")
        assert "MLflow UI on postgresql://mlflow:***@" in ready, ready
        tree = process_tree(ui.pid)
        (mlflow_ui,) = [p for p, c in tree.items() if " mlflow ui " in c]
        assert len(tree) >= 3, tree  # tunelab, mlflow ui, its server
        assert not [c for c in tree.values() if ROLES["mlflow"] in c], tree
        # control: the server serves that store, handed over by its environment
        environ = Path(f"/proc/{mlflow_ui}/environ").read_bytes().split(b"\0")
        assert f"MLFLOW_BACKEND_STORE_URI={store}".encode() in environ
    finally:
        ui.send_signal(signal.SIGINT)  # Ctrl-C: tunelab stops the server
        out, err = ui.communicate(timeout=60)
    assert ROLES["mlflow"] not in out + err
    assert not (tmp_path / "mlflow.db").exists()  # no default store beside it


def test_compose_gives_least_privilege_tls_and_secrets_by_file():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services, secrets = compose["services"], compose["secrets"]
    db, mlflow = services["db"], services["mlflow"]
    assert "ports" not in db  # PostgreSQL is reachable on the compose network only
    superuser = db["environment"].get("POSTGRES_USER", "postgres")
    # the init is the file the tests above apply
    assert any(
        v.startswith("./postgres-init.sh:/docker-entrypoint-initdb.d/") for v in db["volumes"]
    )
    for name, service in services.items():
        env = service.get("environment", {})
        for key, value in env.items():
            value = str(value)
            if "://" in value:  # a URL a service connects with: never the superuser, no password
                auth = value.split("://", 1)[1].split("@", 1)
                assert len(auth) == 1 or (auth[0] != superuser and ":" not in auth[0]), (name, key)
            if any(word in key for word in ("PASSWORD", "SECRET", "KEY")):
                # a secret is a file the service reads, never a value in its environment
                assert key.endswith("_FILE") and value.startswith("/run/secrets/"), (name, key)
                assert value.removeprefix("/run/secrets/") in service["secrets"], (name, key)
    for name, source in secrets.items():
        assert set(source) & {"environment", "file"}, name  # from the host's env or a file
    assert db["environment"]["POSTGRES_PASSWORD_FILE"] == "/run/secrets/postgres_password"
    # MLflow speaks HTTPS itself (deploy/team-server.sh with TLS_*_FILE), as tested above
    env = mlflow["environment"]
    assert {"TLS_CERT_FILE", "TLS_KEY_FILE"} <= set(env) and env["HOST"] == "0.0.0.0"
    assert mlflow["ports"] == ["443:5000"]
    assert env["MLFLOW_BACKEND_URI"].startswith("postgresql://mlflow@db:5432/")
