"""The read models on a ClickHouse cluster: the single-node DDL of `projections/migrations`
rewritten as replicated tables, a Distributed table over each, and waiting for the replicas.

Each `CREATE TABLE ... ENGINE = XMergeTree(args)` of a migration becomes
`CREATE TABLE ... ON CLUSTER c ... ENGINE = ReplicatedXMergeTree('/clickhouse/tables/{shard}/
<db>/<table>', '{replica}', args)` with the rest (ORDER BY, PARTITION BY) unchanged: the
syntax ClickHouse 18.16 and current ClickHouse both take. Every ALTER runs ON CLUSTER (one
statement per table per migration: 18.16 takes about a second for each, waiting for the other
replicas). The tables keep their names, so the projector, the reports and the read API work on
any replica as on a single server; `<table>_all` (Distributed) reads the whole cluster.

A replicated table's ZooKeeper path is fixed when it is created and RENAME keeps it, so a
rebuild's staging tables get a path of their own (`<table>.<generation>`): the swapped-in tables
keep it, and the next rebuild's staging tables cannot collide with them.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from urllib.parse import urlsplit, urlunsplit

from projections.store import (
    ClickHouseStore,
    StoreError,
    StoreMisconfigured,
    connect,
    sql_string,
)

DISTRIBUTED_SUFFIX = "_all"

_CREATE = re.compile(
    r"^CREATE TABLE IF NOT EXISTS (?P<table>\S+)\s*\((?P<columns>.*)\)\s*"
    r"ENGINE\s*=\s*(?P<engine>\w*MergeTree)\((?P<args>[^)]*)\)(?P<rest>.*)$",
    re.DOTALL | re.IGNORECASE,
)
_ALTER = re.compile(r"^ALTER TABLE (?P<table>\S+)\s+(?P<actions>.*)$", re.DOTALL | re.IGNORECASE)
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class ClusterDDLError(ValueError):
    """A statement this module cannot run on a cluster; names it."""


@dataclass(frozen=True)
class ClusterDDL:
    """How one database's tables are laid out on cluster `cluster` (`<remote_servers>`).

    `zookeeper_database` names the tables in ZooKeeper (the live database's name, also for a
    rebuild's staging tables); `generation` tells a rebuild's tables apart; `distributed` says
    whether `<table>_all` tables are made (a staging database needs none)."""

    cluster: str
    zookeeper_database: str | None = None
    generation: str = ""
    distributed: bool = True

    def __post_init__(self) -> None:
        if not _NAME.match(self.cluster):
            raise ClusterDDLError(f"cluster name {self.cluster!r}: letters, digits and _ only")

    def for_staging(self, live_database: str) -> ClusterDDL:
        """The layout of a rebuild's staging tables for `live_database`: a new generation."""
        generation = time.strftime("r%Y%m%dT%H%M%S", time.gmtime()) + secrets.token_hex(2)
        return replace(
            self, zookeeper_database=live_database, generation=generation, distributed=False
        )

    @property
    def on_cluster(self) -> str:
        return f" ON CLUSTER {self.cluster}"

    def zookeeper_path(self, database: str, table: str) -> str:
        tail = f"{table}.{self.generation}" if self.generation else table
        return f"/clickhouse/tables/{{shard}}/{self.zookeeper_database or database}/{tail}"

    def create_database(self, database: str) -> str:
        return f"CREATE DATABASE IF NOT EXISTS {database}{self.on_cluster}"

    def drop_database(self, database: str) -> str:
        return f"DROP DATABASE IF EXISTS {database}{self.on_cluster}"

    def replicated(self, statement: str) -> str:
        """`CREATE TABLE IF NOT EXISTS db.t (...) ENGINE = XMergeTree(args) ...` as a replicated
        table on the cluster."""
        found = _CREATE.match(statement.strip())
        if found is None:
            raise ClusterDDLError(
                "only CREATE TABLE IF NOT EXISTS ... ENGINE = *MergeTree(...) can be made "
                f"replicated: {statement[:120]!r}"
            )
        database, _, table = found["table"].rpartition(".")
        path = sql_string(self.zookeeper_path(database, table))
        args = ", ".join(a for a in (path, "'{replica}'", found["args"].strip()) if a)
        return (
            f"CREATE TABLE IF NOT EXISTS {found['table']}{self.on_cluster} ({found['columns']}) "
            f"ENGINE = Replicated{found['engine']}({args}){found['rest']}"
        )

    def statements(self, statements: Iterable[str]) -> list[str]:
        """A migration's statements (database already substituted) for the cluster: CREATEs
        replicated, consecutive ALTERs of one table merged into one ALTER ... ON CLUSTER."""
        out: list[str] = []
        altering: tuple[str, list[str]] | None = None
        for statement in statements:
            alter = _ALTER.match(statement.strip())
            if alter is not None:
                if altering is not None and altering[0] == alter["table"]:
                    altering[1].append(alter["actions"].strip())
                    continue
                if altering is not None:
                    out.append(self._alter(*altering))
                altering = (alter["table"], [alter["actions"].strip()])
                continue
            if altering is not None:
                out.append(self._alter(*altering))
                altering = None
            out.append(self.replicated(statement))
        if altering is not None:
            out.append(self._alter(*altering))
        return out

    def _alter(self, table: str, actions: Sequence[str]) -> str:
        return f"ALTER TABLE {table}{self.on_cluster} {', '.join(actions)}"

    def distributed_table(self, database: str, table: str, sorting_key: str) -> list[str]:
        """`<table>_all` over `table` on every replica, made again (a Distributed table holds
        no rows; 18.16 refuses ALTER ... ON CLUSTER on one over replicated shards). Sharded by
        the first column of the sorting key: the rows of one key meet on one shard, where a
        Replacing- or AggregatingMergeTree collapses them."""
        key = sorting_key.split(",")[0].strip() or "rand()"
        shard_by = key if key == "rand()" else f"cityHash64({key})"
        return [
            f"DROP TABLE IF EXISTS {database}.{table}{DISTRIBUTED_SUFFIX}{self.on_cluster}",
            f"CREATE TABLE IF NOT EXISTS {database}.{table}{DISTRIBUTED_SUFFIX}{self.on_cluster} "
            f"AS {database}.{table} "
            f"ENGINE = Distributed({self.cluster}, {database}, {table}, {shard_by})",
        ]


def check_cluster(store: ClickHouseStore, cluster: str) -> None:
    """ClusterDDLError unless the server knows `cluster` (its `<remote_servers>`)."""
    rows = store.query(f"SELECT count() FROM system.clusters WHERE cluster = {sql_string(cluster)}")
    if not rows or int(rows[0][0]) == 0:
        raise ClusterDDLError(
            f"this ClickHouse has no cluster {cluster!r} in its <remote_servers> "
            "(SELECT cluster FROM system.clusters lists the ones it has)"
        )


def is_replicated(store: ClickHouseStore, table: str) -> bool:
    """Whether `table` of the store's database exists with a Replicated* engine."""
    rows = store.query(
        "SELECT engine FROM system.tables WHERE "
        f"database = {sql_string(store.database)} AND name = {sql_string(table)}"
    )
    return bool(rows) and str(rows[0][0]).startswith("Replicated")


def ensure_distributed(store: ClickHouseStore, layout: ClusterDDL) -> list[str]:
    """Make `<table>_all` for every replicated table of the database whose Distributed table
    is missing or has other columns than it. Returns the tables it (re)made."""
    database = store.database
    tables = store.query(
        "SELECT name, sorting_key FROM system.tables WHERE "
        f"database = {sql_string(database)} AND engine LIKE 'Replicated%' "
        "AND name != 'schema_migrations' ORDER BY name"
    )
    columns: dict[str, set[tuple[str, str]]] = {}
    for table, name, kind in store.query(
        f"SELECT table, name, type FROM system.columns WHERE database = {sql_string(database)}"
    ):
        columns.setdefault(str(table), set()).add((str(name), str(kind)))
    made: list[str] = []
    for table, sorting_key in tables:
        name = str(table)
        if columns.get(name + DISTRIBUTED_SUFFIX) == columns.get(name):
            continue
        for statement in layout.distributed_table(database, name, str(sorting_key)):
            store.execute(statement)
        made.append(name + DISTRIBUTED_SUFFIX)
    return made


def replica_urls(store: ClickHouseStore, url: str, cluster: str) -> list[str]:
    """`url` (the store's) pointed at each replica of `cluster`, as `system.clusters` lists
    them: the same user, database and options, each host's native port (its `http_port`
    option stays the store's: use these URLs for statements, not RowBinary inserts)."""
    rows = store.query(
        "SELECT host_address, port FROM system.clusters WHERE "
        f"cluster = {sql_string(cluster)} ORDER BY shard_num, replica_num"
    )
    parts = urlsplit(url)
    userinfo = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    hosts = [(str(host), int(port)) for host, port in rows]
    return [
        urlunsplit(parts._replace(netloc=f"{userinfo}{_bracketed(host)}:{port}"))
        for host, port in hosts
    ]


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def sync_replicas(
    *, url: str, cluster: str, database: str, tables: Sequence[str], store: ClickHouseStore
) -> int:
    """Return once every replica of `cluster` holds what was written to `tables` of `database`
    on any of them (`SYSTEM SYNC REPLICA` on each). Returns how many replicas it waited for."""
    urls = replica_urls(store, url, cluster)
    for replica_url in urls:
        replica = connect(replica_url)
        try:
            for table in tables:
                replica.execute(f"SYSTEM SYNC REPLICA {database}.{table}")
        finally:
            replica.close()
    return len(urls)


@dataclass(frozen=True)
class Replicas:
    """Where a replicated table's rows live: how many replicas hold it, and the native-protocol
    address (host:port) of each, as `system.clusters` lists the cluster its Distributed table
    `<table>_all` spans."""

    count: int
    addresses: tuple[str, ...]


def replicas_of(store: ClickHouseStore, table: str) -> Replicas | None:
    """The replicas of `table` in the store's database; None where it is not replicated (one
    server). StoreMisconfigured where it is, but its `<table>_all` names no cluster the server
    knows (`oms project --migrate --cluster NAME` makes both)."""
    database = sql_string(store.database)
    rows = store.query(
        "SELECT total_replicas FROM system.replicas "
        f"WHERE database = {database} AND table = {sql_string(table)}"
    )
    if not rows:
        return None
    count = int(rows[0][0])
    distributed = f"{store.database}.{table}{DISTRIBUTED_SUFFIX}"
    try:
        create = str(store.query(f"SHOW CREATE TABLE {distributed}")[0][0])
    except StoreError as exc:
        raise StoreMisconfigured(
            f"{store.database}.{table} is replicated but {distributed} is missing: "
            "run oms project --migrate --cluster NAME"
        ) from exc
    named = re.search(r"Distributed\(\s*'?([^,')]+)'?\s*,", create)
    cluster = named.group(1) if named else ""
    hosts = store.query(
        "SELECT host_address, port FROM system.clusters WHERE "
        f"cluster = {sql_string(cluster)} ORDER BY shard_num, replica_num"
    )
    if not hosts:
        raise StoreMisconfigured(
            f"{distributed} names cluster {cluster!r}, which is not known here"
        )
    addresses = tuple(f"{_bracketed(str(host))}:{int(port)}" for host, port in hosts)
    return Replicas(count, addresses)


def replicated_tables(store: ClickHouseStore) -> list[str]:
    """The replicated tables of the store's database."""
    rows = store.query(
        f"SELECT table FROM system.replicas WHERE database = {sql_string(store.database)} "
        "ORDER BY table"
    )
    return [str(table) for (table,) in rows]
