-- A store's kitchen tickets: its orders from prioritised until they leave (accepted, preparing,
-- ready), the one due first on top: by the store's own ETA, else the promised time, else the
-- priority, then when it was placed. What a ticket shows: the lines with their options (no
-- personal data: the read models hold none), channel, mode, table and covers, the times the
-- timer runs against, and the lines before the last revision when it was amended.
-- Parameters: location, limit.
SELECT
    order_id,
    external_id,
    channel,
    mode,
    status,
    line_names,
    line_quantities,
    line_options,
    line_units,
    line_millionths,
    table_name,
    covers,
    amended_from,
    priority_score,
    promised_at,
    ready_by,
    placed_at,
    stage_entered_at
FROM orders FINAL
WHERE location = {location:String}
    AND status IN ('prioritised', 'accepted_by_store', 'preparing', 'ready')
ORDER BY ifNull(ready_by, promised_at), priority_score DESC, placed_at, order_id
LIMIT {limit:UInt32}
