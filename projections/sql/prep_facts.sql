-- What the prep-time learner reads (streams/eta.py, `oms eta learn`): one row per order a store
-- accepted in [since, until) and marked ready, with when it was accepted, ready and handed on
-- (delivered for delivery, picked up or served otherwise; before `ready_at` when it was not
-- yet), and its lines' SKUs. Parameters: since, until.
SELECT
    order_id,
    store,
    order_mode AS mode,
    line_skus,
    accepted_at,
    ready_at,
    if(order_mode = 'delivery', delivered_at, picked_up_at) AS fulfilled_at
FROM
(
    SELECT
        order_id,
        argMaxIf(location, entered_at, stage = 'ready') AS store,
        any(mode) AS order_mode,
        maxIf(entered_at, stage = 'accepted_by_store') AS accepted_at,
        minIf(entered_at, stage = 'ready') AS ready_at,
        maxIf(entered_at, stage = 'picked_up') AS picked_up_at,
        maxIf(entered_at, stage = 'delivered') AS delivered_at
    FROM fulfilment_stages FINAL
    WHERE entered_at >= {since:DateTime}
        AND stage IN ('accepted_by_store', 'ready', 'picked_up', 'delivered')
    GROUP BY order_id
    HAVING countIf(stage = 'accepted_by_store') > 0 AND countIf(stage = 'ready') > 0
        AND accepted_at >= {since:DateTime} AND accepted_at < {until:DateTime}
        AND store != ''
) AS stages
ANY INNER JOIN
(
    SELECT order_id, line_skus
    FROM orders FINAL
    WHERE placed_at >= {since:DateTime} - 86400
) AS lines USING order_id
ORDER BY accepted_at, order_id
