-- Sales net of refunds per channel and currency: gross sales as `sales_by_channel` counts them
-- (lines of accepted orders, neither rejected nor cancelled, placed in [since, until)), the
-- refunds paid in [since, until) (OrderRefunded `amount`, top level of its payload, in its
-- `currency`; occurred_at in the window, whenever the order was placed), and net = gross −
-- refunds. A refund of an order that never was a sale (cancelled or rejected) is left out:
-- its money never counted as sales. Money is in minor units of `currency`.
-- Parameters: since, until.
SELECT
    channel,
    currency,
    sum(gross) AS gross_sales,
    sum(refund_amount) AS refunds,
    sum(refund_count) AS refunded,
    gross_sales - refunds AS net_sales
FROM
(
    SELECT channel, currency, sum(revenue) AS gross, toInt64(0) AS refund_amount,
        toUInt64(0) AS refund_count
    FROM order_lines FINAL
    WHERE is_sale = 1 AND placed_at >= {since:DateTime} AND placed_at < {until:DateTime}
    GROUP BY channel, currency
    UNION ALL
    SELECT
        channel,
        visitParamExtractString(payload, 'currency') AS currency,
        toInt64(0) AS gross,
        sum(visitParamExtractInt(payload, 'amount')) AS refund_amount,
        count() AS refund_count
    FROM order_events FINAL
    WHERE event_type = 'OrderRefunded'
        AND occurred_at >= {since:DateTime} AND occurred_at < {until:DateTime}
        AND order_id IN (SELECT order_id FROM order_lines FINAL WHERE is_sale = 1)
    GROUP BY channel, currency
)
GROUP BY channel, currency
ORDER BY net_sales DESC, channel, currency
