"""The agent's DNS side: captured packets → named `dns_answers` rows, held and exported.

    answers = DnsAnswers(capture, delivery, identity, exporter="host-a")
    answers.poll()            # parse what the capture holds, name the receivers, hold the rows
    answers.flush()           # the held rows as one batch to their own Delivery

Receivers are named as flows name local_workload (the identity chain, from the socket's cgroup,
network namespace and address) at poll time, while their cgroups surely exist. Every packet
that gives no rows though it should have is counted as dns_drop_<reason>: the kernel's
(ringbuf_full, read_failed, bad_record_size), the parser's (truncated, malformed,
server_truncated), too_long (the message was longer than the program copies) and tcp_split (a
TCP message not whole within one segment: flowtrail does not reassemble TCP streams).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flowtrail.agent.capture import _addresses
from flowtrail.agent.dns_capture import KERNEL_DROP_REASONS, DnsPackets
from flowtrail.agent.dns_parse import PROBLEMS, parse_response, tcp_messages
from flowtrail.agent.exporter import Delivery
from flowtrail.agent.identity import IdentityChain
from flowtrail.schema import DNS_ANSWERS

DNS_SCHEMA = DNS_ANSWERS.schema
IPPROTO_TCP = 6
TOO_LONG, TCP_SPLIT = "too_long", "tcp_split"
DROP_REASONS = (*KERNEL_DROP_REASONS, "bad_record_size", *PROBLEMS, TOO_LONG, TCP_SPLIT)


class DnsSource(Protocol):
    def poll(self, timeout_ms: int = 0) -> DnsPackets: ...

    def stats(self) -> dict[str, int]: ...


class DnsAnswers:
    def __init__(
        self,
        capture: DnsSource,
        delivery: Delivery,
        identity: IdentityChain,
        *,
        exporter: str,
        region: str | None = None,
        network: str | None = None,
        netns: frozenset[int] | None = None,
        batch_rows: int = 100_000,
        on_rows: Callable[[pa.Table], None] | None = None,
    ) -> None:
        self.capture = capture
        self.delivery = delivery
        self.identity = identity
        self.exporter = exporter
        self.region = region
        self.network = network
        self._netns = None if netns is None else np.array(sorted(netns), np.uint32)
        self.batch_rows = batch_rows
        self.on_rows = on_rows
        self._held: list[pa.Table] = []
        self._held_rows = 0
        self._last_packets = 0
        self.counters = {
            "dns_packets": 0,  # from port 53, received by a local socket
            "dns_responses_without_address": 0,  # negative, NODATA, queries: no rows, no loss
            "dns_other_netns_packets": 0,  # another host's sockets on this kernel (--netns)
            "dns_rows": 0,
            "dns_batches": 0,
        }
        self._drops = dict.fromkeys((*PROBLEMS, TOO_LONG, TCP_SPLIT), 0)

    def poll(self, timeout_ms: int = 0) -> int:
        """Take the captured packets, parse them and hold their rows; returns rows added."""
        packets = self.capture.poll(timeout_ms)
        self._last_packets = len(packets)
        if len(packets) == 0:
            return 0
        self.counters["dns_packets"] += len(packets)
        table = self.rows(packets)
        if table.num_rows == 0:
            return 0
        self._held.append(table)
        self._held_rows += table.num_rows
        self.counters["dns_rows"] += table.num_rows
        if self.on_rows is not None:
            self.on_rows(table)
        if self._held_rows >= self.batch_rows:
            self.flush()
        return int(table.num_rows)

    def rows(self, packets: DnsPackets) -> pa.Table:
        """DNS_ANSWERS rows of these packets, receivers named."""
        h = packets.headers
        if self._netns is not None:
            mine = np.isin(h["netns_ino"], self._netns)
            self.counters["dns_other_netns_packets"] += int((~mine).sum())
        else:
            mine = np.ones(len(h), bool)
        index: list[int] = []
        names: list[str] = []
        chains: list[str | None] = []
        addresses: list[str] = []
        ttls: list[int] = []
        cut = h["cap_len"].astype(np.uint32) < h["msg_len"]
        tcp = h["proto"] == IPPROTO_TCP
        for i in np.flatnonzero(mine).tolist():
            if cut[i]:
                self._drops[TOO_LONG] += 1
                continue
            payload = packets.payload(i)
            if tcp[i]:
                messages, whole = tcp_messages(payload)
                if not whole:
                    self._drops[TCP_SPLIT] += 1
            else:
                messages = [payload]
            for message in messages:
                answers, problem = parse_response(message)
                if problem is not None:
                    self._drops[problem] += 1
                elif not answers:
                    self.counters["dns_responses_without_address"] += 1
                for a in answers:
                    index.append(i)
                    names.append(a.query_name)
                    chains.append(a.cname_chain)
                    addresses.append(a.address)
                    ttls.append(a.ttl_s)
        if not index:
            return DNS_SCHEMA.empty_table()
        take = np.array(index, np.int64)
        sel = h[take]
        local_ip, _ = _addresses(sel["family"], sel["daddr"])
        keys = pa.table(
            {
                "cgroup_id": pa.array(sel["cgroup_id"], pa.uint64()),
                "netns_ino": pa.array(sel["netns_ino"], pa.uint32()),
                "local_ip": local_ip,
                "local_port": pa.array(sel["dport"].astype(np.int32), pa.int32()),
            }
        )
        self.identity.observe(keys)
        n = len(take)
        columns = {
            "exporter": pa.repeat(pa.scalar(self.exporter, pa.string()), n),
            "region": pa.repeat(pa.scalar(self.region, pa.string()), n),
            "observed_ns": pa.array(packets.observed_ns[take], pa.int64()),
            "local_workload": self.identity.resolve(keys),
            "network": pa.repeat(pa.scalar(self.network, pa.string()), n),
            "query_name": pa.array(names, pa.string()),
            "cname_chain": pa.array(chains, pa.string()),
            "address": pa.array(addresses, pa.string()),
            "ttl_s": pa.array(ttls, pa.int32()),
        }
        return pa.Table.from_arrays(
            [pc.cast(columns[f.name], f.type) for f in DNS_SCHEMA], schema=DNS_SCHEMA
        )

    def drain(self, max_polls: int = 64) -> None:
        """Take everything the capture still holds (at shutdown): poll until a poll finds
        nothing, a bounded number of times (a flood never lets the ring run empty)."""
        for _ in range(max_polls):
            self.poll()
            if self._last_packets == 0:
                return

    def flush(self) -> int:
        """The held rows as one batch to the Delivery (else give the spool its retry)."""
        parts, self._held, self._held_rows = self._held, [], 0
        if not parts:
            self.delivery.retry()
            return 0
        table = pa.concat_tables(parts)
        self.counters["dns_batches"] += 1
        self.delivery.submit(table)
        return int(table.num_rows)

    @property
    def held_rows(self) -> int:
        return self._held_rows

    def metrics(self) -> dict[str, int]:
        out = dict(self.counters)
        try:
            for reason, count in self.capture.stats().items():
                out[f"dns_drop_{reason}"] = count
        except RuntimeError:
            pass  # capture already closed
        for reason, count in self._drops.items():
            out[f"dns_drop_{reason}"] = count
        out["dns_held_rows"] = self._held_rows
        out.update({f"dns_{k}": v for k, v in self.delivery.metrics().items()})
        # the sink's own counters: a collector that refuses a batch (HTTP 400) is not a
        # failure to retry, so only these say those rows are gone
        sink = getattr(self.delivery.exporter, "stats", None)
        if isinstance(sink, dict):
            out.update({f"dns_sink_{k}": int(v) for k, v in sink.items()})
        return out
