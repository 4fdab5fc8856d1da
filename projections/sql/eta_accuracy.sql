-- How far the stores' ready estimates were from the truth, per store and over all stores ('*'):
-- for orders placed in [since, until) that were marked ready and had an estimate
-- (OrderAcceptedByStore.estimated_ready_at: the learned prep-time estimate, or the store's
-- own), the error is ready − estimated, in minutes; p50 / p90 of its absolute value (exact
-- quantiles), its mean (positive: later than estimated), and the same for the fixed default
-- the estimate replaced (placement + 45 minutes for delivery, 20 pickup, 15 dine-in, 48 hours
-- shipped). Parameters: since, until.
SELECT
    store AS location,
    count() AS orders,
    round(quantileExact(0.5)(abs(error_s)) / 60, 1) AS p50_abs_error_min,
    round(quantileExact(0.9)(abs(error_s)) / 60, 1) AS p90_abs_error_min,
    round(avg(error_s) / 60, 1) AS mean_error_min,
    round(quantileExact(0.5)(abs(default_error_s)) / 60, 1) AS default_p50_abs_error_min,
    round(quantileExact(0.9)(abs(default_error_s)) / 60, 1) AS default_p90_abs_error_min
FROM
(
    SELECT
        arrayJoin([location, '*']) AS store,
        toInt64(ready_at) - toInt64(assumeNotNull(ready_by)) AS error_s,
        toInt64(ready_at) - (toInt64(placed_at) + multiIf(mode = 'delivery', 2700,
            mode = 'pickup', 1200, mode = 'dine_in', 900, 172800)) AS default_error_s
    FROM
    (
        SELECT order_id, location, mode, placed_at, ready_by
        FROM orders FINAL
        WHERE ready_by IS NOT NULL AND location != ''
            AND placed_at >= {since:DateTime} AND placed_at < {until:DateTime}
    ) AS estimated
    ANY INNER JOIN
    (
        SELECT order_id, min(entered_at) AS ready_at
        FROM fulfilment_stages FINAL
        WHERE stage = 'ready' AND entered_at >= {since:DateTime}
        GROUP BY order_id
    ) AS readied USING order_id
)
GROUP BY store
ORDER BY store = '*', store
