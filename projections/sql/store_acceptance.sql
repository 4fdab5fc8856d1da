-- Per store, for orders that reached it in [since, until): how many reached its queue
-- (prioritised there), how many it accepted, how many it declined (or let time run out on),
-- the acceptance rate, and of its orders with a promise that were fulfilled or are past it at
-- `as_of`, how many were late (picked up for pickup and dine-in, delivered otherwise) and the
-- late rate. Rates are fractions to 4 decimals. Parameters: since, until, as_of.
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
    )
    ANY LEFT JOIN
    (
        SELECT visitParamExtractString(payload, 'location') AS location, count() AS declined
        FROM order_events FINAL
        WHERE event_type = 'OrderDeclinedByStore'
            AND recorded_at >= {since:DateTime} AND recorded_at < {until:DateTime}
        GROUP BY location
    ) USING location
)
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
) USING location
ORDER BY location
