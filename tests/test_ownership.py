"""Owner stamps: a dead process of this machine is told from a live one, and a process of another
machine (or another container sharing the hostname) is never judged by this machine's pids."""

import os
import subprocess
import sys

from tunelab import ownership


def _stamp_of_exited_child(env: dict[str, str] | None = None) -> str:
    code = "from tunelab import ownership; print(ownership.me())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    return out.stdout.strip()


def test_a_live_process_is_alive_and_an_exited_one_dead():
    assert not ownership.is_dead(ownership.me())
    assert ownership.is_dead(_stamp_of_exited_child())


def test_a_stamp_of_another_machine_is_never_called_dead():
    stamp = _stamp_of_exited_child({**os.environ, "TUNELAB_HOST": "gpu-box-2"})
    assert stamp.startswith("gpu-box-2:")
    assert not ownership.is_dead(stamp)


def test_the_host_names_the_pid_namespace_so_containers_sharing_a_hostname_differ():
    namespace = os.readlink("/proc/self/ns/pid").partition("[")[2].rstrip("]")
    assert ownership.HOST.endswith(f"~{namespace}")
    other_container = ownership.HOST.rsplit("~", 1)[0] + "~1"
    pid = _stamp_of_exited_child().split(":", 1)[1]
    assert not ownership.is_dead(f"{other_container}:{pid}")
