-- audit_log: the audit trail (infra/audit.py), one row per entry of the audit topic, written by
-- the audit projection (projections/audit.py). Plain MergeTree: a row is written once, and
-- each batch is one INSERT, so the table's highest offset per partition is where the
-- projection resumes (it is its own offset ledger). `status` 0: no HTTP status; `outcome`
-- 'unreadable': bytes on the topic that are not an entry (`reason` says why).
CREATE TABLE IF NOT EXISTS {database}.audit_log (
    at DateTime,
    principal String,
    principal_kind String,
    role String,
    action String,
    resource String,
    outcome String,
    status UInt16,
    reason String,
    client_ip String,
    user_agent String,
    request_id String,
    writer String,
    seq UInt64,
    prev_hash String,
    hash String,
    _topic String,
    _partition UInt16,
    _offset UInt64
) ENGINE = MergeTree()
ORDER BY (at, _topic, _partition, _offset);
