"""`python src/train.py -m study=…` end to end: a tiny study on synthetic data (2 cells x 3 trials x
2 seeds), its aggregates against the per-seed MLflow runs, its report, and resume after a kill."""

import json
import re
import signal
import statistics
import time
from pathlib import Path

import optuna
import pytest
from conftest import NO_MODEL, finish_cli, mlflow_runs, run_cli, start_cli, wait_for_line
from optuna.trial import TrialState

from tunelab.tuning.study_storage import make_storage

TINY = """# @package _global_
defaults:
  - override /data: synthetic
  - override /model: mlp
  - override /scheduler: constant
  - override /hydra/sweeper: tunelab_study
model: {width: 16}
trainer: {max_epochs: 2, batch_size: 64}
hydra:
  sweeper:
    study_name: tiny
    experiment: tiny
    goal: Does the optimizer matter on the tiny synthetic task?
    scientific: {name: optimizer, values: [adam, momentum]}
    nuisance:
      common: {optimizer.lr: 'tag(log, interval(1.0e-3, 1.0e-1))'}
      cells: {momentum: {optimizer.momentum: 'interval(0.5, 0.95)'}}
    fixed: {trainer.label_smoothing: 0.0}
    sampler: {name: random, seed: 0}
    n_trials: 3
    seeds: 2
"""


def _args(cwd: Path, sweep_dir: str) -> list[str]:
    conf = cwd / "extra_conf" / "study"
    conf.mkdir(parents=True, exist_ok=True)
    (conf / "tiny.yaml").write_text(TINY)
    return ["-m", "study=tiny", f"hydra.searchpath=[file://{cwd / 'extra_conf'}]",
            f"hydra.sweep.dir={sweep_dir}"]  # fmt: skip


def _by_role(cwd: Path) -> dict[str, list]:
    out: dict[str, list] = {}
    for r in mlflow_runs(cwd, "tiny"):
        out.setdefault(r.data.tags.get("role"), []).append(r)
    return out


