-- Orders at risk of missing a promise now (`OrderAtRisk`, the order process's own alerts):
-- NOT_ACCEPTED (its store has not accepted it and half its acceptance window is gone) or LATE
-- (not ready within 5 minutes of when it is due), for orders still waiting for or being made by
-- their store; the newest alert of each, the one due first on top. `due_at` is UTC.
-- Parameters: location ('' for every store), limit.
SELECT
    order_id,
    argMax(visitParamExtractString(payload, 'location'), sequence) AS location,
    argMax(visitParamExtractString(payload, 'risk'), sequence) AS risk,
    argMax(visitParamExtractString(payload, 'due_at'), sequence) AS due_at,
    argMax(visitParamExtractString(payload, 'reason'), sequence) AS reason,
    max(recorded_at) AS alerted_at,
    any(channel) AS channel
FROM order_events FINAL
WHERE event_type = 'OrderAtRisk'
    AND order_id IN (
        SELECT order_id FROM orders FINAL
        WHERE status IN ('prioritised', 'accepted_by_store', 'preparing')
    )
GROUP BY order_id
HAVING {location:String} = '' OR location = {location:String}
ORDER BY due_at, order_id
LIMIT {limit:UInt32}
