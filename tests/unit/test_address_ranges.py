"""The addresses a token may claim: parsing, per-row checks (v4, v6, host-scoped), token lines."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flowtrail.addressranges import AddressRanges
from flowtrail.collector.tokens import Tokens
from flowtrail.errors import InputError


def test_rows_inside_the_prefixes_and_host_scoped_ones_are_allowed() -> None:
    r = AddressRanges.parse("10.0.1.0/24,10.0.2.7,fd00:1::/64", "test")
    values = ["10.0.1.0", "10.0.1.255", "10.0.2.7", "10.0.2.8", "10.0.0.9", "fd00:1::5",
              "fd00:2::5", "127.0.0.1", "169.254.3.4", "::1", "fe80::1", None]  # fmt: skip
    want = [True, True, True, False, False, True, False, True, True, True, True, False]
    assert r.allowed(pa.array(values)).tolist() == want
    chunked = pa.chunked_array([values[:5], values[5:]], pa.string())
    assert r.allowed(chunked).tolist() == want
    assert r.allowed(pa.array(values).dictionary_encode()).tolist() == want
    assert r.allowed(pa.array(values, pa.large_string())).tolist() == want


@given(st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 32)), max_size=6),
       st.lists(st.integers(0, 2**32 - 1), max_size=50))  # fmt: skip
@settings(max_examples=200, deadline=None)
def test_ipv4_membership_matches_the_standard_library(
    nets: list[tuple[int, int]], addrs: list[int]
) -> None:
    networks = [ipaddress.IPv4Network((a, n), strict=False) for a, n in nets]
    r = AddressRanges(list(networks))
    texts = [str(ipaddress.IPv4Address(a)) for a in addrs]
    host = [ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("169.254.0.0/16")]
    want = [any(ipaddress.IPv4Address(a) in n for n in networks + host) for a in addrs]
    assert r.allowed(pa.array(texts, pa.string())).tolist() == want


def test_a_bad_prefix_names_its_place() -> None:
    with pytest.raises(InputError, match=r"here: '10.0.0.1/24' is not an address or prefix"):
        AddressRanges.parse("10.0.0.0/8,10.0.0.1/24", "here")
    with pytest.raises(InputError, match="empty item"):
        AddressRanges.parse("10.0.0.0/8,", "here")


def test_token_lines_carry_optional_ranges(tmp_path: Path) -> None:
    p = tmp_path / "tokens"
    p.write_text(
        "a secret-a-0123456789abc\n"
        "b secret-b-0123456789abc ranges=10.0.0.0/8\n"
        "c secret-c-0123456789abc flows,events ranges=fd00::/8,192.168.1.1\n"
    )
    t = Tokens.load(p)
    assert t.ranges_of("a") is None
    assert str(t.ranges_of("b")) == "10.0.0.0/8"
    ident = t.lookup("secret-c-0123456789abc")
    assert ident is not None and ident.kinds == {"flows", "events"}
    assert str(ident.ranges) == "fd00::/8,192.168.1.1/32"
    assert np.asarray(t.ranges_of("c").allowed(pa.array(["192.168.1.1"]))).tolist() == [True]  # type: ignore[union-attr]
    p.write_text("a secret-a-0123456789abc ranges=10.0.0.0/33\n")
    with pytest.raises(InputError, match=r"line 1: '10.0.0.0/33'"):
        Tokens.load(p)
    p.write_text("a secret-a-0123456789abc flows events\n")
    with pytest.raises(InputError, match=r"line 1: expected"):
        Tokens.load(p)
