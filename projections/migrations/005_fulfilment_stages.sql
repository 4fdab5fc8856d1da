-- Time per stage per order. A stage is the order's status (events/lifecycle.py) from the event
-- that entered it to the event that left it. The row is written open (left_at NULL) when the
-- order enters the stage and rewritten closed (higher version) when it leaves; query with FINAL.
CREATE TABLE IF NOT EXISTS {database}.fulfilment_stages (
    order_id String,
    entered_seq UInt32,
    stage String,
    entered_at DateTime,
    left_at Nullable(DateTime),
    seconds Nullable(UInt32),
    next_stage String,
    channel String,
    mode String,
    location String,
    version UInt32,
    _topic String,
    _partition UInt16,
    _offset UInt64
) ENGINE = ReplacingMergeTree(version)
ORDER BY (order_id, entered_seq);
