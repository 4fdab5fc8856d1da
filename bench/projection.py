"""The read side: projector events/s into ClickHouse next to a bulk INSERT of the same rows in
the same run, a rebuild of N events, and freshness — channel → visible in ClickHouse — at a
fixed order rate through the real worker and projector.

Targets (docs/architecture.md): projector >= 100,000 events/s; rebuild of 1M events <= 60 s;
freshness p99 <= 1 s at 500 orders/s.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

from bench.kafka_tools import scratch_topics
from bench.pipeline import (
    bench_catalogue,
    bench_process,
    orders,
    percentile,
    publish_orders,
    worker_env,
)
from events.codec import AvroCodec
from events.models import (
    Actor,
    ActorKind,
    FulfilmentGroup,
    LineQuantity,
    OrderAccepted,
    OrderAcceptedByStore,
    OrderCompleted,
    OrderEvent,
    OrderPickedUp,
    OrderPreparing,
    OrderPrioritised,
    OrderReady,
    OrderRouted,
    StockReceived,
    StockReserved,
    deterministic_id,
    utc_now,
)
from infra.kafka import producer_config
from infra.settings import Settings
from projections.projector import Projector
from projections.rebuild import rebuild
from projections.schema import migrate
from projections.store import ClickHouseStore, connect, with_database_url

PROJECTOR_TARGET_PER_S = 100_000
REBUILD_TARGET_S = 60.0
FRESHNESS_P99_TARGET_S = 1.0
SYSTEM = Actor(kind=ActorKind.SYSTEM, id="bench")


def produce_history(
    settings: Settings, *, events: int, finished: float = 0.0, day: timedelta | None = None
) -> int:
    """Order histories for `events // 4` orders onto the scratch topics; returns how many
    events. An order is routed and prioritised (4 events) and waits for the ledger's answer to
    its reservation, which one in five has on the ledger; a `finished` share of them (spread
    evenly) is made to order instead and goes on to be accepted, made, picked up and completed
    (9 events, no stock). With `day`, the orders are spread evenly over the `day` before now
    (else all at now)."""
    from confluent_kafka import Producer

    codec = AvroCodec()
    producer = Producer(
        producer_config(
            settings.kafka_bootstrap,
            **{
                "linger.ms": 20,
                "batch.num.messages": 10000,
                "enable.idempotence": False,
                "acks": 1,
                "queue.buffering.max.messages": 500000,
            },
        )
    )
    count = 0
    ledger_sequence = 1

    def send(topic: str, key: str, value: bytes) -> None:
        nonlocal count
        while True:
            try:
                producer.produce(topic, key=key.encode(), value=value)
                break
            except BufferError:
                producer.poll(0.05)
        count += 1

    now = utc_now()
    receipt = StockReceived(
        event_id=str(uuid.uuid4()),
        sequence=1,
        occurred_at=now,
        recorded_at=now,
        correlation_id="bench",
        actor=SYSTEM,
        sku="TEA-GIFT-M",
        location="WH-SH",
        quantity=10**9,
    )
    send(settings.topics.inventory, "TEA-GIFT-M@WH-SH", codec.encode(receipt))
    n_orders = events // 4
    for n, order in enumerate(orders(n_orders, run=f"hist{uuid.uuid4().hex[:6]}")):
        if day is not None:
            at = now - day + day * (n / n_orders)
            times = {"occurred_at": at, "recorded_at": at, "placed_at": at}
            order = order.model_copy(update=times)
        common: dict[str, Any] = dict(
            occurred_at=order.occurred_at,
            recorded_at=order.recorded_at,
            correlation_id=order.correlation_id,
            actor=SYSTEM,
            order_id=order.order_id,
            channel=order.channel,
            external_id=order.external_id,
        )
        location = order.location_hint or "WH-SH"
        done = int((n + 1) * finished) > int(n * finished)
        lines = [
            LineQuantity(sku=line.sku, quantity=line.quantity, location=None if done else location)
            for line in order.lines
        ]
        history = [
            order,
            OrderAccepted(
                event_id=deterministic_id(order.event_id, "a"),
                sequence=2,
                total=order.total,
                currency=order.currency,
                **common,
            ),
            OrderRouted(
                event_id=deterministic_id(order.event_id, "r"),
                sequence=3,
                location=location,
                reasons=["bench"],
                groups=[FulfilmentGroup(location=location, lines=lines)],
                **common,
            ),
            OrderPrioritised(
                event_id=deterministic_id(order.event_id, "p"),
                sequence=4,
                location=location,
                score=100,
                **common,
            ),
        ]
        if done:
            history += _finished(common, location, sequence=5)
        for event in history:
            send(settings.topics.orders, order.order_id, codec.encode(event))
        if n % 5 == 0 and not done:
            ledger_sequence += 1
            reserved = StockReserved(
                event_id=deterministic_id(order.event_id, "s"),
                sequence=ledger_sequence,
                occurred_at=now,
                recorded_at=now,
                correlation_id=order.order_id,
                actor=SYSTEM,
                sku="TEA-GIFT-M",
                location="WH-SH",
                order_id=order.order_id,
                reservation_id=deterministic_id(order.event_id, "res"),
                quantity=1,
                expires_at=now + timedelta(days=3),
            )
            send(settings.topics.inventory, "TEA-GIFT-M@WH-SH", codec.encode(reserved))
        producer.poll(0)
    producer.flush(120)
    return count


def _finished(common: dict[str, Any], location: str, *, sequence: int) -> list[OrderEvent]:
    """What follows a made-to-order order's prioritisation when its store makes it."""
    steps: list[tuple[type[OrderEvent], dict[str, Any]]] = [
        (OrderAcceptedByStore, {"location": location}),
        (OrderPreparing, {"location": location}),
        (OrderReady, {"location": location}),
        (OrderPickedUp, {"location": location, "picked_up_by": "customer"}),
        (OrderCompleted, {"location": location}),
    ]
    order_id = common["order_id"]
    return [
        kind(
            event_id=deterministic_id(order_id, kind.__name__),
            sequence=sequence + n,
            **common,
            **fields,
        )
        for n, (kind, fields) in enumerate(steps)
    ]


