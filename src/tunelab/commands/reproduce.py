"""Re-run a recorded run from its own record: the resolved config it logged (not today's conf/),
the commit it ran (in a temporary git worktree, with its recorded diff applied when the tree was
dirty) and data with the digest it recorded. The reproduction is a new run in the same store,
tagged `reproduces=<run id>`; every final and per-epoch metric is compared with the original.

Exit status 0: the reproduction matches (identical; or, where the environment differs, every
final metric within the original's seed spread). 1: it differs. 2: it could not be made (an
unknown run, no config.yaml, a missing commit, a diff that no longer applies, changed data)."""

from __future__ import annotations

import contextlib
import math
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tunelab.commands import common
from tunelab.commands.common import CommandError

HELP = "re-run a recorded run from its config, commit and data, and compare"
ENVIRONMENT = ("version.torch", "version.numpy", "device", "device_name", "threads")


def add_arguments(p: Any) -> None:
    p.add_argument("run_id", help="a training run, a sweep trial, a study or pipeline seed run")
    p.add_argument("--tracking-uri", help="the MLflow store (default: the project's)")
    p.add_argument("--repo", default=".", help="the git repository holding the commit")


def run(args: Any) -> int:
    uri = common.store_uri(args.tracking_uri)
    mlflow = common.client(uri)
    original = common.get_run(mlflow, args.run_id, uri)
    seeds = _seed_runs(mlflow, original)
    worst = 0
    for seed_run in seeds:
        worst = max(worst, reproduce_one(mlflow, uri, seed_run, Path(args.repo)))
    return worst


def _seed_runs(mlflow: Any, run: Any) -> list[Any]:
    """The training runs behind `run`: itself, or a sweep trial's seed runs."""
    if run.data.tags.get("role") != "trial":
        return [run]
    children = mlflow.search_runs(
        [run.info.experiment_id], f"tags.`mlflow.parentRunId` = '{run.info.run_id}'"
    )
    if not children:
        raise CommandError(f"trial run {run.info.run_id} has no seed runs to reproduce")
    return sorted(children, key=lambda r: r.data.tags.get("replicate", "0"))


def reproduce_one(mlflow: Any, uri: str, original: Any, repo: Path) -> int:
    run_id, tags = original.info.run_id, original.data.tags
    config = common.artifact_text(mlflow, run_id, "config.yaml")
    if config is None:
        raise CommandError(f"run {run_id} has no config.yaml: it was not recorded by a tunelab run")
    sha = tags.get("git_sha", "unknown")
    if sha == "unknown":
        raise CommandError(f"run {run_id} records no git commit: it cannot be rebuilt")
    top = _git(repo, "rev-parse", "--show-toplevel")
    if top is None:
        raise CommandError(f"{repo.resolve()} is not a git repository (pass --repo)")
    if _git(Path(top), "cat-file", "-e", f"{sha}^{{commit}}") is None:
        raise CommandError(f"run {run_id}: commit {sha} is not in the repository {top} (fetch it)")
    diff = (
        common.artifact_text(mlflow, run_id, "git.diff") if tags.get("git_dirty") == "true" else ""
    )
    print(f"reproducing run {run_id} at commit {sha[:12]}" + (" with its diff" if diff else ""))
    with _worktree(Path(top), sha) as tree, tempfile.TemporaryDirectory() as tmp:
        if diff:
            patch = Path(tmp) / "git.diff"
            patch.write_text(diff)
            if _git(tree, "apply", "--whitespace=nowarn", str(patch)) is None:
                raise CommandError(f"run {run_id}: its recorded diff does not apply to {sha[:12]}")
        new_id = _train(uri, original, config, tree, Path(tmp))
    new = mlflow.get_run(new_id)
    rows, verdict, status = compare(mlflow, original, new)
    print(common.table(rows, ["", "original", "reproduction", "difference"]))
    print(verdict)
    report = {"reproduces": run_id, "verdict": verdict, "rows": rows}
    mlflow.log_dict(new_id, report, "reproduction.json")
    mlflow.set_tag(new_id, "reproduction", "match" if status == 0 else "differs")
    print(f"the reproduction: run {new_id}  {common.run_link(new.info.experiment_id, new_id)}")
    return status


