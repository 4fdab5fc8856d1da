-- Top customers: those with at least `min_orders` sales placed in [since, until), most orders
-- first. Parameters: since, until, min_orders, limit.
SELECT
    customer_key,
    count() AS orders,
    uniqExact(channel) AS channels,
    min(placed_at) AS first_order_at,
    max(placed_at) AS last_order_at
FROM orders FINAL
WHERE is_sale = 1 AND customer_key != ''
    AND placed_at >= {since:DateTime} AND placed_at < {until:DateTime}
GROUP BY customer_key
HAVING orders >= {min_orders:UInt32}
ORDER BY orders DESC, customer_key
LIMIT {limit:UInt32}
