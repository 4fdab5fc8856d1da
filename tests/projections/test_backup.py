"""`oms backup DIR` / `oms restore DIR` on each backend: every table back as it was, and a
damaged backup refused naming the file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from infra.settings import Settings
from projections.backup import (
    BackupDamaged,
    _ddl_for,
    backup,
    count_rows,
    restore,
    verify,
)
from projections.schema import READ_MODEL_NAMES, migrate
from projections.store import ClickHouseStore, connect, sql_string
from tests.conftest import settings_env
from tests.projections.conftest import contents, physical_rows, project_all
from tests.projections.scenario import build


def oms(*args: str, settings: Settings) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "oms.cli", *args],
        env=settings_env(settings),
        capture_output=True,
        text=True,
        timeout=180,
    )


def every_table(store: ClickHouseStore) -> dict[str, list[tuple[object, ...]]]:
    """Each table's rows as stored (no FINAL), in a stable order."""
    database = store.database
    tables = store.query(
        f"SELECT name FROM system.tables WHERE database = {sql_string(database)} ORDER BY name"
    )
    held: dict[str, list[tuple[object, ...]]] = {}
    for (table,) in tables:
        columns = [
            str(name)
            for (name,) in store.query(
                "SELECT name FROM system.columns WHERE "
                f"database = {sql_string(database)} AND table = {sql_string(str(table))}"
            )
        ]
        names = ", ".join(f"`{name}`" for name in columns)
        held[str(table)] = store.query(f"SELECT {names} FROM {database}.{table} ORDER BY {names}")
    return held


def settled(store: ClickHouseStore) -> None:
    """Every table merged as far as it goes, so that what it stores stays as it is."""
    for table in every_table(store):
        store.execute(f"OPTIMIZE TABLE {store.database}.{table} FINAL")


@pytest.mark.integration
def test_a_restored_database_holds_every_table_as_it_was_and_the_projector_resumes_on_it(
    backend_settings: Settings, tmp_path: Path
) -> None:
    settings = backend_settings
    scenario = build(orders=60, stock_events=90, seed=23, duplicates=0.03)
    scenario.publish(settings)
    store = connect(settings.resolved_clickhouse_url)
    try:
        project_all(settings, store, batch_size=150)
        settled(store)
        before = every_table(store)
        assert {*READ_MODEL_NAMES, "schema_migrations"} <= set(before)
        assert sum(len(rows) for rows in before.values()) > 500
        live = contents(store)
        appended = physical_rows(store)

        # In this process: chDB's data path is this process's (test_restore_refuses_... runs
        # the commands on the server).
        made = backup(store, tmp_path / "b")
        assert made == verify(tmp_path / "b")
        assert {t.name for t in made.tables} == set(before)
        for table in made.tables:
            assert table.rows == len(before[table.name]), table.name

        store.execute(f"DROP DATABASE {store.database}")
        restore(store, tmp_path / "b")

        assert every_table(store) == before
        assert migrate(store).applied == []  # schema_migrations came back too
        # The offset ledger came back: a projector resumes where the backup was taken.
        project_all(settings, store)
        assert contents(store) == live
        assert physical_rows(store) == appended
    finally:
        store.close()


