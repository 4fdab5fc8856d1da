-- How long orders spent at each store in the stages a store works through, per hour of the day
-- they entered the stage in time zone `tz`: waiting to be accepted (prioritised), accepted but
-- not started (accepted_by_store), preparing, waiting for the courier or the customer (ready),
-- and on the way (picked_up, until delivered). Exact p50 / p90 seconds, for stages entered in
-- [since, until) and left. Parameters: since, until, tz.
SELECT
    location,
    toHour(entered_at, {tz:String}) AS hour,
    stage,
    count() AS orders,
    quantileExact(0.5)(seconds) AS p50_seconds,
    quantileExact(0.9)(seconds) AS p90_seconds
FROM fulfilment_stages FINAL
WHERE left_at IS NOT NULL AND entered_at >= {since:DateTime} AND entered_at < {until:DateTime}
    AND location != ''
    AND stage IN ('prioritised', 'accepted_by_store', 'preparing', 'ready', 'picked_up')
GROUP BY location, hour, stage
ORDER BY location, hour,
    indexOf(['prioritised', 'accepted_by_store', 'preparing', 'ready', 'picked_up'], stage)
