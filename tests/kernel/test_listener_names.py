"""A listener's name follows its registration at the next look, though looks reuse names.

Real kernel (a lab namespace, a real listening socket in a systemd-shaped cgroup), the agent's
listener watch and identity chain. Naming the same listeners once a second is most of what an
idle agent costs, so a look reuses the last names while its listeners are unchanged; an
explicit registration made in between must still be in force at the very next look.
"""

from __future__ import annotations

import pytest

from flowtrail.agent.identity import IdentityChain, Registry
from flowtrail.agent.listeners import ListenerWatch
from flowtrail.agent.netlink import NetnsIndex
from flowtrail.lab import Lab, Server
from flowtrail.lab.wait import until

pytestmark = pytest.mark.kernel

GAP_NS = 3 * 10**9


def test_a_registration_names_a_listener_at_the_next_look() -> None:
    with Lab("lnames") as net:
        unit = f"srv-{net.tag}"
        port = net.port()
        net.serve(net.server.at(net.service_cgroup(unit)), Server(net.server.ip, port, 0, 0))
        registry = Registry()
        identity = IdentityChain.build(("explicit", "systemd"), registry=registry)
        watch = ListenerWatch(NetnsIndex(), frozenset({net.server.netns_inode()}))

        def names() -> set[str]:
            identity.refresh()  # the agent learns cgroups each second before it looks
            watch.look(identity, GAP_NS)
            return {r.workload for r in watch._runs.values() if r.listener.port == port}

        assert until(names, lambda n: n == {f"systemd:{unit}.service"}, 30)
        assert names() == {f"systemd:{unit}.service"}  # named again from the last lookup
        registry.register("payments", ip=net.server.ip)
        assert names() == {"payments"}
        registry.unregister("payments")
        assert names() == {f"systemd:{unit}.service"}
