"""Cluster mode over a secured NATS: TLS with a server certificate from a test CA, client
certificates verified by the server (`tls { verify: true }`) and user/password authorization,
against a real nats-server (one server: the client side is under test, not replication).

- A `python -m flowtrail.cluster` node process given --tls-ca/--tls-cert/--tls-key and the
  user:password in its --nats URL becomes ready and stores a batch a Bus publishes over TLS.
- A node process with a wrong password exits non-zero at its first-connect bound (10 s;
  started in the background when the module's lab starts, checked last) saying the servers
  refused the credentials.
- In process (a 3 s connect bound): no CA, no client certificate, a CA that did not sign the
  server's certificate, a wrong password: each an ExportError naming the server and what
  failed, with no password in it.
- The agent's NATS sink exports over TLS with FLOWTRAIL_NATS_CAFILE and FLOWTRAIL_NATS_CERT /
  FLOWTRAIL_NATS_KEY set, read back equal; without the client certificate it fails saying so.

Creds files (JWT + nkey seed) are tested against a server in operator mode in
tests/cluster/test_creds.py.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from flowtrail.cluster.agent_sink import CAFILE_ENV, CERT_ENV, KEY_ENV, NatsExporter
from flowtrail.cluster.bus import SECOND, Bus, BusConfig, split_auth
from flowtrail.cluster.natslab import NatsLab, create_streams_with, make_pki, read_work_with
from flowtrail.collector.sink import read_parquet_sink
from flowtrail.errors import ExportError, InputError
from flowtrail.lab.wait import ready_line, stop_all
from flowtrail.sim.simulation import simulate

pytestmark = pytest.mark.timeout(180)
USER, PASSWORD = "flowtrail", "p@ss:w/rd%"  # characters a URL must escape: decoding is tested
NODE_REGION, AGENT_REGION = "us-east", "eu-tls"
CONNECT_BOUND_S = 10  # the refused node's --connect-timeout
# Its start (imports) and exit on a loaded 2-core machine: only a hang exceeds this.
SLACK_S = 120


@dataclass
class Secured:
    lab: NatsLab
    refused: subprocess.Popen[bytes]  # a node with a wrong password, started with the lab
    refused_log: Path
    refused_started: float

    def config(self, **overrides: object) -> BusConfig:
        pki = self.lab.pki
        assert pki is not None
        options: dict[str, object] = {
            "servers": self.lab.urls,
            "replicas": 1,
            "tls_ca_file": str(pki.ca_file),
            "tls_cert_file": str(pki.client_cert),
            "tls_key_file": str(pki.client_key),
            **overrides,
        }
        return BusConfig(**options)  # type: ignore[arg-type]


def _node_cmd(lab: NatsLab, *args: str, urls: list[str] | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "flowtrail.cluster", "--region", NODE_REGION, "--replicas", "1"]
    for url in urls or lab.urls:
        cmd += ["--nats", url]
    return [*cmd, *args]


def _stop(proc: subprocess.Popen[bytes]) -> None:
    stop_all([proc])


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    root = tmp_path_factory.mktemp("secure-nats")
    lab = NatsLab(root / "nats", size=1, verify_clients=True, user=USER, password=PASSWORD)
    pki = lab.pki
    assert pki is not None
    log = root / "refused.log"
    lab.start()
    try:
        # Everything right but the password. It waits out its first-connect bound while the
        # other tests run; the last test checks how it ended.
        with open(log, "wb") as f:
            refused = subprocess.Popen(
                _node_cmd(
                    lab, "--name", "refused", "--sink", "parquet", "--out", str(root / "no"),
                    "--no-events", "--trust-received", "--connect-timeout", f"{CONNECT_BOUND_S}s",
                    "--tls-ca", str(pki.ca_file),
                    "--tls-cert", str(pki.client_cert), "--tls-key", str(pki.client_key),
                    urls=lab.client_urls(USER, "not-the-password"),
                ),
                stdout=f,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        try:
            yield Secured(lab, refused, log, time.monotonic())
        finally:
            _stop(refused)
    finally:
        lab.stop()


def _batch(rows: int) -> pa.Table:
    return simulate("churny", 4, flows=400).flows.slice(0, rows)


async def _wait(cond: object, seconds: float, what: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + seconds
    while not await cond():  # type: ignore[operator]
        assert proc.poll() is None, f"the node exited ({proc.returncode}) waiting for {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


@pytest.mark.cluster
def test_node_over_tls_with_password_and_client_cert_stores_a_batch(
    secured: Secured, tmp_path: Path
) -> None:
    lab, pki = secured.lab, secured.lab.pki
    assert pki is not None
    assert all("@" in url for url in lab.urls)  # the credentials travel in the URL
    out = tmp_path / "out"
    args = ["--name", "tls-0", "--sink", "parquet", "--out", str(out), "--no-events"]
    args += ["--trust-received", "--tls-ca", str(pki.ca_file)]
    args += ["--tls-cert", str(pki.client_cert), "--tls-key", str(pki.client_key)]
    stderr = tmp_path / "node.err"
    with open(stderr, "wb") as err:
        node = subprocess.Popen(_node_cmd(lab, *args), stdout=subprocess.PIPE, stderr=err)
    batch = _batch(60)
    try:
        assert ready_line(node, stderr, 60, "node")["ready"].startswith("tls-0/")

        async def feed() -> None:
            bus = Bus(secured.config())
            await bus.connect()
            try:
                await bus.publish_batch(NODE_REGION, batch, "tls-batch-1")

                # A node decides at the end of a tick of its data clock: the mark must come
                # after the batch's evidence (the node republishes the batch there).
                async def evidence() -> bool:
                    return await bus.evidence_count(NODE_REGION) >= 1

                await _wait(evidence, 60, "the batch's evidence", node)
                end = int(pc.max(batch.column("received_ns")).as_py()) + 200 * SECOND
                await bus.publish_clock(NODE_REGION, end, "tls-end")

                async def stored() -> bool:
                    return bool(read_parquet_sink(out).num_rows >= batch.num_rows)

                await _wait(stored, 60, "the batch stored", node)
            finally:
                await bus.close()

        asyncio.run(feed())
        rows = read_parquet_sink(out)
        assert sorted(rows.column("flow_id").to_pylist()) == sorted(
            batch.column("flow_id").to_pylist()
        )
        node.send_signal(signal.SIGTERM)
        assert node.wait(60) == 0, stderr.read_text()[-3000:]  # a clean stop, under load
    finally:
        _stop(node)
    assert "Traceback" not in stderr.read_text()


@pytest.mark.cluster
def test_refused_connections_name_the_server_and_the_reason(secured: Secured) -> None:
    lab, pki = secured.lab, secured.lab.pki
    assert pki is not None
    wrong_ca = make_pki(lab.root / "other-pki")  # a CA that did not sign the servers' cert
    server = f"127.0.0.1:{lab.servers[0].client_port}"
    cases = {
        "no CA": secured.config(tls_ca_file=None),
        "wrong CA": secured.config(tls_ca_file=str(wrong_ca.ca_file)),
        "no client certificate": secured.config(tls_cert_file=None, tls_key_file=None),
        "client certificate of another CA": secured.config(
            tls_cert_file=str(wrong_ca.client_cert), tls_key_file=str(wrong_ca.client_key)
        ),
        "wrong password": secured.config(servers=lab.client_urls(USER, "nope")),
        "no password": secured.config(servers=lab.client_urls()),
    }
    expected = {
        "no CA": "CERTIFICATE_VERIFY_FAILED",
        "wrong CA": "CERTIFICATE_VERIFY_FAILED",
        "no client certificate": "--tls-cert",
        "client certificate of another CA": "--tls-cert",
        "wrong password": "Authorization Violation",
        "no password": "Authorization Violation",
    }

    async def attempt(config: BusConfig) -> str:
        bus = Bus(config)
        try:
            await bus.connect()
        except ExportError as exc:
            return str(exc)
        finally:
            await bus.close()
        return "connected"

    async def main() -> dict[str, str]:
        configs = [replace(c, connect_timeout_s=3.0) for c in cases.values()]
        # Each attempt ends within its 3 s connect timeout, by the server's answer (the
        # messages below name it, not a timeout); 60 s only guards against a hang, so a
        # loaded machine cannot fail this.
        attempts = asyncio.gather(*map(attempt, configs))
        return dict(zip(cases, await asyncio.wait_for(attempts, 60), strict=True))

    errors = asyncio.run(main())
    for case, message in errors.items():
        assert message.startswith(f"NATS: cannot connect to nats://{server}"), (case, message)
        assert expected[case] in message, (case, message)
        assert "nope" not in message and PASSWORD not in message, (case, message)


@pytest.mark.cluster
def test_agent_sink_exports_over_tls_with_client_cert_from_env(
    secured: Secured, monkeypatch: pytest.MonkeyPatch
) -> None:
    lab, pki = secured.lab, secured.lab.pki
    assert pki is not None
    batch = _batch(25)
    exporter = str(batch.column("exporter")[0].as_py())

    create_streams_with(secured.config(), [AGENT_REGION])
    monkeypatch.setenv(CAFILE_ENV, str(pki.ca_file))
    monkeypatch.setenv(CERT_ENV, str(pki.client_cert))
    with pytest.raises(InputError, match=KEY_ENV):
        NatsExporter.from_environment(",".join(lab.urls), AGENT_REGION)
    monkeypatch.setenv(KEY_ENV, str(pki.client_key))
    with NatsExporter.from_environment(",".join(lab.urls), AGENT_REGION) as sink:
        assert sink.config.tls_cert_file == str(pki.client_cert)
        sink.export(batch, "0001-1-000001")
        assert sink.stats["published_batches"] == 1

    # Only the CA: the servers want a client certificate; the export fails within its
    # timeout (the batch would wait in the spool). The sink's message names only the last
    # connection error, often the broken pipe after the refused handshake, so it is not
    # checked here; the Bus's own first-connect error is (test above).
    no_cert = BusConfig(servers=lab.urls, tls_ca_file=str(pki.ca_file))
    sink = NatsExporter(no_cert, AGENT_REGION, timeout_s=2.0)
    with sink, pytest.raises(ExportError, match="no answer within 2 s"):
        sink.export(batch, "0001-1-000002")
    assert sink.stats["connection_errors"] > 0 and sink.stats["published_batches"] == 0

    got = read_work_with(secured.config(), AGENT_REGION)
    assert [msg_id for msg_id, _ in got] == [f"{exporter}:0001-1-000001"]
    assert got[0][1].equals(batch)


@pytest.mark.cluster
def test_node_with_a_wrong_password_exits_nonzero_saying_why(secured: Secured) -> None:
    """Checked last: the process was started with the lab and has been waiting out its
    first-connect bound meanwhile."""
    left = secured.refused_started + CONNECT_BOUND_S + SLACK_S - time.monotonic()
    try:
        code = secured.refused.wait(max(left, 5))
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running {CONNECT_BOUND_S + SLACK_S} s after start")
    log = secured.refused_log.read_text(errors="replace")
    last = log.strip().splitlines()[-1]
    assert code != 0, log[-3000:]
    # It gave up at its own bound (it did wait for the servers, not give up at once). How
    # long it ran is not measured: this test runs when the module's others are done.
    assert f"no answer in {CONNECT_BOUND_S} s" in last, last
    assert "Traceback" not in log, log[-3000:]
    port = secured.lab.servers[0].client_port
    assert f"cannot connect to nats://127.0.0.1:{port}" in last, last
    assert "Authorization Violation" in last and "refused the credentials" in last, last
    assert "not-the-password" not in log


# -- no server needed -------------------------------------------------------------------------


def test_credentials_come_out_of_the_urls_decoded() -> None:
    bare, user, password = split_auth(
        [
            "nats://flow%40x:p%40ss%3Aw@n1:4222",
            "nats://flow%40x:p%40ss%3Aw@n2:4222",
            "tls://n3:4222",
        ]
    )
    assert bare == ["nats://n1:4222", "nats://n2:4222", "tls://n3:4222"]
    assert (user, password) == ("flow@x", "p@ss:w")
    assert split_auth(["nats://tok@n1:4222"]) == (["nats://n1:4222"], "tok", None)
    assert split_auth(["nats://n1:4222"]) == (["nats://n1:4222"], None, None)
    with pytest.raises(InputError, match="different user:password"):
        BusConfig(servers=["nats://a:b@n1:4222", "nats://a:c@n2:4222"])


def test_lab_pki_is_a_ca_and_two_leaves_and_a_mismatched_pair_is_an_input_error(
    tmp_path: Path,
) -> None:
    pki = make_pki(tmp_path)
    verify = ["openssl", "verify", "-CAfile", str(pki.ca_file)]
    for cert, purpose in ((pki.server_cert, "sslserver"), (pki.client_cert, "sslclient")):
        done = subprocess.run(
            [*verify, "-purpose", purpose, str(cert)], capture_output=True, text=True
        )
        assert done.returncode == 0, done.stdout + done.stderr
    assert os.stat(pki.client_key).st_mode & 0o077 == 0
    mismatched = BusConfig(
        servers=["nats://127.0.0.1:1"],
        tls_ca_file=str(pki.ca_file),
        tls_cert_file=str(pki.server_cert),
        tls_key_file=str(pki.client_key),
    )
    with pytest.raises(InputError, match="--tls-cert"):
        asyncio.run(Bus(mismatched).connect())
