"""The live collector decides exactly what replay() decides, restarts and event feed included.

A simulated fleet (hostile: reused addresses, skewed clocks, late batches, late events,
agent-less load balancers, DNAT VIPs, IPv6) goes through a real `flowtrail collector`
process over HTTP: each agent batch posted as its exporter, the control plane's events
through /v1/events, in the order of their received_ns. The process is stopped twice in the
middle (SIGTERM once, SIGKILL once) and started again on the same data directory, so the
rows stored after each restart come from a write-ahead-log replay.

The one stand-in: the collector's clock (tests/e2e/clocked_collector.py). It reads the
simulation's time, and its tick loop ticks at exactly the instants at which replay() ticked,
after the same rows have arrived. With that, the stored rows must equal replay()'s output row
for row and column for column, and they are judged against the simulator's truth.
"""

from __future__ import annotations

import http.client
import json
import os
import select
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from flowtrail.collector.client import ipc_bytes
from flowtrail.engine.attributor import Attributor, Decisions, Settings
from flowtrail.engine.replay import replay
from flowtrail.evaluate.metrics import evaluate
from flowtrail.lab.wait import started
from flowtrail.sim.simulation import SimOutput, simulate
from flowtrail.store import Store

S = 1_000_000_000
WRAPPER = Path(__file__).with_name("clocked_collector.py")
EVENTS_EXPORTER = "control-plane"
# Short waits keep the schedule short; the event lag still covers every late event.
SETTINGS = Settings(max_wait_ns=30 * S, event_lag_ns=150 * S)
TICK = 5 * S  # replay()'s tick, so the collector's: fewer ticks and event posts, same rules
KEY = ["exporter", "flow_id", "state", "end_ns"]


def token(exporter: str) -> str:
    return f"tok-{exporter}-0123456789abcdef"


def fleet() -> SimOutput:
    return simulate(
        "hostile", 11, flows=2000, duration=300, hosts=6,
        late_batch_delay=90, late_event_delay=120, lb_lifetime=120,
    )  # fmt: skip


def replay_ticks(sim: SimOutput, monkeypatch: pytest.MonkeyPatch) -> tuple[pa.Table, list[int]]:
    """replay()'s output and the collector times at which it ticked, in order."""
    ticks: list[int] = []
    real_tick = Attributor.tick

    def recording(self: Attributor, now: int) -> Decisions:
        ticks.append(now)
        return real_tick(self, now)

    with monkeypatch.context() as m:
        m.setattr(Attributor, "tick", recording)
        # The streaming schedule: the one a live collector runs (the batch schedule, which
        # replay() runs by default, gives the same answers and calls no tick to record).
        result = replay(sim.flows, sim.events, settings=SETTINGS, tick_ns=TICK, schedule="stream")
    assert ticks == sorted(ticks)
    return result.table, ticks


