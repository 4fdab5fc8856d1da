-- Sales by product: orders, units and revenue per SKU, for sales placed in [since, until).
-- A sale is a line of an accepted order that was neither rejected nor cancelled (is_sale = 1).
-- Money is in minor units of `currency` (fen, cents). Parameters: since, until, limit.
SELECT
    sku,
    argMax(product_name, placed_at) AS product_name,
    currency,
    uniqExact(order_id) AS orders,
    sum(quantity) AS units,
    sum(revenue) AS revenue
FROM order_lines FINAL
WHERE is_sale = 1 AND placed_at >= {since:DateTime} AND placed_at < {until:DateTime}
GROUP BY sku, currency
ORDER BY revenue DESC, sku, currency
LIMIT {limit:UInt32}
