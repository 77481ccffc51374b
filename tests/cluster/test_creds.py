"""NATS credentials files (--creds, FLOWTRAIL_NATS_CREDS, BusConfig.creds_file) against a real
nats-server in operator mode (decentralized JWT authorization, one server: the client side
is under test, not replication).

The lab makes an operator, a system account and an application account with JetStream
(nkeys keys, NATS JWT v2 built by flowtrail.cluster.natslab, preloaded into the server's
MEMORY resolver) and writes a credentials file for a user the application account signed.

- A Bus with that creds file connects, creates a region's streams and a batch it publishes
  reads back equal.
- A `python -m flowtrail.cluster --creds FILE` node process becomes ready and stops cleanly.
- The agent's NATS sink with FLOWTRAIL_NATS_CREDS exports a batch that reads back equal.
- Refused (a 3 s connect bound): a user signed by an account the operator never signed, and
  no creds at all, are ExportErrors naming the server and "Authorization Violation"; a file
  that is not a credentials file (no JWT, no seed, a broken seed, missing) is an InputError
  naming --creds, before any connection, with no secret in it.
- Without the nkeys package a creds file is refused up front (CapabilityError).
"""

from __future__ import annotations

import asyncio
import importlib.util
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pyarrow as pa
import pytest

from flowtrail.cluster import bus as bus_module
from flowtrail.cluster.agent_sink import CREDS_ENV, NatsExporter
from flowtrail.cluster.bus import Bus, BusConfig
from flowtrail.cluster.natslab import (
    NatsLab,
    OperatorAuth,
    create_streams_with,
    make_operator_auth,
    new_seed,
    read_work,
    read_work_with,
    write_user_creds,
)
from flowtrail.errors import CapabilityError, ExportError, InputError
from flowtrail.lab.wait import ready_line
from flowtrail.sim.simulation import simulate

pytestmark = pytest.mark.timeout(120)


@dataclass
class Operated:
    lab: NatsLab
    operator: OperatorAuth
    creds: Path  # a user of the lab's JetStream account

    def config(self, **overrides: object) -> BusConfig:
        options: dict[str, object] = {
            "servers": self.lab.urls,
            "replicas": 1,
            "creds_file": str(self.creds),
            **overrides,
        }
        return BusConfig(**options)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def operated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operated]:
    root = tmp_path_factory.mktemp("operator-nats")
    operator = make_operator_auth()
    lab = NatsLab(root / "nats", size=1, operator=operator)
    creds = operator.user_creds(root / "node.creds", "flowtrail-node")
    with lab:
        yield Operated(lab, operator, creds)


def _batch(rows: int) -> pa.Table:
    return simulate("churny", 4, flows=200).flows.slice(0, rows)


@pytest.mark.cluster
def test_the_lab_runs_in_operator_mode(operated: Operated) -> None:
    config = operated.lab.servers[0].config.read_text()
    assert f"operator: {operated.operator.operator_jwt}\n" in config
    assert "resolver: MEMORY" in config and operated.operator.account in config
    assert "authorization" not in config
    text = operated.creds.read_text()
    assert text.startswith("-----BEGIN NATS USER JWT-----\n")
    assert "-----BEGIN USER NKEY SEED-----\nSU" in text
    assert operated.creds.stat().st_mode & 0o077 == 0


@pytest.mark.cluster
def test_bus_with_a_creds_file_creates_streams_and_reads_a_batch_back(
    operated: Operated,
) -> None:
    batch = _batch(40)

    async def main() -> list[tuple[str, pa.Table]]:
        bus = Bus(operated.config())
        await bus.connect()
        try:
            await bus.ensure_streams(["creds-bus"])
            await bus.publish_batch("creds-bus", batch, "creds-batch-1")
            return await read_work(bus, "creds-bus")
        finally:
            await bus.close()

    got = asyncio.run(main())
    assert [msg_id for msg_id, _ in got] == ["creds-batch-1"]
    assert got[0][1].equals(batch)


@pytest.mark.cluster
def test_node_process_with_creds_becomes_ready(operated: Operated, tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "flowtrail.cluster", "--region", "creds-node"]
    cmd += ["--name", "creds-0", "--replicas", "1", "--nats", operated.lab.urls[0]]
    cmd += ["--creds", str(operated.creds), "--sink", "parquet", "--out", str(tmp_path / "out")]
    cmd += ["--no-events", "--trust-received"]
    assert "@" not in operated.lab.urls[0]  # the creds file is the only credential
    stderr = tmp_path / "node.err"
    with open(stderr, "wb") as err:
        node = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err)
    try:
        assert ready_line(node, stderr, 60, "node")["ready"].startswith("creds-0/")
        node.send_signal(signal.SIGTERM)
        assert node.wait(20) == 0, stderr.read_text()[-3000:]
    finally:
        if node.poll() is None:
            node.kill()
            node.wait(5)
    assert "Traceback" not in stderr.read_text()


