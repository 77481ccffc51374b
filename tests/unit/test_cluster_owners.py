"""Which member owns which partition: every node computes the same, shares are even."""

from __future__ import annotations

from flowtrail.cluster.owners import owned_by, owners


def test_every_partition_has_one_owner_and_shares_are_even() -> None:
    for count in (1, 2, 3, 4, 7):
        members = [f"node-{i}/{i:08x}" for i in range(count)]
        got = owners(members, 8)
        assert None not in got
        shares = [len(owned_by(m, members, 8)) for m in members]
        assert sum(shares) == 8 and max(shares) <= -(-8 // count), shares
        if 8 % count == 0:
            assert len(set(shares)) == 1, shares
        assert owners(list(reversed(members)), 8) == got  # order of the list does not matter


def test_a_member_leaving_moves_its_partitions_and_few_others() -> None:
    members = [f"node-{i}/{i:08x}" for i in range(4)]
    before = owners(members, 64)
    after = owners(members[1:], 64)
    moved = sum(1 for b, a in zip(before, after, strict=True) if b != a and b != members[0])
    assert all(a != members[0] for a in after)
    assert moved <= 64 // 4, moved  # most partitions of the others stay put


def test_no_members_no_owners() -> None:
    assert owners([], 3) == [None, None, None]
