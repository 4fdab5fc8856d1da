-- Repeat customers: of the customers (phone, else the channel's customer id) with a sale placed
-- in [since, until), how many bought more than once, and their share of the orders.
-- Parameters: since, until.
SELECT
    count() AS customers,
    countIf(order_count >= 2) AS repeat_customers,
    round(100 * countIf(order_count >= 2) / greatest(count(), 1), 1) AS repeat_rate_pct,
    sum(order_count) AS orders,
    sumIf(order_count, order_count >= 2) AS orders_by_repeat_customers
FROM (
    SELECT customer_key, count() AS order_count
    FROM orders FINAL
    WHERE is_sale = 1 AND customer_key != ''
        AND placed_at >= {since:DateTime} AND placed_at < {until:DateTime}
    GROUP BY customer_key
)
