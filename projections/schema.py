"""DDL of the read models. Runs on ClickHouse 18.16 and on current ClickHouse (chDB)."""

from __future__ import annotations

from projections.store import ClickHouseStore

ORDER_EVENTS_COLUMNS = (
    "event_id",
    "event_type",
    "order_id",
    "sequence",
    "occurred_at",
    "recorded_at",
    "channel",
    "actor",
    "payload",
    "_topic",
    "_partition",
    "_offset",
)

ORDERS_COLUMNS = (
    "order_id",
    "channel",
    "external_id",
    "mode",
    "status",
    "currency",
    "total",
    "line_count",
    "item_count",
    "customer_name",
    "customer_phone",
    "address",
    "rejection_codes",
    "rejection_message",
    "placed_at",
    "updated_at",
    "version",
    "_topic",
    "_partition",
    "_offset",
)


def ddl(database: str) -> list[str]:
    return [
        f"CREATE DATABASE IF NOT EXISTS {database}",
        # Every event once: the projector's offset ledger. ReplacingMergeTree on event_id makes a
        # replayed or re-sent event collapse into one row (query with FINAL for exact counts).
        f"""CREATE TABLE IF NOT EXISTS {database}.order_events (
            event_id String,
            event_type String,
            order_id String,
            sequence UInt32,
            occurred_at DateTime,
            recorded_at DateTime,
            channel String,
            actor String,
            payload String,
            _topic String,
            _partition UInt16,
            _offset UInt64
        ) ENGINE = ReplacingMergeTree()
        ORDER BY (order_id, event_id)""",
        # Current state per order: the row with the highest version (event sequence) wins.
        f"""CREATE TABLE IF NOT EXISTS {database}.orders (
            order_id String,
            channel String,
            external_id String,
            mode String,
            status String,
            currency String,
            total Int64,
            line_count UInt32,
            item_count UInt32,
            customer_name String,
            customer_phone String,
            address String,
            rejection_codes Array(String),
            rejection_message String,
            placed_at DateTime,
            updated_at DateTime,
            version UInt32,
            _topic String,
            _partition UInt16,
            _offset UInt64
        ) ENGINE = ReplacingMergeTree(version)
        ORDER BY order_id""",
    ]


def migrate(store: ClickHouseStore) -> None:
    for statement in ddl(store.database):
        store.execute(statement)
