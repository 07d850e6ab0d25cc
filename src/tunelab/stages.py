"""Helpers shared by the DVC stage scripts in pipelines/: params, lineage tags, best overrides."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from tunelab.run.context import RunContext

PIPELINE_KEY = "pipeline"


def load_params(path: str | Path = "params.yaml") -> tuple[DictConfig, DictConfig]:
    """(training config, pipeline section) from the composed params file."""
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


def stage_context(stage: str, **tags: str) -> RunContext:
    """The context of a stage's runs: the enclosing one (if any) plus tags tying them to the DVC
    stage and, under `dvc exp run`, to the experiment."""
    extra = {"dvc_stage": stage, **tags}
    for env, tag in (("DVC_EXP_NAME", "dvc_exp"), ("DVC_EXP_BASELINE_REV", "dvc_exp_baseline")):
        if os.environ.get(env):
            extra[tag] = os.environ[env]
    return RunContext.from_env().derive(tags=extra)


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
