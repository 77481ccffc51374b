"""The extra-column rule against the parts that must hold what it lets through.

For every type and special name the fuzz draws from: if `check_extra_columns` accepts it,
the engine can take and filter it, batches with and without it concatenate, and the
DuckDB store, the Parquet lake and the Parquet sink write it. So the rule is not merely a
list: it is checked against the real parts here, type by type.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from flowtrail.collector.sink import ParquetSink
from flowtrail.errors import ContractError
from flowtrail.incoming import ExtraColumnError, check_extra_columns
from flowtrail.schema import ATTRIBUTED, FLOWS
from flowtrail.sim.simulation import simulate
from flowtrail.store import Store
from flowtrail.store.lake import Lake
from tests.unit.batch_strategies import NAMES, TYPES, contract_only, values


@pytest.fixture(scope="module")
def attributed() -> pa.Table:
    f = contract_only(simulate("churny", 2, flows=200).flows).slice(0, 6)
    n = f.num_rows
    f = f.append_column(ATTRIBUTED.column("remote_workload").field, pa.nulls(n, pa.string()))
    f = f.append_column(ATTRIBUTED.column("remote_source").field, pa.array(["unattributed"] * n))
    return f.append_column(ATTRIBUTED.column("attributed_ns").field, pa.array([1] * n, pa.int64()))


def holds(table: pa.Table, tmp: Path) -> None:
    """Raises if any part cannot hold `table` (an attributed batch)."""
    table.take(pa.array([1, 0]))
    table.filter(pa.array([True, False] * (table.num_rows // 2)))
    plain = table.select([c for c in table.column_names if c in ATTRIBUTED.names])
    pa.concat_tables([table, plain], promote_options="permissive")
    with Store(tmp / "s.duckdb", retention_ns=None) as store:
        store.write(table)
    Lake(tmp / "lake").write(table)
    ParquetSink(tmp / "pq").write(table)


@pytest.mark.parametrize("dtype", TYPES, ids=str)
def test_every_type_the_rule_accepts_is_held(
    attributed: pa.Table, dtype: pa.DataType, tmp_path: Path
) -> None:
    col = values(dtype, attributed.num_rows, nulls=True)
    table = attributed.append_column(pa.field("x", col.type), col)
    try:
        check_extra_columns(table, ATTRIBUTED)  # the attribution columns are known there
    except ExtraColumnError:
        return
    holds(table, tmp_path)


@pytest.mark.parametrize("name", NAMES, ids=repr)
def test_every_name_the_rule_accepts_is_held(
    attributed: pa.Table, name: str, tmp_path: Path
) -> None:
    if name in attributed.column_names:
        return
    table = attributed.append_column(name, pa.array(["v"] * attributed.num_rows))
    try:
        check_extra_columns(table, ATTRIBUTED)  # the attribution columns are known there
    except ExtraColumnError:
        return
    holds(table, tmp_path)


def test_refusals_name_the_column(attributed: pa.Table) -> None:
    flows = attributed.select([c for c in attributed.column_names if c in FLOWS.names])
    table = flows.append_column("Exporter", pa.array(["v"] * flows.num_rows))
    with pytest.raises(ContractError, match=r"column 'Exporter'.*reserved by the store"):
        check_extra_columns(table, FLOWS, path="batch 7")
