-- What routing, priority, fraud review and fulfilment add to an order's current state, and the
-- order's lines (so that the projector's fold can resume from this table alone).
-- One column per statement: the migration runner skips a column that already exists, because
-- ClickHouse 18.16 has no ADD COLUMN IF NOT EXISTS.
ALTER TABLE {database}.orders ADD COLUMN customer_key String;
ALTER TABLE {database}.orders ADD COLUMN city String;
ALTER TABLE {database}.orders ADD COLUMN region String;
ALTER TABLE {database}.orders ADD COLUMN location String;
ALTER TABLE {database}.orders ADD COLUMN priority_score Int32;
ALTER TABLE {database}.orders ADD COLUMN promised_at Nullable(DateTime);
ALTER TABLE {database}.orders ADD COLUMN accepted_at Nullable(DateTime);
ALTER TABLE {database}.orders ADD COLUMN risk_score Int32;
ALTER TABLE {database}.orders ADD COLUMN held UInt8;
ALTER TABLE {database}.orders ADD COLUMN held_at Nullable(DateTime);
ALTER TABLE {database}.orders ADD COLUMN review_outcome String;
ALTER TABLE {database}.orders ADD COLUMN reviewed_at Nullable(DateTime);
ALTER TABLE {database}.orders ADD COLUMN cancelled UInt8;
ALTER TABLE {database}.orders ADD COLUMN cancelled_by String;
ALTER TABLE {database}.orders ADD COLUMN cancel_reason String;
ALTER TABLE {database}.orders ADD COLUMN handed_over_at Nullable(DateTime);
ALTER TABLE {database}.orders ADD COLUMN delivered_at Nullable(DateTime);
ALTER TABLE {database}.orders ADD COLUMN refunded Int64;
ALTER TABLE {database}.orders ADD COLUMN is_sale UInt8;
ALTER TABLE {database}.orders ADD COLUMN stage String;
ALTER TABLE {database}.orders ADD COLUMN stage_entered_at DateTime;
ALTER TABLE {database}.orders ADD COLUMN stage_seq UInt32;
ALTER TABLE {database}.orders ADD COLUMN line_skus Array(String);
ALTER TABLE {database}.orders ADD COLUMN line_names Array(String);
ALTER TABLE {database}.orders ADD COLUMN line_quantities Array(Int32);
ALTER TABLE {database}.orders ADD COLUMN line_prices Array(Int64);
ALTER TABLE {database}.orders ADD COLUMN line_locations Array(String);
