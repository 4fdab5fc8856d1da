-- The fulfilment funnel: orders placed in [since, until) by their current status.
-- Parameters: since, until.
SELECT status, count() AS orders
FROM orders FINAL
WHERE placed_at >= {since:DateTime} AND placed_at < {until:DateTime}
GROUP BY status
ORDER BY orders DESC, status
