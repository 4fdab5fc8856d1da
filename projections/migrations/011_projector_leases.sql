-- Who may write which partition (projections/lease.py). A projector claims each partition Kafka
-- assigned it with an epoch above every earlier claim of that partition; the partition is held
-- by the one holder of its highest epoch. Every write of a leased projector is an INSERT that
-- keeps only the rows of partitions its holder still holds, decided by the server when it runs
-- the INSERT: so a projector that lost its partitions (paused past its Kafka session, cut off)
-- cannot write over its successor, however late it wakes. The claims of the read models'
-- partitions are swapped in with a rebuild's tables (the rebuild's own claims on top), which
-- fences every projector that wrote the tables swapped out.
CREATE TABLE IF NOT EXISTS {database}.projector_leases (
    _topic String,
    _partition UInt16,
    epoch UInt64,
    holder String,
    claimed_at DateTime
) ENGINE = MergeTree()
ORDER BY (_topic, _partition, epoch);

-- The same for the audit projection (projections/audit.py): its own table, which no rebuild
-- swaps.
CREATE TABLE IF NOT EXISTS {database}.audit_leases (
    _topic String,
    _partition UInt16,
    epoch UInt64,
    holder String,
    claimed_at DateTime
) ENGINE = MergeTree()
ORDER BY (_topic, _partition, epoch);

-- A rebuild's notice to the live projectors: a swap is under way from `begun` until it is
-- `ended`, or until `until` passes (the rebuild died); each projector that stepped aside says
-- so (`aside`, its holder). Times are the server's. Never swapped.
CREATE TABLE IF NOT EXISTS {database}.projector_swaps (
    swap_id String,
    state String,
    holder String,
    at DateTime,
    until DateTime
) ENGINE = MergeTree()
ORDER BY (swap_id, at);
