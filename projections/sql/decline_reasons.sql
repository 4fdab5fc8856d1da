-- Why stores declined orders (`oms store decline`, and NOT_ACCEPTED when a store's acceptance
-- policy escalated an order nobody accepted in time), per store, recorded in [since, until).
-- Parameters: since, until.
SELECT
    visitParamExtractString(payload, 'location') AS location,
    visitParamExtractString(payload, 'reason_code') AS reason_code,
    count() AS declines
FROM order_events FINAL
WHERE event_type = 'OrderDeclinedByStore'
    AND recorded_at >= {since:DateTime} AND recorded_at < {until:DateTime}
GROUP BY location, reason_code
ORDER BY location, declines DESC, reason_code