class ClockedCollector:
    """A `flowtrail collector` process whose clock and ticks the test drives."""

    def __init__(self, tmp: Path, clock_file: Path) -> None:
        self.tmp, self.clock_file = tmp, clock_file
        req_r, self._req = os.pipe()
        ack_r, ack_w = os.pipe()
        self.port_file = tmp / "port"
        self.port_file.unlink(missing_ok=True)
        self.log_path = tmp / "collector.log"
        self._log = open(self.log_path, "ab")  # noqa: SIM115
        env = dict(os.environ)
        env["FLOWTRAIL_TEST_CLOCK_FILE"] = str(clock_file)
        env["FLOWTRAIL_TEST_TICK_FDS"] = f"{req_r},{ack_w}"
        args = [
            sys.executable, str(WRAPPER), "--listen", "127.0.0.1:0", "--plaintext",
            "--port-file", str(self.port_file), "--tokens", str(tmp / "tokens"),
            "--data-dir", str(tmp / "data"), "--tick", "1ms",
            "--max-wait", f"{SETTINGS.max_wait_ns // S}s",
            "--event-lag", f"{SETTINGS.event_lag_ns // S}s",
            # Every logged batch must survive a restart, as replay() keeps every row in mind.
            "--keep-log", "24h",
        ]  # fmt: skip
        self.p = subprocess.Popen(
            args, stdout=self._log, stderr=subprocess.STDOUT, env=env, pass_fds=(req_r, ack_w)
        )
        os.close(req_r)
        os.close(ack_w)
        self._acks: IO[str] = os.fdopen(ack_r, "r")
        try:
            started(self.p, self.port_file.exists, self.log_path, 60, "collector")
            self.conn = http.client.HTTPConnection(
                "127.0.0.1", int(self.port_file.read_text()), timeout=60
            )
            self._ready()
        except BaseException:
            # Not yet in the fixture's list: a start that fails must not leave it running.
            self.p.kill()
            self.p.wait()
            raise

    def _ready(self) -> None:
        # The loop asks for its next time: its last tick is done. (Nothing within a minute:
        # the loop no longer reads its clock from `_guarded_tick`, see clocked_collector.py.)
        got, _, _ = select.select([self._acks], [], [], 60)
        line = self._acks.readline() if got else ""
        assert line == "ready\n", f"tick loop gone: {self.log_path.read_text()[-3000:]}"

    def tick(self, now: int) -> None:
        os.write(self._req, f"{now}\n".encode())
        self._ready()

    def post(self, kind: str, exporter: str, table: pa.Table, batch: str) -> None:
        body = ipc_bytes(table)
        headers = {
            "Authorization": f"Bearer {token(exporter)}",
            "Content-Length": str(len(body)),
            "X-Flowtrail-Batch": batch,
        }
        self.conn.request("POST", f"/v1/{kind}", body=body, headers=headers)
        r = self.conn.getresponse()
        answer = r.read()
        assert r.status == 200, (kind, exporter, batch, r.status, answer)
        assert json.loads(answer)["rows"] == table.num_rows

    def stop(self, sig: signal.Signals) -> None:
        self.conn.close()
        os.close(self._req)  # the tick loop now reads the clock file, so it can stop
        self.p.send_signal(sig)
        code = self.p.wait(timeout=60)
        self._acks.close()
        self._log.close()
        expected = 0 if sig == signal.SIGTERM else -signal.SIGKILL
        assert code == expected, self.log_path.read_text()[-3000:]


@pytest.fixture
def collectors() -> Iterator[list[ClockedCollector]]:
    made: list[ClockedCollector] = []
    yield made
    for c in made:
        if c.p.poll() is None:
            c.p.kill()
            c.p.wait()


