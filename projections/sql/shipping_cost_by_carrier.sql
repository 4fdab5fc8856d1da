-- Shipping cost per carrier and currency, for the labels bought in [since, until)
-- (ShipmentCreated v2): shipments (distinct `shipment_id`), the orders they carried, the total
-- cost, and the cost per order (rounded down). Money is in minor units of the carrier's
-- `cost_currency` (absent: the order's currency). Each order of a consolidated parcel logs its
-- own ShipmentCreated with the parcel's shipment_id, its share of the cost (split by weight,
-- streams/consolidation.py) and every order of the parcel in `orders`; a split order logs one
-- per location. So the cost is the sum over the events, and the orders are those listed
-- (empty `orders`: the order alone). A shipment without a cost (v1) is left out.
-- Parameters: since, until.
SELECT
    carrier,
    currency,
    uniqExact(shipment_id) AS shipments,
    uniqExactArray(shipped_orders) AS orders,
    sum(cost) AS total_cost,
    intDiv(total_cost, orders) AS cost_per_order
FROM
(
    SELECT
        carrier,
        if(cost_currency = '', order_currency, cost_currency) AS currency,
        shipment_id,
        shipped_orders,
        cost
    FROM
    (
        SELECT
            order_id,
            visitParamExtractString(payload, 'shipment_id') AS shipment_id,
            visitParamExtractString(payload, 'carrier') AS carrier,
            visitParamExtractInt(payload, 'cost') AS cost,
            visitParamExtractString(payload, 'cost_currency') AS cost_currency,
            extractAll(visitParamExtractRaw(payload, 'orders'), '"([^"]*)"') AS listed,
            if(empty(listed), [order_id], listed) AS shipped_orders
        FROM order_events FINAL
        WHERE event_type = 'ShipmentCreated'
            AND occurred_at >= {since:DateTime} AND occurred_at < {until:DateTime}
            AND visitParamExtractRaw(payload, 'cost') NOT IN ('', 'null')
    ) AS shipped
    ANY LEFT JOIN
    (
        SELECT order_id, currency AS order_currency FROM orders FINAL
    ) AS ordered USING order_id
)
GROUP BY carrier, currency
ORDER BY total_cost DESC, carrier, currency
