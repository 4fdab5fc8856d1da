"""Versioned DDL: numbered migrations, recorded in schema_migrations, on both backends."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from infra.settings import Settings
from projections.schema import (
    MIGRATIONS,
    READ_MODELS,
    MigrationError,
    applied_migrations,
    load_migrations,
    migrate,
)
from projections.store import ClickHouseStore, sql_string
from tests.conftest import settings_env

LABELS = [m.label for m in MIGRATIONS]


def test_migration_files_must_be_numbered_without_gaps(tmp_path: Path) -> None:
    (tmp_path / "001_first.sql").write_text("SELECT 1;\n")
    (tmp_path / "003_third.sql").write_text("SELECT 1;\n")
    with pytest.raises(MigrationError, match="without gaps"):
        load_migrations(tmp_path)


@pytest.mark.integration
def test_migrate_applies_each_migration_once_and_then_nothing(any_store: ClickHouseStore) -> None:
    assert migrate(any_store).applied == LABELS
    again = migrate(any_store)
    assert (again.applied, again.already) == ([], LABELS)
    assert sorted(applied_migrations(any_store)) == [m.version for m in MIGRATIONS]


@pytest.mark.integration
def test_tables_have_exactly_the_columns_the_projector_writes(any_store: ClickHouseStore) -> None:
    migrate(any_store)
    for model in READ_MODELS:
        rows = any_store.query(
            "SELECT name FROM system.columns WHERE "
            f"database = {sql_string(any_store.database)} AND table = {sql_string(model.name)}"
        )
        assert sorted(name for (name,) in rows) == sorted(model.columns), model.name


@pytest.mark.integration
def test_a_database_from_before_migrations_is_upgraded_and_a_half_applied_one_finished(
    any_store: ClickHouseStore,
) -> None:
    db = any_store.database
    first, second = MIGRATIONS[0], MIGRATIONS[1]
    # The tables the first projector created, without a schema_migrations table, with a row.
    any_store.execute(f"CREATE DATABASE IF NOT EXISTS {db}")
    for statement in first.statements:
        any_store.execute(statement.replace("{database}", db))
    any_store.execute(
        f"INSERT INTO {db}.orders (order_id, status, total, placed_at, version) "
        "SELECT 'old-1', 'accepted', 6100, toDateTime('2026-01-01 00:00:00'), 2"
    )
    # ... and a migration that stopped half-way (a crash between two ALTERs).
    for statement in second.statements[:5]:
        any_store.execute(statement.replace("{database}", db))

    report = migrate(any_store)

    assert report.applied == LABELS  # none was recorded, so each runs; none fails
    assert any_store.query(
        f"SELECT order_id, total, location, promised_at, line_skus, placed_at "
        f"FROM {db}.orders FINAL"
    ) == [("old-1", 6100, "", None, [], datetime(2026, 1, 1))]


@pytest.mark.integration
def test_oms_project_migrate_says_which_migrations_it_applied(
    isolated_settings: Settings,
) -> None:
    def run() -> str:
        done = subprocess.run(
            [sys.executable, "-m", "oms.cli", "project", "--migrate"],
            env=settings_env(isolated_settings),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    first = run()
    assert [line.split()[1] for line in first.splitlines() if line.startswith("applied")] == LABELS
    assert f"{len(LABELS)} migration(s) applied, 0 already in place" in first
    assert f"0 migration(s) applied, {len(LABELS)} already in place" in run()
