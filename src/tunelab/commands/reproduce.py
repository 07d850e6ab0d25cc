"""Re-run a recorded run from its own record: the resolved config it logged (not today's conf/),
the commit it ran (in a temporary git worktree, with its recorded diff applied when the tree was
dirty and the user agrees) and data with the digest it recorded. The reproduction is a new run in
the same store, tagged `reproduces=<run id>`; every final and per-epoch metric is compared with the
original.

A run record is untrusted input: anyone who can write to the store can change it. Before anything
is checked out or trained, the recorded config must pass the check a command-line config gets
(config.validate) with the shipped targets only, plus those the user names with --trust-target
(never the record's own `allowed_targets`; a `hydra:` block or an interpolation is refused too);
`git_sha` must be a full commit id; a recorded diff is shown (`git apply --stat`, all of it with
--show-diff) and applied only with --apply-diff or a "y" typed at a terminal. The comparison is
with the run the reproduction itself reports (reported_run), never the newest run tagged
`reproduces=`. Text from the store is printed with its control characters shown
(common.printable).

Exit status 0: the reproduction matches (identical; or, where the environment differs, every
final metric within the original's seed spread). 1: it differs. 2: it could not be made or was
refused (an unknown run, no config.yaml, a refused config, a bad git_sha, a missing commit, a diff
not agreed to or that no longer applies, changed data)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import secrets
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.commands import common
from tunelab.commands.common import CommandError, printable
from tunelab.tags import (
    DATA_DIGEST,
    ENTRY_POINT,
    GIT_DIRTY,
    GIT_SHA,
    PARENT_RUN_ID,
    REPLICATE,
    REPRODUCES,
    REPRODUCTION,
    REPRODUCTION_KEY,
    ROLE,
    Role,
)
from tunelab.tracking.mlflow_reader import MlflowReader
from tunelab.tracking.mlflow_writer import MlflowWriter, ui_link
from tunelab.tracking.policy import tag_filter

HELP = "re-run a recorded run from its config, commit and data, and compare"
ENVIRONMENT = ("version.torch", "version.numpy", "device", "device_name", "threads")
FULL_SHA = re.compile(r"[0-9a-fA-F]{40}")


def add_arguments(p: Any) -> None:
    p.add_argument("run_id", help="a training run, a sweep trial, a study or pipeline seed run")
    p.add_argument("--tracking-uri", help="the MLflow store (default: the project's)")
    p.add_argument("--repo", default=".", help="the git repository holding the commit")
    p.add_argument(
        "--trust-target",
        action="append",
        default=[],
        metavar="TARGET",
        help="a _target_ of your own the run used (README: Your own model or dataset); "
        "repeatable. A run record's own allowed_targets are never trusted",
    )
    p.add_argument(
        "--trust-script",
        action="append",
        default=[],
        metavar="PATH",
        help="the repository-relative script of your own loop that trained the run (its "
        "entry_point tag), e.g. examples/own_loop/train.py; a record alone never chooses the code "
        "that runs",
    )
    p.add_argument(
        "--show-diff",
        action="store_true",
        help="print the whole recorded git.diff of a run from a dirty tree",
    )
    p.add_argument(
        "--apply-diff",
        action="store_true",
        help="apply the recorded git.diff (the code it changes will run); without it "
        "only a 'y' typed at a terminal applies it",
    )


@dataclass(frozen=True)
class Plan:
    """One run to reproduce, every check passed: the config the child trains, its commit, diff."""

    original: Any
    config: Any  # the checked DictConfig
    sha: str
    diff: str  # "" when the tree was clean
    top: Path  # the repository holding the commit
    script: str = "src/train.py"  # what trains it: a loop of the user's own names its script


def run(args: Any) -> int:
    uri = common.store_uri(args.tracking_uri)
    store = MlflowReader(uri)
    original = common.get_run(store, args.run_id)
    trusted = frozenset(args.trust_target)
    # every seed run is checked, and its diff agreed to, before any is checked out or trained
    repo = Path(args.repo)
    scripts = frozenset(args.trust_script)
    plans = [plan(store, uri, r, repo, trusted, scripts) for r in _seed_runs(store, original)]
    for p in plans:
        agree_to_diff(p, show=args.show_diff, apply=args.apply_diff)
    worst = 0
    for p in plans:
        worst = max(worst, reproduce_one(store, uri, p))
    return worst


def _seed_runs(store: MlflowReader, run: Any) -> list[Any]:
    """The training runs behind `run`: itself, or a sweep trial's seed runs."""
    if run.data.tags.get(ROLE) != Role.TRIAL:
        return [run]
    children = store.children(run)
    if not children:
        raise CommandError(f"trial run {run.info.run_id} has no seed runs to reproduce")
    return sorted(children, key=lambda r: r.data.tags.get(REPLICATE, "0"))


