-- Sales by store: orders, units and revenue, for sales placed in [since, until).
-- A sale is a line of an accepted order that was neither rejected nor cancelled (is_sale = 1).
-- Money is in minor units of `currency`. Parameters: since, until, limit.
SELECT
    location AS store,
    currency,
    uniqExact(order_id) AS orders,
    sum(quantity) AS units,
    sum(revenue) AS revenue
FROM order_lines FINAL
WHERE is_sale = 1 AND placed_at >= {since:DateTime} AND placed_at < {until:DateTime}
GROUP BY store, currency
ORDER BY revenue DESC, store, currency
LIMIT {limit:UInt32}
