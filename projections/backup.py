"""Backup and restore of the read-model database: every table's DDL and rows, and a manifest.

A backup is a directory: per table `<table>.sql` (its `SHOW CREATE TABLE`) and, for tables that
hold rows, `<table>.rowbinary` (its rows in ClickHouse's RowBinary format, the bytes both
backends read and write exactly, on 18.16 and on current ClickHouse), and `manifest.json` with
each table's engine, columns, row count, and each file's size and SHA-256, written last.
`restore` checks every file against the manifest before it touches the database, so a damaged
backup is refused naming the file, and then creates the tables and loads their rows.

The topics are the record; the read models can always be rebuilt from them (`oms project
--rebuild`). A backup makes that replay a copy, and keeps what no topic holds (the audit log's
table is also on its topic; `schema_migrations` says which DDL made the tables).

A projector may go on writing while a backup runs. The read models are read in the reverse of
the order a batch writes them (projections/schema.py, READ_MODELS): the offset ledger first, the
fold states (`orders`, `stock_levels`) before the tables derived from them. Each table then
holds at least what the one read before it holds, which is what a projector that crashed
mid-batch leaves, and a projector started on the restored tables resumes from them as after a
crash (docs/read-models.md, "Effectively once").
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from projections.schema import READ_MODEL_NAMES
from projections.store import ClickHouseStore, RowBinarySource, sql_string

MANIFEST = "manifest.json"
FORMAT = 1  # `format` of the manifests this module writes
# Engines whose tables hold rows of their own; any other (a view, a Distributed table) is
# backed up as its DDL only.
_DATA_ENGINE = re.compile(r"(MergeTree|^Log$|^TinyLog$|^StripeLog$|^Memory$)")


class BackupError(RuntimeError):
    """A backup that cannot be made or restored; the message says which table or file."""


class BackupDamaged(BackupError):
    """A file of a backup is missing, or not what the manifest says it is."""


@dataclass(frozen=True)
class FileEntry:
    name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class TableEntry:
    name: str
    engine: str
    columns: tuple[tuple[str, str], ...]  # (name, type) of the rows in `data`, in their order
    rows: int
    ddl: FileEntry
    data: FileEntry | None


@dataclass(frozen=True)
class Manifest:
    database: str
    created_at: str
    server_version: str
    tables: tuple[TableEntry, ...]

    @property
    def rows(self) -> int:
        return sum(table.rows for table in self.tables)

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": FORMAT,
                "database": self.database,
                "created_at": self.created_at,
                "server_version": self.server_version,
                "tables": [
                    {
                        "name": t.name,
                        "engine": t.engine,
                        "columns": [list(column) for column in t.columns],
                        "rows": t.rows,
                        "ddl": vars(t.ddl),
                        "data": None if t.data is None else vars(t.data),
                    }
                    for t in self.tables
                ],
            },
            indent=2,
            ensure_ascii=False,
        )

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        kept = json.loads(text)
        if kept.get("format") != FORMAT:
            raise ValueError(f"format {kept.get('format')!r}, this program reads {FORMAT}")
        return cls(
            database=str(kept["database"]),
            created_at=str(kept["created_at"]),
            server_version=str(kept["server_version"]),
            tables=tuple(
                TableEntry(
                    name=str(t["name"]),
                    engine=str(t["engine"]),
                    columns=tuple((str(n), str(k)) for n, k in t["columns"]),
                    rows=int(t["rows"]),
                    ddl=FileEntry(**t["ddl"]),
                    data=None if t["data"] is None else FileEntry(**t["data"]),
                )
                for t in kept["tables"]
            ),
        )


def _backup_order(tables: list[str]) -> list[str]:
    """The read models in the reverse of their write order, then every other table."""
    read_models = [name for name in reversed(READ_MODEL_NAMES) if name in tables]
    return read_models + sorted(name for name in tables if name not in read_models)


def _write(directory: Path, name: str, content: bytes) -> FileEntry:
    with open(directory / name, "wb") as file:
        file.write(content)
        file.flush()
        os.fsync(file.fileno())
    return FileEntry(name=name, size=len(content), sha256=hashlib.sha256(content).hexdigest())


def backup(
    store: ClickHouseStore,
    directory: Path,
    *,
    on_table: Callable[[TableEntry], None] | None = None,
) -> Manifest:
    """Copy every table of the store's database into `directory` (new, or empty)."""
    if not isinstance(store, RowBinarySource):
        raise BackupError(f"{type(store).__name__} cannot read rows out as RowBinary")
    if directory.exists() and any(directory.iterdir()):
        raise BackupError(f"{directory} is not empty: a backup goes into a new directory")
    database = store.database
    found = {
        str(name): str(engine)
        for name, engine in store.query(
            "SELECT name, engine FROM system.tables WHERE "
            f"database = {sql_string(database)} AND is_temporary = 0"
        )
    }
    if not found:
        raise BackupError(f"database {database} has no tables to back up")
    directory.mkdir(parents=True, exist_ok=True)
    entries: list[TableEntry] = []
    for table in _backup_order(list(found)):
        engine = found[table]
        ddl = str(store.query(f"SHOW CREATE TABLE {database}.{table}")[0][0])
        ddl_file = _write(directory, f"{table}.sql", ddl.encode())
        columns: tuple[tuple[str, str], ...] = ()
        rows = 0
        data_file: FileEntry | None = None
        if _DATA_ENGINE.search(engine):
            # Stored columns only: MATERIALIZED and ALIAS ones are computed, and take no INSERT.
            columns = tuple(
                (str(name), str(kind))
                for name, kind, default_kind in store.query(
                    "SELECT name, type, default_kind FROM system.columns WHERE "
                    f"database = {sql_string(database)} AND table = {sql_string(table)}"
                )
                if default_kind not in ("MATERIALIZED", "ALIAS")
            )
            names = ", ".join(f"`{name}`" for name, _ in columns)
            content = store.query_rowbinary(f"SELECT {names} FROM {database}.{table}")
            try:
                rows = count_rows(content, [kind for _, kind in columns])
            except ValueError as exc:
                raise BackupError(f"{database}.{table}: {exc}") from exc
            data_file = _write(directory, f"{table}.rowbinary", content)
        entry = TableEntry(table, engine, columns, rows, ddl_file, data_file)
        entries.append(entry)
        if on_table is not None:
            on_table(entry)
    manifest = Manifest(
        database=database,
        created_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        server_version=str(store.query("SELECT version()")[0][0]),
        tables=tuple(entries),
    )
    staged = directory / f".{MANIFEST}.part"
    staged.write_text(manifest.to_json(), encoding="utf-8")
    staged.replace(directory / MANIFEST)  # a backup without its manifest is no backup
    return manifest


