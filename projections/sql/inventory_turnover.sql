-- Inventory turnover per sku@location over [since, until): units committed (shipped or handed
-- over) divided by the average of the on-hand level at the start and at the end of the period.
-- Parameters: since, until, limit.
SELECT
    sku,
    location,
    units_sold,
    opening_on_hand,
    closing_on_hand,
    (opening_on_hand + closing_on_hand) / 2 AS average_on_hand,
    if(opening_on_hand + closing_on_hand > 0,
       round(units_sold / ((opening_on_hand + closing_on_hand) / 2), 2), 0) AS turnover
FROM (
    SELECT
        sku,
        location,
        sumIf(quantity, event_type = 'StockCommitted'
              AND occurred_at >= {since:DateTime} AND occurred_at < {until:DateTime}) AS units_sold,
        argMaxIf(on_hand, sequence, occurred_at < {since:DateTime}) AS opening_on_hand,
        argMaxIf(on_hand, sequence, occurred_at < {until:DateTime}) AS closing_on_hand
    FROM stock
    GROUP BY sku, location
    HAVING countIf(occurred_at < {until:DateTime}) > 0
)
ORDER BY turnover DESC, sku, location
LIMIT {limit:UInt32}
