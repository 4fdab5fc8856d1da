-- Average order value per currency: order totals (lines + fees - discount, what the customer
-- paid) of sales placed in [since, until), in minor units, rounded down.
-- Parameters: since, until.
SELECT
    currency,
    count() AS orders,
    sum(total) AS revenue,
    intDiv(sum(total), count()) AS average_order_value
FROM orders FINAL
WHERE is_sale = 1 AND placed_at >= {since:DateTime} AND placed_at < {until:DateTime}
GROUP BY currency
ORDER BY currency