def _train(uri: str, original: Any, config: str, tree: Path, tmp: Path) -> str:
    """Train the recorded config with the worktree's code; the new run's id."""
    from omegaconf import OmegaConf

    from tunelab.run.context import RunContext

    cfg = OmegaConf.create(config)
    cfg.tracking.tracking_uri = uri  # the same store, wherever this is run from
    cfg.trainer.checkpoint_dir = str(tmp / "checkpoints")  # never the original's checkpoints
    cfg.trainer.resume = "never"
    (tmp / "reproduce.yaml").write_text(OmegaConf.to_yaml(cfg))
    tag = {"reproduces": original.info.run_id}
    ctx = RunContext(tags=tag, data_digest=original.data.tags.get("data_digest"))
    env = {**os.environ, **ctx.to_env(), "PYTHONPATH": str(tree / "src")}
    cmd = [sys.executable, str(tree / "src" / "train.py"), "--config-dir", str(tmp),
           "--config-name", "reproduce", f"hydra.run.dir={tmp / 'outputs'}"]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-12:]
        changed = next((line for line in tail if "data changed" in line), None)
        if changed:
            raise CommandError(
                f"run {original.info.run_id}: {changed[changed.index('data changed') :]}"
            )
        raise CommandError("the reproduction failed:\n  " + "\n  ".join(tail))
    mlflow = common.client(uri)
    found = mlflow.search_runs(
        [original.info.experiment_id],
        f"tags.reproduces = '{original.info.run_id}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not found:
        raise CommandError("the reproduction ran but recorded no run in this store")
    return found[0].info.run_id


def compare(mlflow: Any, original: Any, new: Any) -> tuple[list[list[str]], str, int]:
    """(table rows, verdict, exit status): every final and per-epoch metric, and the environment."""
    rows, differs = [], []
    a, b = original.data.metrics, new.data.metrics
    for key in sorted(set(a) | set(b)):
        if key.startswith("perf/"):
            continue  # timings differ by nature
        x, y = a.get(key, math.nan), b.get(key, math.nan)
        same = x == y or (math.isnan(x) and math.isnan(y))
        rows.append([key, f"{x:.6g}", f"{y:.6g}", "=" if same else f"{y - x:+.3g}"])
        if not same:
            differs.append(key)
    for key in sorted(k for k in a if not k.startswith("perf/") and k in b):
        h1 = [m.value for m in mlflow.get_metric_history(original.info.run_id, key)]
        h2 = [m.value for m in mlflow.get_metric_history(new.info.run_id, key)]
        if len(h1) > 1 and h1 != h2 and key not in differs:
            differs.append(f"{key} (per epoch)")
    env = {k: (original.data.tags.get(k), new.data.tags.get(k)) for k in ENVIRONMENT}
    env_diff = {k: v for k, v in env.items() if v[0] != v[1]}
    rows += [[f"[{k}]", str(x), str(y), "" if x == y else "differs"] for k, (x, y) in env.items()]
    if not differs:
        return rows, "identical: every final and per-epoch metric matches", 0
    if not env_diff:
        return rows, f"differs in the same environment: {', '.join(differs)}", 1
    spread = _seed_spread(mlflow, original)
    within = spread is not None and all(
        abs(b[k] - a[k]) <= 2 * spread.get(k, 0.0) for k in differs if k in a and k in b
    )
    where = ", ".join(f"{k}: {x} -> {y}" for k, (x, y) in env_diff.items())
    if within:
        return rows, f"within the seed spread of its sweep (environment differs: {where})", 0
    return rows, f"differs ({', '.join(differs)}); the environment differs: {where}", 1


def _seed_spread(mlflow: Any, original: Any) -> dict[str, float] | None:
    """Per-metric std over the seeds of the original's sweep trial, when it had several."""
    parent = original.data.tags.get("mlflow.parentRunId")
    if not parent:
        return None
    metrics = mlflow.get_run(parent).data.metrics
    spread = {k[: -len("_std")]: v for k, v in metrics.items() if k.endswith("_std")}
    return spread or None


def _git(cwd: Path, *args: str) -> str | None:
    out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False)
    return out.stdout.strip() if out.returncode == 0 else None


@contextlib.contextmanager
def _worktree(repo: Path, sha: str) -> Iterator[Path]:
    """A detached worktree of `repo` at `sha`, removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="tunelab-reproduce-"))
    if _git(repo, "worktree", "add", "--detach", str(path), sha) is None:
        raise CommandError(f"cannot check out {sha[:12]} into a worktree of {repo}")
    try:
        yield path
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=repo,
                       capture_output=True, check=False)  # fmt: skip
