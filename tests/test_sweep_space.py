"""Unit tests of the sweep building blocks: search space, line search, reporter, job outcomes."""

import math

import optuna
import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from tunelab.config import search_methods
from tunelab.config.space import build_space, grid_values, suggest, to_overrides
from tunelab.config.sweep_check import sweeper_problems
from tunelab.run.context import RunContext, RunResult, TrialRef, aggregate
from tunelab.tuning import pruning
from tunelab.tuning.jobs import job_overrides, read_job
from tunelab.tuning.samplers import GoldenSectionSampler, make_pruner, make_sampler, next_point
from tunelab.tuning.study_storage import counted

optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_space_from_params_and_command_line():
    params = {
        "optimizer.lr": "tag(log, interval(1.0e-4, 1.0e-1))",
        "model.width": "interval(8, 64)",
        "optimizer.weight_decay": "choice(0.0, 1.0e-4)",
    }
    args = ["data=synthetic", "optimizer.weight_decay=0.5", "trainer.batch_size=range(16, 80, 16)"]
    space, fixed = build_space(params, args)
    dists = {p.name: p.dist for p in space}
    assert dists["optimizer.lr"] == FloatDistribution(1e-4, 0.1, log=True)
    assert dists["model.width"] == IntDistribution(8, 64)
    assert dists["trainer.batch_size"] == IntDistribution(16, 64, step=16)
    assert "optimizer.weight_decay" not in dists  # fixed by the plain command-line override
    assert fixed == ["data=synthetic", "optimizer.weight_decay=0.5"]