def plan(
    store: MlflowReader,
    uri: str,
    original: Any,
    repo: Path,
    trusted: frozenset[str],
    scripts: frozenset[str] = frozenset(),
) -> Plan:
    """Every check of a run's record that needs no checkout: its config, commit and diff. A
    recorded entry point (a loop of the user's own) runs only when the user names it in
    `scripts` (--trust-script): anyone who can write to the store can change the tag."""
    run_id, tags = original.info.run_id, original.data.tags
    text = store.artifact_text(run_id, "config.yaml")
    if text is None:
        raise CommandError(f"run {run_id} has no config.yaml: it was not recorded by a tunelab run")
    script = tags.get(ENTRY_POINT)
    if script is not None and script not in scripts:
        shown = printable(script[:200])
        raise CommandError(
            f"run {run_id} was trained by '{shown}' (its {ENTRY_POINT} tag): a run record cannot "
            f"choose the code that runs; if that is your script, name it: --trust-script {shown}"
        )
    config = checked_config(text, trusted, f"run {run_id}", uri, own_loop=script is not None)
    sha = tags.get(GIT_SHA, "unknown")
    if sha == "unknown":
        raise CommandError(f"run {run_id} records no git commit: it cannot be rebuilt")
    if not FULL_SHA.fullmatch(sha):
        raise CommandError(
            f"run {run_id}: its git_sha '{printable(sha[:80])}' is not a commit id (40 hex "
            "digits): refused"
        )
    top = _git(repo, "rev-parse", "--show-toplevel")
    if top is None:
        raise CommandError(f"{repo.resolve()} is not a git repository (pass --repo)")
    if _git(Path(top), "cat-file", "-e", f"{sha}^{{commit}}") is None:
        raise CommandError(f"run {run_id}: commit {sha} is not in the repository {top} (fetch it)")
    if script is not None and not _committed_script(Path(top), sha, script):
        raise CommandError(
            f"run {run_id}: its {ENTRY_POINT} '{printable(script[:200])}' is not a Python file "
            f"of commit {sha[:12]}: refused"
        )
    diff = ""
    if tags.get(GIT_DIRTY) == "true":
        diff = store.artifact_text(run_id, "git.diff") or ""
        if not diff.strip():
            raise CommandError(
                f"run {run_id} was recorded from a dirty tree but has no git.diff: it cannot be "
                "rebuilt"
            )
    return Plan(original, config, sha, diff, Path(top), script or Plan.script)


def _committed_script(top: Path, sha: str, script: str) -> bool:
    """Whether `script` is a repository-relative .py file of commit `sha` (a run record names
    only code the commit ships)."""
    parts = Path(script).parts
    if not script.endswith(".py") or Path(script).is_absolute() or ".." in parts:
        return False
    return _git(top, "cat-file", "-e", f"{sha}:{script}") is not None


def checked_config(
    text: str, trusted: frozenset[str], who: str, uri: str, *, own_loop: bool = False
) -> Any:
    """The recorded config.yaml as the reproduction will train it, checked as a command-line
    config is (config.validate) before anything runs. Its targets may be the shipped ones and
    those in `trusted` (--trust-target) only: a recorded `allowed_targets` that names anything
    else, a `hydra:` block (Hydra acts on it before tunelab checks anything) or an interpolation
    (a recorded config is resolved; `${oc.env:...}` would copy a secret into the new run) is
    refused."""
    from omegaconf import DictConfig, OmegaConf

    from tunelab.config import ConfigError, validate
    from tunelab.config.own_loop import validate_own_loop

    try:
        cfg = OmegaConf.create(text)
    except Exception as exc:
        raise CommandError(f"{who}: its config.yaml is not YAML: {printable(exc)}") from None
    if not isinstance(cfg, DictConfig):
        raise CommandError(f"{who}: its config.yaml is not a mapping of settings")
    plain = OmegaConf.to_container(cfg, resolve=False)
    refused = []
    if "hydra" in plain:
        refused.append("it has a hydra: block (a recorded config has none)")
    listed = plain.get("allowed_targets")
    if listed is not None:
        names = [str(t) for t in listed] if isinstance(listed, list) else [str(listed)]
        if untrusted := [t for t in names if t not in trusted]:
            refused.append(
                f"its allowed_targets lists {printable(untrusted)}: a run record cannot add code "
                "that may run; if a target is your own, trust it yourself with --trust-target "
                f"{printable(untrusted[0])}"
            )
    if interpolated := _interpolations(plain):
        refused.append(f"it has interpolations ({printable(', '.join(interpolated[:3]))})")
    if refused:
        raise CommandError(f"{who}: its config.yaml is refused: " + "; ".join(refused))
    cfg.pop("allowed_targets", None)
    if trusted:
        cfg.allowed_targets = sorted(trusted)  # what the child's own check admits beyond SHIPPED
    try:
        OmegaConf.update(cfg, "tracking.tracking_uri", uri)  # the same store, wherever run from
        # the data files are checked by the child, before it runs
        if own_loop:
            validate_own_loop(cfg)
        else:
            validate(cfg)
    except ConfigError as exc:
        hint = (
            "; a target of your own is named with --trust-target" if "_target_" in str(exc) else ""
        )
        raise CommandError(
            f"{who}: its config.yaml: {printable(exc, keep=chr(10))}{hint}"
        ) from None
    except Exception as exc:  # e.g. a mandatory value left as ???
        raise CommandError(f"{who}: its config.yaml is invalid: {printable(exc)}") from None
    return cfg


