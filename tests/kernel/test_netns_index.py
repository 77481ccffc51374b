"""The agent's way into other network namespaces: found again when the path it knew goes stale.

Real namespaces without a name (a container's, held only by its processes): the index learns
one through a process's /proc path; when that process exits while another still holds the
namespace, the next lookup must find it, not wait for the timed rescan.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from flowtrail.agent.netlink import NetnsIndex
from flowtrail.lab.wait import until

pytestmark = pytest.mark.kernel


def netns_of(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


def test_a_namespace_is_found_again_when_the_process_it_was_known_by_exits() -> None:
    index = NetnsIndex(rescan_s=3600)  # no timed rescan within the test
    own = index.own
    assert index.path(1) is None  # a scan now, before the namespace exists
    holder = subprocess.Popen(["unshare", "--net", "sleep", "120"])
    ino = until(lambda: netns_of(holder.pid), lambda i: i not in (None, own), 10)
    assert ino is not None and ino != own
    visitor = subprocess.Popen(["nsenter", f"--net=/proc/{holder.pid}/ns/net", "sleep", "120"])
    try:
        assert until(lambda: netns_of(visitor.pid), lambda i: i == ino, 10) == ino
        assert index.path(ino, pid_hint=visitor.pid) == f"/proc/{visitor.pid}/ns/net"
        visitor.kill()
        visitor.wait()
        assert index.path(ino) == f"/proc/{holder.pid}/ns/net"
    finally:
        for p in (visitor, holder):
            p.kill()
            p.wait()


def test_a_named_namespace_is_reached_through_its_name_not_a_process() -> None:
    name = f"ftidx{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        proc = subprocess.Popen(["ip", "netns", "exec", name, "sleep", "120"])
        ino = os.stat(f"/run/netns/{name}").st_ino
        try:
            assert until(lambda: netns_of(proc.pid), lambda i: i == ino, 10) == ino
            assert NetnsIndex().path(ino) == f"/run/netns/{name}"
        finally:
            proc.kill()
            proc.wait()
    finally:
        subprocess.run(["ip", "netns", "del", name], check=True)
