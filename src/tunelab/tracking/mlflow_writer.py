"""The one MLflow writer. Runs, sweeps, studies, pipeline stages and the Hydra callback all write
through `MlflowWriter`, so they share:

- one retry policy for what concurrent writers cause and a retry resolves: SQLite's single-writer
  lock, a dataset registration that lost an insert race, and a tracking server that is briefly
  unreachable or overloaded;
- race-safe get-or-create of experiments (and, in tracking/run_owners.py, of keyed runs such as a
  sweep's or a study's parent: two processes starting together end up with one);
- one place for MLflow's limits: value length, entities per batch, finite metric values;
- one ordered background thread for writes the caller does not wait for.

Per-epoch metrics go through this writer's own ordered thread, not MLflow's asynchronous logging
(`log_batch(..., synchronous=False)`), because it is faster here: `python bench/overhead.py
--repeats 4` against `... --mlflow-async` (2 rounds each, 2-core CPU, default CNN, 15 epochs) gave
throughput ratios of 0.962 and 0.943 for this writer against 0.883 and 0.886 for MLflow's queue;
whole 15-epoch runs with the default 2-s metric batching took 9.96 s against 12.30 s (median of 5
alternating pairs). MLflow's queue also fails a write that meets SQLite's lock where this writer
retries it.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from tunelab import processes
from tunelab.background import BackgroundWriter
from tunelab.processes import file_lock
from tunelab.tags import FAILURE_REASON, OWNER, PARENT_RUN_ID
from tunelab.tracking import run_owners
from tunelab.tracking.mlflow_reader import MlflowReader
from tunelab.tracking.policy import (
    MAX_METRICS,
    MAX_PARAMS,
    MAX_TAGS,
    chunks,
    clip,
    finite,
    retry,
)
from tunelab.tracking.store_uri import lock_beside, ui_command

log = logging.getLogger(__name__)


# The experiment tag that marks classic model development (MLflow 3.17's UI chooses its view from a
# browser setting instead, which `mlflow ui --app-name tunelab` defaults to the runs table).
EXPERIMENT_KIND = "mlflow.experimentKind"
_KIND = (EXPERIMENT_KIND, "custom_model_development")


# MLflow's shared views: an experiment tag holding a runs table's view state (filter, sort, columns),
# opened by `#/experiments/<id>/runs?viewStateShareKey=<key>`. The store keeps it, so any MLflow UI on
# the store (plain `mlflow ui`/`mlflow server` too) opens the view.
SHARED_VIEW = "mlflow.sharedViewState."
# The runs a multirun's, a sweep's or a study's run lists for comparison (`tunelab ui --compare`).


def table_view(
    children_of: str | None = None,
    order_by: str | None = None,
    ascending: bool = False,
    metrics: list[str] = (),
    params: list[str] = (),
) -> dict[str, Any]:
    """A runs table's view state: only the children of `children_of` (as rows of their own),
    sorted by the metric `order_by`, these metrics and params as its columns."""
    view: dict[str, Any] = {}
    if children_of:
        view["searchFilter"] = f"tags.{PARENT_RUN_ID} = '{children_of}'"
    if order_by:
        view.update(orderByKey=f"metrics.`{order_by}`", orderByAsc=ascending)
    columns = [
        f"metrics.`{m}`" for m in dict.fromkeys([*([order_by] if order_by else []), *metrics])
    ]
    if columns or params:
        view["selectedColumns"] = [*columns, *(f"params.`{p}`" for p in params)]
    return view


def ui_link(
    experiment_ids: str | list[str] | None,
    runs: list[str] | None = None,
    metric: str | None = None,
    view_key: str | None = None,
    port: int = 5000,
    run_id: str | None = None,
) -> str:
    """Every link into the MLflow UI: the compare view of `runs` (MLflow's
    `#/compare-runs?runs=[...]&experiments=[...]`), or with `metric` their curves of that metric
    in one chart; else the page of the run `run_id`; else the experiment's runs table, in the
    shared view `view_key` if given."""
    base = f"http://127.0.0.1:{port}/#"
    ids = [experiment_ids] if isinstance(experiment_ids, str) else list(experiment_ids or [])
    if run_id and not runs:
        return f"{base}/experiments/{ids[0] if ids else None}/runs/{run_id}"
    js = functools.partial(json.dumps, separators=(",", ":"))
    if runs:
        query = {"runs": js(list(runs)), "experiments": js(sorted(set(ids)))}
        if not metric:
            return f"{base}/compare-runs?{urlencode(query, quote_via=quote)}"
        curves = {"metric": js(metric), "plot_metric_keys": js([metric]), "x_axis": "step"}
        query.update(curves, y_axis_scale="linear", line_smoothness="1", show_point="false")
        return f"{base}/metric?{urlencode(query, quote_via=quote)}"
    query = {
        "workflowType": "machine_learning",
        **({"viewStateShareKey": view_key} if view_key else {}),
    }
    return f"{base}/experiments/{ids[0] if ids else None}/runs?{urlencode(query, quote_via=quote)}"


def runs_link(tracking_uri: str, experiment_id: str | None, **view: Any) -> str:
    """The command that opens the MLflow UI on this store, and a direct link to the runs table
    (`view`: what `ui_link` takes)."""
    return (
        f"see the runs: {ui_command(tracking_uri)}  then open {ui_link(experiment_id, **view)}\n"
        "(the links open in any MLflow UI on this store; only tunelab's app, `--app-name tunelab`"
        " or `tunelab ui`, also keeps MLflow's Assistant panel closed)"
    )


def share_view(writer: MlflowWriter, key: str, view: dict[str, Any]) -> str:
    """Store `view` (see `table_view`) as the experiment's shared view `key`; `ui_link(...,
    view_key=key)` opens it."""
    tag = (writer.experiment_id, SHARED_VIEW + key, json.dumps(view))
    retry(lambda: writer.client.set_experiment_tag(*tag))
    return key


def compare_hint(experiment_ids: str | list[str], runs: list[str], metric: str) -> str:
    """The printed lines with the compare view of `runs` and their curves of `metric` (on the
    server `runs_link` starts)."""
    side = ui_link(experiment_ids, runs=runs)
    curves = ui_link(experiment_ids, runs=runs, metric=metric)
    return f"compare them side by side: {side}\n{metric} curves: {curves}"


_swept: set[str] = set()  # stores whose dead runs this process has already closed


class MlflowWriter(MlflowReader):
    """One tracking store and experiment. Thread-safe (MlflowClient is); picklable (the client and
    the queue are recreated on the other side, after pending writes are sent).

    Opening a store the first time in a process also ends, as KILLED, every run there that a
    process of this host left RUNNING when it died."""

    def __init__(self, tracking_uri: str, experiment: str) -> None:
        super().__init__(tracking_uri)
        self.experiment = experiment
        self._queue: BackgroundWriter | None = None
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)  # schema chatter
        # a SQLite store's tables are created or migrated by one process at a time (MLflow's
        # migrations are not safe to run concurrently)
        with file_lock(lock_beside(self.tracking_uri, ".lock")):
            self.experiment_id = self._experiment_id(experiment)
        if self.tracking_uri not in _swept:
            _swept.add(self.tracking_uri)
            run_owners.close_dead_runs(self)

    def __getstate__(self) -> dict[str, Any]:
        self.flush()
        return {**self.__dict__, "_client": None, "_queue": None}

    # ---- background ---------------------------------------------------------------------------
    def later(self, fn: Callable[..., Any], *args: Any) -> None:
        """Queue a write for the background thread (in order; each MLflow call in it is retried)."""
        if self._queue is None:
            self._queue = BackgroundWriter()
        self._queue.submit(lambda: fn(*args))

    def flush(self, quietly: bool = False) -> None:
        """Wait until every queued write is recorded; re-raise the first that failed (or log it)."""
        if self._queue is not None:
            self._queue.flush_quietly() if quietly else self._queue.flush()

    # ---- experiments and runs -----------------------------------------------------------------
    def _experiment_id(self, name: str) -> str:
        """Get or create; a concurrent creator's experiment is found and used. Every experiment
        carries the kind that makes the MLflow UI open it in its runs table (not the GenAI view);
        one created without it gets it, one a user set otherwise keeps theirs."""
        exp = retry(lambda: self.client.get_experiment_by_name(name))
        if exp is not None:
            if EXPERIMENT_KIND not in exp.tags:
                retry(lambda: self.client.set_experiment_tag(exp.experiment_id, *_KIND))
            return exp.experiment_id
        try:
            return retry(lambda: self.client.create_experiment(name, tags=dict([_KIND])))
        except Exception:
            exp = retry(lambda: self.client.get_experiment_by_name(name))
            if exp is None:
                raise
            return exp.experiment_id

    def create_run(self, name: str, tags: dict[str, Any], parent_run_id: str | None = None) -> str:
        all_tags = {k: clip(v) for k, v in tags.items()} | {OWNER: processes.me()}
        if parent_run_id:
            all_tags[PARENT_RUN_ID] = parent_run_id
        run = retry(
            lambda: self.client.create_run(self.experiment_id, run_name=name[:250], tags=all_tags)
        )
        return run.info.run_id

    def reopen_run(
        self, run_id: str, tags: dict[str, Any] | None = None, claim: bool = True
    ) -> bool:
        """Set a run RUNNING again (a resumed run, sweep or study); False if this store lacks it.
        claim: this process becomes its owner (a shared run keeps its first owner)."""
        try:
            retry(lambda: self.client.update_run(run_id, status="RUNNING"))
        except Exception as exc:  # deleted, or from another store
            log.warning("cannot reopen MLflow run %s (%s)", run_id, str(exc).splitlines()[0])
            return False
        owner = {OWNER: processes.me()} if claim else {}
        self.set_tags(run_id, {**(tags or {}), **owner})
        return True

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        """A FINISHED run loses the failure reason an earlier end (killed, failed) left on it."""
        if status == "FINISHED":
            self.delete_tags(run_id, [FAILURE_REASON])
        retry(lambda: self.client.set_terminated(run_id, status=status))

    def mark_killed(self, run_id: str, reason: str) -> bool:
        """End a run that a dead process left RUNNING as KILLED; False if it is not RUNNING here."""
        if self.run_status(run_id) != "RUNNING":
            return False
        self.set_tags(run_id, {FAILURE_REASON: reason})
        self.end_run(run_id, "KILLED")
        return True

    # ---- records ------------------------------------------------------------------------------
    def log(
        self,
        run_id: str,
        *,
        metrics: dict[str, float] | None = None,
        params: dict[str, Any] | None = None,
        tags: dict[str, Any] | None = None,
        step: int = 0,
        keep_existing: bool = False,
    ) -> None:
        """Metrics (finite ones) at `step`, params and tags, in as few batches as MLflow allows.
        keep_existing: params the run already has with another value are left as they are, and
        metrics whose latest value is already this one are not logged again."""
        from mlflow.entities import Metric, Param

        now = int(time.time() * 1000)
        if keep_existing and (params or metrics):
            data = retry(lambda: self.client.get_run(run_id)).data
            params = {
                k: v for k, v in (params or {}).items() if data.params.get(k, clip(v)) == clip(v)
            }
            metrics = {k: v for k, v in (metrics or {}).items() if data.metrics.get(k) != v}
        self.log_metric_list(
            run_id,
            [Metric(k, float(v), now, step) for k, v in (metrics or {}).items() if finite(v)],
        )
        for chunk in chunks([Param(k, clip(v)) for k, v in (params or {}).items()], MAX_PARAMS):
            retry(lambda c=chunk: self.client.log_batch(run_id, params=c, synchronous=True))
        if tags:
            self.set_tags(run_id, tags)

    def log_metric_list(self, run_id: str, metrics: list[Any]) -> None:
        for chunk in chunks(metrics, MAX_METRICS):
            retry(lambda c=chunk: self.client.log_batch(run_id, metrics=c, synchronous=True))

    def delete_tags(self, run_id: str, keys: list[str]) -> None:
        """Remove tags a run no longer deserves (e.g. a failure reason once it has resumed)."""
        have = retry(lambda: self.client.get_run(run_id)).data.tags
        for key in (k for k in keys if k in have):
            retry(lambda k=key: self.client.delete_tag(run_id, k))

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        for chunk in chunks([RunTag(k, clip(v)) for k, v in tags.items()], MAX_TAGS):
            retry(lambda c=chunk: self.client.log_batch(run_id, tags=c, synchronous=True))

    def log_artifact(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
        retry(lambda: self.client.log_artifact(run_id, str(path), artifact_path))

    def log_artifacts(self, run_id: str, directory: str | Path, artifact_path: str | None = None):
        retry(lambda: self.client.log_artifacts(run_id, str(directory), artifact_path))

    def log_dict(self, run_id: str, obj: Any, artifact_file: str) -> None:
        retry(lambda: self.client.log_dict(run_id, obj, artifact_file))

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        retry(lambda: self.client.log_text(run_id, text, artifact_file))

    def log_figure(self, run_id: str, figure: Any, artifact_file: str) -> None:
        retry(lambda: self.client.log_figure(run_id, figure, artifact_file))
