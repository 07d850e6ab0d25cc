"""The record: every run of a findings experiment in one Parquet file beside the document (times,
status, tags, params, final metrics, per-epoch validation metrics, and the study summaries and
figures the document copies), so docs/FINDINGS.md regenerates and `tunelab trace` answers without
the MLflow store. One long table, sorted, so the same store exports to the same bytes; it is read
back as columns of plain values only (no pickle, no code)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.findings.store import Reader
from tunelab.tags import PARENT_RUN_ID, ROLE, TRAINING_ROLES, Role

FIGURES = ("isolation", "seed_spread")  # the study figures the document copies
HISTORY = "val/"  # the per-epoch metrics kept: the validation curves, not their per-class parts
KEEP_MLFLOW = (PARENT_RUN_ID,)  # MLflow's own tags kept (not its user, source or note)
INFO = ("experiment_id", "run_name", "status", "start_time", "end_time")
FIELDS = ("run_id", "kind", "key", "step", "value", "text", "data")


class RecordError(ValueError):
    """The file is not a findings record (or not one of this experiment); the message says which."""


@dataclass
class RunInfo:
    run_id: str
    experiment_id: str
    run_name: str
    status: str
    start_time: int  # ms since the epoch, as MLflow keeps it
    end_time: int | None


@dataclass
class RunData:
    tags: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class RecordedRun:
    """A run as the record keeps it, shaped as MLflow's (`info`, `data`) for the same readers."""

    info: RunInfo
    data: RunData
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)


def _schema() -> Any:
    import pyarrow as pa

    return pa.schema(
        [
            ("run_id", pa.string()),
            ("kind", pa.string()),  # experiment, info, tag, param, metric, history, artifact
            ("key", pa.string()),
            ("step", pa.int64()),
            ("value", pa.float64()),
            ("text", pa.string()),
            ("data", pa.binary()),
        ]
    )


def _rows(reader: Reader, run: Any) -> list[dict[str, Any]]:
    i, d = run.info, run.data
    rid = i.run_id
    row = dict.fromkeys(FIELDS)
    out = [
        {**row, "run_id": rid, "kind": "info", "key": "experiment_id", "text": i.experiment_id},
        {**row, "run_id": rid, "kind": "info", "key": "run_name", "text": i.run_name or ""},
        {**row, "run_id": rid, "kind": "info", "key": "status", "text": i.status},
        {**row, "run_id": rid, "kind": "info", "key": "start_time", "step": i.start_time},
        {**row, "run_id": rid, "kind": "info", "key": "end_time", "step": i.end_time},
    ]
    out += [
        {**row, "run_id": rid, "kind": "tag", "key": k, "text": v}
        for k, v in d.tags.items()
        if not k.startswith("mlflow.") or k in KEEP_MLFLOW
    ]
    out += [
        {**row, "run_id": rid, "kind": "param", "key": k, "text": v} for k, v in d.params.items()
    ]
    out += [
        {**row, "run_id": rid, "kind": "metric", "key": k, "value": v} for k, v in d.metrics.items()
    ]
    if d.tags.get(ROLE) in TRAINING_ROLES:
        for k in sorted(k for k in d.metrics if _curve(k)):
            out += [
                {
                    **row,
                    "run_id": rid,
                    "kind": "history",
                    "key": k,
                    "step": m.step,
                    "value": m.value,
                }
                for m in reader.store.metric_history(rid, k)
            ]
    if d.tags.get(ROLE) == Role.STUDY:
        summary = reader.artifact(rid, "summary.json")
        names = (json.loads(summary).get("figures") or {}) if summary is not None else {}
        wanted = [("summary.json", summary)] + [
            (f"figures/{names[f]}", None) for f in FIGURES if names.get(f)
        ]
        for path, data in wanted:
            data = data if data is not None else reader.artifact(rid, path)
            if data is not None:
                out.append({**row, "run_id": rid, "kind": "artifact", "key": path, "data": data})
    return out


def _curve(key: str) -> bool:
    """A validation metric of the whole split (val/acc, val/loss, val/macro_f1), not of a class:
    per-class curves would multiply the record's size by the number of classes."""
    return key.startswith(HISTORY) and key.count("/") == 1 and "_class_" not in key


def _order(row: dict[str, Any]) -> tuple:
    """A total order of the rows (a step logged twice included), so the bytes never depend on
    the order the store answered in."""
    step = -1 if row["step"] is None else row["step"]
    return (row["run_id"], row["kind"], row["key"], step, repr(row["value"]), row["text"] or "")


def export(reader: Reader, path: Path) -> int:
    """Write every run of the reader's experiment to `path` (Parquet); the number of runs."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    runs = reader.search({})
    if not runs:
        raise RecordError(f"experiment '{reader.experiment_name}' has no runs to export")
    rows = [dict.fromkeys(FIELDS) | {"run_id": "", "kind": "experiment", "key": "name"}]
    rows[0]["text"] = reader.experiment_name
    for r in runs:
        rows += _rows(reader, r)
    rows.sort(key=_order)
    table = pa.Table.from_pylist(rows, schema=_schema())
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp, compression="zstd", row_group_size=1 << 20)
    os.replace(tmp, path)
    return len(runs)


class RecordReader(Reader):
    """A record read back: the same questions the document and `trace` ask of a store."""

    def __init__(self, path: Path, experiment: str | None = None) -> None:
        import pyarrow.parquet as pq

        try:
            schema = pq.read_schema(path)
        except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
            raise RecordError(f"cannot read the record {path}: {exc}") from None
        if not schema.equals(_schema()):
            raise RecordError(f"{path} is not a findings record (columns {schema.names})")
        self.uri = self.tracking_uri = str(path)
        self.runs: dict[str, RecordedRun] = {}
        self.artifacts: dict[tuple[str, str], bytes] = {}
        name = None
        for r in pq.read_table(path).to_pylist():
            kind, key, rid = r["kind"], r["key"], r["run_id"]
            if kind == "experiment":
                name = r["text"]
                continue
            run = self.runs.get(rid) or self.runs.setdefault(
                rid, RecordedRun(RunInfo(rid, "", "", "", 0, None), RunData())
            )
            if kind == "info":
                setattr(run.info, key, r["step"] if key.endswith("_time") else r["text"])
            elif kind == "tag":
                run.data.tags[key] = r["text"]
            elif kind == "param":
                run.data.params[key] = r["text"]
            elif kind == "metric":
                run.data.metrics[key] = r["value"]
            elif kind == "history":
                run.history.setdefault(key, []).append((r["step"], r["value"]))
            elif kind == "artifact":
                self.artifacts[(rid, key)] = r["data"]
        if name is None:
            raise RecordError(f"{path} names no experiment: not a findings record")
        if experiment is not None and name != experiment:
            raise RecordError(
                f"the record {path} holds experiment '{name}', this budget's is '{experiment}'"
            )
        self.experiment_name = name

    def search(self, tags: dict[str, str], finished: bool = False) -> list[Any]:
        found = [
            r
            for r in self.runs.values()
            if all(r.data.tags.get(k) == v for k, v in tags.items())
            and (not finished or r.info.status == "FINISHED")
        ]
        return sorted(found, key=lambda r: (-r.info.start_time, r.info.run_id))  # as MLflow

    def artifact(self, run_id: str, path: str) -> bytes | None:
        return self.artifacts.get((run_id, path))

    # what `tunelab trace` asks of a store (tracking's MlflowReader)
    def run(self, run_id: str) -> RecordedRun | None:
        return self.runs.get(run_id)

    def children(self, run: Any) -> list[RecordedRun]:
        return self.search({PARENT_RUN_ID: run.info.run_id})
