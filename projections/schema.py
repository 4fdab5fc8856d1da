"""The read models' tables and their versioned DDL.

The DDL lives in numbered files, `projections/migrations/NNN_name.sql`; `migrate` applies the
ones a database has not seen yet and records each in `schema_migrations`. Every statement runs
on ClickHouse 18.16 and on current ClickHouse (chDB): no DateTime64, no JSON functions, no
LowCardinality, no `IF NOT EXISTS` on ALTER (the runner checks `system.columns` instead).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from projections.cluster import ClusterDDL, ClusterDDLError, check_cluster, ensure_distributed
from projections.cluster import is_replicated as _is_replicated
from projections.store import ClickHouseStore, sql_string

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

ORDER_EVENTS_COLUMNS = (
    "event_id",
    "event_type",
    "order_id",
    "sequence",
    "occurred_at",
    "recorded_at",
    "channel",
    "actor",
    "payload",
    "_topic",
    "_partition",
    "_offset",
)

ORDERS_COLUMNS = (
    "order_id",
    "channel",
    "external_id",
    "mode",
    "status",
    "currency",
    "total",
    "line_count",
    "item_count",
    "customer_name",
    "customer_phone",
    "customer_key",
    "address",
    "city",
    "region",
    "location",
    "priority_score",
    "promised_at",
    "accepted_at",
    "risk_score",
    "held",
    "held_at",
    "review_outcome",
    "reviewed_at",
    "cancelled",
    "cancelled_by",
    "cancel_reason",
    "rejection_codes",
    "rejection_message",
    "handed_over_at",
    "delivered_at",
    "refunded",
    "is_sale",
    "stage",
    "stage_entered_at",
    "stage_seq",
    "line_skus",
    "line_names",
    "line_quantities",
    "line_prices",
    "line_locations",
    "line_amounts",
    "line_units",
    "line_millionths",
    "line_options",
    "table_name",
    "covers",
    "ready_by",
    "amended_from",
    "placed_at",
    "updated_at",
    "version",
    "_topic",
    "_partition",
    "_offset",
)

ORDER_LINES_COLUMNS = (
    "order_id",
    "line_no",
    "sku",
    "product_name",
    "quantity",
    "unit_price",
    "revenue",
    "currency",
    "channel",
    "location",
    "region",
    "mode",
    "customer_key",
    "placed_at",
    "is_sale",
    "version",
    "unit",
    "quantity_millionths",
    "_topic",
    "_partition",
    "_offset",
)

FULFILMENT_STAGES_COLUMNS = (
    "order_id",
    "entered_seq",
    "stage",
    "entered_at",
    "left_at",
    "seconds",
    "next_stage",
    "channel",
    "mode",
    "location",
    "version",
    "_topic",
    "_partition",
    "_offset",
)

ORDER_ACTIVITY_COLUMNS = (
    "minute",
    "channel",
    "event_type",
    "currency",
    "events",
    "amount",
    "_topic",
    "_partition",
    "_offset",
)

STOCK_COLUMNS = (
    "sku",
    "location",
    "sequence",
    "event_id",
    "event_type",
    "occurred_at",
    "quantity",
    "on_hand_change",
    "reserved_change",
    "on_hand",
    "reserved",
    "safety_stock",
    "available",
    "order_id",
    "reason",
    "_topic",
    "_partition",
    "_offset",
)

STOCK_LEVELS_COLUMNS = (
    "sku",
    "location",
    "on_hand",
    "reserved",
    "safety_stock",
    "available",
    "sequence",
    "last_event_type",
    "updated_at",
    "_topic",
    "_partition",
    "_offset",
)

DEAD_LETTERS_COLUMNS = ("dead_letter_id", "reason", "size", "_topic", "_partition", "_offset")

PROJECTOR_OFFSETS_COLUMNS = ("_topic", "_partition", "_offset", "events", "projected_at")

# The audit trail's table (migration 007), written by projections/audit.py, not by the
# projector: it is no read model of the order log, and a rebuild leaves it where it is.
AUDIT_LOG = "audit_log"
AUDIT_LOG_COLUMNS = (
    "at",
    "principal",
    "principal_kind",
    "role",
    "action",
    "resource",
    "outcome",
    "status",
    "reason",
    "client_ip",
    "user_agent",
    "request_id",
    "writer",
    "seq",
    "prev_hash",
    "hash",
    "_topic",
    "_partition",
    "_offset",
)


@dataclass(frozen=True)
class ReadModel:
    """A table the projector writes. `content` selects what the table means — FINAL applied,
    per-batch rows summed — so two projections of the same log compare equal however their
    batches fell (`{table}` is replaced by the qualified name)."""

    name: str
    columns: tuple[str, ...]
    content: str


def _final(order_by: str, columns: tuple[str, ...]) -> str:
    return f"SELECT {', '.join(columns)} FROM {{table}} FINAL ORDER BY {order_by}"


# In the order the projector writes them within a batch: a table is written before the state it
# is derived from (`orders` after its derived tables, `stock_levels` after `stock`), and the
# offset ledger last. See projector.py for why this order makes a crash harmless.
READ_MODELS: tuple[ReadModel, ...] = (
    ReadModel(
        "dead_letters",
        DEAD_LETTERS_COLUMNS,
        "SELECT _topic, _partition, _offset, dead_letter_id, reason, size FROM {table} "
        "ORDER BY _topic, _partition, _offset",
    ),
    ReadModel("order_events", ORDER_EVENTS_COLUMNS, _final("event_id", ORDER_EVENTS_COLUMNS)),
    ReadModel("order_lines", ORDER_LINES_COLUMNS, _final("order_id, line_no", ORDER_LINES_COLUMNS)),
    ReadModel(
        "fulfilment_stages",
        FULFILMENT_STAGES_COLUMNS,
        _final("order_id, entered_seq", FULFILMENT_STAGES_COLUMNS),
    ),
    ReadModel(
        "order_activity_per_minute",
        ORDER_ACTIVITY_COLUMNS,
        "SELECT minute, channel, event_type, currency, sum(events), sum(amount) "
        "FROM {table} GROUP BY minute, channel, event_type, currency "
        "ORDER BY minute, channel, event_type, currency",
    ),
    ReadModel("orders", ORDERS_COLUMNS, _final("order_id", ORDERS_COLUMNS)),
    ReadModel(
        "stock",
        STOCK_COLUMNS,
        f"SELECT {', '.join(STOCK_COLUMNS)} FROM {{table}} ORDER BY sku, location, sequence",
    ),
    ReadModel("stock_levels", STOCK_LEVELS_COLUMNS, _final("sku, location", STOCK_LEVELS_COLUMNS)),
    ReadModel(
        "projector_offsets",
        PROJECTOR_OFFSETS_COLUMNS,
        "SELECT _topic, _partition, max(_offset) FROM {table} "
        "GROUP BY _topic, _partition ORDER BY _topic, _partition",
    ),
)

READ_MODEL_NAMES = tuple(model.name for model in READ_MODELS)


class MigrationError(RuntimeError):
    """A migration file that cannot be used, or a statement that failed; names the file."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]
    checksum: str

    @property
    def label(self) -> str:
        return f"{self.version:03d}_{self.name}"


