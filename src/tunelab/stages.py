"""Helpers shared by the DVC stage scripts in pipelines/: params, the pipeline's MLflow run and
its stages' context, best overrides."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from tunelab.config.identity import digest
from tunelab.run.context import RunContext
from tunelab.tags import FAILURE_REASON, ROLE, Role

PIPELINE_KEY = "pipeline"


def load_params(path: str | Path = "params.yaml") -> tuple[DictConfig, DictConfig]:
    """(training config, pipeline section) from the composed params file. Every task runs
    through the stages: they report the objective's test metric and the task's others."""
    params = OmegaConf.load(path)
    stages = params.pop(PIPELINE_KEY)
    return params, stages


def use_prepared_data(cfg: DictConfig, prepared_dir: str | Path) -> DictConfig:
    """Point the data node at the prepare stage's output, keeping the original data config as record."""
    source = {
        k: v for k, v in OmegaConf.to_container(cfg.data, resolve=True).items() if k != "_target_"
    }
    cfg = cfg.copy()
    cfg.data = {
        "name": cfg.data.name,
        "_target_": "tunelab.data.sources.prepared",
        "path": str(prepared_dir),
        "source": source,
    }
    return cfg


def _dvc_tags() -> dict[str, str]:
    """Tags tying a run, under `dvc exp run`, to the experiment."""
    names = (("DVC_EXP_NAME", "dvc_exp"), ("DVC_EXP_BASELINE_REV", "dvc_exp_baseline"))
    return {tag: os.environ[env] for env, tag in names if os.environ.get(env)}


@contextmanager
def stage_run(stage: str, params: str | Path, **tags: str) -> Iterator[RunContext]:
    """The context of a stage's runs: nested under the pipeline's MLflow run (one per params file
    content, so the stages of one `dvc repro` share it), tagged with the stage and any DVC
    experiment. The pipeline run is RUNNING while a stage works and ends with it."""
    cfg, _ = load_params(params)
    ctx = RunContext.from_env()
    extra = {"dvc_stage": stage, **_dvc_tags(), **tags}
    uri = OmegaConf.select(cfg, "tracking.tracking_uri", default=None)
    if not uri:
        yield ctx.derive(tags=extra)
        return
    from tunelab.tracking.mlflow_writer import MlflowWriter
    from tunelab.tracking.run_owners import keyed_run

    writer = MlflowWriter(uri, str(cfg.experiment))
    key = digest(OmegaConf.to_container(OmegaConf.load(params), resolve=True))
    pipeline = keyed_run(
        writer,
        f"pipeline {key[:8]}",
        {"run_key": f"pipeline:{key}"},
        {ROLE: Role.PIPELINE, **_dvc_tags(), "params_digest": key},
        ctx.parent_run_id,
    )
    try:
        yield ctx.derive(parent_run_id=pipeline, tags=extra)
    except BaseException:
        writer.set_tags(pipeline, {FAILURE_REASON: f"stage {stage} failed"})
        writer.end_run(pipeline, "FAILED")
        raise
    writer.delete_tags(pipeline, [FAILURE_REASON])
    writer.end_run(pipeline, "FINISHED")


def read_overrides(path: str | Path) -> list[str]:
    """The override lines of best_overrides.yaml / .txt."""
    path = Path(path)
    if path.suffix in (".yaml", ".yml"):
        return [str(o) for o in OmegaConf.load(path).overrides]
    return [
        ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")
    ]


def apply_overrides(cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """Apply `key=value` overrides to an already composed config (group choices cannot be applied)."""
    cfg = cfg.copy()
    for ov in OverridesParser.create().parse_overrides(overrides):
        key = ov.key_or_group
        node = OmegaConf.select(cfg, key, default=None)
        if ov.is_sweep_override() or OmegaConf.is_dict(node):
            raise ValueError(
                f"override {ov.input_line!r}: only single values of existing keys can be applied "
                "to a composed config (search group choices in a study instead)"
            )
        OmegaConf.update(cfg, key, ov.value(), merge=False)
    return cfg


def write_json(obj: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    return path


def sweep_params_of(sweep_dir: str | Path) -> dict[str, str]:
    """The search space a finished sweep used, read from one of its jobs' saved Hydra config."""
    for hydra_yaml in sorted(Path(sweep_dir).glob("jobs/*/.hydra/hydra.yaml")):
        params = OmegaConf.load(hydra_yaml).hydra.sweeper.get("params") or {}
        return {str(k): str(v) for k, v in params.items()}
    return {}
