"""Import the heavy libraries once with Python's cyclic garbage collector paused, then freeze them.

torch, MLflow (with SQLAlchemy) and tunelab's own modules leave about 650k objects that live until
the process exits. Python's collector rescans every one of them in each full collection, and
imports trigger many: on a 2-core machine about 1 s of a one-epoch `python src/train.py`, plus a
~0.3 s pause during about one run in three of an in-process sweep. Frozen objects (`gc.freeze`)
are skipped by later collections; what runs create afterwards is collected as before.
"""

from __future__ import annotations

import gc
from functools import cache


@cache
def load_libraries() -> None:
    """Once per process, before the first run: import, then freeze what is alive."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        import mlflow.store.tracking.sqlalchemy_store  # noqa: F401  (the default sqlite store)
        import torch._dynamo  # noqa: F401  (imported by the first optimizer step otherwise)

        import tunelab.train  # noqa: F401  (torch, numpy and the rest of tunelab)
    finally:
        gc.freeze()
        if enabled:
            gc.enable()
