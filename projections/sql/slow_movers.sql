-- Slow movers: sku@locations that hold stock, fewest units committed (sold) in
-- [since, until) first; last_sold_at is empty when the item never sold.
-- Parameters: since, until, limit.
SELECT
    sku,
    location,
    current_on_hand AS on_hand,
    current_available AS available,
    units_sold,
    if(ever_sold = 0, NULL, last_sold) AS last_sold_at
FROM (
    SELECT
        sku,
        location,
        argMax(on_hand, sequence) AS current_on_hand,
        argMax(available, sequence) AS current_available,
        sumIf(quantity, event_type = 'StockCommitted'
              AND occurred_at >= {since:DateTime} AND occurred_at < {until:DateTime}) AS units_sold,
        countIf(event_type = 'StockCommitted' AND occurred_at < {until:DateTime}) AS ever_sold,
        maxIf(occurred_at, event_type = 'StockCommitted' AND occurred_at < {until:DateTime})
            AS last_sold
    FROM stock
    WHERE occurred_at < {until:DateTime}
    GROUP BY sku, location
)
WHERE current_on_hand > 0
ORDER BY units_sold, current_on_hand DESC, sku, location
LIMIT {limit:UInt32}
