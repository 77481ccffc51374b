"""Which node of a region decides each partition: rendezvous hashing over the live members.

Every node computes the same owners from the same member list (incarnations, from the
members stream), with no coordination: partition p goes to the member with the highest
hash of (member, p) that holds fewer than ceil(P / members) partitions yet (partitions taken
in order 0..P-1). Plain highest-hash leaves a few partitions lumpy (a node of four could own
none of eight); with the cap none holds more than its fair share rounded up (each of four
nodes holds two of eight), and a membership
change still moves few partitions besides the joining or leaving node's.

Nodes may see a change a moment apart: for that moment a partition may have two owners
(both decide its rows alike; the idempotent Store keeps one copy) or none (its rows wait in
the rows stream; whoever gains it rebuilds from the evidence stream and decides them).
"""

from __future__ import annotations

import hashlib


def _score(member: str, partition: int) -> int:
    digest = hashlib.blake2b(f"{member}|{partition}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def owners(members: list[str], partitions: int) -> list[str | None]:
    """The member deciding each partition (None when there is no member)."""
    if not members:
        return [None] * partitions
    cap = -(-partitions // len(members))
    held = dict.fromkeys(members, 0)
    out: list[str | None] = []
    for p in range(partitions):
        ranked = sorted(members, key=lambda m: _score(m, p), reverse=True)
        owner = next(m for m in ranked if held[m] < cap)
        held[owner] += 1
        out.append(owner)
    return out


def owned_by(member: str, members: list[str], partitions: int) -> frozenset[int]:
    return frozenset(p for p, m in enumerate(owners(members, partitions)) if m == member)
