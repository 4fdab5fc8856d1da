-- The stock ledger: one row per ledger event with the levels after it (append only, exact
-- without FINAL), and the current levels per sku@location (ReplacingMergeTree on sequence).
CREATE TABLE IF NOT EXISTS {database}.stock (
    sku String,
    location String,
    sequence UInt32,
    event_id String,
    event_type String,
    occurred_at DateTime,
    quantity Int64,
    on_hand_change Int64,
    reserved_change Int64,
    on_hand Int64,
    reserved Int64,
    safety_stock Int64,
    available Int64,
    order_id String,
    reason String,
    _topic String,
    _partition UInt16,
    _offset UInt64
) ENGINE = MergeTree()
ORDER BY (sku, location, sequence);

CREATE TABLE IF NOT EXISTS {database}.stock_levels (
    sku String,
    location String,
    on_hand Int64,
    reserved Int64,
    safety_stock Int64,
    available Int64,
    sequence UInt32,
    last_event_type String,
    updated_at DateTime,
    _topic String,
    _partition UInt16,
    _offset UInt64
) ENGINE = ReplacingMergeTree(sequence)
ORDER BY (sku, location);