def verify(directory: Path) -> Manifest:
    """The backup's manifest, once every file it names is there with its size and SHA-256;
    BackupDamaged naming the first file that is not."""
    path = directory / MANIFEST
    try:
        manifest = Manifest.from_json(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise BackupDamaged(f"{path}: missing (not a backup, or one that did not finish)") from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise BackupDamaged(f"{path}: unreadable: {exc}") from exc
    for table in manifest.tables:
        for entry in (table.ddl, table.data):
            if entry is None:
                continue
            file = directory / entry.name
            if Path(entry.name).name != entry.name:
                raise BackupDamaged(f"{path}: names a file outside the backup: {entry.name!r}")
            try:
                content = file.read_bytes()
            except FileNotFoundError as exc:
                raise BackupDamaged(f"{file}: missing") from exc
            if len(content) != entry.size:
                raise BackupDamaged(f"{file}: {len(content)} bytes, the manifest says {entry.size}")
            if hashlib.sha256(content).hexdigest() != entry.sha256:
                raise BackupDamaged(f"{file}: SHA-256 differs from the manifest's")
    return manifest


def _ddl_for(statement: str, *, source: str, target: str) -> str:
    """`statement` (SHOW CREATE TABLE of database `source`) creating its table in `target`,
    and a Distributed table reading `target`."""
    statement = re.sub(
        rf"^(CREATE (?:TABLE|VIEW|MATERIALIZED VIEW) )`?{re.escape(source)}`?\.",
        lambda m: f"{m.group(1)}{target}.",
        statement,
        count=1,
    )
    return re.sub(
        rf"(ENGINE = Distributed\([^,]+,\s*)'?{re.escape(source)}'?(\s*,)",
        lambda m: f"{m.group(1)}{target}{m.group(2)}",
        statement,
    )


def restore(
    store: ClickHouseStore,
    directory: Path,
    *,
    on_table: Callable[[TableEntry], None] | None = None,
) -> Manifest:
    """Create the backup's tables in the store's database and load their rows. Refuses a
    damaged backup (BackupDamaged, naming the file) and a database that already has any of
    the tables, before it changes anything."""
    manifest = verify(directory)
    database = store.database
    existing = {
        str(name)
        for (name,) in store.query(
            f"SELECT name FROM system.tables WHERE database = {sql_string(database)}"
        )
    }
    clash = sorted(existing & {table.name for table in manifest.tables})
    if clash:
        raise BackupError(
            f"database {database} already has {', '.join(clash)}: restore into a database "
            "without them (drop it first, or restore into another one)"
        )
    store.execute(f"CREATE DATABASE IF NOT EXISTS {database}")
    # Tables with rows first: a Distributed table or a view reads them.
    ordered = sorted(manifest.tables, key=lambda table: table.data is None)
    for table in ordered:
        ddl = (directory / table.ddl.name).read_text(encoding="utf-8")
        store.execute(_ddl_for(ddl, source=manifest.database, target=database))
        if table.data is not None:
            store.insert_rowbinary(
                table.name,
                [name for name, _ in table.columns],
                (directory / table.data.name).read_bytes(),
            )
            restored = int(store.query(f"SELECT count() FROM {database}.{table.name}")[0][0])
            # A Replacing or Aggregating table may have merged rows already: fewer can be right.
            if restored > table.rows or (restored < table.rows and table.engine == "MergeTree"):
                raise BackupError(
                    f"{database}.{table.name}: {restored} rows after the restore, "
                    f"{table.data.name} holds {table.rows}"
                )
        if on_table is not None:
            on_table(table)
    return manifest


# RowBinary: each row's columns one after another; fixed-width values little-endian, a String
# as its length (LEB128) and bytes, a Nullable as a byte (1: NULL, no value follows), an Array
# as its length (LEB128) and the values. Walking a table's bytes so counts its rows and checks
# that they end where a row ends.
_FIXED = {
    "Int8": 1, "UInt8": 1, "Bool": 1, "Enum8": 1,
    "Int16": 2, "UInt16": 2, "Date": 2, "Enum16": 2,
    "Int32": 4, "UInt32": 4, "Float32": 4, "DateTime": 4, "Date32": 4, "IPv4": 4,
    "Decimal32": 4,
    "Int64": 8, "UInt64": 8, "Float64": 8, "DateTime64": 8, "Decimal64": 8,
    "Int128": 16, "UInt128": 16, "UUID": 16, "IPv6": 16, "Decimal128": 16,
    "Int256": 32, "UInt256": 32, "Decimal256": 32,
}  # fmt: skip


def _uleb128(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= len(data):
            raise ValueError("the data ends inside a length")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7


def _inner(kind: str, wrapper: str) -> str:
    return kind[len(wrapper) + 1 : -1]


def _decimal_width(kind: str) -> int:
    precision = int(kind[len("Decimal(") :].split(",")[0])
    return 4 if precision <= 9 else 8 if precision <= 18 else 16 if precision <= 38 else 32


def _skipper(kind: str) -> Callable[[bytes, int], int]:
    """A function from (data, offset of a value of `kind`) to the offset after it."""
    kind = kind.strip()
    base = kind.split("(", 1)[0]
    if base in ("Nullable", "LowCardinality", "Array"):
        inner = _skipper(_inner(kind, base))
        if base == "LowCardinality":
            return inner
        if base == "Nullable":
            return lambda data, at: at + 1 if data[at] == 1 else inner(data, at + 1)

        def array(data: bytes, at: int) -> int:
            count, at = _uleb128(data, at)
            for _ in range(count):
                at = inner(data, at)
            return at

        return array
    if base == "String":

        def string(data: bytes, at: int) -> int:
            size, at = _uleb128(data, at)
            return at + size

        return string
    if base == "FixedString":
        fixed = int(_inner(kind, base))
        return lambda _data, at: at + fixed
    width = _decimal_width(kind) if base == "Decimal" else _FIXED.get(base)
    if width is None:
        raise ValueError(f"no RowBinary reader for type {kind}")
    size = width
    return lambda _data, at: at + size


def count_rows(data: bytes, types: list[str]) -> int:
    """How many rows of columns of `types` the RowBinary `data` holds; ValueError if it does
    not end where a row ends (or a type is one this reader does not know)."""
    skippers = [_skipper(kind) for kind in types]
    at = rows = 0
    try:
        while at < len(data):
            for skip in skippers:
                at = skip(data, at)
            rows += 1
    except IndexError:
        raise ValueError("the data ends inside a row") from None
    if at != len(data):
        raise ValueError("the data ends inside a row")
    return rows
