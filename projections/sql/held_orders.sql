-- The orders waiting in the manual review queue, longest waiting first. Parameters: limit.
SELECT order_id, external_id, channel, risk_score, held_at, total, currency, customer_key
FROM orders FINAL
WHERE status = 'held'
ORDER BY held_at, order_id
LIMIT {limit:UInt32}
