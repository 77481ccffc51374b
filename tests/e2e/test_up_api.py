"""The query HTTP API over a real loopback socket and a real DuckDB store (no root needed).

Simulated, attributed flows are written into a Store; the API is served from cursors on the
store's own connection (as in `flowtrail up`), and every answer is compared with the query
function's result computed directly, so the HTTP layer adds nothing and loses nothing.
"""

from __future__ import annotations

import csv
import http.client
import io
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pyarrow as pa
import pytest

from flowtrail.api import QueryAPI
from flowtrail.engine.replay import replay
from flowtrail.errors import InputError
from flowtrail.query.output import render
from flowtrail.query.queries import (
    FlowFilter,
    Window,
    attribution_health,
    dependencies,
    flows,
    top_talkers,
)
from flowtrail.sim.simulation import simulate
from flowtrail.store import Store


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Store, QueryAPI]]:
    sim = simulate("churny", 11, flows=3_000)
    table = replay(sim.flows, sim.events, sim.regions).table
    store = Store(Path(tmp_path_factory.mktemp("api")) / "flows.duckdb")
    store.write(table)
    api = QueryAPI(store.cursor, "127.0.0.1", 0)
    api.start()
    yield store, api
    api.stop()
    store.close()


def get(api: QueryAPI, path: str, method: str = "GET") -> tuple[int, str, str]:
    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=30)
    try:
        conn.request(method, path)
        r = conn.getresponse()
        return r.status, r.getheader("Content-Type") or "", r.read().decode()
    finally:
        conn.close()


def direct(store: Store, query: Callable[[Any], pa.Table], fmt: str = "json") -> str:
    """The query function's answer, rendered as `flowtrail query --format fmt` would."""
    cur = store.cursor()
    try:
        return render(query(cur), fmt)
    finally:
        cur.close()


@pytest.mark.parametrize(
    ("endpoint", "query", "call"),
    [
        ("dependencies", "", lambda c: dependencies(c)),
        ("dependencies", "known_only=true", lambda c: dependencies(c, known_only=True)),
        ("top-talkers", "by=ip&limit=5", lambda c: top_talkers(c, by="ip", limit=5)),
        (
            "flows",
            "source=heartbeat&limit=50",
            lambda c: flows(c, where=FlowFilter(remote_source="heartbeat"), limit=50),
        ),
        ("flows", "port=443&limit=20", lambda c: flows(c, where=FlowFilter(port=443), limit=20)),
        ("health", "", lambda c: attribution_health(c)),
    ],
)
def test_answers_equal_the_query_functions(
    served: tuple[Store, QueryAPI], endpoint: str, query: str, call: Callable[[Any], pa.Table]
) -> None:
    store, api = served
    status, ctype, body = get(api, f"/api/{endpoint}?{query}")
    assert status == 200, body
    assert ctype == "application/json"
    rows = json.loads(body)
    assert rows, "the simulated store should answer every query with rows"
    assert rows == json.loads(direct(store, call))


def test_dependencies_have_named_edges_and_csv(served: tuple[Store, QueryAPI]) -> None:
    store, api = served
    status, ctype, body = get(api, "/api/dependencies?known_only=1&format=csv")
    assert status == 200 and ctype.startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(body)))
    assert rows and all(r["caller"] and r["callee"] for r in rows)
    assert sum(int(r["flows"]) for r in rows) > 100
    assert body == direct(store, lambda c: dependencies(c, known_only=True), "csv")


def test_flow_filters_apply(served: tuple[Store, QueryAPI]) -> None:
    _, api = served
    _, _, body = get(api, "/api/flows?limit=1")
    ip = json.loads(body)[0]["local_ip"]
    _, _, body = get(api, f"/api/flows?ip={ip}&limit=10000")
    rows = json.loads(body)
    assert rows and all(ip in (r["local_ip"], r["remote_ip"], r["nat_remote_ip"]) for r in rows)
    _, _, body = get(api, "/api/flows?source=unattributed&limit=10000")
    assert all(r["remote_workload"] is None for r in json.loads(body))
    # A window past every stored row is empty, not an error.
    _, _, body = get(api, "/api/flows?since=4000000000000000000")
    assert json.loads(body) == []


