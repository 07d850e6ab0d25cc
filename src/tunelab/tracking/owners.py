"""Runs and the processes that own them: one run shared by every process that asks for it (a
sweep's or a study's parent), and the end of runs whose process died without ending them.

Every run tunelab creates carries its owner stamp (`tunelab.owner`: host, pid, process start).
Any tunelab process that opens a store ends, as KILLED, the RUNNING runs there whose owner was a
process of this host that no longer runs. Functions of an MlflowWriter."""

from __future__ import annotations

import logging
import time
from typing import Any

from tunelab import ownership
from tunelab.tracking.policy import retry, tag_filter

log = logging.getLogger(__name__)
OWNER_TAG = "tunelab.owner"


def keyed_run(
    writer: Any,
    name: str,
    key: dict[str, str],
    tags: dict[str, Any],
    parent_run_id: str | None = None,
    settle_s: float = 0.5,
) -> str:
    """The one run carrying the `key` tags (reopened), created if there is none.

    Processes that create it at about the same time each wait `settle_s` for the others' runs to
    become visible, then all keep the same one (the earliest started, ties broken by id) and
    delete their own if it is not that one."""

    def found() -> list[str]:
        order = ["attributes.start_time ASC", "attributes.run_id ASC"]
        return [r.info.run_id for r in writer.search(tag_filter(key), order)]

    existing = found()
    if existing:
        writer.reopen_run(existing[0], tags)
        return existing[0]
    mine = writer.create_run(name, {**tags, **key}, parent_run_id)
    time.sleep(settle_s)
    winner = next(iter(found()), mine)
    if winner != mine:
        retry(lambda: writer.client.delete_run(mine))
        writer.reopen_run(winner, tags)
    return winner


def close_dead_runs(writer: Any) -> list[str]:
    """End as KILLED the runs of every experiment in the writer's store that a process of this
    host left RUNNING when it died (SIGKILL, OOM, power cut); returns their ids."""
    experiments = retry(lambda: writer.client.search_experiments(max_results=50000))
    ids = [e.experiment_id for e in experiments]
    mine = f"attributes.status = 'RUNNING' and tags.`{OWNER_TAG}` LIKE '{ownership.HOST}:%'"
    closed = []
    for run in writer.search(mine, experiment_ids=ids) if ids else []:
        dead = ownership.is_dead(run.data.tags.get(OWNER_TAG, ""))
        if dead and writer.mark_killed(run.info.run_id, "process_died"):
            closed.append(run.info.run_id)
    if closed:
        log.warning("%d run(s) left RUNNING by dead processes marked KILLED", len(closed))
    return closed
