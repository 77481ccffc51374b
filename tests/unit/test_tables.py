"""Contract I/O: strict validation that names file, row and column; atomic writes."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flowtrail.errors import ContractError
from flowtrail.schema import EVENTS, FLOWS, REGIONS, TRUTH
from flowtrail.tables import read_table, write_table


def flow_rows(n: int = 3) -> list[dict[str, object]]:
    return [
        {
            "flow_id": f"f{i}",
            "exporter": "h1",
            "local_ip": "10.0.0.1",
            "local_port": 40000 + i,
            "remote_ip": "10.0.0.2",
            "remote_port": 80,
            "direction": "outbound",
            "start_ns": 1_000 + i,
            "end_ns": 2_000 + i,
            "state": "closed",
            "bytes_sent": 10,
            "bytes_received": 20,
            "team": f"t{i}",
        }
        for i in range(n)
    ]


def write_csv(path: Path, rows: list[dict[str, object]]) -> None:
    cols = list(rows[0])
    lines = [",".join(cols)] + [
        ",".join("" if r.get(c) is None else str(r[c]) for c in cols) for r in rows
    ]
    path.write_text("\n".join(lines) + "\n")


def test_reads_all_three_formats_and_keeps_extra_columns(tmp_path: Path) -> None:
    rows = flow_rows()
    write_csv(tmp_path / "f.csv", rows)
    (tmp_path / "f.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "f.parquet")
    for name in ("f.csv", "f.jsonl", "f.parquet"):
        t = read_table(tmp_path / name, FLOWS)
        assert t.schema.field("local_port").type == pa.int32()
        assert t.schema.field("start_ns").type == pa.int64()
        assert t.column("team").to_pylist() == ["t0", "t1", "t2"], name


@pytest.mark.parametrize(
    ("change", "row", "column", "words"),
    [
        ({"remote_ip": "10.0.0.999"}, 2, "remote_ip", "not an IP address"),
        ({"remote_ip": "2001:DB8::1"}, 2, "remote_ip", "canonical"),
        ({"remote_ip": "::ffff:10.0.0.1"}, 2, "remote_ip", "IPv4-mapped"),
        ({"local_port": 70000}, 2, "local_port", "0..65535"),
        ({"remote_port": -1}, 3, "remote_port", "0..65535"),
        ({"end_ns": -1}, 3, "end_ns", "negative"),
        ({"direction": "sideways"}, 2, "direction", "'outbound' or 'inbound'"),
        ({"state": "open"}, 2, "state", "'closed' or 'active'"),
        ({"start_ns": "soon"}, 2, "start_ns", "integer"),
        ({"bytes_sent": -5}, 2, "bytes_sent", "negative"),
        ({"exporter": None}, 2, "exporter", "missing"),
        ({"established_ns": 999}, 1, "established_ns", "999 is before start_ns 1000"),
        ({"outcome": "fine"}, 1, "outcome", "'reset'"),
    ],
)
def test_bad_values_name_file_row_and_column(
    tmp_path: Path, change: dict[str, object], row: int, column: str, words: str
) -> None:
    rows = flow_rows()
    rows[row - 1].update(change)
    path = tmp_path / "flows.csv"
    write_csv(path, rows)
    with pytest.raises(ContractError) as err:
        read_table(path, FLOWS)
    msg = str(err.value)
    assert str(path) in msg and f"row {row}" in msg and repr(column) in msg, msg
    assert words in msg, msg


def test_missing_required_column_is_named(tmp_path: Path) -> None:
    rows = [{k: v for k, v in r.items() if k != "remote_port"} for r in flow_rows()]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "f.parquet")
    with pytest.raises(ContractError, match=r"missing required column\(s\) \['remote_port'\]"):
        read_table(tmp_path / "f.parquet", FLOWS)


def test_wrong_arrow_type_in_parquet(tmp_path: Path) -> None:
    rows = flow_rows()
    for r in rows:
        r["start_ns"] = float(r["start_ns"])  # type: ignore[arg-type]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "f.parquet")
    with pytest.raises(ContractError, match="column 'start_ns': expected an integer"):
        read_table(tmp_path / "f.parquet", FLOWS)


def test_other_tables_validate_their_own_values(tmp_path: Path) -> None:
    events = tmp_path / "e.csv"
    events.write_text("ip,workload,action,time_ns\n10.0.0.1,a,assign,1\n10.0.0.1,a,grab,2\n")
    with pytest.raises(ContractError, match="row 2, column 'action'"):
        read_table(events, EVENTS)
    regions = tmp_path / "r.csv"
    regions.write_text("cidr,region\n10.0.0.0/8,a\n10.0.0.1/8,b\n")
    with pytest.raises(ContractError, match="row 2, column 'cidr'"):
        read_table(regions, REGIONS)
    truth = tmp_path / "t.jsonl"
    truth.write_text('{"ip": "fd00::1", "workload": "a", "from_ns": 1, "to_ns": null}\n')
    assert read_table(truth, TRUTH).column("to_ns").null_count == 1


def test_garbage_file_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "flows.parquet"
    bad.write_bytes(b"not parquet at all")
    with pytest.raises(ContractError, match="cannot read flows table"):
        read_table(bad, FLOWS)
    with pytest.raises(ContractError, match="no such file"):
        read_table(tmp_path / "nope.parquet", FLOWS)
    with pytest.raises(ContractError, match="unknown file type"):
        read_table(tmp_path / "flows.xlsx", FLOWS) if (
            tmp_path / "flows.xlsx"
        ).touch() is None else None


def test_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "out.parquet"
    write_table(pa.table({"a": [1]}), target)

    def explode(_data: object, where: object, *_a: object, **_k: object) -> None:
        Path(str(where)).write_bytes(b"PAR1 half a file")  # the disk fills mid-write
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", explode)
    with pytest.raises(OSError, match="disk full"):
        write_table(pa.table({"a": [2]}), target)
    assert pq.read_table(target).column("a").to_pylist() == [1]  # old file intact
    assert [p.name for p in tmp_path.iterdir()] == ["out.parquet"]  # no temp left behind


def test_large_string_dictionary_and_narrow_ints_are_accepted() -> None:
    from flowtrail.tables import validate

    t = pa.Table.from_pylist(flow_rows())
    t = t.set_column(
        t.column_names.index("exporter"), "exporter", t.column("exporter").cast(pa.large_string())
    )
    t = t.set_column(t.column_names.index("state"), "state", t.column("state").dictionary_encode())
    t = t.set_column(
        t.column_names.index("start_ns"), "start_ns", t.column("start_ns").cast(pa.int32())
    )
    out = validate(t, FLOWS)
    assert out.schema.field("exporter").type == pa.string()
    assert out.schema.field("state").type == pa.string()
    assert out.schema.field("start_ns").type == pa.int64()
    assert out.column("exporter").to_pylist() == ["h1"] * 3


@pytest.mark.parametrize(
    "change",
    [
        {"remote_ip": "10.0.0.999"},
        {"local_ip": "2001:DB8::1"},
        {"direction": "sideways"},
        {"exporter": None},
    ],
)
def test_dictionary_columns_report_what_text_columns_report(
    tmp_path: Path, change: dict[str, object]
) -> None:
    rows = flow_rows(5)
    rows[3].update(change)
    rows[4].update(change)
    path = tmp_path / "f.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    texts = [c.name for c in FLOWS.columns if c.type == pa.string()]
    with pytest.raises(ContractError) as plain:
        read_table(path, FLOWS)
    with pytest.raises(ContractError) as encoded:
        read_table(path, FLOWS, dictionaries=texts)
    assert str(encoded.value) == str(plain.value)
    assert "row 4" in str(plain.value)


def test_dictionary_columns_stay_encoded_and_are_written_as_text(tmp_path: Path) -> None:
    rows = flow_rows(4)
    table = pa.Table.from_pylist(rows)
    # A dictionary value no row holds is no error (a writer may keep one).
    ips = pa.DictionaryArray.from_arrays(
        pa.array([0, 1, 0, 1], pa.int32()), pa.array(["10.0.0.1", "10.0.0.2", "not an ip"])
    )
    table = table.set_column(table.schema.get_field_index("local_ip"), "local_ip", ips)
    path = tmp_path / "f.parquet"
    pq.write_table(table, path)
    got = read_table(path, FLOWS, dictionaries=("local_ip", "exporter"))
    assert pa.types.is_dictionary(got.schema.field("local_ip").type)
    assert got.column("local_ip").to_pylist() == ["10.0.0.1", "10.0.0.2"] * 2
    write_table(got, tmp_path / "out.parquet")
    back = pq.read_table(tmp_path / "out.parquet")
    assert back.schema.field("local_ip").type == pa.string()
    assert back.equals(read_table(path, FLOWS).cast(back.schema))
