-- Low-stock alerts raised in [since, until), newest first, with the available-to-promise the
-- ledger held then and the suggested reorder quantity. Parameters: since, until, limit.
SELECT
    sku,
    location,
    occurred_at AS alerted_at,
    available,
    quantity AS reorder_quantity
FROM stock
WHERE event_type = 'LowStockAlerted'
    AND occurred_at >= {since:DateTime} AND occurred_at < {until:DateTime}
ORDER BY alerted_at DESC, sku, location
LIMIT {limit:UInt32}
