"""Owner stamps: a dead process of this machine is told from a live one, and a process of another
machine (another container sharing the hostname, a cloned VM) is never judged by this machine's
pids. Shared runs (a sweep's parent): the first owner stays, and the run ends KILLED only when no
process works on it any more; a FINISHED run carries no failure reason."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tunelab import processes


def _stamp_of_exited_child(env: dict[str, str] | None = None) -> str:
    code = "from tunelab import processes; print(processes.me())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    return out.stdout.strip()


def test_a_live_process_is_alive_and_an_exited_one_dead():
    assert not processes.is_dead(processes.me())
    assert processes.is_dead(_stamp_of_exited_child())


def test_a_stamp_of_another_machine_is_never_called_dead():
    stamp = _stamp_of_exited_child({**os.environ, "TUNELAB_HOST": "gpu-box-2"})
    assert stamp.startswith("gpu-box-2:")
    assert not processes.is_dead(stamp)


def test_the_host_names_the_pid_namespace_and_the_boot_id():
    namespace = os.readlink("/proc/self/ns/pid").partition("[")[2].rstrip("]")
    boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    assert processes.identity(socket.gethostname(), namespace, boot_id) == processes.HOST
    assert processes.HOST.endswith(f"~{namespace}~{boot_id}")
    pid = _stamp_of_exited_child().split(":", 1)[1]
    assert processes.is_dead(f"{processes.HOST}:{pid}")  # the control: this host's dead child
    # a container sharing the hostname, and a VM cloned from this one (same hostname and pid
    # namespace inode, another boot): their processes are not this machine's
    other_container = processes.identity(socket.gethostname(), "1", boot_id)
    clone = processes.identity(socket.gethostname(), namespace, "0" * 8 + boot_id[8:])
    assert clone != processes.HOST and other_container != processes.HOST
    assert not processes.is_dead(f"{other_container}:{pid}")
    assert not processes.is_dead(f"{clone}:{pid}")


# A sweep process on the shared run: joins it (or creates it), then leaves it (as an interrupted
# worker does: ending it KILLED unless others still work) or just exits; prints its stamp.
WORKER = """
import sys
from tunelab import processes
from tunelab.tracking import run_owners
from tunelab.tracking.mlflow_writer import MlflowWriter

writer = MlflowWriter(sys.argv[1], "shared")
run_id = run_owners.keyed_run(writer, "sweep s", {"run_key": "sweep:s"}, {"role": "sweep"}, settle_s=0)
if sys.argv[2] == "interrupted":
    run_owners.leave(writer, run_id, "KILLED")
print(processes.me())
"""


def _worker(uri: str, how: str) -> str:
    proc = subprocess.run([sys.executable, "-c", WORKER, uri, how], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.strip().splitlines()[-1]


def _shared(writer):
    from tunelab.tracking.run_owners import keyed_run

    return keyed_run(writer, "sweep s", {"run_key": "sweep:s"}, {"role": "sweep"}, settle_s=0)


@pytest.mark.slow
def test_a_joining_worker_leaves_the_owner_and_an_interrupted_one_does_not_end_the_run(workdir):
    from tunelab.tags import OWNER
    from tunelab.tracking.mlflow_writer import MlflowWriter
    from tunelab.tracking.run_owners import leave, worker_tag

    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    writer = MlflowWriter(uri, "shared")
    run_id = _shared(writer)  # this process creates the sweep's parent
    other = _worker(uri, "interrupted")  # a second worker joins, then is interrupted
    run = writer.client.get_run(run_id)
    assert run.data.tags[OWNER] == processes.me()  # not re-stamped by the joining worker
    assert run.info.status == "RUNNING"  # this process still works on the sweep
    assert worker_tag(other) not in run.data.tags  # the interrupted worker has left
    assert leave(writer, run_id, "KILLED")  # the last worker to leave ends it
    assert writer.client.get_run(run_id).info.status == "KILLED"


@pytest.mark.slow
def test_a_shared_run_is_closed_as_dead_only_when_every_worker_on_it_is_gone(workdir):
    from tunelab.tags import OWNER
    from tunelab.tracking.mlflow_writer import MlflowWriter
    from tunelab.tracking.run_owners import close_dead_runs, leave

    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    creator = _worker(uri, "exits")  # creates the parent, then its process is gone
    writer = MlflowWriter(uri, "shared")
    run_id = _shared(writer)  # this process joins and works on
    assert processes.is_dead(creator)
    assert writer.client.get_run(run_id).data.tags[OWNER] == creator
    assert close_dead_runs(writer) == []  # its owner is dead, but a worker on it lives
    assert writer.client.get_run(run_id).info.status == "RUNNING"
    leave(writer, run_id)  # this process is done too: nobody works on it any more
    assert close_dead_runs(writer) == [run_id]  # the control: now it is closed as dead
    killed = writer.client.get_run(run_id)
    assert killed.info.status == "KILLED" and killed.data.tags["failure_reason"] == "process_died"
    # the sweep is resumed and ends: FINISHED, with no failure reason left from before
    assert _shared(writer) == run_id
    writer.end_run(run_id, "FINISHED")
    done = writer.client.get_run(run_id)
    assert done.info.status == "FINISHED" and "failure_reason" not in done.data.tags
