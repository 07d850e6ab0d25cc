"""Store URIs, read in one place: a SQLite store's file and back, a relative one pinned to the
working directory, and the shell command that opens the MLflow UI on a store without printing
its password."""

from __future__ import annotations

import shlex
from pathlib import Path

from tunelab.config.secrets import mask

SQLITE = "sqlite:///"


def sqlite_path(uri: str | None) -> Path | None:
    """The file of a SQLite URI (`sqlite:///rel.db`, `sqlite:////abs.db`); None for any other."""
    if uri and uri.startswith(SQLITE):
        return Path(uri[len(SQLITE) :])
    return None


def sqlite_uri(path: str | Path) -> str:
    """The SQLite URI of a file."""
    return SQLITE + str(path)


def absolute_uri(uri: str) -> str:
    """Pin a relative sqlite path to the current directory (MLflow caches stores by URI)."""
    path = sqlite_path(uri)
    if path is not None and not path.is_absolute():
        return sqlite_uri(path.resolve())
    return uri


def missing_store(uri: str) -> bool:
    """True for a SQLite store whose file does not exist (reading it would create an empty one)."""
    path = sqlite_path(uri)
    return path is not None and not path.is_file()


def lock_beside(uri: str, suffix: str) -> Path | None:
    """A lock file beside a SQLite store (its path + `suffix`); None for a server's store."""
    path = sqlite_path(uri)
    return Path(f"{path}{suffix}") if path is not None else None


def has_secret(uri: str) -> bool:
    """Whether the URI carries a password (masking changes it)."""
    return mask(uri) != uri


UI_STORE_ENV = "MLFLOW_BACKEND_STORE_URI"  # where `mlflow ui` also reads its store from


def ui_command(uri: str) -> str:
    """The shell command that opens tunelab's MLflow UI on the store: a URI without a secret as
    it is (quoted for the shell); one with a password through the environment variable `mlflow
    ui` reads, named with the masked URI, so the password is never printed."""
    ui = "mlflow ui --app-name tunelab"
    if not has_secret(uri):
        return f"{ui} --backend-store-uri {shlex.quote(uri)}"
    return f'{ui} --backend-store-uri "${UI_STORE_ENV}" (with {UI_STORE_ENV}={mask(uri)}, password filled in)'
