"""The read models on a real replicated ClickHouse: ZooKeeper and two clickhouse-server (18.16)
replicas started by `oms.cluster_stack` on free ports, stopped when the module is done."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.settings import Settings
from oms.cluster_stack import ClickHouseCluster, ClusterLayout
from oms.stack import process_alive
from projections.cluster import ClusterDDL, sync_replicas
from projections.lease import PROJECTOR_LEASES, Claim, PartitionLease
from projections.rebuild import rebuild, staging_database
from projections.schema import (
    DEAD_LETTERS_COLUMNS,
    MIGRATIONS,
    READ_MODEL_NAMES,
    Migration,
    MigrationError,
    migrate,
)
from projections.store import ClickHouseStore, connect, sql_string
from tests.projections.conftest import contents, isolated, project_all
from tests.projections.scenario import build

pytestmark = pytest.mark.integration

CLUSTER = "oms"


def oms(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "oms.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def free_base_port(replicas: int) -> int:
    """A base port whose cluster layout (ClusterLayout.starting_at) has every port free."""
    rng = random.Random()
    for _ in range(100):
        layout = ClusterLayout.starting_at(rng.randrange(20000, 30000, 100), name=CLUSTER,
                                           replicas=replicas)  # fmt: skip
        ports = [layout.zookeeper_port]
        ports += [p for r in layout.replicas for p in (r.tcp, r.http, r.interserver)]
        if all(bindable(port) for port in ports):
            return layout.zookeeper_port
    raise AssertionError("no free port range for a cluster")


def bindable(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClickHouseCluster]:
    """Started as an operator would (`oms stack cluster up`, its own process), stopped with
    `oms stack cluster down`; no process of it may be left running."""
    home = tmp_path_factory.mktemp("home")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMS_")}
    env["OMS_HOME"] = str(home)
    base = free_base_port(2)
    pids: list[int] = []
    try:
        up = oms("stack", "cluster", "up", "--replicas", "2", "--base-port", str(base), env=env)
        assert up.returncode == 0, up.stdout + up.stderr
        started = ClickHouseCluster(directory=home / "cluster")
        pids += [p for s in (started.zookeeper, *started.replicas) if (p := s.process.pid())]
        assert len(pids) == 3
        status = oms("stack", "cluster", "status", env=env)
        assert status.returncode == 0 and status.stdout.count("answering") == 3, status.stdout
        yield started
    finally:
        down = oms("stack", "cluster", "down", env=env)
        assert down.returncode == 0, down.stdout + down.stderr
        assert not [pid for pid in pids if process_alive(pid)], "a cluster process outlived down"


@pytest.fixture
def replicas(cluster: ClickHouseCluster) -> Iterator[tuple[str, ClickHouseStore, ClickHouseStore]]:
    """A fresh database name on the cluster, and a store on each replica; dropped after."""
    database = f"oms_test_{uuid.uuid4().hex[:10]}"
    first, second = (connect(url) for url in cluster.urls(database))
    try:
        yield cluster.urls(database)[0], first, second
    finally:
        for name in (database, staging_database(database)):
            first.execute(f"DROP DATABASE IF EXISTS {name} ON CLUSTER {CLUSTER}")
        first.close()
        second.close()


def engines(store: ClickHouseStore) -> dict[str, str]:
    rows = store.query(
        f"SELECT name, engine FROM system.tables WHERE database = {sql_string(store.database)}"
    )
    return {str(name): str(engine) for name, engine in rows}


def create_statement(store: ClickHouseStore, table: str) -> str:
    return str(store.query(f"SHOW CREATE TABLE {store.database}.{table}")[0][0])


def synced(store: ClickHouseStore, tables: tuple[str, ...] = READ_MODEL_NAMES) -> None:
    for table in tables:
        store.execute(f"SYSTEM SYNC REPLICA {store.database}.{table}")


def test_migrate_on_the_cluster_makes_replicated_tables_written_on_one_read_on_the_other(
    replicas: tuple[str, ClickHouseStore, ClickHouseStore], tmp_path: Path
) -> None:
    url, first, second = replicas
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMS_")} | {
        "OMS_HOME": str(tmp_path),
        "OMS_CLICKHOUSE_URL": url,
    }
    migrated = subprocess.run(
        [sys.executable, "-m", "oms.cli", "project", "--migrate", "--cluster", CLUSTER],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    assert f"{len(MIGRATIONS)} migration(s) applied" in migrated.stdout
    assert "made     orders_all (Distributed)" in migrated.stdout

    # Both replicas have every table: replicated, each with a Distributed table over it.
    database = first.database
    for store in (first, second):
        found = engines(store)
        for table in (*READ_MODEL_NAMES, "audit_log", "schema_migrations"):
            assert found[table].startswith("Replicated"), (store, table, found[table])
        for table in (*READ_MODEL_NAMES, "audit_log"):
            assert found[f"{table}_all"] == "Distributed", table
    assert (
        f"ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{{shard}}/{database}/orders', "
        "'{replica}', version)" in create_statement(second, "orders")
    )

    # A row written on replica 1 by the projector's store is read on replica 2.
    first.insert("orders", ("order_id", "status", "version"), [("o-1", "accepted", 3)])
    synced(second, ("orders",))
    query = "SELECT order_id, status, version FROM {} FINAL"
    assert second.query(query.format(f"{database}.orders")) == [("o-1", "accepted", 3)]
    assert second.query(query.format(f"{database}.orders_all")) == [("o-1", "accepted", 3)]

    # Again: nothing to do. On one replica without --cluster, a new migration is refused.
    assert migrate(second, cluster=ClusterDDL(CLUSTER)).applied == []
    extra = Migration(
        version=len(MIGRATIONS) + 1,
        name="extra",
        statements=("ALTER TABLE {database}.orders ADD COLUMN extra String",),
        checksum="x",
    )
    with pytest.raises(MigrationError, match="replicated"):
        migrate(second, [*MIGRATIONS, extra])
    assert "extra" not in {
        str(name) for (name,) in second.query(f"SELECT name FROM system.columns WHERE "
        f"database = {sql_string(database)} AND table = 'orders'")
    }  # fmt: skip
    # With --cluster it runs on both, and the Distributed table follows.
    report = migrate(first, [*MIGRATIONS, extra], cluster=ClusterDDL(CLUSTER))
    assert report.applied == [extra.label] and report.distributed == ["orders_all"]
    for store in (first, second):
        columns = store.query(f"DESCRIBE TABLE {database}.orders_all")
        assert "extra" in {str(row[0]) for row in columns}


def test_a_rebuild_on_the_cluster_swaps_the_tables_on_every_replica(
    stack_settings: Settings, replicas: tuple[str, ClickHouseStore, ClickHouseStore]
) -> None:
    url, first, second = replicas
    settings = isolated(stack_settings).model_copy(update={"clickhouse_url": url})
    scenario = build(orders=60, stock_events=80, seed=11)
    scenario.publish(settings)
    migrate(first, cluster=ClusterDDL(CLUSTER))
    project_all(settings, first, batch_size=200)
    live = contents(first)
    first.execute(
        f"INSERT INTO {first.database}.orders (order_id, status, version) SELECT 'ghost', 'held', 9"
    )
    synced(second)
    assert contents(second)["orders"] != live["orders"]  # the ghost reached replica 2

    began = time.monotonic()
    report = rebuild(
        settings=settings, store=first, batch_size=5000, batch_seconds=0.2, cluster=CLUSTER
    )

    assert report.swap == "RENAME" and report.events == scenario.messages
    # Each replica holds the rebuilt tables the moment the rebuild returns (it synced them
    # before the swap): the log's content, the ghost gone.
    for store in (first, second):
        assert contents(store) == live, store
        path = create_statement(store, "orders")
        assert f"'/clickhouse/tables/{{shard}}/{store.database}/orders.r" in path, path
        assert staging_database(store.database) not in {
            str(name) for (name,) in store.query("SELECT name FROM system.databases")
        }
        ghosts = store.query(
            f"SELECT count() FROM {store.database}.orders_all WHERE order_id = 'ghost'"
        )
        assert ghosts == [(0,)]
    # The swapped-in tables replicate as before: written on replica 2, read on replica 1.
    second.insert("orders", ("order_id", "status", "version"), [("after", "accepted", 1)])
    synced(first, ("orders",))
    assert first.query(
        f"SELECT status FROM {first.database}.orders FINAL WHERE order_id = 'after'"
    ) == [("accepted",)]
    # A second rebuild's staging tables do not collide with the first's in ZooKeeper.
    again = rebuild(settings=settings, store=first, batch_size=5000, cluster=CLUSTER)
    assert again.events == scenario.messages
    assert time.monotonic() - began < 90


def test_sync_replicas_returns_once_every_replica_holds_what_one_was_given(
    replicas: tuple[str, ClickHouseStore, ClickHouseStore],
) -> None:
    url, first, second = replicas
    layout = ClusterDDL(CLUSTER)
    first.execute(layout.create_database(first.database))
    first.execute(
        layout.replicated(
            f"CREATE TABLE IF NOT EXISTS {first.database}.parcels (parcel_id String) "
            "ENGINE = MergeTree() ORDER BY parcel_id"
        )
    )
    second.execute(f"SYSTEM STOP FETCHES {second.database}.parcels")
    first.insert("parcels", ("parcel_id",), [("p-1",)])
    time.sleep(0.5)
    assert second.query(f"SELECT count() FROM {second.database}.parcels") == [(0,)]
    resumed = threading.Timer(
        2.0, second.execute, [f"SYSTEM START FETCHES {second.database}.parcels"]
    )
    resumed.start()
    try:
        waited = sync_replicas(
            url=url, cluster=CLUSTER, database=first.database, tables=("parcels",), store=first
        )
    finally:
        resumed.join()
    assert waited == 2
    assert second.query(f"SELECT parcel_id FROM {second.database}.parcels") == [("p-1",)]


def test_a_claim_on_one_replica_fences_the_other_replicas_writes_once_it_returns(
    replicas: tuple[str, ClickHouseStore, ClickHouseStore], stack_settings: Settings
) -> None:
    """Two projectors writing through different replicas: a claim counts only once every
    replica holds it (a quorum INSERT), so from the moment a successor's claim returns, the
    fence of a write on the other replica already drops its partitions' rows. While the first
    replica cannot fetch the claim, the successor cannot claim at all."""
    _, first, second = replicas
    migrate(first, cluster=ClusterDDL(CLUSTER))
    settings = isolated(stack_settings).model_copy(update={"projector_session_timeout_s": 6.0})
    topic = settings.topics.orders
    group = f"lease-{uuid.uuid4().hex[:8]}"
    a = PartitionLease(settings=settings, store=first, topics=[topic], group=group)
    b = PartitionLease(settings=settings, store=second, topics=[topic], group=group)
    a_claim = a.acquire()
    assert a_claim.partitions == {(topic, p) for p in range(3)}
    fenced = a.fence(a_claim)

    def write(name: str) -> set[int]:
        """Partitions whose row of `name` the fenced write on replica 1 kept."""
        rows = [(f"{name}-{p}", "r", 1, topic, p, 7) for p in range(3)]
        fenced.insert("dead_letters", DEAD_LETTERS_COLUMNS, rows)
        kept = first.query(
            f"SELECT _partition FROM {first.database}.dead_letters "
            f"WHERE dead_letter_id LIKE {sql_string(name + '-%')}"
        )
        return {int(p) for (p,) in kept}

    first.execute(f"SYSTEM STOP FETCHES {first.database}.{PROJECTOR_LEASES}")
    claimed: list[Claim] = []
    failed: list[BaseException] = []

    def acquire() -> None:
        try:
            claimed.append(b.acquire())
        except BaseException as exc:  # (reported below)
            failed.append(exc)

    successor = threading.Thread(target=acquire, daemon=True)
    try:
        successor.start()
        successor.join(timeout=8)
        # Replica 1 cannot take the claim: it does not count, and replica 1's writes go on.
        assert not claimed and not failed, (claimed, failed)
        assert write("before") == {0, 1, 2}
    finally:
        first.execute(f"SYSTEM START FETCHES {first.database}.{PROJECTOR_LEASES}")
    successor.join(timeout=60)
    assert not failed, failed
    assert claimed and claimed[0].partitions, "the successor claimed nothing"
    taken = {p for _, p in claimed[0].partitions}
    # At once: the claim is on replica 1 before acquire returned.
    assert write("after") == {0, 1, 2} - taken
    a.leave()
    b.leave()
