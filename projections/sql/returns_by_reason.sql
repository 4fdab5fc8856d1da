-- Why customers send goods back: per reason, the returns requested in [since, until) that name
-- it, and the units and SKUs returned for it. A line's own `reason` counts where it has one,
-- else the return's top-level `reason` (one return may so count under two reasons); a return
-- later denied is left out. Parameters: since, until.
--
-- The lines are read as `return_rate_by_sku` reads them (no JSONExtract on ClickHouse 18.16).
-- The top-level `reason` follows `lines` in the payload and visitParam* take the first match
-- at any depth, so it is read from the rest of the payload after the lines array.
SELECT
    reason,
    uniqExact(return_id) AS returns,
    sum(quantity) AS units,
    uniqExact(sku) AS skus
FROM
(
    SELECT
        return_id,
        visitParamExtractString(line, 'sku') AS sku,
        visitParamExtractInt(line, 'quantity') AS quantity,
        if(visitParamExtractString(line, 'reason') = '', return_reason,
            visitParamExtractString(line, 'reason')) AS reason
    FROM
    (
        SELECT
            visitParamExtractString(payload, 'return_id') AS return_id,
            visitParamExtractRaw(payload, 'lines') AS lines,
            visitParamExtractString(
                substring(payload, position(payload, '"lines":') + 8 + length(lines)), 'reason'
            ) AS return_reason,
            arrayJoin(extractAll(lines, '\\{[^{}]*\\}')) AS line
        FROM order_events FINAL
        WHERE event_type = 'ReturnRequested'
            AND occurred_at >= {since:DateTime} AND occurred_at < {until:DateTime}
    )
    WHERE return_id NOT IN (
        SELECT visitParamExtractString(payload, 'return_id')
        FROM order_events FINAL
        WHERE event_type = 'ReturnDenied'
    )
)
GROUP BY reason
ORDER BY units DESC, reason
