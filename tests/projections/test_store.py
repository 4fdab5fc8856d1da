"""The same SQL and rows through both backends: ClickHouse server (18.16 in CI) and chDB."""

from __future__ import annotations

import struct
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import pytest

from projections.orders import empty_row
from projections.schema import ORDERS_COLUMNS, migrate
from projections.store import (
    ClickHouseStore,
    Row,
    StoreError,
    connect,
    sql_string,
    with_database_url,
)

pytestmark = pytest.mark.integration


def test_select_one_answers(any_store: ClickHouseStore) -> None:
    assert any_store.query("SELECT 1") == [(1,)]


def test_rows_round_trip_with_quotes_unicode_arrays_and_times(any_store: ClickHouseStore) -> None:
    migrate(any_store)
    row = empty_row("", datetime(2026, 11, 25)) | {
        "order_id": "o'1\\x",
        "customer_name": '王伟 "Wei"',
        "total": -5,
        "line_count": 2,
        "item_count": 3,
        "rejection_codes": ["A", "B'"],
        "line_prices": [-1, 2**40],
        "promised_at": datetime(2026, 11, 25, 5, 0, 1),
        "placed_at": datetime(2026, 11, 25, 4, 30, 15),
        "updated_at": datetime(2026, 11, 25, 5),
        "version": 2,
        "_partition": 1,
        "_offset": 2**40,
    }
    any_store.insert("orders", ORDERS_COLUMNS, [tuple(row[c] for c in ORDERS_COLUMNS)])
    (got,) = any_store.query(
        f"SELECT {', '.join(ORDERS_COLUMNS)} FROM {any_store.database}.orders "
        f"WHERE order_id = {sql_string(row['order_id'])}"
    )
    assert dict(zip(ORDERS_COLUMNS, got, strict=True)) == row


def test_replacing_merge_tree_final_keeps_the_highest_version(any_store: ClickHouseStore) -> None:
    migrate(any_store)
    base = empty_row("o-1", datetime(2026, 1, 1))
    for version, status in ((1, "received"), (2, "accepted"), (2, "accepted")):
        any_store.insert(
            "orders",
            ORDERS_COLUMNS,
            [tuple((base | {"version": version, "status": status})[c] for c in ORDERS_COLUMNS)],
        )
    assert any_store.query(
        f"SELECT status, count() FROM {any_store.database}.orders FINAL GROUP BY status"
    ) == [("accepted", 1)]


def test_query_with_columns_names_them_and_times_come_back_naive_utc(
    any_store: ClickHouseStore,
) -> None:
    columns, rows = any_store.query_with_columns(
        "SELECT toStartOfMinute(toDateTime('2026-11-25 04:30:15')) AS minute, 1 / 4 AS quarter"
    )
    assert columns == ["minute", "quarter"]
    assert rows == [(datetime(2026, 11, 25, 4, 30), 0.25)]


def test_with_database_reaches_another_database_of_the_same_clickhouse(
    any_store: ClickHouseStore,
) -> None:
    other = any_store.with_database(any_store.database + "_other")
    other.execute(f"CREATE DATABASE IF NOT EXISTS {other.database}")
    try:
        assert any_store.query(
            f"SELECT count() FROM system.databases WHERE name = {sql_string(other.database)}"
        ) == [(1,)]
    finally:
        other.execute(f"DROP DATABASE IF EXISTS {other.database}")
        other.close()


def test_a_bad_statement_raises_store_error_with_the_reason(any_store: ClickHouseStore) -> None:
    with pytest.raises(StoreError, match="no_such_table"):
        any_store.query(f"SELECT * FROM {any_store.database}.no_such_table")


def test_unknown_url_scheme_is_refused() -> None:
    with pytest.raises(StoreError, match="unsupported ClickHouse URL"):
        connect("postgres://localhost/oms")


# --- insert_rowbinary: rows already in ClickHouse's RowBinary format ---------------------------

