"""Hypothesis strategies for hostile and careless flows batches: random extra columns (names
and Arrow types, nested and exotic ones too), contract columns of the wrong type, missing
columns, and bytes that are not Arrow at all. Shared by the collector's and a node's fuzz.
"""

from __future__ import annotations

import decimal

import numpy as np
import pyarrow as pa
from hypothesis import strategies as st

from flowtrail.schema import ATTRIBUTED, FLOWS

_TEXT = pa.string()
TYPES: list[pa.DataType] = [
    pa.null(), pa.bool_(), pa.int8(), pa.uint8(), pa.int32(), pa.uint64(), pa.int64(),
    pa.float16(), pa.float32(), pa.float64(), pa.decimal128(9, 2), pa.decimal256(40, 2),
    pa.string(), pa.large_string(), pa.string_view(), pa.binary(), pa.large_binary(),
    pa.binary(3), pa.date32(), pa.date64(), pa.timestamp("ns"), pa.timestamp("us", "UTC"),
    pa.timestamp("s", "Mars/Olympus"), pa.time32("s"), pa.time64("ns"), pa.duration("ms"),
    pa.month_day_nano_interval(), pa.list_(pa.int64()), pa.large_list(_TEXT),
    pa.list_(pa.int64(), 2), pa.struct([("a", pa.int64())]), pa.map_(_TEXT, pa.int64()),
    pa.dictionary(pa.int32(), _TEXT), pa.dictionary(pa.int8(), pa.float16()),
    pa.dictionary(pa.uint64(), pa.int64()), pa.uuid(), pa.json_(),
    pa.sparse_union([pa.field("a", pa.int64())]), pa.dense_union([pa.field("a", _TEXT)]),
]  # fmt: skip
NAMES = [
    "", " ", "extra", "EXTRA", "row_key", "Row_Key", "rowid", "rack", "a.b", 'a"b', "a'b",
    "é", "a\x00b", "a\nb", "x" * 300, "remote_workload", "REMOTE_SOURCE", "attributed_ns",
    "Exporter", "FLOW_ID", "received_ns", "_flowtrail_owned", "_flowtrail_batch",
    "__flowtrail_row", "sim_note",
]  # fmt: skip


def values(dtype: pa.DataType, n: int, nulls: bool) -> pa.Array:
    """n values of `dtype` (every other one null when `nulls`)."""
    if pa.types.is_dictionary(dtype):
        return pa.DictionaryArray.from_arrays(
            pa.array([0] * n, dtype.index_type), values(dtype.value_type, 1, False)
        )
    if isinstance(dtype, pa.BaseExtensionType):
        return pa.ExtensionArray.from_storage(dtype, values(dtype.storage_type, n, nulls))
    if pa.types.is_union(dtype):
        child = values(dtype.field(0).type, n, False)
        codes, names = pa.array([0] * n, pa.int8()), [dtype.field(0).name]
        if dtype.mode == "dense":
            offsets = pa.array(range(n), pa.int32())
            return pa.UnionArray.from_dense(codes, offsets, [child], field_names=names)
        return pa.UnionArray.from_sparse(codes, [child], field_names=names)
    one = _one(dtype)
    items = [None if nulls and i % 2 else one for i in range(n)]
    if dtype == pa.float16():
        return pa.array(np.array([np.nan if v is None else 1.5 for v in items], np.float16))
    return pa.array(items, dtype)


def _one(dtype: pa.DataType) -> object:
    if pa.types.is_null(dtype):
        return None
    if pa.types.is_boolean(dtype):
        return True
    if pa.types.is_integer(dtype) or pa.types.is_temporal(dtype):
        if pa.types.is_interval(dtype):
            return pa.MonthDayNano([1, 2, 3])
        return pa.scalar(
            7, pa.int32() if pa.types.is_date32(dtype) or dtype == pa.time32("s") else pa.int64()
        ).cast(dtype)
    if pa.types.is_floating(dtype):
        return float("nan")
    if pa.types.is_decimal(dtype):
        return decimal.Decimal("1.25")
    if pa.types.is_fixed_size_binary(dtype):
        return b"\x01" * dtype.byte_width
    if pa.types.is_binary(dtype) or pa.types.is_large_binary(dtype):
        return b"\x00\xff"
    if pa.types.is_string(dtype) or pa.types.is_large_string(dtype):
        return "v"
    if pa.types.is_string_view(dtype):
        return "v"
    if pa.types.is_fixed_size_list(dtype):
        return [1, 2]
    if pa.types.is_list(dtype) or pa.types.is_large_list(dtype):
        return [_one(dtype.value_type)]
    if pa.types.is_struct(dtype):
        return {"a": 1}
    if pa.types.is_map(dtype):
        return [("k", 1)]
    raise AssertionError(f"no value for {dtype}")


@st.composite
def hostile(draw: st.DrawFn, base: pa.Table) -> pa.Table | bytes:
    """`base` (valid rows) spoiled at random, or bytes that are not Arrow."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=64))
    table = base
    for _ in range(draw(st.integers(1, 3))):
        what = draw(st.integers(0, 5))
        if what <= 3:  # an extra column
            name = draw(st.sampled_from(NAMES) | st.text(max_size=12))
            dtype = draw(st.sampled_from(TYPES))
            if name in table.column_names:
                continue
            col = values(dtype, table.num_rows, draw(st.booleans()))
            table = table.append_column(pa.field(name, col.type), col)
        elif what == 4:  # a contract column of another type
            col = draw(st.sampled_from([c for c in FLOWS.columns if c.name in table.column_names]))
            dtype = draw(st.sampled_from(TYPES))
            idx = table.column_names.index(col.name)
            new = values(dtype, table.num_rows, False)
            table = table.set_column(idx, pa.field(col.name, new.type), new)
        else:  # a column missing
            table = table.drop_columns([draw(st.sampled_from(table.column_names))])
    return table


def contract_only(table: pa.Table) -> pa.Table:
    """The contract's columns of a flows table (the simulator adds its own)."""
    keep = set(FLOWS.names) | set(ATTRIBUTED.names)
    return table.select([c for c in table.column_names if c in keep])
