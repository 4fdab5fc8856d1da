-- Low-stock alerts raised in [since, until): one row per sku@location, the newest alert first,
-- with the available-to-promise the ledger held at its newest alert, the suggested reorder
-- quantity, and how often it was raised in the window. The inventory agent re-arms an alert
-- when ATP climbs back over the reorder point, which a released reservation can do: one
-- shortage can be alerted several times within a minute, and is listed once here.
-- Parameters: since, until, limit.
SELECT
    sku,
    location,
    alerted_at,
    available_then AS available,
    reorder_then AS reorder_quantity,
    alerts,
    first_alerted_at
FROM (
    SELECT
        sku,
        location,
        max(occurred_at) AS alerted_at,
        argMax(available, sequence) AS available_then,
        argMax(quantity, sequence) AS reorder_then,
        count() AS alerts,
        min(occurred_at) AS first_alerted_at
    FROM stock
    WHERE event_type = 'LowStockAlerted'
        AND occurred_at >= {since:DateTime} AND occurred_at < {until:DateTime}
    GROUP BY sku, location
)
ORDER BY alerted_at DESC, sku, location
LIMIT {limit:UInt32}
