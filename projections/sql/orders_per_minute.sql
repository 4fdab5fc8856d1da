-- Order flow per minute and channel in [since, until): orders received, accepted, rejected and
-- cancelled (from the per-minute aggregate, so it stays fast on a long log).
-- Parameters: since, until.
SELECT
    minute,
    channel,
    sumIf(events, event_type = 'OrderReceived') AS received,
    sumIf(events, event_type = 'OrderAccepted') AS accepted,
    sumIf(events, event_type = 'OrderRejected') AS rejected,
    sumIf(events, event_type IN ('OrderCancelled', 'ReviewRejected')) AS cancelled
FROM order_activity_per_minute
WHERE minute >= {since:DateTime} AND minute < {until:DateTime}
GROUP BY minute, channel
ORDER BY minute, channel
