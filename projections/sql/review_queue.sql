-- The manual review queue now: orders held by fraud screening and not yet decided, the
-- oldest one's wait at `as_of`, and their risk scores. Parameters: as_of.
SELECT
    count() AS held_orders,
    min(held_at) AS oldest_held_at,
    if(count() = 0, 0,
       intDiv(toInt64({as_of:DateTime}) - toInt64(min(ifNull(held_at, {as_of:DateTime}))), 60))
        AS oldest_wait_minutes,
    round(sum(risk_score) / greatest(count(), 1), 1) AS average_risk_score,
    max(risk_score) AS max_risk_score
FROM orders FINAL
WHERE status = 'held'
