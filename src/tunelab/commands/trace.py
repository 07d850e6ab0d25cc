"""List the MLflow runs a number was computed from, or where a run came from.

    tunelab trace results/eval/metrics.json test_acc_mean   a DVC metric: the runs behind it
    tunelab trace multirun/2026-11-30/10-00-00              a sweep or a study directory
    tunelab trace RUN_ID                                    a run: its stage, dvc.lock entry,
                                                            sweep or study, parent and children

A run id the store lacks (or any, when there is no store) is looked up in the findings' record
(docs/findings/record.parquet, or --record): the runs docs/FINDINGS.md cites, without their store.

Each run is listed with its seed, git commit, data digest and a link into the MLflow UI. What the
store holds is printed with its control characters and escape sequences shown, never sent raw to
the terminal (common.printable)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from tunelab.commands import common
from tunelab.commands.common import CommandError, printable
from tunelab.tags import (
    CELL,
    DATA_DIGEST,
    DVC_EXP,
    DVC_STAGE,
    GIT_SHA,
    PARENT_RUN_ID,
    REPRODUCES,
    ROLE,
    SEED,
    STUDY,
    SWEEP,
    TRIAL,
    Role,
)
from tunelab.tracking.mlflow_reader import MlflowReader
from tunelab.tracking.mlflow_writer import ui_link
from tunelab.tracking.policy import tag_filter

HELP = "list the runs behind a metric, a sweep or a study, or where a run came from"
LINEAGE = "lineage.json"  # written beside a stage's metrics: the runs they were computed from
RECORD = Path("docs/findings/record.parquet")  # the runs behind docs/FINDINGS.md, as data


def add_arguments(p: Any) -> None:
    p.add_argument("target", help="a metrics file, a sweep or study directory, or a run id")
    p.add_argument("key", nargs="?", help="a metric in the file (e.g. test_acc_per_seed.1)")
    p.add_argument("--tracking-uri", help="the MLflow store (default: the project's)")
    p.add_argument(
        "--record",
        type=Path,
        default=RECORD,
        help="the findings' record, asked for a run the store lacks (default: %(default)s)",
    )


def run(args: Any) -> int:
    path = Path(args.target)
    if not path.exists():
        found = from_record(args.record, args.target, args.tracking_uri)
        if found is not None:
            return describe(*found)
    store = MlflowReader(common.store_uri(args.tracking_uri))
    if path.is_file():
        ids = metric_runs(path, args.key)
    elif path.is_dir():
        ids = directory_runs(store, path)
    else:
        return describe(store, common.get_run(store, args.target))
    runs = [common.get_run(store, i) for i in ids]
    print(listing(runs))
    return 0


def from_record(record: Path, run_id: str, tracking_uri: str | None) -> tuple[Any, Any] | None:
    """The record and its run, when the store is absent or lacks the run and the record has it."""
    try:
        store = MlflowReader(common.store_uri(tracking_uri))
        if store.run(run_id) is not None:
            return None
    except CommandError:  # no store here: the record is all there is
        pass
    if not record.is_file():
        return None
    from tunelab.findings.record import RecordError, RecordReader

    try:
        kept = RecordReader(record)
    except RecordError as exc:
        raise CommandError(str(exc)) from None
    run = kept.run(run_id)
    if run is None:
        return None
    print(f"from the record {record} (experiment '{kept.experiment_name}'; not in the store)")
    m = run.data.metrics
    shown = ", ".join(f"{k} {m[k]:.4f}" for k in ("val/acc", "test/acc") if k in m)
    if shown:
        epochs = len(run.history.get("val/acc", []))
        print(f"final {shown}" + (f" ({epochs} epochs of val/acc kept)" if epochs else ""))
    return kept, run


def metric_runs(path: Path, key: str | None) -> list[str]:
    """The runs a DVC metrics file (or one key of it) was computed from, from the lineage its
    stage wrote beside it."""
    lineage_file = path.parent / LINEAGE
    if not lineage_file.is_file():
        raise CommandError(f"{path}: no {LINEAGE} beside it (not written by a tunelab stage)")
    lineage = json.loads(lineage_file.read_text())
    if key is not None:
        metrics = json.loads(path.read_text())
        node: Any = metrics
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                raise CommandError(f"{path} has no metric {key!r}")
            node = node[part]
        per_seed = lineage.get("per_seed", {})
        seed = key.rsplit(".", 1)[-1]
        if key.split(".", 1)[0].endswith("_per_seed") and seed in per_seed:
            return [per_seed[seed]]
    return list(lineage["computed_from"])


def directory_runs(store: MlflowReader, path: Path) -> list[str]:
    """The runs of a sweep (its trials' seed runs) or a study (its confirmation runs)."""
    for summary in (path / "study" / "summary.json", path / "summary.json"):
        if summary.is_file():
            data = json.loads(summary.read_text())
            break
    else:
        raise CommandError(f"{path}: no summary.json of a sweep or study there")
    if "cells" in data:  # a playbook study
        return [r for c in data["cells"] for r in (c.get("confirm_runs") or {}).values()]
    name = str(data.get("study_name", ""))
    if not name or "'" in name or "\\" in name:  # it goes into a search filter as a literal
        raise CommandError(f"{path}: summary.json names no usable study ({printable(name)!r})")
    runs = store.search(tag_filter({SWEEP: name, ROLE: Role.SEED}))
    return [r.info.run_id for r in runs]


def listing(runs: list[Any]) -> str:
    rows = []
    for r in runs:
        t = r.data.tags
        where = t.get(CELL) or t.get(SWEEP) or t.get(DVC_STAGE) or ""
        rows.append(
            [
                r.info.run_id,
                t.get(ROLE, ""),
                where,
                t.get(SEED, ""),
                t.get(GIT_SHA, "")[:12],
                t.get(DATA_DIGEST, "")[:12],
                ui_link(r.info.experiment_id, run_id=r.info.run_id),
            ]
        )
    header = ["run", ROLE, "from", SEED, "git", "data", "link"]
    return f"{len(runs)} run(s)\n" + common.table(rows, header)


def describe(store: MlflowReader, run: Any) -> int:
    """Where one run came from, and what it holds."""
    t = run.data.tags
    print(listing([run]))
    for key in (SWEEP, TRIAL, STUDY, CELL, REPRODUCES):
        if t.get(key):
            print(f"{key}: {printable(t[key])}")
    parent = t.get(PARENT_RUN_ID)
    if parent:
        p = common.get_run(store, parent)
        role, name = p.data.tags.get(ROLE, ""), p.info.run_name or ""
        what = name if name.startswith(role) else f"{role} {name}".strip()  # "trial 3 …" once
        print(printable(f"parent: {parent} ({what})"))
    stage = t.get(DVC_STAGE)
    if stage:
        exp = f" (experiment {t[DVC_EXP]})" if t.get(DVC_EXP) else ""
        print(printable(f"DVC stage: {stage}{exp}"))
        entry = lock_entry(stage)
        if entry:
            print(f"  dvc.lock: {printable(entry['cmd'])}")
            for dep in entry.get("deps", []):
                print(printable(f"    {dep.get('path')}  {dep.get('md5') or dep.get('hash', '')}"))
    children = store.children(run)
    if children:
        print("children:\n" + listing(children))
    return 0


def lock_entry(stage: str, lock: Path = Path("dvc.lock")) -> dict | None:
    if not lock.is_file():
        return None
    return (yaml.safe_load(lock.read_text()) or {}).get("stages", {}).get(stage)