@pytest.mark.slow
def test_tiny_study_completes_with_matching_aggregates_report_and_resume(workdir):
    refit = "confirm.refit=train+val"  # confirmations refit on train ∪ val; the search does not
    proc = run_cli(*_args(workdir, "first"), refit, cwd=workdir, env=NO_MODEL)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = workdir / "first" / "study"
    summary = json.loads((out / "summary.json").read_text())
    runs = _by_role(workdir)
    assert len(runs["study"]) == 1 and len(runs["cell"]) == 2
    assert len(runs["trial"]) == 6 and len(runs["seed"]) == 6 and len(runs["confirm"]) == 4
    for role in ("cell", "trial", "seed", "confirm"):
        for r in runs[role]:
            tags = r.data.tags
            assert tags["study"] == "tiny" and tags["cell"] in ("adam", "momentum"), (role, tags)
            assert role in ("cell",) or ("trial" in tags and (role == "trial" or "seed" in tags))
    # aggregates = what the logged per-seed confirmation runs say
    for cell in summary["cells"]:
        confirm = [r for r in runs["confirm"] if r.data.tags["cell"] == cell["cell"]]
        assert sorted(int(r.data.tags["seed"]) for r in confirm) == [1, 2]
        for metric, logged in (("val/acc", "best/val/acc"), ("test/acc", "test/acc")):
            values = [r.data.metrics[logged] for r in confirm]
            s = cell["stats"][metric]
            assert s["mean"] == pytest.approx(statistics.mean(values))
            assert s["std"] == pytest.approx(statistics.stdev(values))
        cell_run = next(r for r in runs["cell"] if r.data.tags["cell"] == cell["cell"])
        assert cell_run.data.metrics["confirm/val/acc_mean"] == pytest.approx(
            cell["stats"]["val/acc"]["mean"]
        )
        assert {r.data.tags["mlflow.parentRunId"] for r in confirm} == {cell_run.info.run_id}
    # one pair on the held-out split (the primary verdict) and one on validation
    assert len(summary["comparisons"]) == 2 and len(summary["verdicts"]) == 1
    assert summary["primary"] == "test/acc" and set(summary["top_set"]) <= {"adam", "momentum"}
    assert re.match(r"\w+ − \w+: [−+]\d+\.\d+ points test/acc: ", summary["verdicts"][0])
    assert "not resolved" in summary["verdicts"][0]  # 2 seeds cannot resolve at 5%
    # the report and every figure it shows
    md = (out / "report.md").read_text()
    for name in re.findall(r"\]\((figures/[^)]+)\)", md):
        assert (out / name).is_file(), name
    for fig in (
        "isolation.png",
        "best_so_far.png",
        "seed_spread.png",
        "axis_momentum_optimizer_lr.png",
    ):
        assert (out / "figures" / fig).is_file()
    assert "data:image/png;base64," in (out / "report.html").read_text()
    # each cell's confirmed seeds as one model, beside the single-seed mean ± sd
    for cell in summary["cells"]:
        ens, confirm = cell["ensemble"], cell["per_seed"]["test/acc"]
        assert ens["members"] == 2 and ens["metric"] == "test/acc" and 0 <= ens["value"] <= 1
        assert ens["singles"] == pytest.approx(list(confirm.values()))  # the members' own
        assert ens["line"].startswith("ensemble of 2 seeds: ") and ens["line"] in md
        cell_run = next(r for r in runs["cell"] if r.data.tags["cell"] == cell["cell"])
        assert cell_run.data.metrics["ensemble/test/acc"] == pytest.approx(ens["value"])
        assert cell_run.data.tags["ensemble"] == ens["line"]
    assert all(r.data.tags["refit"] == "train+val" for r in runs["confirm"])
    assert not any("refit" in r.data.tags for r in runs["trial"] + runs["seed"])
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    arts = {a.path for a in client.list_artifacts(runs["study"][0].info.run_id)}
    assert {"report.md", "report.html", "summary.json", "figures"} <= arts
    note = runs["study"][0].data.tags["mlflow.note.content"]  # shown above the study run
    assert note.startswith("Top set on test/acc: ") and summary["verdicts"][0] in note
    assert "report.html" in note
    # the same command again: nothing is searched or confirmed again
    again = run_cli(*_args(workdir, "second"), refit, cwd=workdir, env=NO_MODEL)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "already done, not searched again" in again.stdout + again.stderr
    assert {k: len(v) for k, v in _by_role(workdir).items()} == {k: len(v) for k, v in runs.items()}
    assert (
        json.loads((workdir / "second" / "study" / "summary.json").read_text())["cells"]
        == summary["cells"]
    )


@pytest.mark.slow
def test_study_killed_in_its_second_cell_resumes_without_redoing_the_first(workdir):
    proc = start_cli(*_args(workdir, "killed"), cwd=workdir)
    wait_for_line(proc, "cell momentum: nuisance study", timeout=240)
    proc.kill()  # SIGKILL: a power cut, nothing is cleaned up
    finish_cli(proc)
    before = _by_role(workdir)
    adam_before = {
        role: sorted(
            r.info.run_id for r in before.get(role, []) if r.data.tags.get("cell") == "adam"
        )
        for role in ("trial", "seed", "confirm")
    }
    assert len(adam_before["trial"]) == 3 and len(adam_before["confirm"]) == 2
    proc = run_cli(*_args(workdir, "resumed"), cwd=workdir, env=NO_MODEL)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    after = _by_role(workdir)
    for role, ids in adam_before.items():  # the finished cell: no new runs at all
        assert sorted(r.info.run_id for r in after[role] if r.data.tags["cell"] == "adam") == ids
    storage = make_storage(f"journal:{workdir / 'optuna.journal'}")
    study = optuna.load_study(study_name="tiny-momentum", storage=storage)
    counted = [t for t in study.trials if not t.user_attrs.get("stale")]
    assert len(counted) == 3 and all(t.state == TrialState.COMPLETE for t in counted)
    mom = [r for r in after["confirm"] if r.data.tags["cell"] == "momentum"]
    assert sorted(int(r.data.tags["seed"]) for r in mom) == [1, 2]
    summary = json.loads((workdir / "resumed" / "study" / "summary.json").read_text())
    assert all(c["stats"]["val/acc"]["n"] == 2 for c in summary["cells"])


def _confirm_training(cwd: Path) -> bool:
    """A confirmation job is training: its run is RUNNING and has recorded an epoch."""
    return any(
        r.info.status == "RUNNING" and "train/loss" in r.data.metrics
        for r in _by_role(cwd).get("confirm", [])
    )


