"""tunelab's own environment variables: each name, what it means, and the one function that reads
it, so a setting is added or renamed in one place. Imports nothing of tunelab.

(Jobs in other processes also learn their run's context from a variable, which `run/context.py`
alone writes and reads: that hand-off is the run contract's, not a user's setting.)"""

from __future__ import annotations

import os

# A team's study database (e.g. postgresql://…): the Optuna storage of every sweep that names none
# in hydra.sweeper.storage. It holds a password, so it comes from the environment, never a config.
OPTUNA_STORAGE = "TUNELAB_OPTUNA_STORAGE"
# This machine's name in owner stamps, for machines that hostname, pid namespace and boot id do not
# tell apart (or that should be named the same across reboots).
HOST = "TUNELAB_HOST"


def _setting(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or None


def optuna_storage() -> str | None:
    """$TUNELAB_OPTUNA_STORAGE, None when unset or empty."""
    return _setting(OPTUNA_STORAGE)


def host_name() -> str | None:
    """$TUNELAB_HOST, None when unset or empty."""
    return _setting(HOST)
