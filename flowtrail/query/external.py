"""Groups for the addresses no workload owns: one map node per network, not per address.

An edge's side nobody could name (a null caller or callee) is known only by its address. The
map and `dependencies --group-external` split such sides by the network the address is in:
its IPv4 /24 or IPv6 /48, written as Python's ipaddress writes that network
(`203.0.113.0/24`, `2001:db8:5::/48`). The group is computed from the address in SQL, by
`external_group_sql`, the one definition the edge aggregation and the flows filter share, so
an edge's flows are exactly the rows it counts. A better name for the same addresses (a DNS
name, once stored) can take its place in that one expression.
"""

from __future__ import annotations

import ipaddress

from flowtrail.errors import InputError

IPV4_PREFIX = 24
IPV6_PREFIX = 48


def external_group_sql(ip: str) -> str:
    """SQL: the group of the canonical IPv4/IPv6 text in column `ip` (NULL for NULL)."""
    # IPv6: the 8 hextets ("::" expanded to zeros), the first three kept, trailing zero
    # hextets left to "::" as canonical text writes them (the run of zeros after them is at
    # least five long, the longest, so it is the one compressed).
    head = f"string_split(string_split({ip}, '::')[1], ':')"
    tail = f"string_split(coalesce(string_split({ip}, '::')[2], ''), ':')"
    hextets = f"""list_concat(
            list_filter({head}, lambda h: h <> ''),
            list_transform(range(8 - len(list_filter({head}, lambda h: h <> ''))
                                   - len(list_filter({tail}, lambda h: h <> ''))), lambda x: '0'),
            list_filter({tail}, lambda h: h <> ''))[1:3]"""
    v6 = (
        f"regexp_replace(array_to_string({hextets}, ':'), '(^|:)0(:0)*$', '') || '::/{IPV6_PREFIX}'"
    )
    v4 = f"regexp_replace({ip}, '\\.[0-9]+$', '.0') || '/{IPV4_PREFIX}'"
    return f"(CASE WHEN {ip} IS NULL THEN NULL WHEN contains({ip}, ':') THEN {v6} ELSE {v4} END)"


def check_external_group(text: str, flag: str) -> str:
    """`text` as a group `external_group_sql` produces (a /24 or /48 network), else InputError."""
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise InputError(f"{flag} {text!r}: not a network ({exc})") from None
    want = IPV4_PREFIX if net.version == 4 else IPV6_PREFIX
    if net.prefixlen != want:
        raise InputError(f"{flag} {text!r}: an IPv{net.version} group is a /{want}")
    if str(net) != text:
        raise InputError(f"{flag} {text!r}: write it as {net}")
    return text