@pytest.mark.slow
def test_sigterm_during_a_confirmation_stops_the_study_and_resume_reruns_that_seed(workdir):
    """SIGTERM while a confirmation job trains: the job records its run KILLED, the study exits
    143 leaving its run and the cell's run KILLED (nothing RUNNING), and the stopped seed is not
    recorded as confirmed: the same command runs it again."""
    longer = ["trainer.max_epochs=10", "tracking.metrics_every_s=0"]  # time to land in training
    proc = start_cli(*_args(workdir, "stopped"), *longer, cwd=workdir)
    wait_for_line(proc, "cell adam: confirming", timeout=300)
    deadline = time.monotonic() + 120
    while not _confirm_training(workdir):
        assert time.monotonic() < deadline and proc.poll() is None, "no confirmation job trained"
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out = finish_cli(proc)
    assert proc.returncode == 143, out[-3000:]
    assert "study stopped by SIGTERM" in out, out[-3000:]
    runs = _by_role(workdir)
    (study,) = runs["study"]
    assert study.info.status == "KILLED" and study.data.tags["failure_reason"] == "terminated"
    (adam,) = [r for r in runs["cell"] if r.data.tags["cell"] == "adam"]
    assert adam.info.status == "KILLED"
    assert not [r for r in mlflow_runs(workdir, "tiny") if r.info.status == "RUNNING"]
    storage = make_storage(f"journal:{workdir / 'optuna.journal'}")
    confirmed = optuna.load_study(study_name="tiny-adam", storage=storage).user_attrs
    assert len(confirmed.get("study:confirm") or {}) < 2  # the stopped seed is not among them
    proc = run_cli(*_args(workdir, "resumed"), *longer, cwd=workdir, env=NO_MODEL)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((workdir / "resumed" / "study" / "summary.json").read_text())
    assert all(c["stats"]["val/acc"]["n"] == 2 for c in summary["cells"])


SAME_SPACE = """# @package _global_
defaults:
  - override /data: synthetic
  - override /model: mlp
  - override /scheduler: constant
  - override /hydra/sweeper: tunelab_study
model: {width: 16}
trainer: {max_epochs: 1, batch_size: 64}
hydra:
  sweeper:
    study_name: same
    experiment: same
    goal: Does a little weight decay matter?
    scientific: {name: optimizer.weight_decay, values: [0.0, 1.0e-4]}
    nuisance:
      common: {optimizer.lr: 'tag(log, interval(1.0e-3, 1.0e-1))'}
    n_trials: 2
    seeds: 2
    vary_split: VARY
"""


@pytest.mark.slow
@pytest.mark.parametrize("vary_split", [True, False])
def test_cells_with_one_space_try_the_same_points_and_vary_split_draws_a_split_per_seed(
    workdir, vary_split
):
    """README: cells with the same nuisance space get the same quasi-random points (no sampler
    seed given); with vary_split each confirmation seed trains on its own split, data.split_seed =
    the seed, the same in every cell; without, every seed on the config's split."""
    conf = workdir / "extra_conf" / "study"
    conf.mkdir(parents=True)
    (conf / "same.yaml").write_text(SAME_SPACE.replace("VARY", str(vary_split).lower()))
    args = ["-m", "study=same", f"hydra.searchpath=[file://{workdir / 'extra_conf'}]"]
    proc = run_cli(*args, "hydra.sweep.dir=same", cwd=workdir, env=NO_MODEL)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs: dict[str, list] = {}
    for r in mlflow_runs(workdir, "same"):
        runs.setdefault(r.data.tags.get("role"), []).append(r)
    points: dict[str, list] = {}
    for r in sorted(runs["trial"], key=lambda r: int(r.data.tags["trial"])):
        points.setdefault(r.data.tags["cell"], []).append(r.data.params["optimizer.lr"])
    assert len(points) == 2 and all(len(p) == 2 for p in points.values()), points
    first, second = points.values()
    assert first == second and first[0] != first[1], points  # the same two points, in order
    splits = {
        (r.data.tags["cell"], r.data.tags["seed"]): r.data.params["data.split_seed"]
        for r in runs["confirm"]
    }
    assert len(splits) == 4, splits
    for (_, seed), split in splits.items():
        assert split == (seed if vary_split else "0"), splits
