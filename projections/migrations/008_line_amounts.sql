-- What each line costs as its channel states it (contract v4/v5: OrderLine.gross, else
-- quantity × unit price), so that order_lines.revenue is the channel's amount and never a
-- rounded unit price times the quantity. Rows stored before are read as quantity × price.
ALTER TABLE {database}.orders ADD COLUMN line_amounts Array(Int64);
