-- A store's pending amendments: changes its channel sent after the store accepted an order
-- (`OrderAmendmentRequested`) that the store has not answered yet, for the kitchen screen to
-- show beside the ticket with accept and refuse buttons. `payload` holds the revision as the
-- channel sent it (its lines; personal data masked, as everywhere in the read models).
-- Parameters: location, limit.
SELECT
    order_id,
    argMax(event_type, sequence) AS last_event,
    argMax(payload, sequence) AS requested
FROM order_events FINAL
WHERE event_type IN ('OrderAmendmentRequested', 'OrderAmendmentAccepted', 'OrderAmendmentRefused')
    AND order_id IN (
        SELECT order_id FROM orders FINAL
        WHERE location = {location:String} AND status IN ('accepted_by_store', 'preparing')
    )
GROUP BY order_id
HAVING last_event = 'OrderAmendmentRequested'
ORDER BY order_id
LIMIT {limit:UInt32}
