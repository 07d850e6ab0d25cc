"""LR schedules: every conf/scheduler yaml builds and runs; formulas, warm-up, plateau, resume."""

from __future__ import annotations

import io
import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from tunelab.build import build_schedule
from tunelab.config.groups import SCHEDULER_KNOBS
from tunelab.optim import schedule_fns as fns
from tunelab.optim.lr_schedule import MissingMetricError

ROOT = Path(__file__).resolve().parents[1]
NAMES = sorted(p.stem for p in (ROOT / "conf/scheduler").glob("*.yaml"))
METRICS = {"val/acc": 0.5, "val/loss": 1.0}


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture
def load(root):
    def _load(name: str, **overrides):
        cfg = OmegaConf.load(root / f"conf/scheduler/{name}.yaml")
        return OmegaConf.merge(cfg, overrides)

    return _load


def make_opt(lrs=(0.1,)) -> torch.optim.Optimizer:
    layers = [torch.nn.Linear(3, 2) for _ in lrs]
    groups = [{"params": m.parameters(), "lr": lr} for m, lr in zip(layers, lrs, strict=True)]
    return torch.optim.SGD(groups, momentum=0.9)


def run(sched, opt, steps: int, spe: int, metrics=METRICS) -> list[list[float]]:
    """The lrs of every group used by each of `steps` updates; after_epoch every spe updates."""
    out = []
    for k in range(steps):
        out.append(sched.lrs)
        opt.step()
        sched.after_step()
        if (k + 1) % spe == 0:
            sched.after_epoch(metrics(k // spe) if callable(metrics) else metrics)
    return out


def curve(cfg, *, spe: int, epochs: int, lrs=(0.1,), steps: int | None = None, metrics=METRICS):
    opt = make_opt(lrs)
    sched = build_schedule(opt, cfg, steps_per_epoch=spe, max_epochs=epochs)
    return [g[0] for g in run(sched, opt, steps or spe * epochs, spe, metrics)]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("warmup", [0.0, 2.5])
def test_every_yaml_builds_and_runs(load, name, warmup):
    cfg = load(name, warmup_epochs=warmup)
    assert cfg.name == name and cfg._target_.endswith(f".{name}") and cfg["_partial_"] is True
    lrs = curve(cfg, spe=10, epochs=30)
    assert len(lrs) == 300 and all(math.isfinite(x) and x > 0 for x in lrs)


def test_every_scheduler_option_has_a_curve_here():
    assert set(NAMES) == set(SCHEDULER_KNOBS) - {"warmup"}


@pytest.mark.parametrize(
    "name", ["constant", "cosine", "step", "polynomial", "plateau", "onecycle"]
)
def test_warmup_is_linear_and_reaches_the_peak_exactly(load, name):
    lrs = curve(load(name, warmup_epochs=2.0, warmup_start_factor=0.0), spe=5, epochs=20)
    peak = lrs[10]  # first lr of the inner schedule
    if name == "onecycle":
        assert peak == pytest.approx(0.1 / 25.0)
    else:
        assert peak == 0.1
    assert lrs[:11] == pytest.approx([peak * (k + 1) / 11 for k in range(11)])
    assert 0 < lrs[0] < peak


def test_warmup_start_factor_and_inner_schedule_start_after_warmup(load):
    lrs = curve(
        load("step", step_epochs=1.0, gamma=0.5, warmup_epochs=1.0, warmup_start_factor=0.5),
        spe=4,
        epochs=5,
    )
    assert lrs[0] == pytest.approx(0.1 * (0.5 + 0.5 / 5))
    assert lrs[4:8] == [0.1] * 4 and lrs[8] == pytest.approx(0.05)


def test_step_boundaries(load):
    lrs = curve(load("step", step_epochs=2.0, gamma=0.5), spe=5, epochs=6)
    assert lrs[9] == 0.1 and lrs[10] == pytest.approx(0.05) and lrs[19] == pytest.approx(0.05)
    assert lrs[20] == pytest.approx(0.025)


def test_multistep_fractional_milestones(load):
    lrs = curve(load("multistep", milestones_epochs=[1.0, 3.5], gamma=0.1), spe=4, epochs=5)
    assert lrs[3] == 0.1 and lrs[4] == pytest.approx(0.01) and lrs[13] == pytest.approx(0.01)
    assert lrs[14] == pytest.approx(0.001)


def test_cosine_midpoint_and_floor(load):
    cfg = load("cosine", min_lr_factor=0.1)
    lrs = curve(cfg, spe=10, epochs=10, steps=101)
    floor = 0.1 * 0.1
    assert lrs[0] == 0.1
    assert lrs[50] == pytest.approx((0.1 + floor) / 2)
    assert lrs[100] == pytest.approx(floor) and min(lrs) >= floor
    assert lrs[37] == pytest.approx(0.1 * fns.cosine_decay(37, decay_steps=100, min_factor=0.1))


def test_cosine_restarts_with_t_mul_and_m_mul(load):
    cfg = load("cosine_restarts", first_cycle_epochs=1.0, t_mul=2.0, m_mul=0.5, min_lr_factor=0.0)
    lrs = curve(cfg, spe=10, epochs=7)  # cycles of 10, 20, 40 steps
    assert lrs[0] == 0.1 and lrs[5] == pytest.approx(0.05)
    assert lrs[9] < 0.01 and lrs[10] == pytest.approx(0.05)  # restart at m_mul x peak
    assert lrs[20] == pytest.approx(0.025)  # midpoint of the 20-step cycle
    assert lrs[29] < 0.001 and lrs[30] == pytest.approx(0.025) and lrs[50] == pytest.approx(0.0125)


def _tf_cosine_restarts(step, first, t_mul, m_mul, alpha):
    """TensorFlow's cosine_decay_restarts, transcribed (log-based restart index)."""
    frac = step / first
    if t_mul == 1.0:
        i = math.floor(frac)
        frac -= i
    else:
        i = math.floor(math.log(1.0 - frac * (1.0 - t_mul)) / math.log(t_mul))
        frac = (frac - (1.0 - t_mul**i) / (1.0 - t_mul)) / t_mul**i
    return (1 - alpha) * 0.5 * m_mul**i * (1.0 + math.cos(math.pi * frac)) + alpha


def _cycle_starts(first: int, t_mul: float, limit: int = 400) -> dict[int, int]:
    """{step: cycle index} for the restarts that fall exactly on a step."""
    out, start, length, i = {}, 0.0, float(first), 0
    while start < limit:
        start, length, i = start + length, length * t_mul, i + 1
        if start.is_integer():
            out[int(start)] = i
    return out


@pytest.mark.parametrize("t_mul", [1.0, 1.5, 2.0, 3.0])
def test_cosine_restarts_formula_matches_tensorflow(t_mul):
    kw = {"first_cycle_steps": 7, "t_mul": t_mul, "m_mul": 0.8, "min_factor": 0.05}
    starts = _cycle_starts(7, t_mul)
    for s in range(400):
        ours = fns.cosine_decay_restarts(s, **kw)
        if (
            s in starts
        ):  # exactly on a restart: the new cycle's peak (tf's log may round either way)
            assert ours == pytest.approx(0.05 + 0.95 * 0.8 ** starts[s])
        else:
            assert ours == pytest.approx(_tf_cosine_restarts(s, 7, t_mul, 0.8, 0.05), abs=1e-9)


def test_polynomial_reaches_end_lr_and_stays(load):
    lrs = curve(load("polynomial", end_lr=1.0e-3, power=2.0, decay_epochs=2.0), spe=5, epochs=4)
    assert lrs[10] == pytest.approx(1.0e-3) and lrs[-1] == pytest.approx(1.0e-3)
    assert lrs[5] == pytest.approx((0.1 - 1.0e-3) * 0.5**2 + 1.0e-3)
    whole = curve(load("polynomial", end_lr_factor=0.01), spe=5, epochs=4, steps=21)
    assert whole[20] == pytest.approx(0.001)


def test_polynomial_cycles(load):
    lrs = curve(
        load("polynomial", end_lr_factor=0.0, decay_epochs=2.0, cycle=True), spe=5, epochs=5
    )
    assert lrs[10] == pytest.approx(0.0, abs=1e-12)
    assert lrs[11] == pytest.approx(0.1 * (1 - 11 / 20))  # horizon stretched to 20 steps
    assert lrs[21] == pytest.approx(0.1 * (1 - 21 / 30))
    ref = [
        0.1 * fns.polynomial_decay(k, decay_steps=10, end_factor=0.0, power=1.0, cycle=True)
        for k in range(25)
    ]
    assert lrs == pytest.approx(ref)


def test_inverse_time_formula(load):
    lrs = curve(load("inverse_time", decay_rate=0.5, decay_epochs=2.0), spe=4, epochs=5)
    assert lrs == pytest.approx([0.1 / (1 + 0.5 * k / 8) for k in range(20)])
    stair = curve(
        load("inverse_time", decay_rate=0.5, decay_epochs=2.0, staircase=True), spe=4, epochs=5
    )
    assert stair == pytest.approx([0.1 / (1 + 0.5 * (k // 8)) for k in range(20)])


def test_exponential_smooth_staircase_and_natural(load):
    smooth = curve(load("exponential", gamma=0.5), spe=4, epochs=3)
    assert smooth == pytest.approx([0.1 * 0.5 ** (k / 4) for k in range(12)])
    stair = curve(load("exponential", gamma=0.5, staircase=True), spe=4, epochs=3)
    assert stair == pytest.approx([0.1 * 0.5 ** (k // 4) for k in range(12)])
    natural = curve(load("exponential", decay_rate=0.3, decay_epochs=2.0), spe=4, epochs=3)
    assert natural == pytest.approx([0.1 * math.exp(-0.3 * k / 8) for k in range(12)])


def test_piecewise_values(load):
    cfg = load("piecewise", boundaries_epochs=[1.0, 2.5], values=[1.0, 0.5, 0.2])
    lrs = curve(cfg, spe=4, epochs=4)
    assert lrs == pytest.approx([0.1] * 4 + [0.05] * 6 + [0.02] * 6)


@pytest.mark.parametrize(
    "knobs,peak", [({}, 0.1), ({"max_lr_factor": 3.0}, 0.3), ({"max_lr": 0.5}, 0.5)]
)
def test_onecycle_peak(load, knobs, peak):
    lrs = curve(load("onecycle", pct_start=0.25, **knobs), spe=10, epochs=4, steps=45)
    assert max(lrs) == pytest.approx(peak) and lrs.index(max(lrs)) == 9
    assert lrs[0] == pytest.approx(peak / 25.0)
    assert lrs[39] == pytest.approx(peak / 25.0 / 1.0e4)  # past the end: no error, stays low


@pytest.mark.parametrize("mode,monitor,value", [("max", "val/acc", 0.5), ("min", "val/loss", 1.0)])
def test_plateau_reduces_after_patience_in_both_modes(load, mode, monitor, value):
    cfg = load("plateau", monitor=monitor, mode=mode, patience=2, factor=0.5, min_lr=0.0)
    lrs = curve(cfg, spe=2, epochs=8, metrics={monitor: value})
    per_epoch = lrs[::2]
    # epoch 0 sets the best; epochs 1, 2 are `patience` bad ones; epoch 3 is one too many
    assert per_epoch[:4] == [0.1] * 4
    assert per_epoch[4] == pytest.approx(0.05) and per_epoch[7] == pytest.approx(0.025)


def test_plateau_keeps_lr_while_improving_and_min_mode_on_accuracy_decays(load):
    rising = lambda e: {"val/acc": 0.1 + 0.1 * e}  # noqa: E731
    assert set(curve(load("plateau", patience=1), spe=1, epochs=8, metrics=rising)) == {0.1}
    wrong = curve(
        load("plateau", patience=1, mode="min", min_lr=0.0), spe=1, epochs=8, metrics=rising
    )
    assert wrong[-1] < 0.1  # seed 002: mode=min on accuracy decays too fast


def test_plateau_respects_min_lr_for_every_group(load):
    cfg = load("plateau", patience=0, factor=0.1, min_lr=1.0e-4)
    opt = make_opt((0.1, 0.01))
    sched = build_schedule(opt, cfg, steps_per_epoch=1, max_epochs=10)
    run(sched, opt, 10, 1)
    assert sched.lrs == pytest.approx([1.0e-4, 1.0e-5])


def test_plateau_missing_metric_names_available_keys(load):
    opt = make_opt()
    sched = build_schedule(opt, load("plateau", monitor="val/f1"), steps_per_epoch=1, max_epochs=3)
    with pytest.raises(KeyError) as err:
        sched.after_epoch({"val/acc": 0.5, "val/loss": 1.0})
    assert isinstance(err.value, MissingMetricError)
    assert (
        "val/f1" in str(err.value) and "val/acc" in str(err.value) and "val/loss" in str(err.value)
    )


def test_plateau_ignores_validations_during_warmup(load):
    cfg = load("plateau", patience=0, warmup_epochs=3.0)
    lrs = curve(cfg, spe=2, epochs=6)
    assert lrs[6] == 0.1 and lrs[8] < 0.1  # first reduction needs two epochs after warm-up


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip_gives_identical_lrs(load, name):
    extra = {"linear_cosine": {"noise": 0.5}, "plateau": {"patience": 1}}.get(name, {})
    cfg = load(name, warmup_epochs=1.5, **extra)
    acc = lambda e: {"val/acc": [0.3, 0.5, 0.5, 0.4, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6][e]}  # noqa: E731
    opt_a = make_opt((0.1, 0.02))
    a = build_schedule(opt_a, cfg, steps_per_epoch=4, max_epochs=10)
    run(a, opt_a, 16, 4, acc)
    buf = io.BytesIO()
    torch.save({"opt": opt_a.state_dict(), "sched": a.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)  # as the resume checkpoint is read
    later_a = run(a, opt_a, 24, 4, lambda e: acc(e + 4))
    opt_b = make_opt((0.1, 0.02))
    b = build_schedule(opt_b, cfg, steps_per_epoch=4, max_epochs=10)
    opt_b.load_state_dict(ckpt["opt"])
    b.load_state_dict(ckpt["sched"])
    assert run(b, opt_b, 24, 4, lambda e: acc(e + 4)) == later_a  # bit-identical


def test_state_dict_from_another_schedule_is_refused(load):
    opt = make_opt()
    a = build_schedule(opt, load("cosine"), steps_per_epoch=2, max_epochs=3)
    b = build_schedule(make_opt(), load("cosine"), steps_per_epoch=2, max_epochs=4)
    with pytest.raises(ValueError, match="total_steps"):
        b.load_state_dict(a.state_dict())


@pytest.mark.parametrize("name", NAMES)
def test_param_groups_keep_their_ratio(load, name):
    opt = make_opt((0.1, 0.01, 0.003))
    sched = build_schedule(opt, load(name, warmup_epochs=1.0), steps_per_epoch=5, max_epochs=20)
    for lrs in run(sched, opt, 100, 5):  # flat metrics: plateau reduces too
        assert lrs[1] / lrs[0] == pytest.approx(0.1, rel=1e-9)
        assert lrs[2] / lrs[0] == pytest.approx(0.03, rel=1e-9)


def test_noisy_linear_cosine_is_seeded_and_leaves_global_rng_alone(load):
    plain = curve(load("linear_cosine"), spe=5, epochs=10)
    noisy = curve(load("linear_cosine", noise=0.1, noise_seed=3), spe=5, epochs=10)
    assert noisy != plain and noisy == curve(
        load("linear_cosine", noise=0.1, noise_seed=3), spe=5, epochs=10
    )
    assert noisy != curve(load("linear_cosine", noise=0.1, noise_seed=4), spe=5, epochs=10)
    ref = [
        0.1 * fns.linear_cosine_decay(k, decay_steps=50, num_periods=0.5, alpha=0.0, beta=1.0e-3)
        for k in range(50)
    ]
    assert plain == pytest.approx(ref) and plain[-1] > 0
    opt = make_opt()
    sched = build_schedule(opt, load("linear_cosine", noise=0.1), steps_per_epoch=5, max_epochs=2)
    torch.manual_seed(7)
    expected = torch.rand(1)
    torch.manual_seed(7)
    run(sched, opt, 10, 5)
    assert torch.equal(torch.rand(1), expected)


@pytest.mark.parametrize(
    "name,key,value",
    [
        ("step", "gamma", -0.1),
        ("step", "step_epochs", 0.0),
        ("multistep", "milestones_epochs", [5.0, 2.0]),
        ("exponential", "staircase", "yes"),
        ("exponential", "gamma", "1e-4"),
        ("piecewise", "values", [1.0, 0.1]),
        ("polynomial", "power", 0.0),
        ("cosine", "min_lr_factor", 1.5),
        ("cosine_restarts", "t_mul", 0.5),
        ("linear_cosine", "noise", -1.0),
        ("onecycle", "anneal", "cubic"),
        ("onecycle", "pct_start", 1.0),
        ("plateau", "factor", 1.0),
        ("plateau", "mode", "avg"),
        ("plateau", "patience", 2.5),
        ("plateau", "min_lr", -1.0),
        ("cosine", "warmup_epochs", 5.0),
        ("cosine", "warmup_start_factor", 2.0),
    ],
)
def test_bad_values_raise_value_error_naming_key_and_value(load, name, key, value):
    with pytest.raises(ValueError) as err:
        build_schedule(make_opt(), load(name, **{key: value}), steps_per_epoch=3, max_epochs=5)
    assert key in str(err.value) and repr(value) in str(err.value) and "expected" in str(err.value)


def test_monitor_only_for_plateau_and_required_there(load):
    with pytest.raises(ValueError, match="monitor"):
        build_schedule(
            make_opt(), load("cosine", monitor="val/acc"), steps_per_epoch=2, max_epochs=3
        )
    cfg = load("plateau")
    del cfg["monitor"]
    with pytest.raises(ValueError, match="monitor"):
        build_schedule(make_opt(), cfg, steps_per_epoch=2, max_epochs=3)


def test_warmup_factor_never_zero_and_epochs_round_half_up():
    assert fns.warmup_factor(0, 1, 0.0) == 0.5 and fns.warmup_factor(1, 1, 0.0) == 1.0
    assert fns.epochs_to_steps(0.5, 5) == 3 and fns.epochs_to_steps(0.01, 5) == 1


def test_a_onecycle_warm_up_of_one_step_is_refused_with_the_fix():
    """pct_start x total steps == 1 gives torch's OneCycleLR a zero-length phase (it divides by
    it): the schedule says which knobs fix it instead of a ZeroDivisionError mid-run."""
    from tunelab.optim.schedules import onecycle

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ValueError, match="pct_start=0.2 of 5 optimizer steps"):
        onecycle(opt, total_steps=5, steps_per_epoch=5, pct_start=0.2)
    onecycle(opt, total_steps=6, steps_per_epoch=6, pct_start=0.2).step()
