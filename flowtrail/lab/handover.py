"""A listener handed to another process: bound by one cgroup's process, served from another's.

    srv = handed_over(lab, lab.server.netns, binder_cgroup, server_cgroup, Server(ip, port, ...))

What systemd socket activation does (the listener belongs to `init.scope`, the service
accepts on the descriptor it inherited) and pre-fork servers that move their children to
another cgroup: the binding process joins the binder's cgroup and namespace, listens, then
forks a child that moves itself into the server's cgroup and accepts there. The kernel gives
an accepted socket its listener's cgroup, so without more the binder would be named for every
connection the server accepted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

from flowtrail.lab.netns import Lab, LabError
from flowtrail.lab.peer import Server, join, listen, say, serve_on

ENTRY = "from flowtrail.lab.handover import main; main()"


def handed_over(
    lab: Lab, netns: str, binder: Path, server_cgroup: Path, server: Server
) -> subprocess.Popen[str]:
    """Start the pair; returns once the listener is bound and the server's child has moved.

    The process returned is the binder: it exits once its child has served `server.accepts`
    connections (its exit status is the child's).
    """
    spec = {"netns": netns, "binder": str(binder), "to": str(server_cgroup),
            "server": asdict(server)}  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-c", ENTRY, json.dumps(spec)],
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    lab.adopt(proc)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if line != "ready":
        raise LabError(f"handed-over server {server} did not start: {line!r}")
    return proc


def main() -> None:
    spec = json.loads(sys.argv[1])
    join(spec["netns"], Path(spec["binder"]))
    s = Server(**spec["server"])
    listener = listen(s)
    child = os.fork()
    if child == 0:  # the server: leaves the binder's cgroup, then accepts
        code = 0
        try:
            (Path(spec["to"]) / "cgroup.procs").write_text("0")
            say("ready")
            serve_on(listener, s)
        except BaseException as e:  # the child must never return into the parent's code
            print(f"handover server failed: {e!r}", file=sys.stderr, flush=True)
            code = 1
        os._exit(code)
    _, status = os.waitpid(child, 0)
    sys.exit(os.waitstatus_to_exitcode(status))
