-- Order events recorded per minute in [since, until), and how many of them rejected an order:
-- the read models' side of the dashboard's Operations section (from the per-minute aggregate,
-- so it stays fast on a long log). Parameters: since, until.
SELECT
    minute,
    sum(events) AS order_events,
    sumIf(events, event_type = 'OrderRejected') AS rejected
FROM order_activity_per_minute
WHERE minute >= {since:DateTime} AND minute < {until:DateTime}
GROUP BY minute
ORDER BY minute
