"""Tokens for a fleet: the collector's tokens file read again when it changes (revocation at
the next request), `flowtrail token`'s edits (whole, checked, 0600), read credentials, CA
fingerprints. Real files; no server."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from flowtrail.collector.tokens import TokenFile
from flowtrail.errors import InputError
from flowtrail.fleet import tokens_file
from flowtrail.fleet.access import ReadAccess, credential, peer_is_loopback
from flowtrail.fleet.ca import parse_fingerprint


def test_revoked_token_is_refused_at_the_next_lookup(tmp_path: Path) -> None:
    path = tmp_path / "tokens.txt"
    web = tokens_file.add(path, "web-7", "flows", None)
    db = tokens_file.add(path, "db-1", "flows", "10.0.2.0/24")
    live = TokenFile(path)  # as a running collector holds it
    assert live.lookup(web) is not None and live.lookup(db) is not None
    tokens_file.revoke(path, "web-7")
    assert live.lookup(web) is None  # no restart, no wait
    assert live.lookup(db) is not None and live.ranges_of("db-1") is not None
    new = tokens_file.add(path, "web-8", "flows", None)
    ident = live.lookup(new)
    assert ident is not None and ident.exporter == "web-8"
    assert path.stat().st_mode & 0o777 == 0o600


def test_a_broken_hand_edit_keeps_the_last_good_tokens(tmp_path: Path) -> None:
    path = tmp_path / "tokens.txt"
    db = tokens_file.add(path, "db-1", "flows", None)
    live = TokenFile(path)
    path.write_text(path.read_text() + "web-9 short\n")  # a token too short: the file is bad
    assert live.lookup(db) is not None and live.error is not None and "line" in live.error
    path.write_text(f"db-2 {db}\n")
    ident = live.lookup(db)
    assert ident is not None and ident.exporter == "db-2" and live.error is None


def test_token_command_edits_are_checked_and_whole(tmp_path: Path) -> None:
    path = tmp_path / "tokens.txt"
    tokens_file.add(path, "web-7", "flows", None)
    before = path.read_text()
    with pytest.raises(InputError, match="has a token already"):
        tokens_file.add(path, "web-7", "flows", None)
    with pytest.raises(InputError, match="line 3"):  # the new line, named as the collector would
        tokens_file.add(path, "web-8", "flows", "not-a-prefix")
    with pytest.raises(InputError, match="no token of that name"):
        tokens_file.revoke(path, "nobody")
    for bad in ("", "two words", "#x"):
        with pytest.raises(InputError):
            tokens_file.add(path, bad, "flows", None)
    assert path.read_text() == before
    assert [n for n, _r, _l in tokens_file.entries(path)] == ["web-7"]
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_read_tokens_only_read(tmp_path: Path) -> None:
    path = tmp_path / "tokens.txt"
    agent = tokens_file.add(path, "web-7", "flows", None)
    reader = tokens_file.add(path, "alice", "read", None)
    access = ReadAccess(TokenFile(path))
    basic = "Basic " + base64.b64encode(f"anyone:{reader}".encode()).decode()
    assert access.allows(f"Bearer {reader}") and access.allows(basic)
    assert not access.allows(f"Bearer {agent}")  # an agent cannot read the fleet's flows
    assert not access.allows(None) and not access.allows("Bearer ") and not access.allows("x")
    assert access.admits("127.0.0.1", None) and access.admits("::ffff:127.0.0.1", None)
    assert not access.admits("10.0.0.1", None) and access.admits("10.0.0.1", f"bearer {reader}")
    assert credential("Basic !!!") is None and credential("Basic " + "eDo=") is None  # "x:"
    assert not peer_is_loopback("10.1.2.3") and not peer_is_loopback("nonsense")


def test_fingerprints() -> None:
    hexd = "ab" * 32
    assert parse_fingerprint(f"sha256:{hexd}") == f"sha256:{hexd}"
    colons = ":".join(hexd[i : i + 2].upper() for i in range(0, 64, 2))
    assert parse_fingerprint(colons) == f"sha256:{hexd}"  # as openssl prints it
    for bad in ("", "sha256:abc", "sha256:" + "zz" * 32, "md5:" + hexd):
        with pytest.raises(InputError, match="--ca-fingerprint"):
            parse_fingerprint(bad)
