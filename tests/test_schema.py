"""The up-front schema: its tables agree with conf/, the targets and the registries; and a fuzz
generated from the config groups (a wrong type, an out-of-range value and an unknown sibling for
every key) is refused through Hydra's own entry, naming the key, before anything exists."""

from __future__ import annotations

import inspect
import os
from pathlib import Path

import pytest
from conftest import CONF
from omegaconf import OmegaConf

from tunelab.config import groups
from tunelab.config import rules as r

# The groups with a conf/ directory of options: every file is checked against its table below.
FILE_GROUPS = tuple(g for g in groups.NODE_GROUPS if (CONF / g).is_dir())
# conf/ directories that are not nodes of a run's config: presets of Hydra's launcher, of the
# sweepers (search, study) and recipes, which set other groups' keys.
PRESET_DIRS = ("launcher", "preset", "recipe", "search", "study")
OWN_RULES = ("augment",)  # checked by config/data_rules.py (tests/test_augment.py)


def option_files() -> list[tuple[str, Path]]:
    return [(g, p) for g in FILE_GROUPS for p in sorted((CONF / g).glob("*.yaml"))]


def settings(group: str, path: Path) -> dict:
    node = OmegaConf.to_container(OmegaConf.load(path))
    return groups.settings_of(group, node) or {}


@pytest.mark.parametrize(("group", "path"), option_files(), ids=lambda x: getattr(x, "stem", x))
def test_every_yaml_key_has_a_rule_and_every_rule_a_yaml_key(group, path):
    node = OmegaConf.to_container(OmegaConf.load(path))
    table = groups.settings_of(group, node)
    assert table is not None, f"{group}/{path.name}: its target has no settings table"
    keys = {k for k in node if k not in groups.BOOKKEEPING}
    assert keys <= set(table), f"{group}/{path.name}: keys without a rule {keys - set(table)}"
    # the table offers nothing the option's YAML does not show (monitor: plateau only, ...); the
    # data fidelity's train_fraction is set per rung by the sweeper, absent from a plain run's config
    assert set(table) - {"name"} <= keys | {"early_stopping", "train_fraction"}, set(table) - keys


def test_targets_take_exactly_the_settings_of_their_tables():
    import importlib

    for group in ("data", "model", "scheduler"):
        for target, table in groups.BY_TARGET[group].items():
            module, name = target.rsplit(".", 1)
            params = inspect.signature(getattr(importlib.import_module(module), name)).parameters
            given = {"model": {"input_shape", "num_classes"},  # supplied by the run
                     "scheduler": {"optimizer", "total_steps", "steps_per_epoch"}}  # fmt: skip
            accepted = set(params) - given.get(group, set())
            meta = {"warmup_epochs", "warmup_start_factor", "monitor"}
            assert set(table) - meta <= accepted, (target, set(table) - accepted)
    for target, table in groups.OPTIMIZER.items():
        import torch  # noqa: F401

        module, name = target.rsplit(".", 1)
        params = inspect.signature(getattr(importlib.import_module(module), name)).parameters
        assert set(table) - {"exclude_bias_norm_from_decay"} <= set(params), target


def test_choices_match_the_registries_and_the_loop():
    from tunelab.models import layers

    assert set(groups.ACTIVATIONS) == set(layers.ACTIVATIONS)
    assert set(groups.NORMS) == set(layers.NORMS)
    assert set(groups.INITS) == set(layers.INITS)


# ---- the fuzz ----------------------------------------------------------------------------------

CANDIDATES = [-1, 0, 1.5, 1e12, -1e12, 0.5, 2, "nosuch"]
WRONG_TYPE = {bool: "abc", int: "abc", float: "abc", str: 12345, list: "abc", type(None): "[1,2]"}


def out_of_range(check: r.Check, default: object) -> object | None:
    """A value of the key's kind that its rule refuses (None when every candidate passes)."""
    kind = type(default)
    pool = [c for c in CANDIDATES if isinstance(c, (int, float)) or kind is str]
    if isinstance(default, list):
        pool = [[-1], [], ["x"]]
    if isinstance(default, bool):
        return None
    return next((c for c in pool if check(c) is not None), None)


def fmt(value: object) -> str:
    if isinstance(value, list):
        return "[" + ",".join(str(v) for v in value) + "]"
    return str(value)


def fuzz_cases(group: str, local: dict[tuple[str, str], list[str]]) -> list[tuple[list[str], str]]:
    """(overrides, key the refusal must name): a wrong type, an out-of-range value and an unknown
    sibling for every key of the group's options (a key shared by options is tried once)."""
    cases, seen = [], set()
    for g, path in option_files():
        if g != group:
            continue
        node = OmegaConf.to_container(OmegaConf.load(path))
        table = groups.settings_of(group, node) or {}
        base = [] if group == "trainer" else [f"{group}={path.stem}"]
        base += local.get((group, path.stem), [])
        leaves = {k: v for k, v in node.items() if k not in groups.BOOKKEEPING}
        if group == "trainer":
            for k, v in leaves.pop("early_stopping").items():
                key = f"trainer.early_stopping.{k}"
                cases.append(([*base, f"{key}={fmt(WRONG_TYPE[type(v)])}"], key))
        for k, v in leaves.items():
            key = f"{group}.{k}"
            if any(o.startswith(f"{key}=") for o in base):
                continue
            tries = [] if k in ("cache_dir", "init_checkpoint") else [WRONG_TYPE[type(v)]]
            bad = out_of_range(table[k], v) if k in table and k != "cache_dir" else None
            tries += [bad] if bad is not None else []
            for value in tries:
                if (key, fmt(value)) not in seen:
                    seen.add((key, fmt(value)))
                    cases.append(([*base, f"{key}={fmt(value)}"], key))
        cases.append(([*base, f"+{group}.nosuch_key=1"], f"{group}.nosuch_key"))
    return cases


