-- What each line's quantity counts and its exact measure (contract v5/v6: OrderLine.unit and
-- quantity_millionths): 1.5 lb of coffee is unit 'lb', 1500000 millionths, and `quantity` 2
-- (the measure rounded up to whole units). Rows stored before read as 'each' and quantity × 10⁶.
ALTER TABLE {database}.orders ADD COLUMN line_units Array(String);
ALTER TABLE {database}.orders ADD COLUMN line_millionths Array(Int64);
ALTER TABLE {database}.order_lines ADD COLUMN unit String DEFAULT 'each';
ALTER TABLE {database}.order_lines ADD COLUMN quantity_millionths Int64 DEFAULT toInt64(quantity) * 1000000;
