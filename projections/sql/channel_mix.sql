-- Channel mix: each channel's share of orders and of revenue (order totals) within its
-- currency, for sales placed in [since, until). Parameters: since, until.
SELECT
    channel,
    currency,
    orders,
    revenue,
    round(100 * orders / all_orders, 1) AS order_share_pct,
    round(100 * revenue / all_revenue, 1) AS revenue_share_pct,
    intDiv(revenue, orders) AS average_order_value
FROM (
    SELECT channel, currency, count() AS orders, sum(total) AS revenue
    FROM orders FINAL
    WHERE is_sale = 1 AND placed_at >= {since:DateTime} AND placed_at < {until:DateTime}
    GROUP BY channel, currency
) AS by_channel
ALL INNER JOIN (
    SELECT currency, count() AS all_orders, sum(total) AS all_revenue
    FROM orders FINAL
    WHERE is_sale = 1 AND placed_at >= {since:DateTime} AND placed_at < {until:DateTime}
    GROUP BY currency
) AS by_currency USING currency
ORDER BY currency, revenue DESC, channel
