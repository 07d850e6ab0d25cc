"""Runs and the processes that own them: one run shared by every process that asks for it (a
sweep's or a study's parent), and the end of runs whose process died without ending them.

Every run tunelab creates carries its owner stamp (`tunelab.owner`: host, pid, process start).
A shared run keeps the stamp of the process that created it and also lists every process working
on it (`tunelab.worker.<digest>` tags, one per process, removed when it leaves): such a run is
ended KILLED only when none of them may still be working. Any tunelab process that opens a store
ends, as KILLED, the RUNNING runs there whose processes all ran on this host and no longer run.
Functions of an MlflowWriter."""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Any

from tunelab import processes
from tunelab.tags import OWNER, RUN_KEY, WORKER_PREFIX, tag_ref
from tunelab.tracking.policy import retry, tag_filter

log = logging.getLogger(__name__)


def worker_tag(stamp: str) -> str:
    return WORKER_PREFIX + hashlib.sha256(stamp.encode()).hexdigest()[:16]


def keyed_run(
    writer: Any,
    name: str,
    key: dict[str, str],
    tags: dict[str, Any],
    parent_run_id: str | None = None,
    settle_s: float = 0.5,
) -> str:
    """The one run carrying the `key` tags (reopened), created if there is none; this process is
    listed among its workers, and the process that created it stays its owner.

    Processes that create it at about the same time each wait `settle_s` for the others' runs to
    become visible, then all keep the same one (the earliest started, ties broken by id) and
    delete their own if it is not that one."""

    def found() -> list[str]:
        order = ["attributes.start_time ASC", "attributes.run_id ASC"]
        return [r.info.run_id for r in writer.search(tag_filter(key), order)]

    me = processes.me()
    tags = {**tags, worker_tag(me): me}
    existing = found()
    if existing:
        writer.reopen_run(existing[0], tags, claim=False)
        return existing[0]
    mine = writer.create_run(name, {**tags, **key}, parent_run_id)
    time.sleep(settle_s)
    winner = next(iter(found()), mine)
    if winner != mine:
        retry(lambda: writer.client.delete_run(mine))
        writer.reopen_run(winner, tags, claim=False)
    return winner


def workers(tags: dict[str, str]) -> list[str]:
    """The stamps of the processes working on a run (its tags): a shared run's listed workers, any
    other run's owner."""
    listed = [v for k, v in tags.items() if k.startswith(WORKER_PREFIX)]
    return listed or [tags.get(OWNER, "")]


def leave(writer: Any, run_id: str, status: str | None = None) -> bool:
    """This process stops working on a shared run. With a status (e.g. KILLED: it was
    interrupted) it ends the run so, unless another listed worker may still be working on it (one
    of another host, or alive on this one): only the last to leave ends it. True if ended."""
    writer.delete_tags(run_id, [worker_tag(processes.me())])
    if status is None:
        return False
    tags = retry(lambda: writer.client.get_run(run_id)).data.tags
    others = [
        w for k, w in tags.items() if k.startswith(WORKER_PREFIX) and not processes.is_dead(w)
    ]
    if others:
        log.info(
            "run %s is left RUNNING: %d other process(es) still work on it", run_id, len(others)
        )
        return False
    writer.end_run(run_id, status)
    return True


def close_dead_runs(writer: Any) -> list[str]:
    """End as KILLED the runs of every experiment in the writer's store that processes of this
    host left RUNNING when they died (SIGKILL, OOM, power cut): runs whose owner, or for a shared
    run every listed worker, is such a process; returns their ids."""
    ids = writer.experiment_ids()
    running = "attributes.status = 'RUNNING'"
    mine = f"{running} and {tag_ref(OWNER)} LIKE '{processes.HOST}:%'"
    shared = f"{running} and {tag_ref(RUN_KEY)} LIKE '%'"  # its workers may be of this host
    queries = (mine, shared) if ids else ()
    runs = {r.info.run_id: r for q in queries for r in writer.search(q, experiment_ids=ids)}
    closed = []
    for run in runs.values():
        dead = all(processes.is_dead(w) for w in workers(run.data.tags))
        if dead and writer.mark_killed(run.info.run_id, "process_died"):
            closed.append(run.info.run_id)
    if closed:
        log.warning("%d run(s) left RUNNING by dead processes marked KILLED", len(closed))
    return closed
