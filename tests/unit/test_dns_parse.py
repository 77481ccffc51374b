"""DNS response parsing: names with compression, CNAME chains, TTLs, and every way a message
can be bad (counted by reason, never raised)."""

from __future__ import annotations

import random
import struct

import pytest

from flowtrail.agent.dns_parse import (
    MALFORMED,
    SERVER_TRUNCATED,
    TRUNCATED,
    Answer,
    parse_response,
    read_name,
    tcp_messages,
)
from flowtrail.lab.dnspeer import encode_name

A, CNAME, AAAA = 1, 5, 28


def rr(owner: bytes, rtype: int, ttl: int, rdata: bytes, rclass: int = 1) -> bytes:
    return owner + struct.pack(">HHIH", rtype, rclass, ttl, len(rdata)) + rdata


def response(qname: str, answers: list[bytes], *, flags: int = 0x8180, qd: int = 1) -> bytes:
    head = struct.pack(">HHHHHH", 7, flags, qd, len(answers), 0, 0)
    return head + encode_name(qname) + struct.pack(">HH", A, 1) + b"".join(answers)


QNAME_AT = b"\xc0\x0c"  # a pointer to the question's name


def test_direct_answers_with_compressed_owner() -> None:
    msg = response(
        "API.Example.COM.",
        [rr(QNAME_AT, A, 60, bytes([192, 0, 2, 1])), rr(QNAME_AT, A, 30, bytes([192, 0, 2, 2]))],
    )
    assert parse_response(msg) == (
        [
            Answer("api.example.com", None, "192.0.2.1", 60),
            Answer("api.example.com", None, "192.0.2.2", 30),
        ],
        None,
    )


def test_cname_chain_in_order_with_the_smallest_ttl() -> None:
    q = "www.shop.test"
    head_len = 12 + len(encode_name(q)) + 4
    first = rr(QNAME_AT, CNAME, 300, encode_name("edge.cdn.test"))
    # the second link's owner points at the first link's target (compression into rdata)
    target_at = head_len + 2 + 10
    second = rr(
        struct.pack(">H", 0xC000 | target_at),
        CNAME,
        120,
        b"\x02lb" + struct.pack(">H", 0xC000 | target_at + 5),
    )
    lb_at = head_len + len(first) + 2 + 10
    last = rr(struct.pack(">H", 0xC000 | lb_at), AAAA, 600, bytes(15) + b"\x05")
    answers, problem = parse_response(response(q, [first, second, last]))
    assert problem is None
    assert answers == [Answer(q, "edge.cdn.test lb.cdn.test", "::5", 120)]


def test_records_off_the_chain_are_not_answers() -> None:
    msg = response("a.test", [rr(encode_name("other.test"), A, 60, bytes(4))])
    assert parse_response(msg) == ([], None)


def test_cname_loop_is_malformed() -> None:
    msg = response(
        "a.test",
        [
            rr(QNAME_AT, CNAME, 60, encode_name("b.test")),
            rr(encode_name("b.test"), CNAME, 60, encode_name("a.test")),
        ],
    )
    assert parse_response(msg) == ([], MALFORMED)


def test_ttl_with_top_bit_is_zero() -> None:
    msg = response("a.test", [rr(QNAME_AT, A, 0x80000000, bytes(4))])
    assert parse_response(msg)[0][0].ttl_s == 0


@pytest.mark.parametrize(
    ("msg", "reason"),
    [
        (b"\x00\x07\x81", TRUNCATED),
        (response("a.test", [rr(QNAME_AT, A, 60, bytes(4))])[:-1], TRUNCATED),
        (response("a.test", [rr(QNAME_AT, A, 60, bytes(5))]), MALFORMED),
        (response("a.test", [rr(b"\xc0\x1c", A, 60, bytes(4))]), MALFORMED),  # forward pointer
        (response("a.test", [rr(QNAME_AT, A, 60, bytes(4))], qd=2), MALFORMED),
        (response("a.test", [rr(b"\x41", A, 60, bytes(4))]), MALFORMED),  # label type 0x40
        (response("a.test", [rr(QNAME_AT, A, 60, bytes(4))], flags=0x8380), SERVER_TRUNCATED),
        (response("x" * 63 + "." + "y" * 63 + "." + "z" * 63 + "." + "w" * 63, []), None),
    ],
    ids=[
        "header",
        "rdata",
        "rdlength",
        "forward-pointer",
        "two-questions",
        "label-type",
        "tc",
        "no-answers",
    ],
)
def test_bad_messages_give_a_reason_and_no_answers(msg: bytes, reason: str | None) -> None:
    assert parse_response(msg) == ([], reason)


def test_name_too_long_is_malformed() -> None:
    name = b"".join(b"\x3f" + b"a" * 63 for _ in range(5)) + b"\0"
    with pytest.raises(Exception, match="malformed"):
        read_name(name, 0)


def test_queries_and_negative_answers_are_no_problem() -> None:
    assert parse_response(response("a.test", [], flags=0x0100)) == ([], None)  # a query
    assert parse_response(response("a.test", [], flags=0x8183)) == ([], None)  # NXDOMAIN


def test_unusual_label_bytes_are_escaped_and_lowercased() -> None:
    msg = response("x", [rr(QNAME_AT, A, 1, bytes(4))])
    msg = msg.replace(b"\x01x\x00", b"\x03A.\x01\x00", 1)
    assert parse_response(msg)[0][0].query_name == "a\\046\\001"


def test_tcp_segments_hold_whole_messages_or_say_so() -> None:
    one, two = b"\x01" * 12, b"\x02" * 20
    framed = struct.pack(">H", 12) + one + struct.pack(">H", 20) + two
    msgs, whole = tcp_messages(framed)
    assert [bytes(m) for m in msgs] == [one, two] and whole
    msgs, whole = tcp_messages(framed[:-1])
    assert [bytes(m) for m in msgs] == [one] and not whole


def test_mutated_answers_never_raise() -> None:
    """Random byte changes, cuts and insertions into a real-shaped answer (a CNAME chain, two
    A records, compression): each gives answers or a reason, never an exception."""
    rng = random.Random(11)
    q = "www.shop.test"
    first = rr(QNAME_AT, CNAME, 300, encode_name("lb.cdn.test"))
    target_at = 12 + len(encode_name(q)) + 4 + 12
    base = response(q, [first] + [rr(struct.pack(">H", 0xC000 | target_at), A, 60,
                                     bytes([192, 0, 2, i])) for i in (1, 2)])  # fmt: skip
    assert len(parse_response(base)[0]) == 2
    seen = set()
    for _ in range(5000):
        msg = bytearray(base)
        for _ in range(rng.randint(1, 4)):
            op = rng.random()
            if op < 0.6 and msg:
                msg[rng.randrange(len(msg))] = rng.randrange(256)
            elif op < 0.8 and msg:
                del msg[rng.randrange(len(msg)) :]
            else:
                msg.insert(rng.randrange(len(msg) + 1), rng.randrange(256))
        answers, problem = parse_response(bytes(msg))
        assert problem is None or not answers
        assert all(a.ttl_s >= 0 for a in answers)
        seen.add(problem)
    assert seen == {None, TRUNCATED, MALFORMED, SERVER_TRUNCATED}