def _database(settings: Settings, name: str) -> ClickHouseStore:
    base = connect(settings.resolved_clickhouse_url)
    store = base.with_database(name)
    store.execute(f"CREATE DATABASE IF NOT EXISTS {name}")
    return store


def projector_rate(settings: Settings, *, events: int) -> dict[str, Any]:
    with scratch_topics(settings, "benchproj") as scratch:
        produced = produce_history(scratch, events=events)
        store = _database(scratch, f"bench_{uuid.uuid4().hex[:8]}")
        try:
            migrate(store)
            # The projector as `oms project` runs it (batches of up to 100,000 events or 0.5 s).
            projector = Projector(settings=scratch, store=store, lease=False)
            seen = 0

            def done(stats: Any) -> bool:
                nonlocal seen
                seen += stats.events + stats.stock_events
                return seen >= produced

            started = time.perf_counter()
            projector.run(until=done)
            elapsed = time.perf_counter() - started
            insert = bulk_insert_rate(store)
            rebuilt = rebuild(settings=scratch, store=store)
        finally:
            store.execute(f"DROP DATABASE IF EXISTS {store.database}")
            store.execute(f"DROP DATABASE IF EXISTS {store.database}__rebuild")
    rate = produced / elapsed
    return {
        "events": produced,
        "events_per_s": rate,
        "elapsed_s": elapsed,
        "target_events_per_s": PROJECTOR_TARGET_PER_S,
        "meets_target": rate >= PROJECTOR_TARGET_PER_S,
        "bulk_insert": insert,
        "ratio_to_bulk_insert": rate / insert["rows_per_s"],
        "rebuild": {
            "events": rebuilt.events,
            "elapsed_s": rebuilt.elapsed_s,
            "events_per_s": rebuilt.events / rebuilt.elapsed_s,
        },
    }


