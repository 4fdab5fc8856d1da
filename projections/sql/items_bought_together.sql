-- Items bought together: pairs of SKUs found in the same order, by the number of orders that
-- hold both, for sales placed in [since, until). Parameters: since, until, limit.
SELECT sku_a, sku_b, count() AS orders
FROM (
    SELECT sku_a, arrayJoin(skus) AS sku_b
    FROM (
        SELECT skus, arrayJoin(skus) AS sku_a
        FROM (
            SELECT order_id, groupUniqArray(sku) AS skus
            FROM order_lines FINAL
            WHERE is_sale = 1 AND quantity > 0
                AND placed_at >= {since:DateTime} AND placed_at < {until:DateTime}
            GROUP BY order_id
        )
    )
)
WHERE sku_a < sku_b
GROUP BY sku_a, sku_b
ORDER BY orders DESC, sku_a, sku_b
LIMIT {limit:UInt32}
