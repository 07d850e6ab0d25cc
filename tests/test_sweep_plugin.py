"""The tunelab sweeper end to end on a tiny Hydra app whose objective is a known function of lr."""

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from conftest import reaped
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf
from optuna.trial import TrialState

from tunelab.processes import HOST
from tunelab.tuning.study_storage import OWNER, make_storage, trial_id

REPO = Path(__file__).resolve().parents[1]

APP = '''
import json, math, os, time
import hydra
from hydra.core.hydra_config import HydraConfig
from tunelab.run.context import RunContext
from tunelab.tuning.pruning import reporter_for


class DivergedError(RuntimeError):
    pass


def task(cfg):
    """val/loss = distance of log10(lr) from -2 (and momentum from 0.9), shrinking over epochs."""
    ctx = RunContext.from_env()
    reporter = reporter_for(ctx.trial)
    lr, mom = float(cfg.optimizer.lr), float(cfg.optimizer.get("momentum", 0.0))
    if cfg.fail:
        raise RuntimeError("boom")
    if lr > cfg.diverge_above:
        raise DivergedError("non-finite loss at epoch 1")
    base = (math.log10(lr) + 2.0) ** 2 + (mom - 0.9) ** 2 + float(cfg.optimizer.get("weight_decay", 0.0))
    base += 0.01 * cfg.seed
    value = base
    for epoch in range(cfg.trainer.max_epochs):
        value = base * (1.0 + 1.0 / (epoch + 1))
        if reporter is not None:
            reporter(epoch, value)
        time.sleep(cfg.sleep_s)
    metrics = {"val/loss": value, "val/acc": 1.0 / (1.0 + value),
               "perf/epoch_s": 1.0 / cfg.trainer.batch_size, "epochs_run": epoch + 1}
    with open(os.path.join(HydraConfig.get().runtime.output_dir, "metrics.json"), "w") as fh:
        json.dump(metrics, fh)
    if cfg.log_runs and ctx.parent_run_id:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(cfg.tracking.tracking_uri)
        exp = client.get_experiment_by_name(cfg.experiment)
        tags = {**ctx.tags, "mlflow.parentRunId": ctx.parent_run_id, "seed": str(cfg.seed)}
        run = client.create_run(exp.experiment_id, tags=tags)
        client.set_terminated(run.info.run_id)
    return metrics[cfg.objective.metric]


main = hydra.main(config_path="conf", config_name="config", version_base="1.3")(task)

if __name__ == "__main__":
    main()
'''

CONFIG = """
defaults:
  - optimizer: sgd
  - _self_
  - optional search: null

objective: {metric: val/loss, direction: minimize}
seed: 0
fail: false
diverge_above: 5.0
sleep_s: 0.0
log_runs: false
experiment: toy
tracking: {tracking_uri: null}
trainer: {max_epochs: 3, batch_size: 32}

hydra:
  searchpath: [file://REPO/conf]
  sweep: {dir: multirun, subdir: "${hydra.job.num}"}
"""

OPTIMIZERS = {
    "sgd": "{name: sgd, lr: 0.01, momentum: 0.0, weight_decay: 0.0}",
    "momentum": "{name: momentum, lr: 0.01, momentum: 0.9, weight_decay: 0.0}",
    "adam": "{name: adam, lr: 0.001, momentum: 0.0, weight_decay: 0.0}",
}


def write_app(directory: Path, source: str = APP) -> Path:
    """A toy app (`source` as app.py, with this module's config and optimizers) in `directory`."""
    (directory / "conf" / "optimizer").mkdir(parents=True)
    (directory / "app.py").write_text(source)
    (directory / "conf" / "config.yaml").write_text(CONFIG.replace("REPO", str(REPO)))
    for name, body in OPTIMIZERS.items():
        (directory / "conf" / "optimizer" / f"{name}.yaml").write_text(body + "\n")
    return directory


@pytest.fixture
def app(tmp_path):
    """The toy app's files in a temp dir; returns that dir."""
    return write_app(tmp_path)


