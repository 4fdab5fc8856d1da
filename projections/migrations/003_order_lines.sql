-- Sales facts: one row per order line, rewritten (higher version) when the order's lines,
-- location or standing change. Query with FINAL; is_sale = 1 marks lines that count as sales
-- (the order was accepted and is neither rejected nor cancelled).
CREATE TABLE IF NOT EXISTS {database}.order_lines (
    order_id String,
    line_no UInt16,
    sku String,
    product_name String,
    quantity Int32,
    unit_price Int64,
    revenue Int64,
    currency String,
    channel String,
    location String,
    region String,
    mode String,
    customer_key String,
    placed_at DateTime,
    is_sale UInt8,
    version UInt32,
    _topic String,
    _partition UInt16,
    _offset UInt64
) ENGINE = ReplacingMergeTree(version)
ORDER BY (order_id, line_no);
