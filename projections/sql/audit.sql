-- The audit trail: who did what, when and from where, newest first (the `audit_log` table, filled
-- from the audit topic by `oms audit project`). Filters: `principal` ("key:k_1", "user:ana"),
-- `action` as a prefix ("POST /orders" matches every order command), `outcome` ("allowed",
-- "denied", "completed", "failed", "unreadable"); '' means any. `status` 0: no HTTP status.
-- Whether the chain is intact is `oms audit verify`'s to say, from the topic itself.
-- Parameters: since, until, principal, action, outcome, limit.
SELECT
    at,
    principal,
    principal_kind,
    role,
    action,
    resource,
    outcome,
    status,
    client_ip,
    request_id,
    _partition AS partition,
    seq
FROM audit_log
WHERE at >= {since:DateTime} AND at <= {until:DateTime}
    AND ({principal:String} = '' OR principal = {principal:String})
    AND ({action:String} = ''
        OR substring(action, 1, length({action:String})) = {action:String})
    AND ({outcome:String} = '' OR outcome = {outcome:String})
ORDER BY at DESC, _partition, seq DESC
LIMIT {limit:UInt32}
