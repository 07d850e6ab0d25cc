"""A misspelt key, group or sweeper setting is answered in tunelab's words before Hydra's
"To append to your config use +…"; every command the README and conf/ give passes the check."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest
import yaml
from conftest import CONF, NO_TELEMETRY, ROOT, TRAIN

from tunelab.command_line import check

TYPOS = {
    "trainer.max_epoch=2": "trainer.max_epoch is not a setting of trainer; did you mean "
    "trainer.max_epochs?",
    "optimiser=adam": "optimiser is not a setting or a config group; did you mean optimizer?",
    "optimizer=adam optimizer.momentum=0.9": "optimizer.momentum is not a setting of "
    "optimizer=adam (it is of optimizer=lars, momentum, nesterov, rmsprop, sgd)",
    "-m search=random hydra.sweeper.n_trial=3": "hydra.sweeper.n_trial is not a setting of "
    "hydra.sweeper; did you mean hydra.sweeper.n_trials?",
    "model.widht=8": "model.widht is not a setting of model=cnn; did you mean model.width?",
    "-m optimizer=sgd,adam optimizer.momentum=0.5": "optimizer.momentum is not a setting of "
    "optimizer=adam",
    "trainer.early_stopping.patiense=2": "did you mean trainer.early_stopping.patience?",
    "objective.metrc=val/loss": "did you mean objective.metric?",
}


@pytest.mark.parametrize("line", list(TYPOS))
def test_a_typo_gets_tunelab_s_answer_before_hydra_s(line, tmp_path):
    proc = subprocess.run(
        [sys.executable, str(TRAIN), *shlex.split(line)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert TYPOS[line] in proc.stderr
    assert "To append to your config" not in proc.stderr + proc.stdout
    assert not any(tmp_path.iterdir())  # refused before any directory or store exists


def _commands(text: str) -> list[list[str]]:
    found = re.findall(r"python src/train\.py([^`#\n\\]*)", text)
    return [shlex.split(c.replace("…", "x")) for c in found if "<" not in c and "$(" not in c]


def test_every_command_the_readme_and_conf_give_passes():
    texts = [(ROOT / "README.md").read_text(), *(p.read_text() for p in CONF.rglob("*.yaml"))]
    commands = [c for t in texts for c in _commands(t)]
    assert len(commands) > 20
    for argv in commands:
        if any("_target_" in a for a in argv):
            continue  # the README's refused example
        problems, _ = check(argv, CONF)
        assert not problems, (argv, problems)


def test_every_key_a_recipe_sets_is_a_setting_of_its_options():
    """A recipe composes after the options it names, so an override of any key it sets must pass."""
    for path in (CONF / "recipe").glob("*.yaml"):
        model, optimizer = path.stem.split("_", 1)
        body = yaml.safe_load(path.read_text())
        nodes = {group: node for group, node in body.items() if group != "defaults"}
        keys = [f"{group}.{key}" for group, node in nodes.items() for key in node]
        argv = [f"model={model}", f"optimizer={optimizer}", *(f"{k}=1" for k in keys)]
        assert check(argv, CONF) == ([], []), path.name


def test_every_setting_of_every_option_passes():
    for group in ("data", "model", "optimizer", "scheduler", "trainer", "finetune", "diagnose"):
        for path in (CONF / group).glob("*.yaml"):
            keys = yaml.safe_load(path.read_text()) or {}
            argv = [f"{group}={path.stem}", *(f"{group}.{k}=1" for k in keys if k != "_target_")]
            assert check(argv, CONF)[0] == [], path


def test_a_sweep_preset_without_m_warns(tmp_path):
    problems, warnings = check(["search=tpe"], CONF)
    assert not problems and "search=tpe configures a sweep, which runs only with -m" in warnings[0]
    assert check(["-m", "search=tpe"], CONF) == ([], [])
    assert "study=l2 configures a sweep" in check(["study=l2"], CONF)[1][0]


def test_another_primary_config_or_a_user_option_is_not_judged():
    assert check(["--config-name", "reproduce", "--config-dir", "/tmp", "a.b=1"], CONF) == ([], [])
    assert check(["hydra.searchpath=[file://my_conf]", "data=mine", "data.foo=1"], CONF)[0] == []


@pytest.mark.slow
def test_your_own_dataset_works_verbatim_from_the_readme(tmp_path):
    """The README's own-data commands, run in a copy of examples/own_data; the default CNN is
    refused before any run exists, naming the models that fit flat features."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### Your own dataset") :]
    start = section.index("```bash") + len("```bash")
    block = section[start : section.index("```", start)]
    cd, command = [line.strip() for line in block.strip().splitlines()]
    assert cd == "cd examples/own_data"
    work = tmp_path / "own_data"
    shutil.copytree(ROOT / cd.split()[1], work)
    command = command.replace("../../src/train.py", str(TRAIN))
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}", **NO_TELEMETRY}
    proc = subprocess.run(command, shell=True, cwd=work, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = re.search(r"result: val/acc [\d.]+ .*test/acc ([\d.]+)", proc.stdout + proc.stderr)
    assert result and float(result.group(1)) > 0.8

    cnn = command.replace(" model=mlp", "")
    (work / "mlflow.db").unlink()
    proc = subprocess.run(cnn, shell=True, cwd=work, env=env, capture_output=True, text=True)
    assert proc.returncode == 1
    out = proc.stdout + proc.stderr
    assert "model=cnn cannot train on data=wine" in out
    assert "use model=mlp or model=logreg for flat features" in out
    assert "Traceback" not in out and not (work / "mlflow.db").exists()