def _task(app_dir: Path):
    spec = importlib.util.spec_from_file_location(
        f"toy_app_{abs(hash(app_dir))}", app_dir / "app.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.task


def multirun(app_dir: Path, *overrides: str, sweep_dir: str = "multirun") -> dict:
    """Run `app.py -m …` inside this process (fast: no interpreter start per test)."""
    storage = f"journal:{app_dir / 'optuna.journal'}"
    ov = [f"hydra.sweep.dir={app_dir / sweep_dir}", f"hydra.sweeper.storage={storage}", *overrides]
    GlobalHydra.instance().clear()
    with initialize_config_dir(
        config_dir=str(app_dir / "conf"), job_name="toy", version_base="1.3"
    ):
        hydra_ = GlobalHydra.instance().hydra
        return hydra_.multirun(
            config_name="config",
            task_function=_task(app_dir),
            overrides=ov,
            with_log_configuration=False,
        )


def load(app_dir: Path, name: str) -> optuna.Study:
    return optuna.load_study(
        study_name=name, storage=make_storage(f"journal:{app_dir / 'optuna.journal'}")
    )


SAMPLER_OVERRIDES = {
    "grid": [],
    "random": [],
    "qmc": [],
    "tpe": ["hydra.sweeper.sampler.kwargs.n_startup_trials=3"],
    "gp": ["hydra.sweeper.sampler.kwargs.n_startup_trials=3"],
    "cmaes": ["hydra.sweeper.sampler.kwargs.n_startup_trials=2"],
    "nsgaii": ["hydra.sweeper.sampler.kwargs.population_size=3"],
    "line": [],
    "optimizers": ["hydra.sweeper.sampler.kwargs.n_startup_trials=3"],
}


@pytest.mark.parametrize("preset", list(SAMPLER_OVERRIDES))
def test_each_preset_runs_a_small_study(app, preset):
    result = multirun(
        app,
        f"search={preset}",
        "hydra.sweeper.n_trials=6",
        "hydra.sweeper.figures=false",
        *SAMPLER_OVERRIDES[preset],
    )
    study = load(app, result["study_name"])
    trials = study.get_trials()
    assert len(trials) == 6 and len({t.number for t in trials}) == 6
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    out = app / "multirun"
    assert (out / "trials.csv").is_file() and (out / "summary.json").is_file()
    if preset == "nsgaii":
        assert len(study.directions) == 2 and (out / "pareto_front.csv").is_file()
        assert "perf/epoch_s" in (out / "pareto_front.csv").read_text()
    else:
        assert "optimizer.lr=" in (out / "best_overrides.txt").read_text()
    if preset == "optimizers":  # momentum is a parameter only where the optimizer has one
        for t in trials:
            assert ("optimizer.momentum" in t.params) == (t.params["optimizer"] != "adamw")
    if preset == "line":  # golden section closes in on lr = 1e-2
        assert abs(math.log10(study.best_params["optimizer.lr"]) + 2) < 0.3


def test_command_line_space_and_figures(app):
    multirun(
        app,
        "hydra/sweeper=tunelab",
        "hydra.sweeper.sampler.name=qmc",
        "hydra.sweeper.n_trials=4",
        "optimizer.lr=tag(log, interval(1.0e-4, 1.0e-1))",
        "optimizer.momentum=interval(0.0, 0.99)",
        "hydra.sweeper.study_name=cli",
    )
    study = load(app, "cli")
    assert set(study.best_params) == {"optimizer.lr", "optimizer.momentum"}
    assert isinstance(study.user_attrs["sampler_seed"], int)  # the QMC scrambling seed is recorded
    figures = {p.name for p in (app / "multirun" / "figures").iterdir()}
    assert {"history.png", "slice.png", "parallel_coordinates.png", "contour.png"} <= figures


def test_pruning_stops_a_bad_trial_early(app):
    multirun(
        app,
        "hydra/sweeper=tunelab",
        "hydra.sweeper.sampler.name=grid",
        "hydra.sweeper.sampler.seed=0",
        "hydra.sweeper.pruner.name=median",
        "++hydra.sweeper.pruner.kwargs.n_startup_trials=1",
        "optimizer.lr=choice(0.01, 0.011, 0.012, 4.0)",
        "trainer.max_epochs=5",
        "hydra.sweeper.study_name=prune",
    )
    trials = load(app, "prune").get_trials()
    bad = next(t for t in trials if t.params["optimizer.lr"] == 4.0)
    assert bad.number > 0, "grid order put the bad trial first: pick another sampler seed"
    assert bad.state == TrialState.PRUNED and len(bad.intermediate_values) < 5
    assert all(t.state == TrialState.COMPLETE for t in trials if t is not bad)


def test_diverging_and_failing_trials_are_fail_and_the_sweep_finishes(app):
    multirun(
        app,
        "hydra/sweeper=tunelab",
        "hydra.sweeper.sampler.name=grid",
        "hydra.sweeper.study_name=div",
        "optimizer.lr=choice(0.01, 0.1, 10.0)",
        "fail=choice(false, true)",
        "hydra.sweeper.max_failure_rate=0.9",
    )
    trials = load(app, "div").get_trials()
    assert len(trials) == 6
    reasons = {
        (t.params["optimizer.lr"], t.params["fail"]): t.user_attrs.get("fail_reason", "")
        for t in trials
    }
    assert reasons[(10.0, False)].startswith("diverged")
    assert reasons[(0.1, True)] == "RuntimeError: boom"
    assert all(
        t.state == TrialState.COMPLETE for t in trials if not t.user_attrs.get("fail_reason")
    )
    assert all(t.values is None for t in trials if t.state == TrialState.FAIL)  # never told NaN


def test_max_failure_rate_stops_the_sweep(app):
    with pytest.raises(RuntimeError, match="max_failure_rate"):
        multirun(
            app,
            "hydra/sweeper=tunelab",
            "hydra.sweeper.sampler.name=random",
            "fail=true",
            "hydra.sweeper.n_trials=6",
            "hydra.sweeper.max_failure_rate=0.3",
            "optimizer.lr=interval(0.001, 0.1)",
            "hydra.sweeper.study_name=stop",
        )
    assert len(load(app, "stop").get_trials()) == 2  # stopped after more than 0.3 * 6 failures


def test_resume_runs_only_the_remainder_and_retries_interrupted_trials(app, capfd):
    args = ["search=random", "hydra.sweeper.study_name=res", "hydra.sweeper.figures=false"]
    multirun(app, *args, "hydra.sweeper.n_trials=3", sweep_dir="first")
    storage = make_storage(f"journal:{app / 'optuna.journal'}")
    study = optuna.load_study(study_name="res", storage=storage)
    # a sweep killed mid-trial leaves it RUNNING, owned by a process that is gone
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    trial = study.ask({"optimizer.lr": optuna.distributions.FloatDistribution(1e-4, 0.1, log=True)})
    owner = f"{HOST}:{int(dead.stdout)}"
    storage.set_trial_system_attr(trial_id(storage, "res", trial.number), OWNER, owner)
    result = multirun(app, *args, "hydra.sweeper.n_trials=5", sweep_dir="second")
    trials = load(app, "res").get_trials()
    assert (
        result["n_run_here"] == 2 and len(trials) == 6
    )  # 3 + the interrupted one + its retry + 1 new
    assert trials[3].state == TrialState.FAIL and trials[3].user_attrs["stale"]
    retry = next(t for t in trials if t.user_attrs.get("retry_of") == 3)
    assert retry.state == TrialState.COMPLETE
    assert retry.params["optimizer.lr"] == trials[3].params["optimizer.lr"]
    counts = result["counts"]  # the interrupted trial is not counted as a failure
    assert (counts["complete"], counts["fail"], counts["interrupted"]) == (5, 0, 1)
    capfd.readouterr()
    multirun(app, *args, "hydra.sweeper.n_trials=5", sweep_dir="third")
    assert len(load(app, "res").get_trials()) == 6  # nothing left to do
    said = "".join(capfd.readouterr())  # Hydra's own log handlers print it
    assert "all 5 trials of study res are done; raise hydra.sweeper.n_trials to run more" in said


def test_changed_fixed_settings_never_join_a_study(app):
    """The default study name carries the digest of what the sweep holds fixed: the same command
    resumes, other settings start a study of their own; a named study refuses other settings,
    naming the keys, so its best overrides never combine settings no trial ran together."""
    args = ["search=random", "hydra.sweeper.figures=false", "hydra.sweeper.n_trials=3"]
    first = multirun(app, *args, "trainer.max_epochs=3", sweep_dir="a")
    again = multirun(app, *args, "trainer.max_epochs=3", "hydra.sweeper.n_trials=4", sweep_dir="b")
    assert again["study_name"] == first["study_name"] and again["n_run_here"] == 1
    other = multirun(app, *args, "trainer.max_epochs=2", sweep_dir="c")
    assert other["study_name"] != first["study_name"] and other["n_run_here"] == 3
    assert len(load(app, first["study_name"]).get_trials()) == 4
    assert "trainer.max_epochs=2" in (app / "c" / "best_overrides.txt").read_text().splitlines()

    named = [*args, "hydra.sweeper.study_name=named"]
    multirun(app, *named, "trainer.max_epochs=3", sweep_dir="d")
    with pytest.raises(SystemExit, match=r"(?s)other fixed settings.*trainer.max_epochs: 3 -> 2"):
        multirun(app, *named, "trainer.max_epochs=2", "hydra.sweeper.n_trials=5", sweep_dir="e")
    assert len(load(app, "named").get_trials()) == 3  # nothing added
    assert not (app / "e" / "best_overrides.txt").exists()
    assert "trainer.max_epochs=3" in (app / "d" / "best_overrides.txt").read_text().splitlines()


def test_mlflow_runs_seeds_and_best_overrides_reproduce(app):
    uri = f"sqlite:///{app / 'mlflow.db'}"
    multirun(
        app,
        "search=random",
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.study_name=ml",
        "hydra.sweeper.seeds=[0,1]",
        f"tracking.tracking_uri={uri}",
        "log_runs=true",
        "hydra.sweeper.figures=false",
    )
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("toy")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    by_role = {}
    for r in runs:
        by_role.setdefault(r.data.tags.get("role"), []).append(r)
    (parent,) = by_role["sweep"]
    assert parent.info.run_name == "ml" and parent.info.status == "FINISHED"
    assert "best/val/loss" in parent.data.metrics
    arts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"trials.csv", "best_overrides.txt"} <= arts
    assert len(by_role["trial"]) == 3 and len(by_role["seed"]) == 6
    study = load(app, "ml")
    for t in by_role["trial"]:
        assert t.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert t.data.tags["sweep"] == "ml" and t.data.tags["optuna_state"] == "COMPLETE"
        number = int(t.data.tags["trial"])
        assert t.data.metrics["val/loss"] == pytest.approx(study.trials[number].value)
        assert "val/loss_std" in t.data.metrics and "optimizer.lr" in t.data.params
    for s in by_role["seed"]:
        assert s.data.tags["mlflow.parentRunId"] in {t.info.run_id for t in by_role["trial"]}
    best = study.best_trial
    assert best.user_attrs["seeds:val/loss"][1] == pytest.approx(
        best.user_attrs["seeds:val/loss"][0] + 0.01 * 4 / 3
    )
    # the winner again: `python app.py $(cat best_overrides.txt)` (seed 0 is the first replicate)
    overrides = (app / "multirun" / "best_overrides.txt").read_text().split()
    subprocess.run(
        [sys.executable, "app.py", *overrides, "seed=0", "hydra.run.dir=rerun"], cwd=app, check=True
    )
    rerun = json.loads((app / "rerun" / "metrics.json").read_text())
    assert rerun["val/loss"] == pytest.approx(best.user_attrs["seeds:val/loss"][0])