def test_conditional_params_only_when_parent_matches():
    space, _ = build_space(
        {"optimizer": "choice(momentum, adam)", "optimizer.lr": "interval(0.001, 0.1)"},
        [],
        {"optimizer": {"momentum": {"optimizer.momentum": "interval(0.5, 0.99)"}}},
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(12):
        trial = study.ask()
        values = suggest(trial, space)
        assert ("optimizer.momentum" in values) == (values["optimizer"] == "momentum")
        seen.add(values["optimizer"])
        study.tell(trial, 0.0)
    assert seen == {"momentum", "adam"}


def test_overrides_round_trip_through_hydra_grammar():
    values = {"a": 1e-05, "b": 3, "c": "momentum", "d": True, "e": None, "f": "a b'c", "g": "1.5"}
    parsed = OverridesParser.create().parse_overrides(to_overrides(values))
    assert {o.key_or_group: o.value() for o in parsed} == values


def test_grid_values_discretise_intervals():
    space, _ = build_space({"x": "tag(log, interval(1.0e-4, 1.0e-2))", "y": "choice(a, b)"}, [])
    grid = grid_values(space, 3)
    assert grid["y"] == ["a", "b"]
    assert [round(math.log10(v)) for v in grid["x"]] == [-4, -3, -2]


def test_golden_section_converges_on_unimodal_function():
    history = []
    for _ in range(20):
        u = next_point(history)
        history.append((u, (u - 0.3) ** 2))
    best = min(history, key=lambda h: h[1])[0]
    assert abs(best - 0.3) < 1e-3
    study = optuna.create_study(sampler=GoldenSectionSampler(), direction="maximize")
    study.optimize(
        lambda t: -((math.log10(t.suggest_float("lr", 1e-4, 1.0, log=True)) + 2) ** 2), 14
    )
    assert abs(math.log10(study.best_params["lr"]) + 2) < 0.05


SAMPLER_CLASSES = {
    "grid": "_Grid",
    "random": "RandomSampler",
    "qmc": "QMCSampler",
    "tpe": "TPESampler",
    "gp": "GPSampler",
    "cmaes": "CmaEsSampler",
    "nsgaii": "NSGAIISampler",
    "line": "GoldenSectionSampler",
    "bruteforce": "BruteForceSampler",
}
PRUNER_CLASSES = {
    "none": "NopPruner",
    "median": "MedianPruner",
    "percentile": "PercentilePruner",
    "successive_halving": "SuccessiveHalvingPruner",
    "hyperband": "HyperbandPruner",
    "wilcoxon": "WilcoxonPruner",
}


@pytest.mark.parametrize("name", sorted(search_methods.SAMPLERS))
def test_every_sampler_name_builds_its_sampler(name):
    assert type(make_sampler({"name": name}, 0, {"x": [1, 2]})).__name__ == SAMPLER_CLASSES[name]


@pytest.mark.parametrize("name", sorted(search_methods.PRUNERS))
def test_every_pruner_name_builds_its_pruner(name):
    kwargs = {"percentile": {"percentile": 25.0}}.get(name, {})
    pruner = make_pruner({"name": name, "kwargs": kwargs})
    assert type(pruner).__name__ == PRUNER_CLASSES[name]


def test_validation_takes_sampler_names_from_the_registry(monkeypatch):
    """A sampler added to the registry is accepted by the multirun check, built by make_sampler
    and (with fixed_seed) seeded once; a name not in it is refused by both."""
    cfg = OmegaConf.create(
        {"hydra": {"sweeper": {"_target_": "hydra_plugins.tunelab_sweeper.tunelab_sweeper.X"}}}
    )

    def problems(sampler: str, pruner: str = "none") -> list[str]:
        cfg.hydra.sweeper.sampler = {"name": sampler}
        cfg.hydra.sweeper.pruner = {"name": pruner}
        return [p for p in sweeper_problems(cfg) if ".name=" in p]

    assert problems("halton") == [
        f"hydra.sweeper.sampler.name='halton' is invalid: expected one of "
        f"{sorted(search_methods.SAMPLERS)}"
    ]
    with pytest.raises(ValueError, match="unknown sampler 'halton'"):
        make_sampler({"name": "halton"}, 0)
    facts = search_methods.SamplerFacts("QMCSampler", fixed_seed=True)
    monkeypatch.setitem(search_methods.SAMPLERS, "halton", facts)
    assert problems("halton") == []
    assert type(make_sampler({"name": "halton", "kwargs": {"qmc_type": "halton"}}, 0)).__name__ == (
        "QMCSampler"
    )
    assert problems("tpe", pruner="nope")[0].startswith("hydra.sweeper.pruner.name='nope'")
    monkeypatch.setitem(search_methods.PRUNERS, "nope", "NopPruner")
    assert problems("tpe", pruner="nope") == []


def test_unknown_names_fail_clearly():
    with pytest.raises(ValueError, match="unknown sampler"):
        make_sampler({"name": "nope"}, 0)
    with pytest.raises(ValueError, match="unknown pruner"):
        make_pruner({"name": "nope"})


def test_reporter_from_env_prunes_a_bad_trial(tmp_path, monkeypatch):
    storage = f"journal:{tmp_path / 'j.log'}"
    from tunelab.tuning.study_storage import make_storage

    study = optuna.create_study(
        study_name="s",
        storage=make_storage(storage),
        pruner=make_pruner({"name": "median", "kwargs": {"n_startup_trials": 1}}),
    )
    for v in (1.0, 1.1):
        t = study.ask()
        for step in range(3):
            t.report(v, step)
        study.tell(t, v)
    ctx = tmp_path / "ctx.json"
    pruning.write_context(
        str(ctx),
        {
            "study_name": "s",
            "storage": storage,
            "directions": ["minimize"],
            "pruner": {"name": "median", "kwargs": {"n_startup_trials": 1}},
        },
    )
    bad = study.ask()
    # the job's context travels through the environment, as it does to a joblib worker
    job_env = RunContext(trial=TrialRef(str(ctx), bad.number)).to_env()
    for key, value in job_env.items():
        monkeypatch.setenv(key, value)
    report = pruning.reporter_for(RunContext.from_env().trial)  # reopened from the storage
    with pytest.raises(optuna.TrialPruned):
        report(0, 10.0)
    assert pruning.reporter_for(TrialRef(str(ctx), bad.number, report=False)) is None
    assert pruning.reporter_for(RunContext().trial) is None


def _ret(status, value, out_dir="/nonexistent"):
    ret = JobReturn()
    ret.status, ret.return_value = status, value
    ret.hydra_cfg = {"hydra": {"runtime": {"output_dir": out_dir}}}
    from omegaconf import OmegaConf

    ret.hydra_cfg = OmegaConf.create(ret.hydra_cfg)
    return ret


def test_read_job_classifies_outcomes(tmp_path):
    class DivergedError(RuntimeError):
        pass

    assert read_job(_ret(JobStatus.COMPLETED, 0.5), ["val/acc"])[:3] == (
        "complete",
        "",
        {"val/acc": 0.5},
    )
    assert read_job(_ret(JobStatus.FAILED, optuna.TrialPruned("x")), ["m"])[0] == "pruned"
    assert read_job(_ret(JobStatus.FAILED, DivergedError("nan")), ["m"])[0] == "diverged"
    assert read_job(_ret(JobStatus.FAILED, ValueError("bad")), ["m"])[:2] == (
        "fail",
        "ValueError: bad",
    )
    assert read_job(_ret(JobStatus.COMPLETED, float("nan")), ["m"])[0] == "diverged"
    (tmp_path / "metrics.json").write_text('{"val/acc": 0.9, "perf/epoch_s": 2.0}')
    kind, _, values, _, _ = read_job(
        _ret(JobStatus.COMPLETED, 0.9, str(tmp_path)), ["val/acc", "perf/epoch_s"]
    )
    assert kind == "complete" and values["perf/epoch_s"] == 2.0
    result = RunResult("r1", "FINISHED", "val/acc", {"val/acc": 0.8, "test/acc": 0.7})
    kind, _, values, _, run_id = read_job(_ret(JobStatus.COMPLETED, result), ["val/acc"])
    assert (kind, values["test/acc"], run_id) == ("complete", 0.7, "r1")


def test_aggregate_and_job_overrides():
    agg = aggregate([{"m": 1.0}, {"m": 3.0}])
    assert agg["m"] == 2.0 and agg["m_std"] == pytest.approx(math.sqrt(2))
    ctx = RunContext(
        parent_run_id="abc",
        tags={"sweep": "it's"},
        log_model=False,
        trial=TrialRef("/tmp/c d.json", 7, report=True),
    )
    ov = job_overrides(["data=synthetic"], {"optimizer.lr": 0.1}, 2, "seed", ctx)
    parsed = {o.key_or_group: o.value() for o in OverridesParser.create().parse_overrides(ov)}
    assert parsed["seed"] == 2 and parsed["optimizer.lr"] == 0.1
    env = {k.removeprefix("hydra.job.env_set."): v for k, v in parsed.items() if "env_set" in k}
    assert RunContext.from_env(env) == ctx  # the context reaches the job unchanged


def test_counted_ignores_stale_trials():
    study = optuna.create_study()
    for stale in (False, True, False):
        t = study.ask()
        t.set_user_attr("stale", stale)
        study.tell(t, state=optuna.trial.TrialState.FAIL)
    assert counted(study.get_trials()) == 2


def test_categorical_values_from_choice():
    space, _ = build_space({"m": "choice(0.5, 0.9)"}, [])
    assert space[0].dist == CategoricalDistribution([0.5, 0.9])