def _interpolations(node: Any, path: str = "") -> list[str]:
    """The keys whose values are interpolations (`${...}`)."""
    if isinstance(node, dict):
        items: list = list(node.items())
    elif isinstance(node, list):
        items = list(enumerate(node))
    else:
        return [path] if isinstance(node, str) and "${" in node else []
    return [
        k for key, v in items for k in _interpolations(v, f"{path}.{key}" if path else str(key))
    ]


def agree_to_diff(p: Plan, *, show: bool, apply: bool) -> None:
    """A recorded diff is code from the store: show what it changes, and apply it only when the
    user says so (--apply-diff, or "y" at a terminal)."""
    if not p.diff:
        return
    run_id = p.original.info.run_id
    with tempfile.TemporaryDirectory() as tmp:
        patch = Path(tmp) / "git.diff"
        patch.write_text(p.diff)
        stat = _git(p.top, "apply", "--stat", str(patch))
    if stat is None:
        raise CommandError(f"run {run_id}: its recorded git.diff is not a patch git can read")
    print(f"run {run_id} was recorded from a dirty tree; its diff (git apply --stat):")
    print("\n".join("  " + printable(line) for line in stat.splitlines()))
    if show:
        print(printable(p.diff, keep="\t\n"))
    if apply or (
        sys.stdin.isatty() and _answer("apply this diff and run the code it changes? [y/N] ")
    ):
        return
    raise CommandError(
        f"run {run_id}: its recorded diff was not applied and nothing ran: read it with "
        "--show-diff, then pass --apply-diff to apply it (the code it changes will run)"
    )


def _answer(question: str) -> bool:
    try:
        return input(question).strip().lower() in ("y", "yes")
    except EOFError:
        return False


def reproduce_one(store: MlflowReader, uri: str, p: Plan) -> int:
    original, run_id = p.original, p.original.info.run_id
    print(f"reproducing run {run_id} at commit {p.sha[:12]}" + (" with its diff" if p.diff else ""))
    with _worktree(p.top, p.sha) as tree, tempfile.TemporaryDirectory() as tmp:
        if p.diff:
            patch = Path(tmp) / "git.diff"
            patch.write_text(p.diff)
            if _git(tree, "apply", "--whitespace=nowarn", str(patch)) is None:
                raise CommandError(
                    f"run {run_id}: its recorded diff does not apply to {p.sha[:12]}"
                )
        new = _train(store, uri, original, p.config, tree, Path(tmp), p.script)
    rows, verdict, status = compare(store, original, new)
    print(common.table(rows, ["", "original", "reproduction", "difference"]))
    print(printable(verdict))
    report = {REPRODUCES: run_id, "verdict": verdict, "rows": rows}
    new_id, experiment_id = new.info.run_id, new.info.experiment_id
    writer = MlflowWriter(uri, store.experiment_name(experiment_id))
    writer.log_dict(new_id, report, "reproduction.json")
    writer.set_tags(new_id, {REPRODUCTION: "match" if status == 0 else "differs"})
    print(f"the reproduction: run {new_id}  {ui_link(experiment_id, run_id=new_id)}")
    return status


