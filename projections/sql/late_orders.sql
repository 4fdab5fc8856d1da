-- Late orders: orders with a promised time that were fulfilled after it (picked up for pickup
-- and dine-in, delivered otherwise), or are still open at `as_of` past it. Cancelled and
-- rejected orders are left out. `location` = '' means every location.
-- Parameters: as_of, location, limit.
SELECT
    order_id,
    channel,
    location,
    mode,
    status,
    promised_at,
    fulfilled_at,
    intDiv(toInt64(ifNull(fulfilled_at, {as_of:DateTime})) - toInt64(promised_at), 60)
        AS minutes_late
FROM (
    SELECT
        order_id, channel, location, mode, status, promised_at,
        if(mode IN ('pickup', 'dine_in'), handed_over_at, delivered_at) AS fulfilled_at
    FROM orders FINAL
    WHERE promised_at IS NOT NULL AND cancelled = 0 AND status != 'rejected'
        AND ({location:String} = '' OR location = {location:String})
)
WHERE ifNull(fulfilled_at, {as_of:DateTime}) > promised_at
ORDER BY minutes_late DESC, order_id
LIMIT {limit:UInt32}
