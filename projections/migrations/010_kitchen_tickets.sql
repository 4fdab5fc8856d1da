-- What a kitchen ticket shows beyond the lines (docs/read-models.md, "Kitchen tickets"): each
-- line's options ("少辣, 加蛋"), a dine-in order's table and covers (contract v4-v7), when the
-- store said it will be ready (OrderAcceptedByStore.estimated_ready_at), and the lines as they
-- were before the order's last revision ("2× 红烧牛肉面 (少辣)"), so an amended ticket can show
-- what changed. Rows stored before read as no options, no table, and never amended.
ALTER TABLE {database}.orders ADD COLUMN line_options Array(String);
ALTER TABLE {database}.orders ADD COLUMN table_name String;
ALTER TABLE {database}.orders ADD COLUMN covers UInt32;
ALTER TABLE {database}.orders ADD COLUMN ready_by Nullable(DateTime);
ALTER TABLE {database}.orders ADD COLUMN amended_from Array(String);