@pytest.mark.parametrize(
    ("path", "parameter", "words"),
    [
        ("/api/flows?port=70000", "port", "out of range"),
        ("/api/flows?port=http", "port", "not an integer"),
        ("/api/flows?ip=10.0.0.999", "ip", "not a canonical"),
        ("/api/flows?ip=::FFFF:10.0.0.1", "ip", "not a canonical"),
        ("/api/flows?source=guess", "source", "choose"),
        ("/api/flows?limit=0", "limit", "out of range"),
        ("/api/flows?limit=1000000", "limit", "out of range"),
        ("/api/flows?since=yesterday", "since", "duration"),
        ("/api/flows?until=-5", "until", "negative"),
        ("/api/flows?since=10&until=5", "until", "empty"),
        ("/api/flows?format=table", "format", "json or csv"),
        ("/api/flows?workload=", "workload", "empty value"),
        ("/api/flows?port=1&port=2", "port", "more than once"),
        ("/api/flows?by=ip", "by", "not a parameter of /api/flows"),
        ("/api/dependencies?limit=5", "limit", "not a parameter"),
        ("/api/dependencies?known_only=maybe", "known_only", "true or false"),
        ("/api/top-talkers?by=port", "by", "choose"),
        ("/api/health?workload=x", "workload", "not a parameter"),
        (f"/api/flows?since={'9' * 400}", "since", "characters) is not a time"),
        (f"/api/flows?since={'9' * 30}", "since", "at most"),
        (f"/api/flows?until={'9' * 30}s", "until", "too long a duration"),
        ("/api/flows?since=2026-13-01T00:00:00Z", "since", "not a valid time"),
    ],
)
def test_bad_parameters_get_400_naming_them(
    served: tuple[Store, QueryAPI], path: str, parameter: str, words: str
) -> None:
    _, api = served
    status, ctype, body = get(api, path)
    assert status == 400, body
    assert ctype == "application/json"
    answer = json.loads(body)
    assert answer["parameter"] == parameter
    assert answer["error"].startswith(parameter) and words in answer["error"]


def test_times_in_iso_8601_and_compound_durations(served: tuple[Store, QueryAPI]) -> None:
    """`since`/`until` as ISO 8601 (no zone = UTC, offsets honoured) or as 1d / 1h30m ago."""
    store, api = served
    first, last = store.cursor().execute("SELECT min(end_ns), max(end_ns) FROM flows").fetchone()
    middle = (first + last) // 2 // 1_000_000_000 * 1_000_000_000  # whole seconds
    iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(middle // 1_000_000_000))
    want = direct(store, lambda c: flows(c, Window(middle), limit=10_000), "csv")
    for since in (f"{iso}Z", iso, f"{iso}.000000000+00:00", str(middle)):
        status, _, body = get(api, f"/api/flows?limit=10000&format=csv&since={quote(since)}")
        assert (status, body) == (200, want), since
    two_hours_east = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(middle // 10**9 + 7200))
    status, _, body = get(api, f"/api/flows?limit=10000&format=csv&since={two_hours_east}%2B02:00")
    assert (status, body) == (200, want)
    for ago in ("1d", "1h30m", "2h45m30s"):
        status, _, body = get(api, f"/api/flows?since={ago}")
        assert status == 200, (ago, body)


def test_other_paths_and_methods(served: tuple[Store, QueryAPI]) -> None:
    _, api = served
    status, _, body = get(api, "/api/nothing")
    assert status == 404 and "/api" in json.loads(body)["error"]
    status, _, body = get(api, "/api")
    assert status == 200 and set(json.loads(body)["endpoints"]) == {
        "/api/dependencies",
        "/api/top-talkers",
        "/api/flows",
        "/api/health",
        "/api/health-series",
        "/api/exporters",
    }
    status, _, body = get(api, "/healthz")
    assert status == 200 and json.loads(body)["ok"] is True
    status, _, body = get(api, "/api/flows", method="POST")
    assert status == 405 and "read-only" in json.loads(body)["error"]
    status, _, body = get(api, "/api/flows", method="DELETE")
    assert status == 405


def test_health_callback_decides_healthz(tmp_path: Path) -> None:
    def sick() -> tuple[bool, dict[str, Any]]:
        return False, {"sink_error": "disk full"}

    with Store(tmp_path / "s.duckdb") as store:
        api = QueryAPI(store.cursor, "127.0.0.1", 0, health=sick)
        api.start()
        try:
            status, _, body = get(api, "/healthz")
            assert status == 503 and json.loads(body) == {"ok": False, "sink_error": "disk full"}
            # An empty store answers, with zero rows.
            status, _, body = get(api, "/api/health")
            assert status == 200 and json.loads(body)[0]["rows"] == 0
        finally:
            api.stop()


def test_store_closed_is_503_not_a_crash(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.duckdb")
    api = QueryAPI(store.cursor, "127.0.0.1", 0)
    api.start()
    try:
        store.close()
        status, _, body = get(api, "/api/dependencies")
        assert status == 503 and "store unavailable" in json.loads(body)["error"]
        status, _, _ = get(api, "/healthz")  # the server itself goes on
        assert status == 200
    finally:
        api.stop()


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "::", "example.com"])
def test_only_loopback(host: str, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="loopback"):
        QueryAPI(lambda: None, host, 0)  # type: ignore[arg-type,return-value]


def test_an_unexpected_failure_is_answered_500_not_a_closed_connection(tmp_path: Path) -> None:
    """A defect inside a query (here a cursor that cannot be made, standing in for any
    unforeseen exception) still gets an answer, and the server goes on."""

    def broken() -> Any:
        raise RuntimeError("no cursor")

    api = QueryAPI(broken, "127.0.0.1", 0)
    api.start()
    try:
        status, ctype, body = get(api, "/api/flows")
        assert (status, ctype) == (500, "application/json")
        assert json.loads(body) == {"error": "internal error: RuntimeError"}
        assert get(api, "/healthz")[0] == 200
    finally:
        api.stop()
