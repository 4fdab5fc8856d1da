"""Fault test: `oms project` killed with SIGKILL mid-run and restarted counts nothing twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from oms.settings import Settings
from projections.store import ClickHouseStore
from tests.conftest import settings_env
from tests.projections.test_projector import publish_orders

pytestmark = [pytest.mark.integration, pytest.mark.fault]
ORDERS = 3000


def start_projector(settings: Settings) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "oms.cli", "project", "--batch-size", "250"],
        env=settings_env(settings),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def ledger_rows(store: ClickHouseStore) -> int:
    try:
        return int(store.query(f"SELECT count() FROM {store.database}.order_events")[0][0])
    except Exception:  # noqa: BLE001 - the table may not exist before the first start
        return 0


def wait_for(check, *, timeout_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_projector_killed_mid_run_leaves_every_order_exactly_once(
    isolated_settings: Settings, store: ClickHouseStore
) -> None:
    settings = isolated_settings
    if not settings.resolved_clickhouse_url.startswith("clickhouse://"):
        pytest.fail("this test needs the ClickHouse server (a second process shares it)")
    accepted_total = publish_orders(settings, ORDERS)
    events = 2 * ORDERS
    for kill_after in (800, 3500):
        projector = start_projector(settings)
        wait_for(
            lambda k=kill_after: ledger_rows(store) >= k,
            timeout_s=120,  # type: ignore[misc]
            what=f"{kill_after} projected events",
        )
        os.killpg(projector.pid, signal.SIGKILL)
        projector.wait()
        assert ledger_rows(store) < events, "the projector finished before it could be killed"
    projector = start_projector(settings)
    try:
        wait_for(lambda: ledger_rows(store) >= events, timeout_s=120, what="catch-up")
        time.sleep(1.0)  # a duplicate batch, if any, would land now
    finally:
        os.killpg(projector.pid, signal.SIGTERM)
        projector.wait(timeout=30)
    db = store.database
    assert store.query(f"SELECT count(), uniqExact(event_id) FROM {db}.order_events") == [
        (events, events)
    ]
    assert store.query(
        f"SELECT status, count(), sum(total) FROM {db}.orders FINAL GROUP BY status ORDER BY status"
    ) == [("accepted", ORDERS * 4 // 5, accepted_total), ("rejected", ORDERS // 5, ORDERS // 5)]