# Every column type the projector's tables use (projections/migrations/*.sql).
RB_COLUMNS = [
    ("s", "String"),
    ("u8", "UInt8"),
    ("u16", "UInt16"),
    ("u32", "UInt32"),
    ("u64", "UInt64"),
    ("i32", "Int32"),
    ("i64", "Int64"),
    ("at", "DateTime"),
    ("maybe_at", "Nullable(DateTime)"),
    ("maybe_u32", "Nullable(UInt32)"),
    ("strings", "Array(String)"),
    ("i32s", "Array(Int32)"),
    ("i64s", "Array(Int64)"),
]
RB_ROWS = [
    (
        "",
        0,
        0,
        0,
        0,
        -(2**31),
        -(2**63),
        datetime(1970, 1, 1, 0, 0, 1),
        None,
        None,
        [],
        [],
        [],
    ),
    (
        '王伟 "Wei" o\'1\\x\n\t',
        2**8 - 1,
        2**16 - 1,
        2**32 - 1,
        2**64 - 1,
        2**31 - 1,
        2**63 - 1,
        datetime(2026, 11, 25, 4, 30, 15),
        datetime(2106, 2, 7, 6, 28, 15),  # the last second a DateTime holds (2**32 - 1)
        2**32 - 1,
        ["", "ü", "x" * 200],
        [-(2**31), 0, 2**31 - 1],
        [-(2**63), 2**40, 2**63 - 1],
    ),
]
_FIXED = {"UInt8": "<B", "UInt16": "<H", "UInt32": "<I", "UInt64": "<Q", "Int32": "<i",
          "Int64": "<q"}  # fmt: skip


