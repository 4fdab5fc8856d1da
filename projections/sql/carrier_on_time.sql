-- On-time delivery per carrier, for the shipments created in [since, until) (ShipmentCreated;
-- one shipment per `shipment_id`, however many orders it carried): how many were delivered
-- before `until` (an OrderDelivered of one of its orders after its ShipmentCreated, by
-- sequence; the earliest counts), how many of those on time (delivered at or before the
-- carrier's `promised_by`) or late, the on-time rate (on time / delivered with a promise, a
-- fraction to 4 decimals), and how many are still on the way (neither delivered nor cancelled
-- after it).
-- A shipment without a promise counts as delivered, neither on time nor late.
-- Parameters: since, until.
--
-- `promised_by` is an ISO 8601 string in the payload, read with parseDateTimeBestEffort (UTC
-- unless it names its offset); the first `promised_by` of the payload is the shipment's own
-- (the unbought alternatives carry theirs after it).
SELECT
    carrier,
    count() AS shipments,
    countIf(is_delivered = 1) AS delivered,
    countIf(is_delivered = 1 AND is_promised = 1 AND delivered_at <= promised_by) AS on_time,
    countIf(is_delivered = 1 AND is_promised = 1 AND delivered_at > promised_by) AS late,
    if(on_time + late = 0, 0, round(on_time / (on_time + late), 4)) AS on_time_rate,
    countIf(is_delivered = 0 AND is_cancelled = 0) AS on_the_way
FROM
(
    -- One row per shipment event and later event of its order (ALL LEFT JOIN: none, one row).
    SELECT
        shipment_id,
        any(carrier) AS carrier,
        max(promise != '') AS is_promised,
        minIf(parseDateTimeBestEffortOrZero(promise, 'UTC'), promise != '') AS promised_by,
        max(closed_by = 'OrderDelivered' AND closed_seq > sequence) AS is_delivered,
        minIf(closed_at, closed_by = 'OrderDelivered' AND closed_seq > sequence) AS delivered_at,
        max(closed_by = 'OrderCancelled' AND closed_seq > sequence) AS is_cancelled
    FROM
    (
        SELECT
            order_id,
            sequence,
            visitParamExtractString(payload, 'shipment_id') AS shipment_id,
            visitParamExtractString(payload, 'carrier') AS carrier,
            visitParamExtractString(payload, 'promised_by') AS promise
        FROM order_events FINAL
        WHERE event_type = 'ShipmentCreated'
            AND occurred_at >= {since:DateTime} AND occurred_at < {until:DateTime}
    ) AS shipped
    ALL LEFT JOIN
    (
        SELECT order_id, event_type AS closed_by, sequence AS closed_seq, occurred_at AS closed_at
        FROM order_events FINAL
        WHERE event_type IN ('OrderDelivered', 'OrderCancelled')
            AND occurred_at < {until:DateTime}
    ) AS closed USING order_id
    GROUP BY shipment_id
)
GROUP BY carrier
ORDER BY carrier
