"""DNS messages (RFC 1035) to address answers: the query name, its CNAME chain, addresses, TTL.

    answers, problem = parse_response(message)

A response yields one Answer per A or AAAA record at the end of the question's CNAME chain;
everything else in it (authority, additional records, other types) is skipped unread. A message
that cannot be trusted yields no answers and one PROBLEMS reason: it is counted, never raised.
Bounds: compression pointers must point before the name they are found in (so they cannot
loop), a name is at most 255 bytes, a CNAME chain at most MAX_CHAIN links.
"""

from __future__ import annotations

import socket
import struct
from typing import NamedTuple

TYPE_A, TYPE_CNAME, TYPE_AAAA = 1, 5, 28
CLASS_IN = 1
MAX_NAME = 255
MAX_CHAIN = 16
TTL_MAX = 2**31 - 1  # RFC 2181: a TTL with the top bit set means 0

# Why a message gave no answers though it should have (each counted as dns_drop_<reason>):
TRUNCATED = "truncated"  # it ends before what its header announces
MALFORMED = "malformed"  # a bad name, pointer, record length, question count or CNAME loop
SERVER_TRUNCATED = "server_truncated"  # TC set: the server cut it (the client asks over TCP)
PROBLEMS = (TRUNCATED, MALFORMED, SERVER_TRUNCATED)

_HEADER = struct.Struct(">HHHHHH")
_RR = struct.Struct(">HHIH")


class Answer(NamedTuple):
    query_name: str
    cname_chain: str | None  # targets in order, space-separated; None when direct
    address: str
    ttl_s: int