TOP_CASES = [
    (["seed=-1"], "seed"), (["seed=abc"], "seed"), (["objective.metric=nosuch"], "objective.metric"),
    (["objective.direction=up"], "objective.direction"), (["+nonsense.key=1"], "nonsense"),
    ([f"experiment={'x' * 10_000}"], "experiment"), (["+objective.extra=1"], "objective.extra"),
]  # fmt: skip


CRASH = "not a refusal: "


def run_in_process(overrides: list[str]) -> str:
    """`python src/train.py OVERRIDES` inside this process; the error text it exits with."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException, MissingConfigException
    from omegaconf.errors import OmegaConfBaseException

    from tunelab.hydra_job import job

    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF), job_name="train", version_base="1.3"):
        try:
            GlobalHydra.instance().hydra.run(
                config_name="train", task_function=job, overrides=overrides,
                with_log_configuration=False,
            )  # fmt: skip
        except SystemExit as exc:
            return str(exc.code)
        except (HydraException, OmegaConfBaseException, MissingConfigException) as exc:
            return f"{type(exc).__name__}: {exc}"  # Hydra's own refusals (an unknown option)
        except Exception as exc:  # a crash, whatever its message names
            return f"{CRASH}{type(exc).__name__}: {exc}"
    return ""


@pytest.fixture(scope="module")
def local_files(tmp_path_factory) -> dict[tuple[str, str], list[str]]:
    """The paths the options that need one are given (valid ones: the fuzz breaks other keys)."""
    import numpy as np
    import torch

    root = tmp_path_factory.mktemp("local")
    np.savez(root / "a.npz", x_train=np.zeros((8, 3)), y_train=np.arange(8) % 2,
             x_test=np.zeros((4, 3)), y_test=np.arange(4) % 2)  # fmt: skip
    torch.save({"model": {}}, root / "init.pt")
    (root / "cifar").mkdir()
    init = [f"finetune.init_checkpoint={root / 'init.pt'}"]
    return {
        ("data", "npz"): [f"data.path={root / 'a.npz'}"],
        ("data", "cifar10"): [f"data.path={root / 'cifar'}"],
        ("finetune", "all_layers"): init,
        ("finetune", "head_then_all"): init,
    }


FUZZ_COUNTS: dict[str, int] = {}


@pytest.mark.parametrize("group", [*FILE_GROUPS, "top"])
def test_the_fuzz_is_refused_cleanly(group, local_files, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cases = TOP_CASES if group == "top" else fuzz_cases(group, local_files)
    unclear = []
    for overrides, key in cases:
        message = run_in_process(overrides)
        if not message or key not in message or message.startswith(CRASH):
            unclear.append((overrides, message[:300]))
    assert not unclear, f"{len(unclear)} of {len(cases)} not refused by key: {unclear[:5]}"
    assert os.listdir(tmp_path) == []  # no outputs/, multirun/, lock, mlflow.db, journal


def test_the_fuzz_has_at_least_a_hundred_cases(local_files):
    n = len(TOP_CASES) + sum(len(fuzz_cases(g, local_files)) for g in FILE_GROUPS)
    assert n >= 100, n


def test_every_conf_directory_is_a_checked_group_or_a_preset():
    """A new group's directory with no table in config/groups.py would go unchecked."""
    dirs = {p.name for p in CONF.iterdir() if p.is_dir()}
    assert dirs == {*FILE_GROUPS, *PRESET_DIRS, *OWN_RULES}
    assert {"data", "model", "optimizer", "scheduler", "trainer", "diagnose"} <= set(FILE_GROUPS)


def test_every_diagnostic_has_a_settings_table_and_an_option():
    """A diagnostic missing from config/groups.py's DIAGNOSE would be run with unchecked knobs."""
    from tunelab.diagnostics.command import DIAGNOSTICS

    shipped = {p.stem for p in (CONF / "diagnose").glob("*.yaml")}
    assert set(groups.DIAGNOSE) == set(DIAGNOSTICS) == shipped


PROBE = """
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir

from tunelab.command_line import check
from tunelab.config.schema import ConfigError, validate

conf = sys.argv[1]
assert check(["trainer.max_epoch=2"], Path(conf))[0]  # a misspelt key, answered
with initialize_config_dir(config_dir=conf, version_base="1.3"):
    validate(compose("train"))  # the default config: valid, its data checked
    try:
        validate(compose("train", overrides=["optimizer.lr=-1", "trainer.batch_size=0"]))
    except ConfigError as exc:
        assert "optimizer.lr" in str(exc) and "trainer.batch_size" in str(exc), exc
    else:
        raise AssertionError("not refused")
for module in sys.argv[2:]:
    __import__(module)
print(sorted(m for m in sys.modules if m == "torch" or m.startswith("torch.")))
"""


def test_validation_imports_no_torch():
    """README: every key is checked before anything runs, with no torch import. A fresh
    interpreter checks a command line, a valid config and a refused one, and has not imported
    torch; the control imports a module that does, and the probe sees it."""
    import ast
    import subprocess
    import sys

    def probe(*modules: str) -> list[str]:
        cmd = [sys.executable, "-c", PROBE, str(CONF), *modules]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return ast.literal_eval(proc.stdout.strip().splitlines()[-1])

    assert probe() == []
    assert "torch" in probe("tunelab.run.loop")  # the control