@pytest.mark.cluster
def test_agent_sink_exports_with_creds_from_env(
    operated: Operated, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch = _batch(25)
    exporter = str(batch.column("exporter")[0].as_py())

    create_streams_with(operated.config(), ["creds-agent"])
    monkeypatch.setenv(CREDS_ENV, str(operated.creds))
    with NatsExporter.from_environment(",".join(operated.lab.urls), "creds-agent") as sink:
        assert sink.config.creds_file == str(operated.creds)
        sink.export(batch, "0001-1-000001")
        assert sink.stats["published_batches"] == 1

    got = read_work_with(operated.config(), "creds-agent")
    assert [msg_id for msg_id, _ in got] == [f"{exporter}:0001-1-000001"]
    assert got[0][1].equals(batch)


@pytest.mark.cluster
def test_refused_creds_name_the_server_and_bad_files_name_the_option(
    operated: Operated, tmp_path: Path
) -> None:
    lab = operated.lab
    server = f"nats://127.0.0.1:{lab.servers[0].client_port}"
    # A well-formed file whose user an account signed that the operator never did.
    stranger = write_user_creds(tmp_path / "stranger.creds", new_seed("account"), "stranger")
    good = operated.creds.read_text()
    seed = good.split("-----BEGIN USER NKEY SEED-----\n")[1].split("\n")[0]
    files = {
        "missing": tmp_path / "missing.creds",
        "not creds": tmp_path / "hello.creds",
        "no seed": tmp_path / "noseed.creds",
        "broken seed": tmp_path / "broken.creds",
        "another user's seed": tmp_path / "other.creds",
        "CRLF": tmp_path / "crlf.creds",
    }
    files["not creds"].write_text("hello\n")
    files["no seed"].write_text(good.split("\n\n")[0] + "\n")
    files["broken seed"].write_text(good.replace(seed, seed[:20]))
    files["another user's seed"].write_text(good.replace(seed, new_seed("user")))
    files["CRLF"].write_text(good.replace("\n", "\r\n"))
    expected = {
        "missing": "No such file",
        "not creds": "no user JWT",
        "no seed": "no BEGIN USER NKEY SEED",
        "broken seed": "seed is not valid",
        "another user's seed": "not that of the JWT's user U",
        "CRLF": "CRLF",
    }
    cases = {
        "stranger": operated.config(creds_file=str(stranger)),
        "no creds": operated.config(creds_file=None),
        **{case: operated.config(creds_file=str(path)) for case, path in files.items()},
    }

    async def attempt(config: BusConfig) -> Exception | None:
        bus = Bus(config)
        try:
            await bus.connect()
        except (ExportError, InputError) as exc:
            return exc
        finally:
            await bus.close()
        return None

    async def main() -> dict[str, Exception | None]:
        configs = [replace(c, connect_timeout_s=3.0) for c in cases.values()]
        # Each attempt ends within its 3 s connect timeout, by the server's answer (the
        # messages below name it, not a timeout); 60 s only guards against a hang, so a
        # loaded machine cannot fail this.
        attempts = asyncio.gather(*map(attempt, configs))
        return dict(zip(cases, await asyncio.wait_for(attempts, 60), strict=True))

    errors = asyncio.run(main())
    for case in ("stranger", "no creds"):
        exc = errors[case]
        assert isinstance(exc, ExportError), (case, exc)
        assert str(exc).startswith(f"NATS: cannot connect to {server}: "), (case, exc)
        assert "Authorization Violation" in str(exc), (case, exc)
    for case, path in files.items():
        exc = errors[case]
        assert isinstance(exc, InputError), (case, exc)
        assert str(exc).startswith(f"--creds {path}: "), (case, exc)
        assert expected[case] in str(exc), (case, exc)
    for exc in errors.values():
        assert seed[:20] not in str(exc)


def test_creds_file_without_nkeys_is_refused_up_front(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    creds = tmp_path / "user.creds"
    creds.write_text("not checked: the missing package is found first\n")
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, package: str | None = None) -> object:
        return None if name == "nkeys" else real_find_spec(name, package)

    monkeypatch.setattr(bus_module.importlib.util, "find_spec", find_spec)
    with pytest.raises(CapabilityError, match=r"pip install 'nats-py\[nkeys\]'"):
        BusConfig(servers=["nats://127.0.0.1:4222"], creds_file=str(creds))
    monkeypatch.undo()
    BusConfig(servers=["nats://127.0.0.1:4222"], creds_file=str(creds))  # nkeys is installed


@pytest.mark.cluster
def test_an_account_without_jetstream_is_refused_at_once(tmp_path: Path) -> None:
    """JetStream's "not enabled for account" is a 503 like a leader election's, but waiting
    never helps: the streams cannot be made, said at once and why."""
    operator = make_operator_auth(jetstream=False)
    creds = operator.user_creds(tmp_path / "plain.creds")

    retries: list[int] = []

    async def main() -> None:
        with NatsLab(tmp_path / "nats", size=1, operator=operator) as lab:
            bus = Bus(BusConfig(servers=lab.urls, replicas=1, creds_file=str(creds)))
            await bus.connect()
            try:
                await bus.ensure_streams(["no-js"])
            finally:
                retries.append(bus.stats["publish_retries"])
                await bus.close()

    with pytest.raises(InputError, match="JetStream is not enabled for this account"):
        asyncio.run(main())
    assert retries == [0]  # refused at the first answer, not after 50 tries with backoff
