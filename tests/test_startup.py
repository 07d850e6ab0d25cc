"""The heavy libraries are imported once and frozen out of later garbage collections."""

from __future__ import annotations

import gc
import sys

from tunelab.startup import load_libraries


def test_libraries_are_imported_and_frozen_with_the_collector_back_on():
    load_libraries()
    assert gc.isenabled()
    for module in ("torch", "torch._dynamo", "mlflow.store.tracking.sqlalchemy_store"):
        assert module in sys.modules
    assert gc.get_freeze_count() > 100_000  # torch's and MLflow's objects are never rescanned


def test_a_collector_switched_off_by_the_caller_stays_off():
    gc.disable()
    try:
        load_libraries.__wrapped__()
        assert not gc.isenabled()
    finally:
        gc.enable()