def rebuild_time(settings: Settings, *, events: int) -> dict[str, Any]:
    """`oms project --rebuild` over `events` events: replay into staging tables, swap in."""
    with scratch_topics(settings, "benchrebuild") as scratch:
        produced = produce_history(scratch, events=events)
        store = _database(scratch, f"bench_{uuid.uuid4().hex[:8]}")
        try:
            rebuilt = rebuild(settings=scratch, store=store)  # its own batch size (200k)
            rows = store.query(f"SELECT count() FROM {store.database}.order_events")[0][0]
        finally:
            store.execute(f"DROP DATABASE IF EXISTS {store.database}")
            store.execute(f"DROP DATABASE IF EXISTS {store.database}__rebuild")
    return {
        "events": produced,
        "replayed": rebuilt.events,
        "order_events_rows": rows,
        "elapsed_s": rebuilt.elapsed_s,
        "events_per_s": rebuilt.events / rebuilt.elapsed_s,
        "swap": rebuilt.swap,
        "target_s_per_million": REBUILD_TARGET_S,
        "seconds_per_million": rebuilt.elapsed_s * 1_000_000 / max(rebuilt.events, 1),
        "meets_target": rebuilt.elapsed_s * 1_000_000 / max(rebuilt.events, 1) <= REBUILD_TARGET_S,
    }


def rebuild_report(figures: dict[str, Any]) -> list[str]:
    f = figures
    return [
        f"rebuild of {f['replayed']:,} events ({f['order_events_rows']:,} order_events rows): "
        f"{f['elapsed_s']:.1f} s, {f['events_per_s']:,.0f} events/s, swap by {f['swap']}  "
        f"{'meets' if f['meets_target'] else 'BELOW'} target {REBUILD_TARGET_S:.0f} s per 1M "
        f"({f['seconds_per_million']:.0f} s per 1M)",
    ]


def bulk_insert_rate(store: ClickHouseStore) -> dict[str, Any]:
    """The limit: the projected `order_events` rows sent again in one bulk INSERT per 50k
    rows through the same client, into a table like it."""
    columns, rows = store.query_with_columns(f"SELECT * FROM {store.database}.order_events")
    store.execute(f"DROP TABLE IF EXISTS {store.database}.bench_copy")
    store.execute(f"CREATE TABLE {store.database}.bench_copy AS {store.database}.order_events")
    started = time.perf_counter()
    for start in range(0, len(rows), 50_000):
        store.insert("bench_copy", columns, rows[start : start + 50_000])
    elapsed = time.perf_counter() - started
    return {"rows": len(rows), "columns": len(columns), "rows_per_s": len(rows) / elapsed}


def freshness(settings: Settings, *, rate: float, seconds: float) -> dict[str, Any]:
    """Orders published at `rate`/s through the worker and a projector; each order's time from
    its send to its row being in ClickHouse (polled every 20 ms)."""
    with tempfile.TemporaryDirectory() as tmp, scratch_topics(settings, "benchfresh") as scratch:
        catalogue = bench_catalogue(Path(tmp) / "catalogue.json")
        database = f"bench_{uuid.uuid4().hex[:8]}"
        url = with_database_url(scratch.resolved_clickhouse_url, database)
        if not url.startswith("clickhouse://"):
            raise RuntimeError(
                "freshness needs the ClickHouse server (worker, projector and "
                "this process each read it)"
            )
        store = _database(scratch, database)
        migrate(store)
        env = worker_env(scratch, catalogue) | {"OMS_CLICKHOUSE_URL": url}
        home = settings.home / "bench"
        try:
            worker = [sys.executable, "-m", "oms.cli", "worker"]
            projector = [sys.executable, "-m", "oms.cli", "project", "--batch-seconds", "0.1"]
            with (
                bench_process(worker, env, log=home / "freshness-worker.log"),
                bench_process(projector, env, log=home / "freshness-projector.log"),
            ):
                warm = orders(20, run="warm")
                publish_orders(scratch, scratch.topics.intake, warm, rate=None)
                _wait_visible(store, {o.order_id for o in warm}, timeout_s=120)
                paced = orders(int(rate * seconds), run="fresh")
                visible: dict[str, float] = {}
                watcher = threading.Thread(target=_watch, args=(store, paced, visible), daemon=True)
                watcher.start()
                sent = publish_orders(scratch, scratch.topics.intake, paced, rate=rate)
                watcher.join(timeout=seconds + 120)
        finally:
            store.execute(f"DROP DATABASE IF EXISTS {database}")
    latencies = [visible[o.order_id] - sent[o.order_id] for o in paced if o.order_id in visible]
    return {
        "rate_per_s": rate,
        "orders": len(paced),
        "visible": len(latencies),
        "p50_s": percentile(latencies, 50),
        "p90_s": percentile(latencies, 90),
        "p99_s": percentile(latencies, 99),
        "max_s": max(latencies),
        "target_p99_s": FRESHNESS_P99_TARGET_S,
        "meets_target": len(latencies) == len(paced)
        and percentile(latencies, 99) <= FRESHNESS_P99_TARGET_S,
    }


