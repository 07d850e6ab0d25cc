"""Experiment tracking. The run layer sees only the `Tracker` protocol; `MlflowTracker` records a
run in MLflow through `MlflowWriter`, the one writer every part of tunelab uses."""

from tunelab.tracking.base import NullTracker, Tracker

__all__ = ["NullTracker", "Tracker"]