def schedule(sim: SimOutput) -> list[tuple[int, str, str, pa.Table]]:
    """(received_ns, kind, exporter, rows): one flow batch per agent batch (its received_ns),
    one event batch per tick of received time, sorted by received time."""
    out: list[tuple[int, str, str, pa.Table]] = []
    flows = sim.flows
    recv = np.asarray(flows["received_ns"])
    for r in np.unique(recv):
        batch = flows.filter(pa.array(recv == r))
        exporters = batch["exporter"].unique().to_pylist()
        assert len(exporters) == 1, "one agent batch per received_ns"
        out.append((int(r), "flows", exporters[0], batch))
    events = sim.events
    erecv = np.asarray(pc.coalesce(events["received_ns"], events["time_ns"]))
    for tick in np.unique(erecv // TICK):
        mask = (erecv // TICK) == tick
        out.append((int(erecv[mask].max()), "events", EVENTS_EXPORTER, events.filter(mask)))
    out.sort(key=lambda x: (x[0], x[1] == "flows"))
    return out


def unfold_extra(stored: pa.Table) -> pa.Table:
    """The store keeps extra input columns as one JSON text column: back to columns."""
    extra = [json.loads(x) for x in stored["extra"].to_pylist()]
    out = stored.drop_columns(["extra"])
    for name in sorted({k for row in extra for k in row}):
        # sim_* columns are integers, unattributed_reason is text: let Arrow infer which.
        out = out.append_column(name, pa.array([row.get(name) for row in extra]))
    return out


def comparable(t: pa.Table, names: list[str]) -> dict[str, list[Any]]:
    t = t.select(names)
    t = t.take(pc.sort_indices(t, [(k, "ascending") for k in KEY]))
    return {n: t[n].to_pylist() for n in names}


@pytest.mark.slow
def test_collector_with_restarts_decides_what_replay_decides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, collectors: list[ClockedCollector]
) -> None:
    sim = fleet()
    expected, ticks = replay_ticks(sim, monkeypatch)
    plan = schedule(sim)
    assert sim.flows.num_rows > 1500 and len(plan) > 100 and len(ticks) > 100

    exporters = sorted(set(sim.flows["exporter"].to_pylist()))
    (tmp_path / "tokens").write_text(
        "".join(f"{e} {token(e)}\n" for e in exporters)
        + f"{EVENTS_EXPORTER} {token(EVENTS_EXPORTER)} events\n"
    )
    clock_file = tmp_path / "clock"
    clock_file.write_text(str(plan[0][0] - S))
    collectors.append(ClockedCollector(tmp_path, clock_file))
    restarts = {len(ticks) // 3: signal.SIGTERM, 2 * len(ticks) // 3: signal.SIGKILL}

    i = 0
    for n, now in enumerate(ticks):
        # What replay() added before this tick: every batch received up to it.
        while i < len(plan) and plan[i][0] <= now:
            received, kind, exporter, rows = plan[i]
            clock_file.write_text(str(received))
            collectors[-1].post(kind, exporter, rows, f"b{i}")
            i += 1
        clock_file.write_text(str(now))
        collectors[-1].tick(now)
        if n in restarts:
            collectors[-1].stop(restarts[n])
            collectors.append(ClockedCollector(tmp_path, clock_file))
    assert i == len(plan)
    collectors[-1].stop(signal.SIGTERM)

    with Store(tmp_path / "data" / "flows.duckdb") as store:
        got = unfold_extra(store.read())
    assert got.num_rows == expected.num_rows == sim.flows.num_rows
    names = expected.column_names
    assert sorted(got.column_names) == sorted(names)
    want, have = comparable(expected, names), comparable(got, names)
    # received_ns is the collector's clock at each batch's arrival, which the test set to the
    # simulation's received_ns: equal. attributed_ns is the tick that decided the row: equal,
    # except that a restarted engine, fed the whole log at once, decides a flow still waiting
    # (for its wait or the event watermark) at its first tick when logged evidence already
    # names its remote side, where the uninterrupted one retries it only at its deadline or
    # when its peer row arrives. Same answer, earlier tick.
    first_after_restart = {ticks[n + 1] for n in restarts}
    early = 0
    for name in names:
        bad = [k for k, (a, b) in enumerate(zip(want[name], have[name], strict=True)) if a != b]
        if name == "attributed_ns":
            early = sum(1 for k in bad if have[name][k] in first_after_restart)
            bad = [k for k in bad if not (have[name][k] in first_after_restart
                                          and have[name][k] < want[name][k])]  # fmt: skip
        assert not bad, (name, len(bad), [(want[name][k], have[name][k]) for k in bad[:5]])
    assert early <= 10, f"{early} rows decided early after a restart"

    report = evaluate(got, sim.truth)
    assert report.flows.misattributed == 0
    # The comparison means something only if all three sources and the waits were exercised.
    sources = pc.value_counts(got["remote_source"]).to_pylist()
    counts = {s["values"]: s["counts"] for s in sources}
    assert counts.get("heartbeat", 0) > 1000 and counts.get("event", 0) > 50, counts
    assert counts.get("unattributed", 0) >= 1, counts
