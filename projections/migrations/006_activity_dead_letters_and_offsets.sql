-- order_activity_per_minute: order events per minute, channel and type, pre-aggregated per batch
-- by the projector (no materialized view: a view follows its source table by name, which a
-- rebuild's swap would break). Sum `events` and `amount`; never count rows.
CREATE TABLE IF NOT EXISTS {database}.order_activity_per_minute (
    minute DateTime,
    channel String,
    event_type String,
    currency String,
    events UInt64,
    amount Int64,
    _topic String,
    _partition UInt16,
    _offset UInt64
) ENGINE = MergeTree()
ORDER BY (minute, channel, event_type);

-- Messages the projector could not decode; each also went to the dead-letter topic, once.
CREATE TABLE IF NOT EXISTS {database}.dead_letters (
    dead_letter_id String,
    reason String,
    size UInt32,
    _topic String,
    _partition UInt16,
    _offset UInt64
) ENGINE = MergeTree()
ORDER BY (_topic, _partition, _offset);

-- The projector's offset ledger: the last offset of each partition whose batch is fully
-- written. It is written last in every batch; the projector resumes one past its maximum.
CREATE TABLE IF NOT EXISTS {database}.projector_offsets (
    _topic String,
    _partition UInt16,
    _offset UInt64,
    events UInt32,
    projected_at DateTime
) ENGINE = ReplacingMergeTree(_offset)
ORDER BY (_topic, _partition);