def _train(
    store: MlflowReader,
    uri: str,
    original: Any,
    cfg: Any,
    tree: Path,
    tmp: Path,
    script: str = Plan.script,
) -> Any:
    """Train the checked config with the worktree's code (`script`: src/train.py, or the script
    of a loop of the user's own); the new run."""
    from omegaconf import OmegaConf

    from tunelab.run.context import RunContext

    cfg = cfg.copy()
    cfg.trainer.checkpoint_dir = str(tmp / "checkpoints")  # never the original's checkpoints
    cfg.trainer.resume = "never"
    (tmp / "reproduce.yaml").write_text(OmegaConf.to_yaml(cfg))
    key = secrets.token_hex(16)  # names the new run for a commit whose metrics.json has no run_id
    tag = {REPRODUCES: original.info.run_id, REPRODUCTION_KEY: key}
    ctx = RunContext(tags=tag, data_digest=original.data.tags.get(DATA_DIGEST))
    # the commit's code; a target the user trusts (--trust-target) is theirs, not the commit's:
    # it is imported from their own PYTHONPATH, as it is today
    own = os.environ.get("PYTHONPATH", "") if cfg.get("allowed_targets") else ""
    env = {
        **os.environ,
        **ctx.to_env(),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(tree / "src"), own])),
    }
    out = tmp / "outputs"
    cmd = [
        sys.executable,
        str(tree / script),
        "--config-dir",
        str(tmp),
        "--config-name",
        "reproduce",
        f"hydra.run.dir={out}",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, errors="replace")
    if proc.returncode != 0:
        tail = [printable(x) for x in (proc.stderr or proc.stdout).strip().splitlines()[-12:]]
        if located := next((line for line in tail if "Error locating target" in line), None):
            raise CommandError(
                f"the reproduction could not import a target: {located.strip()}; a target of "
                "your own is not part of the recorded commit: put the folder holding its module "
                "on PYTHONPATH (PYTHONPATH=. tunelab reproduce …) or install it"
            )
        changed = next((line for line in tail if "data changed" in line), None)
        if changed:
            raise CommandError(
                f"run {original.info.run_id}: {changed[changed.index('data changed') :]}"
            )
        raise CommandError("the reproduction failed:\n  " + "\n  ".join(tail))
    return reported_run(store, original, out, key)


def reported_run(store: MlflowReader, original: Any, out: Path, key: str) -> Any:
    """The run the reproduction reports as its own (`run_id` in the metrics.json of its job
    directory `out`), never a search for runs tagged `reproduces=`: anyone can tag a run so. A
    commit whose metrics.json has no run_id is answered by the one run carrying this
    reproduction's random `reproduction_key`."""
    try:
        reported = json.loads((out / "metrics.json").read_text()).get("run_id")
    except (OSError, ValueError, AttributeError):
        reported = None
    if isinstance(reported, str) and reported:
        new = store.run(reported)
        if new is None:
            raise CommandError(
                f"the reproduction reported run {printable(reported)}, which is not in this store"
            )
        if new.data.tags.get(REPRODUCTION_KEY) != key:
            raise CommandError(f"the reproduction reported run {new.info.run_id}, which is not it")
        return new
    found = store.search(
        tag_filter({REPRODUCTION_KEY: key}),
        experiment_ids=[original.info.experiment_id],
        max_results=2,
    )
    if len(found) != 1:
        raise CommandError("the reproduction ran but no single run in this store records it")
    return found[0]


def compare(store: MlflowReader, original: Any, new: Any) -> tuple[list[list[str]], str, int]:
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
        h1 = [m.value for m in store.metric_history(original.info.run_id, key)]
        h2 = [m.value for m in store.metric_history(new.info.run_id, key)]
        if len(h1) > 1 and h1 != h2 and key not in differs:
            differs.append(f"{key} (per epoch)")
    env = {k: (original.data.tags.get(k), new.data.tags.get(k)) for k in ENVIRONMENT}
    env_diff = {k: v for k, v in env.items() if v[0] != v[1]}
    rows += [[f"[{k}]", str(x), str(y), "" if x == y else "differs"] for k, (x, y) in env.items()]
    if not differs:
        return rows, "identical: every final and per-epoch metric matches", 0
    if not env_diff:
        return rows, f"differs in the same environment: {', '.join(differs)}", 1
    spread = _seed_spread(store, original)
    within = spread is not None and all(
        abs(b[k] - a[k]) <= 2 * spread.get(k, 0.0) for k in differs if k in a and k in b
    )
    where = ", ".join(f"{k}: {x} -> {y}" for k, (x, y) in env_diff.items())
    if within:
        return rows, f"within the seed spread of its sweep (environment differs: {where})", 0
    return rows, f"differs ({', '.join(differs)}); the environment differs: {where}", 1


def _seed_spread(store: MlflowReader, original: Any) -> dict[str, float] | None:
    """Per-metric std over the seeds of the original's sweep trial, when it had several."""
    parent = original.data.tags.get(PARENT_RUN_ID)
    if not parent:
        return None
    metrics = common.get_run(store, parent).data.metrics
    spread = {k[: -len("_std")]: v for k, v in metrics.items() if k.endswith("_std")}
    return spread or None


def _git(cwd: Path, *args: str) -> str | None:
    out = subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, errors="replace", check=False
    )
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
        subprocess.run(
            ["git", "worktree", "remove", "--force", str(path)],
            cwd=repo,
            capture_output=True,
            check=False,
        )
