"""Which node of a region decides each partition: rendezvous hashing over the live members.

Every node computes the same owners from the same member list (incarnations, from the
members stream), with no coordination: partition p goes to the member with the highest
hash of (member, p). A member joining takes only partitions from others; one leaving gives
only its own away, so a membership change moves as few partitions as it must.

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
    return [max(members, key=lambda m: _score(m, p)) for p in range(partitions)]


def owned_by(member: str, members: list[str], partitions: int) -> frozenset[int]:
    return frozenset(p for p, m in enumerate(owners(members, partitions)) if m == member)
