"""Import the heavy libraries once with Python's cyclic garbage collector paused, then freeze them.

torch, MLflow (with SQLAlchemy), Optuna, SciPy and matplotlib leave about 650k objects that live
until the process exits. Python's collector rescans every one of them in each full collection, and
imports trigger many: on a 2-core machine about 1 s of a one-epoch `python src/train.py`, plus a
~0.3 s pause during about one run in three of an in-process sweep. Frozen objects (`gc.freeze`)
are skipped by later collections; what runs create afterwards is collected as before.

Only third-party libraries are listed: this module imports nothing of tunelab's, so any layer
may call it.
"""

from __future__ import annotations

import gc
import importlib
from functools import cache

HEAVY = (
    "torch",
    "torch._dynamo",  # imported by the first optimizer step otherwise
    "mlflow.store.tracking.sqlalchemy_store",  # the default sqlite store
    "optuna",
    "scipy.stats",
    "matplotlib.figure",
    "hydra.utils",
)


@cache
def load_libraries() -> None:
    """Once per process, before the first run: import, then freeze what is alive."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        for name in HEAVY:
            importlib.import_module(name)
    finally:
        gc.freeze()
        if enabled:
            gc.enable()
