-- Return rate per SKU: units sold (sales placed in [since, until), as `sales_by_product` counts
-- them), units customers asked to return in [since, until) (ReturnRequested `lines`, whatever
-- order they came from; a return later denied is left out), and returned / sold as a fraction
-- to 4 decimals (0 when none sold in the window). A SKU only returned still shows, with
-- units_sold 0. Parameters: since, until, limit.
--
-- The payload's `lines` array is read without JSONExtract (not on ClickHouse 18.16): the raw
-- array, split into its objects (a ReturnLine is flat: sku, quantity, reason), each object read
-- on its own, so a line's sku and quantity cannot be paired with another line's.
SELECT
    sku,
    sum(sold) AS units_sold,
    sum(returned) AS units_returned,
    sum(return_count) AS returns,
    if(units_sold = 0, 0, round(units_returned / units_sold, 4)) AS return_rate
FROM
(
    SELECT sku, sum(quantity) AS sold, toInt64(0) AS returned, toUInt64(0) AS return_count
    FROM order_lines FINAL
    WHERE is_sale = 1 AND placed_at >= {since:DateTime} AND placed_at < {until:DateTime}
    GROUP BY sku
    UNION ALL
    SELECT
        visitParamExtractString(line, 'sku') AS sku,
        toInt64(0) AS sold,
        sum(visitParamExtractInt(line, 'quantity')) AS returned,
        uniqExact(return_id) AS return_count
    FROM
    (
        SELECT
            visitParamExtractString(payload, 'return_id') AS return_id,
            arrayJoin(extractAll(visitParamExtractRaw(payload, 'lines'), '\\{[^{}]*\\}')) AS line
        FROM order_events FINAL
        WHERE event_type = 'ReturnRequested'
            AND occurred_at >= {since:DateTime} AND occurred_at < {until:DateTime}
    )
    WHERE return_id NOT IN (
        SELECT visitParamExtractString(payload, 'return_id')
        FROM order_events FINAL
        WHERE event_type = 'ReturnDenied'
    )
    GROUP BY sku
)
GROUP BY sku
ORDER BY units_returned DESC, return_rate DESC, sku
LIMIT {limit:UInt32}
