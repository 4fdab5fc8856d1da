-- Sales by hour of the day (0-23) in time zone `tz` (e.g. Asia/Shanghai), for sales placed in
-- [since, until). Money is in minor units of `currency`. Parameters: since, until, tz.
SELECT
    toHour(placed_at, {tz:String}) AS hour,
    currency,
    uniqExact(order_id) AS orders,
    sum(quantity) AS units,
    sum(revenue) AS revenue
FROM order_lines FINAL
WHERE is_sale = 1 AND placed_at >= {since:DateTime} AND placed_at < {until:DateTime}
GROUP BY hour, currency
ORDER BY hour, currency
