-- Sales by product: orders, units and revenue per SKU, for sales placed in [since, until).
-- A sale is a line of an accepted order that was neither rejected nor cancelled (is_sale = 1).
-- Money is in minor units of `currency` (fen, cents). `units` counts whole units (a measure
-- rounded up); `quantity_millionths` is exact, in millionths of `unit` (each, kg, lb, l, ...):
-- 3.75 kg of tea sold is 3750000. Parameters: since, until, limit.
SELECT
    sku,
    argMax(product_name, placed_at) AS product_name,
    currency,
    uniqExact(order_id) AS orders,
    sum(quantity) AS units,
    sum(revenue) AS revenue,
    unit,
    sum(quantity_millionths) AS quantity_millionths
FROM order_lines FINAL
WHERE is_sale = 1 AND placed_at >= {since:DateTime} AND placed_at < {until:DateTime}
GROUP BY sku, unit, currency
ORDER BY revenue DESC, sku, unit, currency
LIMIT {limit:UInt32}