@dataclass
class MigrationReport:
    applied: list[str] = field(default_factory=list)
    already: list[str] = field(default_factory=list)
    changed_since_applied: list[str] = field(default_factory=list)
    distributed: list[str] = field(default_factory=list)  # `<table>_all` made (on a cluster)


_FILE = re.compile(r"^(\d{3})_(\w+)\.sql$")
_ADD_COLUMN = re.compile(r"^ALTER TABLE\s+(\S+)\s+ADD COLUMN\s+(\w+)\s", re.IGNORECASE)


def split_statements(text: str) -> list[str]:
    """The statements of a SQL file: `--` comment lines dropped, split at `;` ending a line."""
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("--")]
    parts = re.split(r";\s*$", "\n".join(lines), flags=re.MULTILINE)
    return [part.strip() for part in parts if part.strip()]


def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    found: list[Migration] = []
    for path in sorted(directory.glob("*.sql")):
        match = _FILE.match(path.name)
        if match is None:
            raise MigrationError(f"{path}: migration files are named NNN_name.sql")
        text = path.read_text(encoding="utf-8")
        found.append(
            Migration(
                version=int(match.group(1)),
                name=match.group(2),
                statements=tuple(split_statements(text)),
                checksum=hashlib.sha256(text.encode()).hexdigest()[:16],
            )
        )
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise MigrationError(f"{directory}: versions must run 1, 2, 3 ... without gaps: {versions}")
    return found


MIGRATIONS = load_migrations()


