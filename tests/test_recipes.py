"""Each model family brings its own tuned recipe (conf/recipe/<model>_<optimizer>.yaml): `model=mlp`
composes the MLP's epochs, lr and regularisation; the command line still wins; another optimizer
falls back to the generic defaults; and every family's default learns."""

from __future__ import annotations

import pytest
import yaml
from conftest import CONF, compose_cfg
from omegaconf import OmegaConf

from tunelab.config import validate
from tunelab.run.api import run
from tunelab.run.context import RunContext
from tunelab.run.record import flatten

RECIPES = sorted((CONF / "recipe").glob("*.yaml"))


def recipe_values(path) -> dict:
    return flatten(yaml.safe_load(path.read_text()))


def test_there_is_a_recipe_for_each_tuned_family():
    assert {p.stem for p in RECIPES} >= {"logreg_adamw", "mlp_adamw", "cnn_adamw"}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_a_recipe_names_options_that_exist_and_composes_with_them(path):
    model, optimizer = path.stem.split("_", 1)
    assert (CONF / "model" / f"{model}.yaml").exists(), f"{path.name}: no model={model}"
    assert (CONF / "optimizer" / f"{optimizer}.yaml").exists(), f"{path.name}: no {optimizer}"
    assert path.read_text().startswith("# @package _global_")
    cfg = compose_cfg(f"model={model}", f"optimizer={optimizer}")
    validate(cfg)
    values = recipe_values(path)
    assert values, f"{path.name} sets nothing"
    for key, value in values.items():
        assert OmegaConf.select(cfg, key) == value, key


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_the_command_line_wins_over_a_recipe(path):
    model, optimizer = path.stem.split("_", 1)
    cfg = compose_cfg(f"model={model}", f"optimizer={optimizer}", "trainer.max_epochs=3")
    assert cfg.trainer.max_epochs == 3


def test_another_optimizer_gets_the_generic_defaults():
    """A tuned lr does not carry across optimizers: model=mlp optimizer=sgd is the plain preset."""
    mlp_sgd = compose_cfg("model=mlp", "optimizer=sgd")
    generic = compose_cfg("model=cnn", "optimizer=sgd")
    assert mlp_sgd.trainer == generic.trainer and mlp_sgd.optimizer == generic.optimizer
    assert compose_cfg("model=mlp").trainer != generic.trainer


def test_the_default_run_is_the_cnn_recipe():
    """`python src/train.py` trains the CNN with its recipe; the pipeline's params.yaml too."""
    values = recipe_values(CONF / "recipe" / "cnn_adamw.yaml")
    cfg = compose_cfg()
    assert cfg.model.name == "cnn" and cfg.optimizer.name == "adamw"
    assert cfg.trainer.max_epochs == values["trainer.max_epochs"]


# A reduced budget (a third of the training set, a few epochs) that still separates every family
# from chance (10 classes: 10%) by a wide margin.
REDUCED = {  # overrides, floor (measured: logreg 0.29, MLP 0.54, CNN 0.67, ResNet 0.47)
    "logreg": (["trainer.max_epochs=10"], 0.2),
    "mlp": (["trainer.max_epochs=10"], 0.4),
    "cnn": (["trainer.max_epochs=3"], 0.5),
    "resnet": (["trainer.max_epochs=3", "model.width=16"], 0.3),
}


@pytest.mark.slow
@pytest.mark.parametrize("model", sorted(REDUCED))
def test_each_family_default_learns(model, in_tmp):
    extra, floor = REDUCED[model]
    cfg = compose_cfg(f"model={model}", "tracking=none", "data.train_subset=1200", *extra)
    result = run(cfg, RunContext())
    assert result.status == "FINISHED"
    assert result.metrics["test/acc"] >= floor, result.metrics
