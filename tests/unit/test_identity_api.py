"""The local registration API over a real Unix socket (no privileges needed)."""

from __future__ import annotations

import json
import os
import socket
import stat
from pathlib import Path

import pyarrow as pa

from flowtrail.agent.identity import IdentityChain, Registry
from flowtrail.agent.identity_api import MAX_LINE, RegistrationServer
from flowtrail.agent.records import RAW_SCHEMA


def ask(path: Path, *requests: object) -> list[dict[str, object]]:
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(path))
        f = s.makefile("rwb")
        out = []
        for req in requests:
            f.write((req if isinstance(req, bytes) else json.dumps(req).encode()) + b"\n")
            f.flush()
            out.append(json.loads(f.readline()))
        return out


def row(ip: str, port: int) -> pa.Table:
    r: dict[str, object] = {f.name: 0 for f in RAW_SCHEMA}
    r.update(local_ip=ip, local_port=port, remote_ip="10.9.9.9", direction="inbound")
    r.update(outcome="established", comm="t")
    return pa.Table.from_pylist([r], schema=RAW_SCHEMA)


def test_register_list_unregister_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "api.sock"
    registry = Registry()
    chain = IdentityChain.build(("explicit",), registry=registry, host_netns=1)
    server = RegistrationServer(str(path), registry).start()
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600  # root only
        replies = ask(
            path,
            {"op": "register", "workload": "payments", "ip": "10.1.2.3"},
            {"op": "register", "workload": "payments-admin", "ip": "10.1.2.3", "port": 8443},
            {"op": "register", "workload": "x", "ip": "10.1.2.300"},
            {"op": "register", "workload": "thief", "ip": "10.1.2.3"},
            {"op": "register", "workload": "x", "ip": "10.0.0.1", "colour": "red"},
            {"op": "fly"},
            b"{not json",
            {"op": "list"},
        )
        assert [r["ok"] for r in replies] == [True, True, False, False, False, False, False, True]
        assert "10.1.2.300" in str(replies[2]["error"])
        assert "registered to both" in str(replies[3]["error"])
        assert "colour" in str(replies[4]["error"]) and "unknown op" in str(replies[5]["error"])
        assert len(replies[7]["registrations"]) == 2  # type: ignore[arg-type]
        # The agent's resolver sees it on the next batch.
        assert chain.resolve(row("10.1.2.3", 8443)).to_pylist() == ["payments-admin"]
        assert chain.resolve(row("10.1.2.3", 80)).to_pylist() == ["payments"]
        (gone,) = ask(path, {"op": "unregister", "workload": "payments-admin"})
        assert gone == {"ok": True, "removed": 1}
        assert chain.resolve(row("10.1.2.3", 8443)).to_pylist() == ["payments"]
        (too_long,) = ask(path, b'{"op": "list", "pad": "' + b"x" * MAX_LINE + b'"}')
        assert too_long["ok"] is False
    finally:
        server.stop()
    assert not path.exists()
