"""The IPv4 parsers (compiled, and numpy-only) agree with Python's ipaddress, with each
other and with the general key path."""

from __future__ import annotations

import ipaddress
import re
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flowtrail.engine.ipkeys import NO_KEY, IpKeys
from flowtrail.ipv4text import parse_ipv4

octet = st.one_of(
    st.integers(0, 255).map(str),
    st.integers(0, 999).map(str),  # out of range
    st.integers(0, 99).map(lambda i: f"0{i}"),  # a leading zero
    st.sampled_from(["", "a", "-1", " 1"]),
)
dotted = st.lists(octet, min_size=1, max_size=6).map(".".join)
v6 = st.ip_addresses(v=6).map(str)
v4 = st.ip_addresses(v=4).map(str)
scoped = st.sampled_from(["127.0.0.1", "127.9.8.7", "169.254.3.4", "::1", "fe80::1"])
text = st.one_of(v4, v4, dotted, v6, scoped, st.none(), st.text(max_size=16))


# The contract's canonical IPv4 text, written out independently of the parser.
_OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4_RE = rf"^({_OCTET}\.){{3}}{_OCTET}$"


def canonical_v4(value: str | None) -> bool:
    return value is not None and re.fullmatch(_IPV4_RE, value) is not None


@given(st.lists(text, max_size=40), st.integers(0, 5), st.booleans(), st.booleans())
@settings(max_examples=600, deadline=None)
def test_parse_matches_the_contract_rule_and_ipaddress(
    values: list[str | None], cut: int, large: bool, compiled: bool
) -> None:
    arr = pa.array(values, pa.large_string() if large else pa.string())
    arr = arr.slice(min(cut, len(values)))  # a sliced array starts inside its buffers
    value, ok = parse_ipv4(arr, compiled=compiled)
    for v, got_value, got_ok in zip(arr.to_pylist(), value.tolist(), ok.tolist(), strict=True):
        assert got_ok == canonical_v4(v), v
        if got_ok:
            assert got_value == int(ipaddress.IPv4Address(v))


@given(st.lists(text, max_size=60), st.integers(0, 5))
@settings(max_examples=300, deadline=None)
def test_numpy_parse_equals_the_compiled_one(values: list[str | None], cut: int) -> None:
    arr = pa.array(values, pa.string()).slice(min(cut, len(values)))
    value, ok = parse_ipv4(arr)
    value_np, ok_np = parse_ipv4(arr, compiled=False)
    assert ok_np.tolist() == ok.tolist()
    assert value_np[ok].tolist() == value[ok].tolist()


def test_numpy_parse_leaves_numba_unloaded() -> None:
    """What compiled=False is for: the agent parses addresses without loading numba."""
    code = (
        "import sys, pyarrow as pa\n"
        "from flowtrail.ipv4text import parse_ipv4\n"
        "v, ok = parse_ipv4(pa.array(['10.0.0.1', '300.1.1.1', None]), compiled=False)\n"
        "assert ok.tolist() == [True, False, False] and v[0] == 167772161\n"
        "print('numba' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@given(st.lists(st.one_of(v4, v4, v6, scoped, st.none()), max_size=40))
@settings(max_examples=300, deadline=None)
def test_keys_equal_the_per_distinct_path(values: list[str | None]) -> None:
    """The fast path gives every row the key (and host scope) the general path gives it."""
    arr = pa.array(values, pa.string())
    scope = pa.array([f"h{i % 3}" for i in range(len(values))])
    fast, general = IpKeys(), IpKeys()
    got_keys, got_local = fast._keys(arr)
    want_keys, want_local = general._keys_by_distinct(arr) if len(arr) else (got_keys, got_local)
    assert got_keys.tolist() == want_keys.tolist()
    assert got_local.tolist() == want_local.tolist()
    assert fast.keys(arr, scope).tolist() == IpKeys().keys(arr, scope).tolist()


def test_nulls_have_no_key_and_bad_text_is_refused_by_validation() -> None:
    keys = IpKeys().keys(pa.array(["10.0.0.1", None]))
    assert keys.tolist() == [167772161, int(NO_KEY)]
    from flowtrail.errors import ContractError
    from flowtrail.schema import FLOWS
    from flowtrail.tables import validate

    row = {
        "flow_id": "f", "exporter": "h", "local_ip": "10.0.0.1", "local_port": 1,
        "remote_ip": "10.0.0.256", "remote_port": 2, "direction": "outbound",
        "start_ns": 1, "end_ns": 2, "state": "closed", "bytes_sent": 0, "bytes_received": 0,
    }  # fmt: skip
    with pytest.raises(ContractError, match=re.escape("10.0.0.256")):
        validate(pa.Table.from_pylist([row]), FLOWS, path="x")
    ok = validate(pa.Table.from_pylist([{**row, "remote_ip": "fd00::1"}]), FLOWS, path="x")
    assert ok.num_rows == 1


@pytest.mark.parametrize("compiled", [True, False])
def test_the_parser_handles_an_empty_array_and_rejects_other_types(compiled: bool) -> None:
    value, ok = parse_ipv4(pa.array([], pa.string()), compiled=compiled)
    assert len(value) == len(ok) == 0
    with pytest.raises(TypeError):
        parse_ipv4(pa.array([1, 2]), compiled=compiled)
    # All-empty strings: a data buffer of length zero.
    _, ok = parse_ipv4(pa.array(["", ""]), compiled=compiled)
    assert not np.any(ok)


def test_dictionary_encoded_text_takes_the_general_path() -> None:
    text = pa.array(["10.0.0.1", "fd00::1", "10.0.0.1", None])
    assert IpKeys().keys(text.dictionary_encode()).tolist() == IpKeys().keys(text).tolist()
