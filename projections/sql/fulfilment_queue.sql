-- A location's fulfilment queue: orders prioritised at `location` that are not yet picked up,
-- shipped or cancelled; highest priority score first, then the earliest promised time.
-- Parameters: location, limit.
SELECT
    order_id,
    external_id,
    channel,
    mode,
    status,
    priority_score,
    promised_at,
    placed_at,
    item_count,
    total,
    currency
FROM orders FINAL
WHERE location = {location:String}
    AND status IN ('prioritised', 'accepted_by_store', 'preparing', 'ready')
ORDER BY priority_score DESC, promised_at, placed_at, order_id
LIMIT {limit:UInt32}
