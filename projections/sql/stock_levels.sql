-- Current stock per sku@location, lowest available-to-promise first
-- (available = on_hand - reserved - safety_stock). Parameters: limit.
SELECT sku, location, on_hand, reserved, safety_stock, available, updated_at
FROM stock_levels FINAL
ORDER BY available, sku, location
LIMIT {limit:UInt32}
