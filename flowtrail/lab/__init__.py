"""The namespace lab: real network namespaces, veth, cgroups and TCP peers for kernel tests.

    from flowtrail.lab import Client, Lab, Server

    with Lab("mytest") as lab:
        svc = lab.service_cgroup(f"api-{lab.tag}")
        pod = lab.pod_cgroup(pod_uid)
        server = lab.serve(lab.server.at(svc), Server(lab.server.ip, 8080, recv=100, send=200))
        client = lab.spawn(lab.client.at(pod), Client(lab.server.ip, 8080, send=100, recv=200))

Each peer is its own process that joins its cgroup and namespace before it opens a socket,
so the kernel (and so the agent) sees the socket there. `flowtrail.lab.agent.running_agent`
runs a real agent in a thread beside the lab. Needs root, cgroup v2 at
/sys/fs/cgroup/unified, iproute2 and nftables; see `netns` for names, addresses, ports and
teardown. Beside it, for any test: `loopback` (a connected TCP pair inside the test's own
process) and `wait` (poll until a condition holds; wait for a started process to be ready).
"""

from flowtrail.lab.netns import CGROUP2, End, Lab, LabError, Place
from flowtrail.lab.peer import Client, Server

__all__ = ["CGROUP2", "Client", "End", "Lab", "LabError", "Place", "Server"]
