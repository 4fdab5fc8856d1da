"""Fault test: `oms project` SIGKILLed at random points of a 20,000-event run over both topics,
restarted each time; every table then holds what the log says — counted here in Python."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable

import pytest
from confluent_kafka import Producer

from events.models import StockCommitted
from infra.settings import Settings
from projections.store import ClickHouseStore
from tests.conftest import settings_env
from tests.projections.scenario import (
    Scenario,
    all_order_facts,
    build,
    distinct_events,
    stock_facts,
)

pytestmark = [pytest.mark.integration, pytest.mark.fault]
CORRUPT = [b"\x00\x00\x00\x00\x01\xff\xff", b"not avro at all"]


def start_projector(settings: Settings) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "oms.cli", "project", "--batch-size", "1500"],
        env=settings_env(settings),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def projected(store: ClickHouseStore) -> int:
    """Messages the offset ledger says are fully written (0 before the first batch)."""
    try:
        rows = store.query(
            f"SELECT max(_offset) + 1 FROM {store.database}.projector_offsets "
            "GROUP BY _topic, _partition"
        )
    except Exception:  # noqa: BLE001 - the table may not exist before the first start
        return 0
    return sum(int(n) for (n,) in rows)


def wait_for(check: Callable[[], bool], *, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_projector_killed_at_random_points_leaves_every_table_exact(
    isolated_settings: Settings, store: ClickHouseStore
) -> None:
    settings = isolated_settings
    if not settings.resolved_clickhouse_url.startswith("clickhouse://"):
        pytest.fail("this test needs the ClickHouse server (a second process shares it)")
    scenario = build(orders=1910, stock_events=4400, seed=3)
    scenario.publish(settings)
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    for raw in CORRUPT:
        producer.produce(settings.topics.orders, key=b"bad", value=raw)
    assert producer.flush(10) == 0
    total = scenario.messages + len(CORRUPT)
    assert total >= 20_000

    seed = random.randrange(10**6)
    rng = random.Random(seed)
    kills = sorted(rng.uniform(0.05, 0.9) for _ in range(4))
    torn: list[list[str]] = []
    for fraction in kills:
        projector = start_projector(settings)

        def reached(share: float = fraction) -> bool:
            return projected(store) >= share * total

        wait_for(
            reached,
            timeout_s=90,
            what=f"{fraction:.0%} projected (seed {seed})",
        )
        time.sleep(rng.uniform(0, 0.3))  # somewhere inside a batch's inserts, or between batches
        os.killpg(projector.pid, signal.SIGKILL)
        projector.wait()
        torn.append(torn_tables(store))
    projector = start_projector(settings)
    try:
        wait_for(lambda: projected(store) >= total, timeout_s=90, what=f"catch-up (seed {seed})")
    finally:
        os.killpg(projector.pid, signal.SIGKILL)
        projector.wait(timeout=30)
    print(f"kill seed {seed}; tables ahead of the ledger at each kill: {torn}")
    assert_tables_match_the_log(store, scenario, seed)


def torn_tables(store: ClickHouseStore) -> list[str]:
    """The tables holding rows of a batch the ledger does not have: the kill fell between two
    of that batch's inserts."""
    from projections.schema import READ_MODEL_NAMES

    db = store.database
    ledger = dict(
        ((t, p), o)
        for t, p, o in store.query(
            f"SELECT _topic, _partition, max(_offset) FROM {db}.projector_offsets "
            "GROUP BY _topic, _partition"
        )
    )
    ahead = []
    for table in READ_MODEL_NAMES[:-1]:
        rows = store.query(
            f"SELECT _topic, _partition, max(_offset) FROM {db}.{table} GROUP BY _topic, _partition"
        )
        if any(o > ledger.get((t, p), -1) for t, p, o in rows):
            ahead.append(table)
    return ahead


def one(store: ClickHouseStore, sql: str) -> tuple[object, ...]:
    return store.query(sql.replace("DB.", f"{store.database}."))[0]


def assert_tables_match_the_log(store: ClickHouseStore, scenario: Scenario, seed: int) -> None:
    why = f"(kill seed {seed})"
    order_events = distinct_events(scenario.order_log)
    facts = all_order_facts(scenario)
    sales = [f for f in facts if f.is_sale]

    assert one(store, "SELECT count(), sum(sequence) FROM DB.order_events FINAL") == (
        len(order_events),
        sum(e.sequence for e in order_events),
    ), why
    by_status = Counter(f.status for f in facts)
    assert (
        dict(
            store.query(
                f"SELECT status, count() FROM {store.database}.orders FINAL GROUP BY status"
            )
        )
        == by_status
    ), why
    assert one(
        store,
        "SELECT count(), sum(total), sum(is_sale), sum(held), sum(priority_score), "
        "sum(cancelled) FROM DB.orders FINAL",
    ) == (
        len(facts),
        sum(f.total for f in facts),
        len(sales),
        sum(f.held for f in facts),
        sum(f.priority_score for f in facts),
        sum(f.cancelled for f in facts),
    ), why
    assert one(
        store,
        "SELECT sum(quantity), sum(revenue), count(), sum(quantity_millionths), "
        "countIf(unit = 'kg') FROM DB.order_lines FINAL WHERE is_sale = 1",
    ) == (
        sum(q for f in sales for _, _, q, _ in f.lines),
        sum(sum(f.line_amounts) for f in sales),  # what the channels state the lines cost
        sum(len(f.lines) for f in sales),
        sum(m for f in sales for _, m in f.line_measures),  # exact, by weight or each
        sum(unit == "kg" for f in sales for unit, _ in f.line_measures),
    ), why
    stages = [s for f in facts for s in f.stages]
    closed = [(entered, left) for _, entered, left in stages if left is not None]
    assert one(
        store,
        "SELECT count(), countIf(left_at IS NOT NULL), sum(seconds) "
        "FROM DB.fulfilment_stages FINAL",
    ) == (
        len(stages),
        len(closed),
        sum(int((left - entered).total_seconds()) for entered, left in closed),
    ), why
    amounts = sum(
        getattr(e, "total", 0)
        for e in order_events
        if type(e).__name__ in ("OrderReceived", "OrderModified", "OrderAccepted")
    ) + sum(getattr(e, "amount", 0) for e in order_events if type(e).__name__ == "OrderRefunded")
    assert one(store, "SELECT sum(events), sum(amount) FROM DB.order_activity_per_minute") == (
        len(order_events),
        amounts,
    ), why

    stock_events = distinct_events(scenario.stock_log)
    committed = sum(e.quantity for e in stock_events if isinstance(e, StockCommitted))
    assert one(
        store, "SELECT count(), sumIf(quantity, event_type = 'StockCommitted') FROM DB.stock"
    ) == (len(stock_events), committed), why
    levels = {key: stock_facts(events) for key, events in scenario.stock_histories.items()}
    assert sorted(
        store.query(
            f"SELECT sku, location, on_hand, reserved, available "
            f"FROM {store.database}.stock_levels FINAL"
        )
    ) == sorted(
        (sku, loc, f.on_hand, f.reserved, f.available) for (sku, loc), f in levels.items()
    ), why

    assert one(store, "SELECT count(), uniqExact(dead_letter_id) FROM DB.dead_letters") == (
        len(CORRUPT),
        len(CORRUPT),
    ), why
