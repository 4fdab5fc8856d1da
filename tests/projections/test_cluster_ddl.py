"""The single-node migrations rewritten for a cluster (projections/cluster.py): pure, no server."""

from __future__ import annotations

import re

import pytest

from projections.cluster import ClusterDDL, ClusterDDLError, replica_urls
from projections.schema import MIGRATIONS

LAYOUT = ClusterDDL("oms")


def cluster_statements(layout: ClusterDDL, database: str = "shop") -> list[str]:
    return [
        sql
        for migration in MIGRATIONS
        for sql in layout.statements(
            statement.replace("{database}", database) for statement in migration.statements
        )
    ]


def test_every_table_of_the_migrations_becomes_replicated_on_the_cluster() -> None:
    creates = [sql for sql in cluster_statements(LAYOUT) if sql.startswith("CREATE TABLE")]
    single = [
        s for m in MIGRATIONS for s in m.statements if s.startswith("CREATE TABLE IF NOT EXISTS")
    ]
    assert len(creates) == len(single) > 0
    for sql in creates:
        table = re.match(r"CREATE TABLE IF NOT EXISTS shop\.(\w+) ON CLUSTER oms \(", sql)
        assert table is not None, sql
        assert (
            "ENGINE = Replicated" in sql
            and f"('/clickhouse/tables/{{shard}}/shop/{table.group(1)}', '{{replica}}'" in sql
        ), sql


def test_engine_arguments_and_the_rest_of_the_table_are_kept() -> None:
    sql = LAYOUT.replicated(
        "CREATE TABLE IF NOT EXISTS shop.orders (order_id String, tags Array(String), "
        "at Nullable(DateTime), version UInt32) ENGINE = ReplacingMergeTree(version)\n"
        "PARTITION BY toYYYYMM(at) ORDER BY order_id"
    )
    assert sql == (
        "CREATE TABLE IF NOT EXISTS shop.orders ON CLUSTER oms (order_id String, "
        "tags Array(String), at Nullable(DateTime), version UInt32) ENGINE = "
        "ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/shop/orders', '{replica}', "
        "version)\nPARTITION BY toYYYYMM(at) ORDER BY order_id"
    )
    plain = LAYOUT.replicated(
        "CREATE TABLE IF NOT EXISTS shop.stock (sku String) ENGINE = MergeTree() ORDER BY sku"
    )
    assert "ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/shop/stock', " in plain
    assert plain.endswith("'{replica}') ORDER BY sku")


def test_consecutive_alters_of_a_table_become_one_alter_on_the_cluster() -> None:
    statements = LAYOUT.statements(
        [
            "ALTER TABLE shop.orders ADD COLUMN city String",
            "ALTER TABLE shop.orders ADD COLUMN held UInt8",
            "ALTER TABLE shop.order_lines ADD COLUMN unit String DEFAULT 'each'",
            "ALTER TABLE shop.orders ADD COLUMN covers UInt32",
        ]
    )
    assert statements == [
        "ALTER TABLE shop.orders ON CLUSTER oms ADD COLUMN city String, ADD COLUMN held UInt8",
        "ALTER TABLE shop.order_lines ON CLUSTER oms ADD COLUMN unit String DEFAULT 'each'",
        "ALTER TABLE shop.orders ON CLUSTER oms ADD COLUMN covers UInt32",
    ]
    alters = [sql for sql in cluster_statements(LAYOUT) if sql.startswith("ALTER")]
    assert all(" ON CLUSTER oms " in sql for sql in alters)
    assert len(alters) < 10  # 2 + 27 + ... single-node ALTERs, a second each on 18.16


def test_a_rebuilds_tables_get_zookeeper_paths_of_their_own_under_the_live_database() -> None:
    first = ClusterDDL("oms").for_staging("shop")
    second = ClusterDDL("oms").for_staging("shop")
    assert first.generation != second.generation
    assert not first.distributed
    path = first.zookeeper_path("shop__rebuild", "orders")
    assert path == f"/clickhouse/tables/{{shard}}/shop/orders.{first.generation}"
    assert LAYOUT.zookeeper_path("shop", "orders") == "/clickhouse/tables/{shard}/shop/orders"


def test_the_distributed_table_is_made_again_sharded_by_the_first_sorting_column() -> None:
    assert LAYOUT.distributed_table("shop", "order_lines", "order_id, line_no") == [
        "DROP TABLE IF EXISTS shop.order_lines_all ON CLUSTER oms",
        "CREATE TABLE IF NOT EXISTS shop.order_lines_all ON CLUSTER oms AS shop.order_lines "
        "ENGINE = Distributed(oms, shop, order_lines, cityHash64(order_id))",
    ]


def test_a_statement_that_cannot_be_replicated_is_refused_by_name() -> None:
    with pytest.raises(ClusterDDLError, match="kitchen_view"):
        LAYOUT.statements(["CREATE VIEW shop.kitchen_view AS SELECT 1"])
    with pytest.raises(ClusterDDLError, match="letters, digits"):
        ClusterDDL("oms; DROP DATABASE shop")


class FakeClustersStore:
    """A fake store answering only the query `replica_urls` asks (unit test only)."""

    database = "shop"

    def query(self, sql: str) -> list[tuple[object, ...]]:
        assert "system.clusters" in sql
        return [("127.0.0.1", 9310), ("10.0.0.7", 9000)]


def test_replica_urls_keep_the_user_database_and_options() -> None:
    urls = replica_urls(
        FakeClustersStore(),  # type: ignore[arg-type]
        "clickhouse://oms:p%40ss@ch1:9000/shop?http_port=8123",
        "oms",
    )
    assert urls == [
        "clickhouse://oms:p%40ss@127.0.0.1:9310/shop?http_port=8123",
        "clickhouse://oms:p%40ss@10.0.0.7:9000/shop?http_port=8123",
    ]
