-- The first read models: every event on the order log, and each order's current state.

-- Every event of the order log once. ReplacingMergeTree on event_id collapses an event that
-- appears twice on the log (a re-sent output of a restarted worker); count with FINAL.
CREATE TABLE IF NOT EXISTS {database}.order_events (
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
ORDER BY (order_id, event_id);

-- Current state per order: the row with the highest version (the order's event sequence) wins.
CREATE TABLE IF NOT EXISTS {database}.orders (
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
ORDER BY order_id;
