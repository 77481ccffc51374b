"""Every socket a Capture tracked, accounted for exactly, however busy the host.

The drop counters are host-wide, so "our rows + drops >= our sockets" lets a silent loss of
ours pass whenever another process's close was dropped meanwhile. Instead: the program hands
each socket it tracks the next id of the capture's own counter, so once the program is
detached (maps and ring stay readable, nothing changes any more) the capture's whole life
balances exactly:

    ids handed out == records read + entries still in the start map + counted losses

A record lost without being counted, the test's own connections' or anyone's, breaks it.
"""

from __future__ import annotations

import ctypes

import numpy as np

from flowtrail.agent import libbpf
from flowtrail.agent.capture import FLOW_DTYPE, RECORD_SIZE, Capture

# The counted losses of a socket's id: its record (ringbuf_full), its start entry at open
# (map_full), an older entry overwritten by the same key (stale_start), an entry live() found
# dead and removed (expired_start), a ring record of the wrong size (bad_record_size).
ID_LOSSES = ("ringbuf_full", "map_full", "stale_start", "expired_start", "bad_record_size")


class AuditedCapture(Capture):
    """A Capture that notes its first socket id (read before the program is attached)."""

    first_id = -1

    def _seed_sock_ids(self) -> None:
        super()._seed_sock_ids()
        self.first_id = self.next_id()  # not attached yet: no socket can have taken one

    def next_id(self) -> int:
        value = ctypes.c_uint64()
        libbpf.map_lookup(self._fds["flow_seq"], ctypes.c_uint32(0), value)
        return int(value.value)

    def detach(self) -> None:
        """Stop the programs (the state-change program, its second copy and the accept
        programs); the ring, the maps and the counters stay readable."""
        if self._link is not None:
            self._link.destroy()
            self._link = None
        for link in self._extra_links:
            link.destroy()
        self._extra_links = []

    def start_entries(self) -> np.ndarray:
        """The start map's records, in any state (sockets open, or whose close was missed)."""
        fd = self._fds["flow_starts"]
        keys = np.empty(self.max_sockets, np.uint64)
        values = np.empty(self.max_sockets, FLOW_DTYPE)
        n = libbpf.map_lookup_batched(
            fd, keys.ctypes.data, 8, values.ctypes.data, RECORD_SIZE, self.max_sockets
        )
        return values[:n]

    def open_ports(self) -> set[int]:
        """Local and remote ports of every socket still in the start map."""
        entries = self.start_entries()
        return {int(p) for p in np.concatenate([entries["sport"], entries["dport"]])}

    def balance(self, records_read: int) -> dict[str, int]:
        """Once detached and drained: the two sides of the ledger (equal when nothing was
        lost silently), with their parts for the failure message."""
        assert self._link is None, "detach first: a running program keeps changing the counts"
        stats = self.stats()
        parts = {
            "ids": self.next_id() - self.first_id,
            "records": records_read,
            "open": len(self.start_entries()),
            **{reason: stats[reason] for reason in ID_LOSSES},
        }
        parts["accounted"] = sum(v for k, v in parts.items() if k != "ids")
        return parts
