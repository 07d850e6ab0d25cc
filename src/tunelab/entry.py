"""What one Hydra job does: run (or diagnose), write metrics.json, say where to look."""

from __future__ import annotations

import json
import logging
import signal
from pathlib import Path

from omegaconf import DictConfig

from tunelab.train import Terminated, run, run_context

log = logging.getLogger(__name__)


def main(cfg: DictConfig) -> float:
    if cfg.get("diagnose"):
        from tunelab.diagnostics.run import run_diagnose

        return run_diagnose(cfg)
    try:
        metrics = run(cfg, reporter=_reporter())
    except (Terminated, KeyboardInterrupt) as exc:
        sig = signal.SIGINT if isinstance(exc, KeyboardInterrupt) else signal.SIGTERM
        log.error(
            "stopped by %s: the run is recorded KILLED; the same command resumes it", sig.name
        )
        raise SystemExit(128 + sig) from None
    _, output_dir = run_context()
    if output_dir:
        Path(output_dir, "metrics.json").write_text(json.dumps(metrics, indent=2))
    log.info("result: " + "  ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
    return float(metrics[cfg.objective.metric])


def _reporter():
    try:
        from tunelab.sweep.reporting import reporter_from_env
    except ImportError:
        return None
    return reporter_from_env()


def where_to_look(tracking_uri: str, experiment_id: str | None) -> str:
    """The command that opens the MLflow UI on this store, and a direct link to the runs table."""
    link = f"http://127.0.0.1:5000/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
    return f"see the runs: mlflow ui --backend-store-uri {tracking_uri}  then open {link}"