@pytest.mark.integration
def test_a_damaged_backup_is_refused_naming_the_file_before_anything_is_created(
    any_store: ClickHouseStore, tmp_path: Path
) -> None:
    store = any_store
    migrate(store)
    store.insert("orders", ("order_id", "status", "version"), [("o-1", "accepted", 1)])
    backup(store, tmp_path / "b")
    store.execute(f"DROP DATABASE {store.database}")

    def databases() -> set[str]:
        return {str(name) for (name,) in store.query("SELECT name FROM system.databases")}

    damaged = tmp_path / "b" / "orders.rowbinary"
    content = bytearray(damaged.read_bytes())
    content[len(content) // 2] ^= 0x01
    damaged.write_bytes(bytes(content))
    with pytest.raises(BackupDamaged, match=r"orders\.rowbinary: SHA-256"):
        restore(store, tmp_path / "b")
    assert store.database not in databases()

    damaged.write_bytes(bytes(content[:-3]))
    with pytest.raises(BackupDamaged, match=r"orders\.rowbinary: \d+ bytes, the manifest says"):
        restore(store, tmp_path / "b")
    damaged.unlink()
    with pytest.raises(BackupDamaged, match=r"orders\.rowbinary: missing"):
        restore(store, tmp_path / "b")
    manifest = tmp_path / "b" / "manifest.json"
    manifest.write_text(manifest.read_text()[:100])
    with pytest.raises(BackupDamaged, match=r"manifest\.json: unreadable"):
        restore(store, tmp_path / "b")
    assert store.database not in databases()


@pytest.mark.integration
def test_the_commands_restore_refuse_a_database_with_the_tables_and_name_a_damaged_file(
    isolated_settings: Settings, store: ClickHouseStore, tmp_path: Path
) -> None:
    migrate(store)
    store.insert("stock_levels", ("sku", "location", "on_hand"), [("SKU-1", "W1", 7)])
    made = oms("backup", str(tmp_path / "b"), settings=isolated_settings)
    assert made.returncode == 0, made.stderr
    assert "backed up" in made.stdout and "stock_levels" in made.stdout
    refused = oms("restore", str(tmp_path / "b"), settings=isolated_settings)
    assert refused.returncode == 1 and "already has" in refused.stderr
    again = oms("backup", str(tmp_path / "b"), settings=isolated_settings)
    assert again.returncode != 0 and "not empty" in again.stderr

    store.execute(f"DROP DATABASE {store.database}")
    restored = oms("restore", str(tmp_path / "b"), settings=isolated_settings)
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert store.query(f"SELECT sku, on_hand FROM {store.database}.stock_levels") == [("SKU-1", 7)]
    store.execute(f"DROP DATABASE {store.database}")

    (tmp_path / "b" / "stock.sql").write_text("CREATE TABLE nothing")
    refused = oms("restore", str(tmp_path / "b"), settings=isolated_settings)
    assert refused.returncode == 1
    assert f"{tmp_path / 'b' / 'stock.sql'}: " in refused.stderr
    checked = oms("restore", "--check", str(tmp_path / "b"), settings=isolated_settings)
    assert checked.returncode == 1 and "stock.sql" in checked.stderr


def test_rows_are_counted_by_walking_the_rowbinary_of_their_types() -> None:
    row = (
        b"\x05hello"  # String
        + b"\x00\x2a\x00\x00\x00"  # Nullable(UInt32) 42
        + b"\x01"  # Nullable(UInt32) NULL
        + b"\x02" + b"\x01\x00\x00\x00\x00\x00\x00\x00" * 2  # Array(Int64) [1, 1]
        + b"\x01\x03abc"  # Array(String) ['abc']
        + b"\x00\x00\x00\x00"  # DateTime
    )  # fmt: skip
    types = ["String", "Nullable(UInt32)", "Nullable(UInt32)", "Array(Int64)",
             "Array(String)", "DateTime('UTC')"]  # fmt: skip
    assert count_rows(row * 3, types) == 3
    assert count_rows(b"", types) == 0
    with pytest.raises(ValueError, match="ends inside a row"):
        count_rows(row * 2 + row[:-1], types)
    with pytest.raises(ValueError, match="no RowBinary reader for type Map"):
        count_rows(row, ["Map(String, UInt8)"])
    assert count_rows(b"\x01\x02" * 4, ["Decimal(9, 2)"]) == 2


def test_the_ddl_is_replayed_into_the_database_restored_into() -> None:
    old_server = "CREATE TABLE shop.orders ( order_id String) ENGINE = MergeTree ORDER BY order_id"
    assert _ddl_for(old_server, source="shop", target="shop2").startswith(
        "CREATE TABLE shop2.orders ( order_id String)"
    )
    current = "CREATE TABLE shop.orders\n(\n    `order_id` String\n)\nENGINE = MergeTree"
    assert _ddl_for(current, source="shop", target="x").startswith("CREATE TABLE x.orders\n(")
    distributed = (
        "CREATE TABLE shop.orders_all ( order_id String) "
        "ENGINE = Distributed(oms, shop, orders, cityHash64(order_id))"
    )
    assert _ddl_for(distributed, source="shop", target="x").endswith(
        "ENGINE = Distributed(oms, x, orders, cityHash64(order_id))"
    )


def test_the_manifest_lists_each_file_with_its_size_and_checksum(tmp_path: Path) -> None:
    from projections.backup import FileEntry, Manifest, TableEntry

    manifest = Manifest(
        database="shop",
        created_at="2026-12-06T10:00:00Z",
        server_version="18.16.1",
        tables=(
            TableEntry(
                "orders",
                "ReplacingMergeTree",
                (("order_id", "String"),),
                3,
                FileEntry("orders.sql", 10, "ab"),
                FileEntry("orders.rowbinary", 30, "cd"),
            ),
        ),
    )
    kept = json.loads(manifest.to_json())
    assert kept["tables"][0]["data"] == {"name": "orders.rowbinary", "size": 30, "sha256": "cd"}
    assert Manifest.from_json(manifest.to_json()) == manifest
