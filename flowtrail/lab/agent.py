"""A real agent for lab tests: BPF capture, identity, NAT and snapshots, run in a thread.

Not imported by `flowtrail.lab` itself: peers import that package, and they should not load
the agent (pyarrow, libbpf) just to open a socket.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from flowtrail.agent.capture import Capture
from flowtrail.agent.conntrack import NatResolver
from flowtrail.agent.dns_answers import DnsAnswers
from flowtrail.agent.dns_capture import DnsCapture
from flowtrail.agent.exporter import Delivery
from flowtrail.agent.identity import IdentityChain
from flowtrail.agent.listeners import ListenerWatch
from flowtrail.agent.netlink import NetnsIndex
from flowtrail.agent.runner import Agent, AgentConfig
from flowtrail.agent.scopes import ScopeMarker
from flowtrail.agent.snapshots import Snapshotter

EXPORTER = "lab-host"
REGION = "lab"
HOST_WORKLOAD = "lab-host-itself"


@contextmanager
def running_agent(
    delivery: Delivery,
    interval_s: float = 1.0,
    *,
    exporter: str = EXPORTER,
    netns: frozenset[int] | None = None,
    listeners: bool = False,
    identity: IdentityChain | None = None,
    dns: Delivery | None = None,
) -> Iterator[Agent]:
    """An agent exporting as `exporter` in region `lab`, every `interval_s`, until the block ends.

    `netns`: only these namespaces' sockets (inodes), as `flowtrail agent --netns`. Address
    scopes are detected as the command's defaults do.

    `identity`: the resolver chain (default: every resolver, the lab's host workload).

    `listeners`: export `listening` rows too (off by default: they would match tests that
    pick connection rows out by port).

    `dns`: capture DNS answers too, their `dns_answers` batches going through this Delivery.

    On exit it is stopped (its shutdown flushes the last batch through `delivery`) and the
    capture is closed, even when the block raised.
    """
    capture = Capture()
    capture.start()
    dns_capture = DnsCapture() if dns is not None else None
    stopped = True
    try:
        if dns_capture is not None:
            dns_capture.start()
        index = NetnsIndex()
        identity = identity or IdentityChain.build(host_workload=HOST_WORKLOAD)
        agent = Agent(
            capture,
            AgentConfig(
                exporter=exporter, region=REGION, interval_s=interval_s, poll_ms=100, netns=netns
            ),
            identity,
            delivery,
            nat=NatResolver(index),
            snapshotter=Snapshotter(index),
            scopes=ScopeMarker(index),
            listeners=ListenerWatch(index, netns, capture.clock.now_epoch_ns)
            if listeners and capture.clock is not None
            else None,
            dns=None
            if dns is None or dns_capture is None
            else DnsAnswers(
                dns_capture, dns, identity, exporter=exporter, region=REGION, netns=netns
            ),
        )
        stop = threading.Event()
        thread = threading.Thread(target=agent.run, args=(stop,), name="lab-agent", daemon=True)
        thread.start()
        try:
            yield agent
        finally:
            stop.set()
            thread.join(60)  # its shutdown flushes all the host's connections: slow when loaded
            stopped = not thread.is_alive()
        if not stopped:
            raise RuntimeError("the lab agent did not stop within 60 s")
    finally:
        if stopped:  # never under a thread still polling it
            capture.close()
            if dns_capture is not None:
                dns_capture.close()
