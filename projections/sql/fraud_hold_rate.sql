-- Fraud hold rate per channel: of the orders that passed validation (screened) and were placed
-- in [since, until), how many fraud screening held, and what the reviewers decided.
-- Parameters: since, until.
SELECT
    channel,
    count() AS screened,
    countIf(held = 1) AS held_orders,
    round(100 * countIf(held = 1) / count(), 1) AS hold_rate_pct,
    countIf(review_outcome = 'approved') AS approved,
    countIf(review_outcome = 'rejected') AS rejected,
    countIf(status = 'held') AS waiting
FROM orders FINAL
WHERE accepted_at IS NOT NULL
    AND placed_at >= {since:DateTime} AND placed_at < {until:DateTime}
GROUP BY channel
ORDER BY channel
