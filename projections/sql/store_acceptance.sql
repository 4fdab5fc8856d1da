-- Per store: how many orders reached its queue (prioritised there) in [since, until), how
-- many it accepted, how many it declined (or let time run out on: NOT_ACCEPTED), the
-- acceptance rate; and of the orders placed in the window that it fulfils with a promised
-- time, how many were late (picked up after the promise for pickup and dine-in, delivered
-- after it otherwise, or still open past it at `as_of`) and the late rate. Rates are fractions
-- to 4 decimals. Parameters: since, until, as_of.
SELECT
    location,
    reached,
    accepted,
    declined,
    if(reached = 0, 0, round(accepted / reached, 4)) AS acceptance_rate,
    promised,
    late,
    if(promised = 0, 0, round(late / promised, 4)) AS late_rate
FROM
(
    SELECT location, reached, accepted, declined
    FROM
    (
        SELECT
            location,
            uniqExactIf(order_id, stage = 'prioritised') AS reached,
            uniqExactIf(order_id, stage = 'accepted_by_store') AS accepted
        FROM fulfilment_stages FINAL
        WHERE entered_at >= {since:DateTime} AND entered_at < {until:DateTime}
            AND location != ''
        GROUP BY location
    ) AS reaching
    ANY LEFT JOIN
    (
        SELECT visitParamExtractString(payload, 'location') AS location, count() AS declined
        FROM order_events FINAL
        WHERE event_type = 'OrderDeclinedByStore'
            AND recorded_at >= {since:DateTime} AND recorded_at < {until:DateTime}
        GROUP BY location
    ) AS declining USING location
) AS stores
ANY LEFT JOIN
(
    SELECT
        location,
        count() AS promised,
        countIf(ifNull(fulfilled_at, {as_of:DateTime}) > promised_at) AS late
    FROM
    (
        SELECT
            location,
            promised_at,
            if(mode IN ('pickup', 'dine_in'), handed_over_at, delivered_at) AS fulfilled_at
        FROM orders FINAL
        WHERE promised_at IS NOT NULL AND cancelled = 0 AND status != 'rejected'
            AND placed_at >= {since:DateTime} AND placed_at < {until:DateTime}
    )
    GROUP BY location
) AS lateness USING location
ORDER BY location