def _spawn(app: Path, *overrides: str) -> subprocess.Popen:
    cmd = [sys.executable, "app.py", "-m", *overrides]
    return reaped(
        subprocess.Popen(cmd, cwd=app, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    )


@pytest.mark.parametrize("storage", ["journal:optuna.journal", "sqlite:///optuna.db"])
def test_two_processes_share_one_study(app, storage):
    args = [
        "search=random",
        "hydra.sweeper.n_trials=8",
        "hydra.sweeper.figures=false",
        "sleep_s=0.3",
        "hydra.sweeper.study_name=shared",
        f"hydra.sweeper.storage={storage}",
    ]
    procs = [_spawn(app, *args, f"hydra.sweep.dir=multirun/p{i}") for i in range(2)]
    outs = [p.communicate(timeout=240)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    url = (
        f"journal:{app / 'optuna.journal'}"
        if storage.startswith("journal")
        else f"sqlite:///{app / 'optuna.db'}"
    )
    trials = optuna.load_study(study_name="shared", storage=make_storage(url)).get_trials()
    assert len(trials) == 8 and sorted(t.number for t in trials) == list(range(8))
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert len({t.system_attrs[OWNER] for t in trials}) <= 2  # however the two shared them
    # the process that ended the study wrote its reports, once, with every trial
    reported = [i for i in range(2) if (app / f"multirun/p{i}/summary.json").exists()]
    assert len(reported) == 1, reported
    summary = json.loads((app / f"multirun/p{reported[0]}/summary.json").read_text())
    assert sum(summary["counts"].values()) == 8
    assert len((app / f"multirun/p{reported[0]}/trials.csv").read_text().splitlines()) == 9


def test_joblib_launcher_prunes_in_worker_processes(app):
    proc = _spawn(
        app,
        "hydra/sweeper=tunelab",
        "hydra/launcher=joblib",
        "hydra.sweeper.n_jobs=2",
        "hydra.sweeper.sampler.name=grid",
        "hydra.sweeper.sampler.seed=5",  # grid order: the bad lr last, after two trials finished
        "hydra.sweeper.pruner.name=median",
        "++hydra.sweeper.pruner.kwargs.n_startup_trials=1",
        "optimizer.lr=choice(0.01, 0.011, 0.012, 4.0)",
        "trainer.max_epochs=5",
        "sleep_s=0.2",
        "hydra.sweeper.study_name=jl",
        "hydra.sweeper.figures=false",
        "hydra.sweeper.storage=journal:optuna.journal",
    )
    out = proc.communicate(timeout=240)[0]
    assert proc.returncode == 0, out
    trials = load(app, "jl").get_trials()
    assert len(trials) == 4
    owners = {t.system_attrs[OWNER].rsplit(":", 1)[0] for t in trials}  # host:pid[:start]
    assert owners == {f"{HOST}:{proc.pid}"}
    reported = [t for t in trials if t.intermediate_values]
    assert len(reported) == 4  # every job reported from its worker process
    (bad,) = [t for t in trials if t.params["optimizer.lr"] == 4.0]
    assert bad.number == 3  # started once a worker was free: two trials had finished
    assert bad.state == TrialState.PRUNED and len(bad.intermediate_values) < 5
    assert {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.PRUNED}
    summary = json.loads((app / "multirun" / "summary.json").read_text())
    pruned = sum(t.state == TrialState.PRUNED for t in trials)
    assert summary["n_jobs"] == 2 and summary["counts"]["pruned"] == pruned


@pytest.mark.slow
def test_concurrent_trials_get_their_own_gpus_and_share_them_by_trials_per_gpu(app):
    """Planned for 2 GPUs (faked: the toy objective ignores the device), 2 trials per GPU, 6
    trials at once asked for: 4 run at once, and no GPU ever has more than 2 of them."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{app / 'mlflow.db'}"
    proc = _spawn(app, "search=random", "hydra/launcher=joblib", "hydra.sweeper.n_jobs=6",
                  "hydra.sweeper.gpus=2", "hydra.sweeper.trials_per_gpu=2", "+trainer.device=auto",
                  "hydra.sweeper.n_trials=12", "sleep_s=0.3", "hydra.sweeper.study_name=gpus",
                  "hydra.sweeper.figures=false", f"tracking.tracking_uri={uri}")  # fmt: skip
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, out
    assert "trials_per_gpu=2: running 4" in out
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("toy")
    trials = [r for r in client.search_runs([exp.experiment_id], max_results=100)
              if r.data.tags.get("role") == "trial"]  # fmt: skip
    assert len(trials) == 12
    assert {r.data.tags["assigned_device"] for r in trials} == {"cuda:0", "cuda:1"}
    device = {r.info.run_id: r.data.tags["assigned_device"] for r in trials}
    spans = [(t.datetime_start, t.datetime_complete, device[t.user_attrs["mlflow_run_id"]])
             for t in load(app, "gpus").get_trials()]  # fmt: skip
    for t, *_ in spans:  # at every trial start: how many trials run on each device
        busy = [d for s, e, d in spans if s <= t < e]
        assert max(busy.count(d) for d in set(busy)) <= 2, (t, busy)
        assert len(busy) <= 4, (t, busy)


@pytest.mark.slow
def test_submitit_launcher_runs_the_trials_as_jobs(app):
    """hydra/launcher=submitit_local: the trials run as submitit jobs (launcher=slurm's local twin)."""
    proc = _spawn(app, "search=random", "hydra/launcher=submitit_local", "hydra.sweeper.n_jobs=2",
                  "hydra.launcher.timeout_min=5", "hydra.sweeper.n_trials=4", "sleep_s=0.1",
                  "hydra.sweeper.study_name=sub", "hydra.sweeper.figures=false",
                  "hydra.sweeper.storage=journal:optuna.journal")  # fmt: skip
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, out
    trials = load(app, "sub").get_trials()
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert list((app / "multirun").glob("**/.submitit/*")), "no submitit job folders"


def test_cached_composition_equals_hydra_composition(app):
    from hydra.types import RunMode

    from tunelab.tuning.inprocess import CachedComposer

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(app / "conf"), job_name="toy", version_base="1.3"):
        hydra_ = GlobalHydra.instance().hydra
        fixed = ["trainer.max_epochs=2", "+extra=1"]
        master = hydra_.compose_config(
            "config", fixed + ["hydra/sweeper=tunelab"], run_mode=RunMode.MULTIRUN
        )
        composer = CachedComposer(master, hydra_.config_loader)
        for params in (
            ["optimizer.lr=0.5"],
            ["optimizer=adam", "optimizer.momentum=0.3"],
            ["optimizer.lr=0.1"],
        ):
            ov = fixed + params + ["seed=3", "++hydra.job.env_set.EXAMPLE='7'"]
            fast = composer.compose(ov, len(fixed))
            slow = hydra_.config_loader.load_sweep_config(master, ov)
            for cfg in (fast, slow):
                cfg.hydra.runtime.output_dir = "x"
            assert OmegaConf.to_container(fast) == OmegaConf.to_container(slow)
        assert len(composer._templates) == 2  # one per optimizer choice


@pytest.mark.slow
def test_a_200_trial_sweep_reports_every_trial_and_the_right_best(app):
    """Reports written at the end of a long sweep drop no trial: trials.csv has every one, the best
    overrides name the best, the parent run's counts and trial runs add up."""
    import csv

    from tunelab.config.space import to_overrides

    uri = f"sqlite:///{app / 'mlflow.db'}"
    multirun(app, "search=random", "hydra.sweeper.n_trials=200", "hydra.sweeper.study_name=long",
             f"tracking.tracking_uri={uri}", "hydra.sweeper.figures=false",
             "trainer.max_epochs=1", "diverge_above=0.05")  # fmt: skip
    study = load(app, "long")
    assert len(study.trials) == 200
    with open(app / "multirun" / "trials.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["number"]) for r in rows] == list(range(200))
    for row, trial in zip(rows, study.trials, strict=True):
        assert row["state"] == trial.state.name
        if trial.value is not None:
            assert float(row["value"]) == pytest.approx(trial.value)
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    best = min(done, key=lambda t: t.value)
    assert study.best_trial.number == best.number
    chosen = (app / "multirun" / "best_overrides.txt").read_text().split()
    assert set(to_overrides(best.params)) <= set(chosen)
    summary = json.loads((app / "multirun" / "summary.json").read_text())
    assert summary["best"][0]["number"] == best.number
    assert sum(summary["counts"].values()) == 200 and summary["counts"]["fail"] > 0
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("toy")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    trials = [r for r in runs if r.data.tags.get("role") == "trial"]
    assert sorted(int(r.data.tags["trial"]) for r in trials) == list(range(200))
    (parent,) = [r for r in runs if r.data.tags.get("role") == "sweep"]
    assert parent.data.tags["best.trial"] == str(best.number)
    assert sum(int(v) for k, v in parent.data.tags.items() if k.startswith("trials.")) == 200


def test_sweep_settings_are_typed_read_only_with_each_default_once():
    """hydra.sweeper becomes one typed object (the schema's defaults filled in, wrong types
    refused) that cannot change while the sweep runs; a study's cell sweep inherits the study's
    settings, its sampler default (qmc) included."""
    import dataclasses

    from omegaconf.errors import ValidationError

    from tunelab.tuning.settings import (
        StudySweeperConf,
        TunelabSweeperConf,
        cell_sweep_settings,
        sweep_settings,
    )

    sweep = sweep_settings({"n_trials": 3, "objectives": [{"metric": "val/loss"}]})
    assert isinstance(sweep, TunelabSweeperConf)
    assert (sweep.n_trials, sweep.sampler.name, sweep.max_retries) == (3, "tpe", 1)
    assert sweep.objectives[0].direction == "maximize"  # the schema's default, filled in
    with pytest.raises(dataclasses.FrozenInstanceError):
        sweep.n_trials = 5
    with pytest.raises(dataclasses.FrozenInstanceError):
        sweep.sampler.name = "qmc"
    with pytest.raises(ValidationError):
        sweep_settings({"n_trials": "many"})
    study = sweep_settings({"max_retries": 4}, StudySweeperConf)
    assert (study.sampler.name, study.n_trials, study.figures) == ("qmc", 8, False)
    cell = cell_sweep_settings(study, study_name="s-adam", n_trials=2)
    assert isinstance(cell, TunelabSweeperConf)
    assert (cell.sampler.name, cell.max_retries, cell.n_trials) == ("qmc", 4, 2)


def test_sweep_reports_come_from_a_frozen_outcome_and_return_their_record(tmp_path):
    """The sweep's reports read a SweepOutcome (no live study, no MLflow run) and return the files
    written and the record for the sweep's run: best value and params, counts, every file."""
    import dataclasses

    from tunelab.config.space import build_space
    from tunelab.reports.sweep_outputs import SweepOutcome, finalize

    study = optuna.create_study(direction="maximize")
    space, fixed = build_space({"optimizer.lr": "interval(0.001, 0.1)"}, ["model=mlp"])
    study.optimize(lambda t: -abs(t.suggest_float("optimizer.lr", 0.001, 0.1) - 0.01), 4)
    outcome = SweepOutcome(
        study_name="s",
        trials=tuple(study.trials),
        directions=tuple(study.directions),
        metrics=("val/acc",),
        fixed=tuple(fixed),
        space=tuple(space),
        sampler="random",
        seeds=(None,),
        n_trials=4,
        n_jobs=1,
        storage_url="journal:x",
        sweep_dir=tmp_path,
        figures=False,
        utilisation=0.5,
        n_run_here=4,
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        outcome.n_trials = 5
    report = finalize(outcome)
    best = study.best_trial
    assert {p.name for p in report.files} == {
        "trials.csv",
        "best_overrides.txt",
        "best_overrides.yaml",
        "summary.json",
    }
    assert (tmp_path / "best_overrides.txt").read_text().splitlines()[0] == "model=mlp"
    assert report.summary["best"][0]["number"] == best.number
    record = report.record
    assert record.metrics == {"sweep/worker_utilisation": 0.5, "best/val/acc": best.value}
    assert record.tags["best.trial"] == str(best.number) and record.tags["trials.complete"] == "4"
    assert record.params["sampler"] == "random" and record.params["n_trials"] == 4
    assert [p for p, _ in record.files] == list(report.files)
