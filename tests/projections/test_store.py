"""The same SQL and rows through both backends: ClickHouse server (18.16 in CI) and chDB."""

from __future__ import annotations

from datetime import datetime

import pytest

from projections.orders import empty_row
from projections.schema import ORDERS_COLUMNS, migrate
from projections.store import ClickHouseStore, StoreError, connect, sql_string

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
