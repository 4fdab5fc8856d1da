"""`oms project --rebuild`: replay into fresh tables, swap them in atomically; rebuilt = live."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from confluent_kafka import Producer

from infra.settings import Settings
from projections.rebuild import rebuild, staging_database
from projections.schema import READ_MODEL_NAMES
from projections.store import ClickHouseStore, connect, sql_string
from tests.conftest import settings_env
from tests.projections.conftest import contents, physical_rows, project_all
from tests.projections.scenario import Scenario, build

pytestmark = pytest.mark.integration


def tables_of(store: ClickHouseStore, database: str) -> list[str]:
    rows = store.query(f"SELECT name FROM system.tables WHERE database = {sql_string(database)}")
    return sorted(name for (name,) in rows)


def plant_rows_the_log_does_not_have(store: ClickHouseStore) -> None:
    db = store.database
    store.execute(f"INSERT INTO {db}.orders (order_id, status, version) SELECT 'ghost', 'held', 9")
    store.execute(f"INSERT INTO {db}.stock (sku, location, sequence) SELECT 'GHOST', 'W9', 1")


def test_rebuilt_tables_equal_the_live_ones_and_replace_them(backend_settings: Settings) -> None:
    settings = backend_settings
    scenario = build(orders=120, stock_events=200, seed=5, duplicates=0.03)
    scenario.publish(settings)
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    producer.produce(settings.topics.inventory, key=b"bad", value=b"\x00garbage")
    producer.flush(10)
    store = connect(settings.resolved_clickhouse_url)
    try:
        project_all(settings, store, batch_size=200)
        live = contents(store)
        live_rows = physical_rows(store)
        plant_rows_the_log_does_not_have(store)

        report = rebuild(settings=settings, store=store, batch_size=5000, batch_seconds=0.2)

        assert report.events == scenario.messages + 1
        assert report.swap == (
            "RENAME" if "clickhouse://" in settings.resolved_clickhouse_url else "EXCHANGE"
        )
        rebuilt = contents(store)
        for table in READ_MODEL_NAMES:
            assert rebuilt[table] == live[table], table
        assert physical_rows(store) == live_rows
        assert staging_database(store.database) not in {
            name for (name,) in store.query("SELECT name FROM system.databases")
        }
        assert "schema_migrations" in tables_of(store, store.database)

        # The projector carries on from the swapped-in tables: re-sent events change nothing.
        Scenario(scenario.order_histories, {}, scenario.order_log[:40], []).publish(settings)
        project_all(settings, store)
        after = contents(store)
        assert after.pop("projector_offsets") != rebuilt.pop("projector_offsets")
        # The re-sent copy is the row FINAL keeps now (a later offset); the events are the same.
        assert [row[:9] for row in after.pop("order_events")] == [
            row[:9] for row in rebuilt.pop("order_events")
        ]
        assert after == rebuilt
    finally:
        store.close()


def test_a_running_projector_steps_aside_for_the_swap_and_resumes_on_the_new_tables(
    isolated_settings: Settings, store: ClickHouseStore
) -> None:
    settings = isolated_settings
    scenario = build(orders=150, stock_events=150, seed=9)
    half = len(scenario.order_log) // 2
    first = Scenario(scenario.order_histories, {}, scenario.order_log[:half], scenario.stock_log)
    second = Scenario(scenario.order_histories, {}, scenario.order_log[half:], [])
    first.publish(settings)
    live = subprocess.Popen(
        [sys.executable, "-m", "oms.cli", "project", "--batch-size", "200"],
        env=settings_env(settings),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        wait_until_projected(store, first.messages)
        plant_rows_the_log_does_not_have(store)
        done = subprocess.run(
            [sys.executable, "-m", "oms.cli", "project", "--rebuild"],
            env=settings_env(settings),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        assert f"from {first.messages:,} messages" in done.stdout
        assert "swapped in with RENAME" in done.stdout
        second.publish(settings)  # the live projector, paused for the swap, takes these
        wait_until_projected(store, scenario.messages)
        assert live.poll() is None
    finally:
        os.killpg(live.pid, signal.SIGKILL)
        live.wait()
        assert live.stderr is not None
        said = live.stderr.read().decode()
        live.stderr.close()
    assert "a rebuild is swapping in new tables; pausing until it is done" in said
    clean = store.with_database(store.database + "_clean")
    try:
        project_all(settings, clean)
        assert contents(store) == contents(clean)
        assert physical_rows(store) == physical_rows(clean)
    finally:
        clean.execute(f"DROP DATABASE IF EXISTS {clean.database}")
        clean.close()


def wait_until_projected(store: ClickHouseStore, messages: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            rows = store.query(
                f"SELECT max(_offset) + 1 FROM {store.database}.projector_offsets "
                "GROUP BY _topic, _partition"
            )
        except Exception:  # noqa: BLE001 - not created yet
            rows = []
        if sum(int(n) for (n,) in rows) >= messages:
            return
        time.sleep(0.05)
    pytest.fail(f"{messages} messages not projected within {timeout_s}s")
