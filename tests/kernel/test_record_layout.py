"""The Python views of `struct flow_record` and `struct dns_record` match the compiled objects'
BTF, byte for byte.

Reads the BTF of the shipped flow.bpf.o and dns.bpf.o through libbpf (btf__parse_elf), the same
library that loads them; and checks the shipped objects are built from the sources beside them.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from flowtrail.agent import libbpf
from flowtrail.agent.capture import DROP_REASONS, FLOW_DTYPE, FLOW_FIELDS, OBJECT_PATH
from flowtrail.agent.dns_capture import (
    CAPTURE_MAX,
    DNS_DTYPE,
    DNS_FIELDS,
    DNS_OBJECT_PATH,
    KERNEL_DROP_REASONS,
)
from flowtrail.schema import OUTCOMES

pytestmark = pytest.mark.kernel

REPO = Path(__file__).resolve().parents[2]
HEADER = OBJECT_PATH.parent / "flow.h"


def test_dtype_matches_btf_offsets_and_sizes() -> None:
    size, members = libbpf.struct_layout(str(OBJECT_PATH), "flow_record")
    assert FLOW_DTYPE.itemsize == size
    padding = {name for name in members if name.startswith("_pad")}
    assert set(FLOW_DTYPE.names) == set(members) - padding
    for name in FLOW_DTYPE.names:
        fmt, offset = FLOW_DTYPE.fields[name][:2]
        assert (offset, fmt.itemsize) == members[name], name
    # the declared order is the struct's order
    assert [f[0] for f in FLOW_FIELDS] == [m for m in members if m not in padding]


def test_unknown_struct_is_reported() -> None:
    with pytest.raises(KeyError, match="no_such_struct"):
        libbpf.struct_layout(str(OBJECT_PATH), "no_such_struct")


def test_enums_in_header_match_python_names() -> None:
    """Drop reasons are indexes the program writes: the header's order is the Python order."""
    text = HEADER.read_text()
    body = re.search(r"enum flow_drop_reason \{(.*?)\};", text, re.S)
    assert body is not None
    names = re.findall(r"FLOW_DROP_(\w+) = (\d+)", body.group(1))
    reasons = [(n.lower(), int(v)) for n, v in names if not n.startswith("_")]
    assert reasons == [(r, i) for i, r in enumerate(DROP_REASONS)]


def test_outcome_codes_in_header_match_the_contract_order() -> None:
    """The program writes outcome codes; capture names them by schema.OUTCOMES' order."""
    body = re.search(r"enum flow_outcome \{(.*?)\};", HEADER.read_text(), re.S)
    assert body is not None
    names = re.findall(r"FLOW_OUTCOME_(\w+) = (\d+)", body.group(1))
    assert [(n.lower(), int(v)) for n, v in names] == [(o, i) for i, o in enumerate(OUTCOMES)]


def test_shipped_object_is_built_from_current_sources() -> None:
    out = subprocess.run(
        [str(REPO / "scripts" / "build-bpf"), "--check"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr


def test_dns_record_dtype_matches_btf() -> None:
    """The DNS capture's header (bpf/dns.h), checked against dns.bpf.o's BTF likewise."""
    size, members = libbpf.struct_layout(str(DNS_OBJECT_PATH), "dns_record")
    assert DNS_DTYPE.itemsize == size
    padding = {name for name in members if name.startswith("_pad")}
    assert [f[0] for f in DNS_FIELDS] == [m for m in members if m not in padding]
    for name in DNS_DTYPE.names:
        fmt, offset = DNS_DTYPE.fields[name][:2]
        assert (offset, fmt.itemsize) == members[name], name


def test_dns_header_constants_match_python() -> None:
    text = (DNS_OBJECT_PATH.parent / "dns.h").read_text()
    body = re.search(r"enum dns_drop_reason \{(.*?)\};", text, re.S)
    assert body is not None
    names = re.findall(r"DNS_DROP_(\w+) = (\d+)", body.group(1))
    reasons = [(n.lower(), int(v)) for n, v in names if not n.startswith("_")]
    assert reasons == [(r, i) for i, r in enumerate(KERNEL_DROP_REASONS)]
    assert re.search(rf"#define DNS_CAPTURE_MAX {CAPTURE_MAX}\b", text)