def _wait_visible(store: ClickHouseStore, ids: set[str], *, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        rows = store.query(
            f"SELECT count() FROM {store.database}.orders WHERE order_id IN "
            f"({', '.join(repr(i) for i in ids)})"
        )
        if rows[0][0] >= len(ids):
            return
        time.sleep(0.2)
    raise RuntimeError("the warm-up orders never reached ClickHouse")


def _watch(store: ClickHouseStore, wanted: list[Any], visible: dict[str, float]) -> None:
    """Note when each order first has a row in `orders` (one query per 20 ms)."""
    prefix = wanted[0].order_id.rsplit("-", 1)[0]
    deadline = time.monotonic() + 600
    while len(visible) < len(wanted) and time.monotonic() < deadline:
        rows = store.query(
            f"SELECT order_id FROM {store.database}.orders WHERE order_id LIKE '{prefix}-%'"
        )
        now = time.time()
        for (order_id,) in rows:
            visible.setdefault(order_id, now)
        time.sleep(0.02)


def run(settings: Settings, *, events: int, rate: float, seconds: float) -> dict[str, Any]:
    return {
        "projector": projector_rate(settings, events=events),
        "freshness": freshness(settings, rate=rate, seconds=seconds),
    }


def report(figures: dict[str, Any]) -> list[str]:
    p, f = figures["projector"], figures["freshness"]
    r = p["rebuild"]
    per_million = 1_000_000 / r["events_per_s"]
    return [
        f"projector, {p['events']:,} events (orders + stock ledger): {p['events_per_s']:,.0f} "
        f"events/s  {'meets' if p['meets_target'] else 'BELOW'} target "
        f"{PROJECTOR_TARGET_PER_S:,}/s",
        f"  bulk INSERT of the same {p['bulk_insert']['rows']:,} order_events rows: "
        f"{p['bulk_insert']['rows_per_s']:,.0f} rows/s (ours = {p['ratio_to_bulk_insert']:.0%})",
        f"rebuild of {r['events']:,} events: {r['elapsed_s']:.1f} s ({r['events_per_s']:,.0f} "
        f"events/s; 1M would take {per_million:.0f} s)  "
        f"{'meets' if per_million <= REBUILD_TARGET_S else 'BELOW'} target "
        f"{REBUILD_TARGET_S:.0f} s per 1M",
        f"freshness at {f['rate_per_s']:.0f} orders/s ({f['visible']:,} of {f['orders']:,} "
        f"visible): p50 {f['p50_s']:.2f} s, p90 {f['p90_s']:.2f} s, p99 {f['p99_s']:.2f} s, "
        f"max {f['max_s']:.2f} s  {'meets' if f['meets_target'] else 'BELOW'} target p99 <= "
        f"{FRESHNESS_P99_TARGET_S:.0f} s",
    ]


if __name__ == "__main__":  # pragma: no cover - `oms bench projection` is the way in
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    subprocess.run([sys.executable, "-m", "oms.cli", "bench", "projection"], check=True)