class DnsError(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# printable bytes other than the dot: labels made only of these read as they are
_PLAIN = bytes(range(0x21, 0x7F)).replace(b".", b"")
_PLAIN_AND_DOT = bytes(range(0x21, 0x7F))
_PLAIN_SET = frozenset(_PLAIN)
_NAMES: dict[bytes, str] = {}


def _label_text(label: bytes) -> str:
    """Presentation form, lower case: unusual bytes (and dots inside a label) as \\DDD."""
    return "".join(chr(b).lower() if b in _PLAIN_SET else f"\\{b:03d}" for b in label)


def _name_text(labels: list[bytes]) -> str:
    """The labels as one lower-case name; the text is cached per name (names repeat)."""
    raw = b".".join(labels)
    text = _NAMES.get(raw)
    if text is not None:
        return text
    if raw.count(b".") != len(labels) - 1 or raw.translate(None, _PLAIN_AND_DOT):
        # a dot inside a label, or bytes that need escaping: not cached (rare, and `raw`
        # would not tell such a name from one with more labels)
        return ".".join(_label_text(label) for label in labels)
    text = raw.decode("ascii").lower()
    if len(_NAMES) >= 65536:
        _NAMES.clear()
    _NAMES[raw] = text
    return text


def read_name(msg: bytes, pos: int, seen: dict[int, str] | None = None) -> tuple[str, int]:
    """The name at `pos` (lower case, no trailing dot) and the offset just after it.

    `seen` (one per message): names already read, by offset. A name that is only a pointer
    to one of them (most owners in an answer are) is taken from there, unparsed again."""
    if seen is not None and pos + 1 < len(msg) and msg[pos] >= 0xC0:
        target = (msg[pos] & 0x3F) << 8 | msg[pos + 1]
        known = seen.get(target)
        if known is not None and target < pos:
            return known, pos + 2
    start = pos
    labels: list[bytes] = []
    end = -1  # where the name ends in the record (after the first pointer)
    size = 0
    floor = pos  # a pointer must point below the name it is found in: no loops possible
    n = len(msg)
    while True:
        if pos >= n:
            raise DnsError(TRUNCATED)
        length = msg[pos]
        if length == 0:
            text = _name_text(labels)
            if seen is not None:
                seen[start] = text
            return text, pos + 1 if end < 0 else end
        if length < 0x40:
            size += length + 1
            nxt = pos + 1 + length
            if size > MAX_NAME:
                raise DnsError(MALFORMED)
            if nxt > n:
                raise DnsError(TRUNCATED)
            labels.append(msg[pos + 1 : nxt])
            pos = nxt
        elif length >= 0xC0:
            if pos + 1 >= n:
                raise DnsError(TRUNCATED)
            target = (length & 0x3F) << 8 | msg[pos + 1]
            if target >= floor:
                raise DnsError(MALFORMED)
            if end < 0:
                end = pos + 2
            pos = floor = target
        else:
            raise DnsError(MALFORMED)  # 0x40 / 0x80: obsolete extended label types


_ADDRESS_TEXT: dict[bytes, str] = {}


def _address(rdata: bytes) -> str:
    """Canonical text of a 4- or 16-byte address (cached: answers repeat)."""
    text = _ADDRESS_TEXT.get(rdata)
    if text is None:
        if len(rdata) == 4:
            text = socket.inet_ntop(socket.AF_INET, rdata)
        else:
            import ipaddress

            text = str(ipaddress.IPv6Address(rdata))  # RFC 5952, as flows write addresses
        if len(_ADDRESS_TEXT) > 65536:
            _ADDRESS_TEXT.clear()
        _ADDRESS_TEXT[rdata] = text
    return text


def parse_response(msg: bytes | memoryview) -> tuple[list[Answer], str | None]:
    """(answers, problem): problem is one of PROBLEMS, else None. A query, a response of
    another opcode or a negative answer (NXDOMAIN, ...) is no problem: it has no answers."""
    try:
        return _parse(msg), None
    except DnsError as exc:
        return [], exc.reason


def is_response(msg: bytes | memoryview) -> bool:
    return len(msg) >= 3 and bool(msg[2] & 0x80)


def _parse(view: bytes | memoryview) -> list[Answer]:
    msg = bytes(view)  # indexing and slicing bytes is the cheapest Python has
    if len(msg) < _HEADER.size:
        raise DnsError(TRUNCATED)
    _id, flags, qdcount, ancount, _ns, _ar = _HEADER.unpack_from(msg, 0)
    if not flags & 0x8000 or (flags >> 11) & 0xF != 0:
        return []  # a query, or not a standard query's response
    if flags & 0x0200:
        raise DnsError(SERVER_TRUNCATED)
    if flags & 0xF != 0 or ancount == 0:
        return []  # NXDOMAIN, SERVFAIL, ...; or no answer records (NODATA)
    if qdcount != 1:
        raise DnsError(MALFORMED)
    seen: dict[int, str] = {}
    qname, pos = read_name(msg, _HEADER.size, seen)
    if pos + 4 > len(msg):
        raise DnsError(TRUNCATED)
    pos += 4  # qtype, qclass
    cnames: dict[str, tuple[str, int]] = {}
    addresses: dict[str, list[tuple[str, int]]] = {}
    n = len(msg)
    for _ in range(ancount):
        owner, pos = read_name(msg, pos, seen)
        if pos + _RR.size > n:
            raise DnsError(TRUNCATED)
        rtype, rclass, ttl, rdlength = _RR.unpack_from(msg, pos)
        pos += _RR.size
        end = pos + rdlength
        if end > n:
            raise DnsError(TRUNCATED)
        if ttl > TTL_MAX:
            ttl = 0
        if rclass == CLASS_IN:
            if rtype in (TYPE_A, TYPE_AAAA):
                if rdlength != (4 if rtype == TYPE_A else 16):
                    raise DnsError(MALFORMED)
                addresses.setdefault(owner, []).append((_address(msg[pos:end]), ttl))
            elif rtype == TYPE_CNAME:
                target, after = read_name(msg, pos, seen)
                if after != end:
                    raise DnsError(MALFORMED)
                cnames[owner] = (target, ttl)
        pos = end
    chain: list[str] = []
    name, ttl_chain = qname, TTL_MAX
    while name in cnames:
        if len(chain) >= MAX_CHAIN:
            raise DnsError(MALFORMED)  # a loop, or a chain no resolver would follow
        name, ttl = cnames[name]
        chain.append(name)
        ttl_chain = min(ttl_chain, ttl)
    found = addresses.get(name)
    if not found:
        return []
    joined = " ".join(chain) if chain else None
    return [Answer(qname, joined, address, min(ttl, ttl_chain)) for address, ttl in found]


def tcp_messages(segment: bytes | memoryview) -> tuple[list[memoryview], bool]:
    """DNS messages in one TCP segment's payload (each behind its 2-byte length), and whether
    the segment held only whole messages (False: one continues in another segment)."""
    view = memoryview(segment)
    out: list[memoryview] = []
    pos, n = 0, len(view)
    while pos < n:
        if pos + 2 > n:
            return out, False
        length = view[pos] << 8 | view[pos + 1]
        if length == 0 or pos + 2 + length > n:
            return out, False
        out.append(view[pos + 2 : pos + 2 + length])
        pos += 2 + length
    return out, True
