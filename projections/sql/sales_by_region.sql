-- Sales by region: orders, units and revenue, for sales placed in [since, until).
-- A sale is a line of an accepted order that was neither rejected nor cancelled (is_sale = 1).
-- Money is in minor units of `currency`. Parameters: since, until, limit.
SELECT
    region,
    currency,
    uniqExact(order_id) AS orders,
    sum(quantity) AS units,
    sum(revenue) AS revenue
FROM order_lines FINAL
WHERE is_sale = 1 AND placed_at >= {since:DateTime} AND placed_at < {until:DateTime}
GROUP BY region, currency
ORDER BY revenue DESC, region, currency
LIMIT {limit:UInt32}