def _prepare(store: ClickHouseStore, cluster: ClusterDDL | None = None) -> None:
    schema_migrations = (
        f"CREATE TABLE IF NOT EXISTS {store.database}.schema_migrations ("
        "version UInt32, name String, checksum String, applied_at DateTime"
        ") ENGINE = ReplacingMergeTree() ORDER BY version"
    )
    if cluster is None:
        store.execute(f"CREATE DATABASE IF NOT EXISTS {store.database}")
        store.execute(schema_migrations)
    else:
        store.execute(cluster.create_database(store.database))
        store.execute(cluster.replicated(schema_migrations))


def applied_migrations(store: ClickHouseStore, cluster: ClusterDDL | None = None) -> dict[int, str]:
    """Version → checksum of every migration the database has recorded."""
    _prepare(store, cluster)
    rows = store.query(
        f"SELECT version, any(checksum) FROM {store.database}.schema_migrations GROUP BY version"
    )
    return {int(version): str(checksum) for version, checksum in rows}


def _column_exists(store: ClickHouseStore, qualified_table: str, column: str) -> bool:
    database, _, table = qualified_table.rpartition(".")
    rows = store.query(
        "SELECT count() FROM system.columns WHERE "
        f"database = {sql_string(database or store.database)} AND table = {sql_string(table)} "
        f"AND name = {sql_string(column)}"
    )
    return int(rows[0][0]) > 0


def _apply(store: ClickHouseStore, migration: Migration, cluster: ClusterDDL | None) -> None:
    pending: list[str] = []
    for statement in migration.statements:
        sql = statement.replace("{database}", store.database)
        added = _ADD_COLUMN.match(sql)
        if added is not None and _column_exists(store, added.group(1), added.group(2)):
            continue  # a half-applied migration being re-run
        pending.append(sql)
    try:
        statements = pending if cluster is None else cluster.statements(pending)
    except ClusterDDLError as exc:
        raise MigrationError(f"migration {migration.label}: {exc}") from exc
    for sql in statements:
        try:
            store.execute(sql)
        except Exception as exc:
            raise MigrationError(f"migration {migration.label} failed: {exc}") from exc
    store.insert(
        "schema_migrations",
        ("version", "name", "checksum", "applied_at"),
        [(migration.version, migration.name, migration.checksum, _now())],
    )


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None, microsecond=0)


def migrate(
    store: ClickHouseStore,
    migrations: list[Migration] | None = None,
    *,
    cluster: ClusterDDL | None = None,
) -> MigrationReport:
    """Apply the pending migrations in order; running it again changes nothing.

    Each statement is idempotent on its own (CREATE ... IF NOT EXISTS, ADD COLUMN checked
    first), so a migration interrupted half-way is simply applied again. With `cluster`, as
    replicated tables on every replica of that cluster, each with a Distributed `<table>_all`
    (projections/cluster.py). A database made one way is never migrated the other: the
    single-node DDL on one replica of a cluster would leave the others behind."""
    replicated = _is_replicated(store, "schema_migrations")
    if cluster is not None:
        try:
            check_cluster(store, cluster.cluster)
        except ClusterDDLError as exc:
            raise MigrationError(str(exc)) from exc
        if not replicated and _exists(store, "schema_migrations"):
            raise MigrationError(
                f"{store.database} was made on a single server, not on cluster "
                f"{cluster.cluster}: make the cluster's database afresh (another name, or "
                "this one dropped) and let `oms project` replay the topics into it "
                '(docs/operations.md, "A replicated ClickHouse")'
            )
    report = MigrationReport()
    done = applied_migrations(store, cluster)
    for migration in MIGRATIONS if migrations is None else migrations:
        if migration.version in done:
            report.already.append(migration.label)
            if done[migration.version] != migration.checksum:
                report.changed_since_applied.append(migration.label)
            continue
        if cluster is None and replicated:
            raise MigrationError(
                f"{store.database} is replicated: migration {migration.label} must run on "
                "every replica (oms project --migrate --cluster NAME)"
            )
        _apply(store, migration, cluster)
        report.applied.append(migration.label)
    if cluster is not None and cluster.distributed:
        report.distributed = ensure_distributed(store, cluster)
    return report


def _exists(store: ClickHouseStore, table: str) -> bool:
    rows = store.query(
        "SELECT count() FROM system.tables WHERE "
        f"database = {sql_string(store.database)} AND name = {sql_string(table)}"
    )
    return int(rows[0][0]) > 0