def _leb128(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _encode(value: object, ch_type: str) -> bytes:
    """One value in RowBinary (test data only; the projector's encoder is native code)."""
    if ch_type.startswith("Nullable("):
        return b"\x01" if value is None else b"\x00" + _encode(value, ch_type[9:-1])
    if ch_type.startswith("Array("):
        assert isinstance(value, list)
        return _leb128(len(value)) + b"".join(_encode(v, ch_type[6:-1]) for v in value)
    if ch_type == "String":
        assert isinstance(value, str)
        raw = value.encode()
        return _leb128(len(raw)) + raw
    if ch_type == "DateTime":
        assert isinstance(value, datetime)
        return struct.pack("<I", int((value - datetime(1970, 1, 1)).total_seconds()))
    return struct.pack(_FIXED[ch_type], value)


def rowbinary(columns: Sequence[tuple[str, str]], rows: Sequence[Sequence[object]]) -> bytes:
    return b"".join(
        _encode(value, ch_type)
        for row in rows
        for (_, ch_type), value in zip(columns, row, strict=True)
    )


def test_rowbinary_encoder_matches_the_format() -> None:
    # Pinned bytes, so that a mistake in the encoder cannot hide one in the store.
    assert _leb128(0) == b"\x00" and _leb128(127) == b"\x7f" and _leb128(300) == b"\xac\x02"
    assert _encode("ü", "String") == b"\x02\xc3\xbc"
    assert _encode(None, "Nullable(UInt32)") == b"\x01"
    assert _encode(5, "Nullable(UInt32)") == b"\x00\x05\x00\x00\x00"
    assert _encode([1, -1], "Array(Int32)") == b"\x02\x01\x00\x00\x00\xff\xff\xff\xff"
    assert _encode(datetime(1970, 1, 1, 0, 1), "DateTime") == b"\x3c\x00\x00\x00"


def _rowbinary_table(store: ClickHouseStore, name: str = "rb") -> str:
    store.execute(f"CREATE DATABASE IF NOT EXISTS {store.database}")
    columns = ", ".join(f"{column} {ch_type}" for column, ch_type in RB_COLUMNS)
    store.execute(
        f"CREATE TABLE {store.database}.{name} ({columns}) ENGINE = MergeTree() ORDER BY s"
    )
    return name


def _all_rows(store: ClickHouseStore, table: str, order_by: str = "u64") -> list[Row]:
    names = ", ".join(column for column, _ in RB_COLUMNS)
    return store.query(f"SELECT {names} FROM {store.database}.{table} ORDER BY {order_by}")


def test_rowbinary_rows_of_every_column_type_round_trip(any_store: ClickHouseStore) -> None:
    table = _rowbinary_table(any_store)
    # Given in another order than the table's: the bytes follow `columns`, not the table.
    columns = list(reversed(RB_COLUMNS))
    data = rowbinary(columns, [tuple(reversed(row)) for row in RB_ROWS])
    any_store.insert_rowbinary(table, [name for name, _ in columns], data)
    assert _all_rows(any_store, table) == RB_ROWS


def test_empty_rowbinary_is_not_sent(any_store: ClickHouseStore) -> None:
    table = _rowbinary_table(any_store)
    # Not even to a table that does not exist: nothing reaches ClickHouse.
    any_store.insert_rowbinary("no_such_table", ["s"], b"")
    any_store.insert_rowbinary(table, [name for name, _ in RB_COLUMNS], b"")
    assert _all_rows(any_store, table) == []


def test_truncated_rowbinary_raises_store_error_and_writes_nothing(
    any_store: ClickHouseStore,
) -> None:
    table = _rowbinary_table(any_store, "rb_truncated")
    data = rowbinary(RB_COLUMNS, RB_ROWS)
    with pytest.raises(
        StoreError, match=r"(?s)Cannot read all data.* -- in: INSERT INTO \S+\.rb_truncated"
    ):
        any_store.insert_rowbinary(table, [name for name, _ in RB_COLUMNS], data[:-3])
    assert _all_rows(any_store, table) == []


def test_rowbinary_into_a_missing_table_names_it(any_store: ClickHouseStore) -> None:
    any_store.execute(f"CREATE DATABASE IF NOT EXISTS {any_store.database}")
    with pytest.raises(StoreError, match="no_such_table"):
        any_store.insert_rowbinary("no_such_table", ["s"], _encode("x", "String"))


@pytest.mark.parametrize("any_store", ["chdb"], indirect=True)
def test_embedded_rowbinary_leaves_no_file_behind(
    any_store: ClickHouseStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = _rowbinary_table(any_store)
    names = [name for name, _ in RB_COLUMNS]
    data = rowbinary(RB_COLUMNS, RB_ROWS)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    any_store.insert_rowbinary(table, names, data)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(StoreError):
        any_store.insert_rowbinary(table, names, data[:-1])
    assert list(tmp_path.iterdir()) == []
    assert len(_all_rows(any_store, table)) == 2


@pytest.mark.parametrize("any_store", ["server"], indirect=True)
def test_server_keeps_inserting_after_a_rejected_body(any_store: ClickHouseStore) -> None:
    table = _rowbinary_table(any_store)
    names = [name for name, _ in RB_COLUMNS]
    with pytest.raises(StoreError):
        any_store.insert_rowbinary(table, names, rowbinary(RB_COLUMNS, RB_ROWS)[:-1])
    any_store.insert_rowbinary(table, names, rowbinary(RB_COLUMNS, RB_ROWS))
    assert _all_rows(any_store, table) == RB_ROWS


@pytest.mark.parametrize("any_store", ["server"], indirect=True)
def test_server_reconnects_when_it_closed_the_idle_connection(any_store: ClickHouseStore) -> None:
    table = _rowbinary_table(any_store)
    names = [name for name, _ in RB_COLUMNS]
    any_store.insert_rowbinary(table, names, rowbinary(RB_COLUMNS, RB_ROWS[:1]))
    time.sleep(3.5)  # the server drops a keep-alive connection idle for 3 s (18.16's default)
    any_store.insert_rowbinary(table, names, rowbinary(RB_COLUMNS, RB_ROWS[1:]))
    assert _all_rows(any_store, table) == RB_ROWS


@pytest.mark.parametrize("any_store", ["server"], indirect=True)
def test_server_inserts_from_two_threads_all_land(any_store: ClickHouseStore) -> None:
    table = _rowbinary_table(any_store)
    names = [name for name, _ in RB_COLUMNS]
    start = threading.Barrier(2)

    def write(thread: int) -> None:
        start.wait()
        for batch in range(20):
            rows = [(f"t{thread}-{batch}-{n}", *RB_ROWS[1][1:]) for n in range(50)]
            any_store.insert_rowbinary(table, names, rowbinary(RB_COLUMNS, rows))

    with ThreadPoolExecutor(2) as pool:
        for done in [pool.submit(write, thread) for thread in (1, 2)]:
            done.result()
    assert any_store.query(
        f"SELECT substring(s, 1, 2) AS thread, count(), uniqExact(s) "
        f"FROM {any_store.database}.{table} GROUP BY thread ORDER BY thread"
    ) == [("t1", 1000, 1000), ("t2", 1000, 1000)]


@pytest.mark.parametrize("any_store", ["server"], indirect=True)
def test_server_http_port_comes_from_the_url_and_stays_with_the_database(
    any_store: ClickHouseStore,
) -> None:
    table = _rowbinary_table(any_store)
    closed = f"clickhouse://127.0.0.1:9000/{any_store.database}?http_port=1"
    data = _encode("x", "String")
    for store in (connect(closed), connect(closed).with_database(any_store.database)):
        with pytest.raises(StoreError, match=r"127\.0\.0\.1:1\b"):
            store.insert_rowbinary(table, ["s"], data)
        store.close()
    assert _all_rows(any_store, table) == []


def test_with_database_url_keeps_the_rest_of_the_url() -> None:
    assert (
        with_database_url("clickhouse://127.0.0.1:9000/oms?http_port=18123", "oms_x")
        == "clickhouse://127.0.0.1:9000/oms_x?http_port=18123"
    )
    assert with_database_url("clickhouse://h:9000/oms", "b") == "clickhouse://h:9000/b"
    assert with_database_url("chdb:///tmp/p?database=a", "b") == "chdb:///tmp/p?database=b"
    assert with_database_url("chdb:///tmp/p", "b") == "chdb:///tmp/p?database=b"
    with pytest.raises(StoreError, match="unsupported ClickHouse URL"):
        with_database_url("postgres://localhost/oms", "b")


@pytest.mark.parametrize("any_store", ["server"], indirect=True)
def test_server_settles_once_no_insert_into_the_database_is_running(
    any_store: ClickHouseStore,
) -> None:
    """An INSERT whose sender is gone may still be running on the server (here: one whose body
    has not all arrived; the server lists an INSERT once it has parsed its query, which takes
    the body's first 256 KiB); `settle` waits for it, so what the tables hold is final after."""
    import http.client
    from urllib.parse import quote

    from projections.store import ServerStore, StoreUnavailable

    assert isinstance(any_store, ServerStore)
    table = _rowbinary_table(any_store)
    names = [name for name, _ in RB_COLUMNS]
    rows = RB_ROWS * 10_000
    data = rowbinary(RB_COLUMNS, rows)
    assert len(data) > 2 * 256 * 1024
    host, _ = any_store._address
    sql = f"INSERT INTO {any_store.database}.{table} ({', '.join(names)}) FORMAT RowBinary"
    slow = http.client.HTTPConnection(host, any_store._http_port, timeout=30)
    slow.putrequest("POST", "/?query=" + quote(sql, safe=""))
    slow.putheader("Transfer-Encoding", "chunked")
    slow.endheaders()
    half = len(data) // 2
    slow.send(b"%x\r\n%s\r\n" % (half, data[:half]))
    try:
        # The server lists the INSERT only once it has read and parsed the query; on a busy
        # machine that can come after this line, so wait to see it listed first.
        insert = f"INSERT INTO {any_store.database}.{table}"
        listed = f"SELECT count() FROM system.processes WHERE position(query, '{insert}') = 1"
        deadline = time.monotonic() + 20
        while any_store.query(listed) == [(0,)]:
            assert time.monotonic() < deadline, "the server never listed the slow INSERT"
            time.sleep(0.05)
        with pytest.raises(StoreUnavailable, match="still running"):
            any_store.settle(timeout_s=1)
        slow.send(b"%x\r\n%s\r\n0\r\n\r\n" % (len(data) - half, data[half:]))
        assert slow.getresponse().status == 200
        any_store.settle(timeout_s=10)
        assert any_store.query(f"SELECT count() FROM {any_store.database}.{table}") == [
            (len(rows),)
        ]
    finally:
        slow.close()
