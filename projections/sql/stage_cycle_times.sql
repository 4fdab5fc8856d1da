-- Fulfilment cycle time per stage: how long orders stayed in each stage they have left, for
-- stages entered in [since, until); p50 and p90 are exact quantiles, in seconds.
-- Parameters: since, until.
SELECT
    stage,
    count() AS orders,
    quantileExact(0.5)(seconds) AS p50_seconds,
    quantileExact(0.9)(seconds) AS p90_seconds,
    intDiv(sum(seconds), count()) AS average_seconds,
    max(seconds) AS max_seconds
FROM fulfilment_stages FINAL
WHERE left_at IS NOT NULL AND entered_at >= {since:DateTime} AND entered_at < {until:DateTime}
GROUP BY stage
ORDER BY indexOf(['received', 'accepted', 'held', 'routed', 'partially_reserved',
                  'reservation_failed', 'reserved', 'prioritised', 'accepted_by_store',
                  'preparing', 'ready', 'picked_up', 'shipped', 'delivered', 'return_requested',
                  'returned'], stage), stage
