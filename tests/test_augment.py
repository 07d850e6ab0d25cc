"""Augmentation as configuration: every conf/augment option has its rules, composes and runs on a
batch; its draws are a function of (seed, epoch, batch index) alone and leave the run's random
state untouched; mixup and cutmix give soft targets that match what they mixed; an augmentation
that does not fit the data is refused before anything runs, with the reason."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import CONF, compose_cfg, run_cli
from omegaconf import OmegaConf

from tunelab.config import ConfigError, data_rules, validate
from tunelab.data.augment import batch_seed, make_augment
from tunelab.data.loader import hard_labels

OPTIONS = sorted(p.stem for p in (CONF / "augment").glob("*.yaml"))


def option(name: str, **changes) -> dict:
    return {**OmegaConf.to_container(OmegaConf.load(CONF / "augment" / f"{name}.yaml")), **changes}


def batch(n: int = 16, classes: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, 32, 32, generator=g), torch.arange(n) % classes


def test_the_issue_s_options_exist_and_each_yaml_key_has_a_rule():
    assert set(OPTIONS) >= {
        "none",
        "standard",
        "cutout",
        "trivialaugment",
        "randaugment",
        "mixup",
        "cutmix",
    }
    for name in OPTIONS:
        node = option(name)
        assert node["name"] == name
        assert set(node) == set(data_rules.AUGMENT), name  # every knob in every option: sweepable
        assert data_rules.problems({"augment": node}) == [], name


@pytest.mark.parametrize("name", OPTIONS)
def test_every_option_composes_validates_and_runs_on_images(name):
    cfg = compose_cfg("data=digits", "model=cnn", f"augment={name}")
    validate(cfg)
    aug = make_augment(cfg.augment, (3, 32, 32), 10, norm=(0.5, 0.25))
    if name == "none":
        assert aug is None  # nothing to run: batches are exactly the loader's
        return
    x, y = batch()
    out, target = aug(x, y, 0, 1, 0)
    assert out.shape == x.shape and out.dtype == x.dtype and torch.isfinite(out).all()
    assert not torch.equal(out, x)
    assert target.shape in {(16,), (16, 10)}


def test_the_draws_are_a_function_of_seed_epoch_and_batch_only():
    aug = make_augment(option("trivialaugment", cutmix_alpha=1.0), (3, 32, 32), 10)
    x, y = batch()
    a, ta = aug(x, y, 3, 2, 5)
    torch.manual_seed(999)  # whatever the run's own random state, the batch sees the same draws
    b, tb = aug(x, y, 3, 2, 5)
    assert torch.equal(a, b) and torch.equal(ta, tb)
    for other in [(4, 2, 5), (3, 3, 5), (3, 2, 6)]:
        assert not torch.equal(aug(x, y, *other)[0], a), other
    assert len({batch_seed(s, e, i) for s in range(3) for e in range(3) for i in range(3)}) == 27


def test_the_runs_own_random_state_is_untouched():
    aug = make_augment(option("standard"), (3, 32, 32), 10)
    x, y = batch()
    torch.manual_seed(1)
    expected = torch.rand(4)
    torch.manual_seed(1)
    aug(x, y, 0, 1, 0)
    assert torch.equal(torch.rand(4), expected)


def test_standard_pads_crops_and_flips_within_four_pixels():
    aug = make_augment(option("standard"), (3, 32, 32), 10, norm=(0.0, 1.0))
    x = torch.zeros(64, 3, 32, 32)
    x[:, :, 14:18, 14:18] = 1.0  # a bright square in the middle
    out, target = aug(x, torch.zeros(64, dtype=torch.long), 0, 1, 0)
    assert torch.equal(target, torch.zeros(64, dtype=torch.long))  # labels pass through
    rows = out.sum((1, 3)).argmax(1).float()  # where the square went
    assert (rows - 14).abs().max() <= 4 + 3 and rows.std() > 0  # shifted, by at most the pad
    assert torch.allclose(out.sum((1, 2, 3)), x.sum((1, 2, 3)))  # never cropped away


def test_mixup_targets_are_the_shares_it_mixed():
    aug = make_augment(option("mixup", mixup_alpha=0.4), (3, 32, 32), 10, norm=None)
    x = torch.arange(8.0).view(8, 1, 1, 1).expand(8, 3, 32, 32).clone()  # image i is all i
    y = torch.arange(8)
    out, target = aug(x, y, 0, 1, 0)
    assert target.shape == (8, 10) and torch.allclose(target.sum(1), torch.ones(8))
    # pixel value = sum over classes of share * class id (image i holds value i, class i)
    assert torch.allclose(out[:, 0, 0, 0], target @ torch.arange(10.0), atol=1e-5)
    assert torch.equal(hard_labels(y), y) and hard_labels(target).shape == (8,)


def test_cutmix_targets_are_the_pasted_areas():
    aug = make_augment(option("cutmix", pad=0, flip=False, cutmix_alpha=1.0), (3, 32, 32), 10)
    x = torch.arange(8.0).view(8, 1, 1, 1).expand(8, 3, 32, 32).clone()
    out, target = aug(x, torch.arange(8), 1, 1, 0)
    assert torch.allclose(target.sum(1), torch.ones(8))
    assert torch.allclose(out[:, 0].mean((1, 2)), target @ torch.arange(10.0), atol=1e-5)


def test_soft_targets_feed_cross_entropy_as_they_are():
    aug = make_augment(option("mixup"), (3, 32, 32), 10)
    x, y = batch()
    _, target = aug(x, y, 0, 1, 0)
    logits = torch.randn(16, 10)
    loss = F.cross_entropy(logits, target, label_smoothing=0.1)
    assert torch.isfinite(loss)
    same = F.cross_entropy(logits, F.one_hot(y, 10).float())
    assert torch.allclose(same, F.cross_entropy(logits, y))


def test_mixup_fits_sequences_but_2d_ops_are_refused_with_the_reason():
    aug = make_augment(option("mixup"), (1, 40), 10)
    out, target = aug(torch.randn(8, 1, 40), torch.arange(8), 0, 1, 0)
    assert out.shape == (8, 1, 40) and target.shape == (8, 10)
    for name in ("standard", "cutout", "trivialaugment", "randaugment", "cutmix"):
        with pytest.raises(ValueError, match=r"needs images shaped \(C, H, W\).*\(1, 40\)"):
            make_augment(option(name), (1, 40), 10)
    with pytest.raises(ValueError, match="larger than the 8-pixel images"):
        make_augment(option("cutout", cutout=12), (1, 8, 8), 10)


@pytest.mark.parametrize("data", ["mnist1d", "synthetic"])
def test_a_2d_augmentation_of_sequence_data_is_refused_at_validation(data):
    with pytest.raises(ConfigError, match=f"augment=standard .*sequences.*data={data}"):
        validate(compose_cfg(f"data={data}", "augment=standard"))
    validate(compose_cfg(f"data={data}", "augment=mixup"))


def test_bad_augment_values_are_refused_naming_the_key():
    with pytest.raises(ConfigError) as err:
        validate(compose_cfg("data=digits", "augment.mixup_alpha=-1", "augment.policy=autoaugment"))
    assert "augment.mixup_alpha=-1 is invalid" in str(err.value)
    assert "augment.policy='autoaugment' is invalid" in str(err.value)
    with pytest.raises(ConfigError, match="augment.strength is not a setting"):
        validate(compose_cfg("data=digits", "+augment.strength=3"))


def test_the_cli_leaves_no_trace_of_an_augmentation_that_does_not_fit(tmp_path):
    proc = run_cli("augment=standard", cwd=tmp_path, timeout=300)
    assert proc.returncode != 0 and "needs images shaped (C, H, W)" in proc.stderr
    assert list(tmp_path.iterdir()) == []  # no outputs/, mlflow.db, mlruns/ or checkpoints/
