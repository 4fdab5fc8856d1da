"""The order pipeline, intake → routed: sustained orders/s and latency at a fixed rate, next to a
pass-through Faust agent on the same broker in the same run; with `profile`, where the worker's
main thread spends its time.

Targets (docs/architecture.md): >= 2,000 orders/s sustained; p99 <= 200 ms at 500 orders/s.
Times are Kafka's CreateTime stamps of the intake message and of the order's `OrderRouted`
(both written on this machine, so one clock). The paced run starts once the worker has finished
the sustained run's orders (all prioritised), so its latencies are not the backlog's.
`oms bench pipeline --profile` runs the worker under cProfile (it costs about half the
throughput, so a profiled run's figures are not the worker's); `OMS_BENCH_PROCESSES=N` runs
`oms worker --processes N`.
"""

from __future__ import annotations

import json
import os
import pstats
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

from bench.kafka_tools import scratch_topics
from events.codec import AvroCodec
from events.models import (
    Actor,
    ActorKind,
    Address,
    Customer,
    OrderLine,
    OrderMode,
    OrderReceived,
    PaymentStatus,
    deterministic_id,
    utc_now,
)
from infra.kafka import admin_config, consumer_config, producer_config
from infra.keystore import private_codec
from infra.settings import Settings
from oms import operations
from streams.reference import DEFAULT_FILE, load_catalogue

THROUGHPUT_TARGET_PER_S = 2000
P99_TARGET_MS = 200.0
CODEC = AvroCodec()


def bench_catalogue(path: Path) -> Path:
    """The demo catalogue without capacity limits (a bench puts a day's orders in one slot)."""
    document = json.loads(DEFAULT_FILE.read_text())
    for location in document["locations"]:
        location["capacity_per_slot"] = 0
    path.write_text(json.dumps(document, ensure_ascii=False))
    return path


def orders(count: int, *, run: str, seed: int = 3) -> list[OrderReceived]:
    """Restaurant deliveries (made to order) and, one in five, stocked goods shipped."""
    rng = random.Random(seed)
    catalogue = load_catalogue()
    stores = [loc for loc in catalogue.locations.values() if loc.kind == "store"]
    dishes = [p for p in catalogue.products.values() if not p.stock_tracked]
    now = utc_now()
    made: list[OrderReceived] = []
    for n in range(count):
        ship = n % 5 == 0
        store = stores[n % len(stores)]
        pool = [catalogue.products["TEA-GIFT-M"]] if ship else dishes
        lines = [
            OrderLine(
                sku=p.sku, name=p.name, quantity=rng.randint(1, 2), unit_price=p.unit_price or 0
            )
            for p in rng.sample(pool, k=1 if ship else rng.randint(1, 3))
        ]
        fee = 0 if ship else 500
        made.append(
            OrderReceived(
                event_id=deterministic_id(run, str(n)),
                order_id=f"{run}-{n}",
                sequence=1,
                occurred_at=now,
                recorded_at=now,
                correlation_id=f"{run}-{n}",
                actor=Actor(kind=ActorKind.CHANNEL, id="meituan"),
                channel="meituan",
                external_id=f"{run}-{n}",
                mode=OrderMode.SHIP if ship else OrderMode.DELIVERY,
                currency="CNY",
                lines=lines,
                delivery_fee=fee,
                total=sum(line.quantity * line.unit_price for line in lines) + fee,
                payment_status=PaymentStatus.PAID,
                customer=Customer(name="顾客", phone=f"+86137{n:08d}"),
                address=Address(
                    text=f"{n} 南京东路", latitude=store.latitude + 0.004, longitude=store.longitude
                ),
                location_hint=None if ship else store.id,
                placed_at=now - timedelta(seconds=5),
            )
        )
    return made


def worker_env(settings: Settings, catalogue: Path) -> dict[str, str]:
    """The environment of a process a bench starts (`oms worker`, `oms project`): the caller's,
    with no OMS_ variable of its own, pointed at `settings`' broker, group and topics and at
    `catalogue`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMS_")}
    env |= {
        "OMS_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "OMS_HOME": str(settings.home),
        "OMS_CONSUMER_GROUP": settings.consumer_group,
        "OMS_KAFKA_PARTITIONS": str(settings.kafka_partitions),
        "OMS_CATALOGUE_FILE": str(catalogue),
    }
    env |= {f"OMS_TOPIC_{k.upper()}": v for k, v in settings.topics.model_dump().items()}
    return env


@contextmanager
def bench_process(
    args: list[str], env: dict[str, str], *, log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """`args` running in its own session while the block runs, then stopped with SIGTERM (killed
    after 60 s); its output goes to `log` (kept for a look afterwards)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        process = subprocess.Popen(
            args, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class Watcher:
    """Follows a topic from its start, noting when each wanted event shows up (by the type in
    the wire header and the key: nothing is decoded, so the bench takes little CPU from the
    worker on the same cores)."""

    def __init__(self, settings: Settings, topic: str) -> None:
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        self.consumer = Consumer(
            consumer_config(
                settings.kafka_bootstrap,
                group_id=f"watch-{time.time_ns()}",
                **{"fetch.wait.max.ms": 10},
            )
        )
        partitions = self.consumer.list_topics(topic, timeout=10).topics[topic].partitions
        self.consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        self.seen: dict[str, float] = {}  # key -> Kafka timestamp (s)
        self.also: dict[str, dict[str, float]] = {}  # other event types: key -> timestamp

    def follow(
        self, want: str | None, *, until: int, timeout_s: float, kind: str | None = None
    ) -> None:
        """Until `until` keys are seen with `want` (any message when None), or — with `kind` —
        with that other event type."""
        seen = self.seen if kind is None else self.also.setdefault(kind, {})
        deadline = time.monotonic() + timeout_s
        while len(seen) < until:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(seen)} of {until} seen in {timeout_s:.0f}s")
            for message in self.consumer.consume(num_messages=5000, timeout=0.2):
                if message.error() is not None:
                    continue
                if want is None:
                    key = f"{message.partition()}:{message.offset()}"
                    self.seen.setdefault(key, message.timestamp()[1] / 1000)
                    continue
                event_type = CODEC.event_type_of(message.value() or b"")
                if event_type == want:
                    into = self.seen
                elif event_type is not None and event_type in self.also:
                    into = self.also[event_type]
                else:
                    continue
                key = (message.key() or b"").decode()  # the order id
                into.setdefault(key, message.timestamp()[1] / 1000)

    def close(self) -> None:
        self.consumer.close()


def wait_for_group(settings: Settings, *, members: int, timeout_s: float) -> None:
    """Until the worker group is stable with `members` members: a worker joining later would
    rebalance the group in the middle of the measurement."""
    from confluent_kafka import ConsumerGroupState
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(admin_config(settings.kafka_bootstrap))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        group = settings.consumer_group
        found = admin.describe_consumer_groups([group])[group].result(10)
        if found.state == ConsumerGroupState.STABLE and len(found.members) == members:
            return
        time.sleep(0.5)
    raise RuntimeError(f"group {settings.consumer_group} not stable with {members} members")


def publish_orders(
    settings: Settings, topic: str, batch: list[OrderReceived], *, rate: float | None
) -> dict[str, float]:
    """Publish, paced at `rate` per second (None: as fast as possible); returns each order's
    send time. Orders are sealed and encoded before the first is sent."""
    from confluent_kafka import Producer

    # As the channels' publisher, without idempotence or compression (as measured before).
    producer = Producer(
        producer_config(
            settings.kafka_bootstrap,
            **{"linger.ms": 1, "enable.idempotence": False, "compression.type": "none"},
        )
    )
    # Sealed under each customer's data key, as a channel's publisher writes them (keys made
    # together first): the worker opens them as it would in production.
    codec = private_codec(settings)
    codec.prepare(batch)
    encoded = [(o.order_id, codec.encode(o)) for o in batch]
    sent: dict[str, float] = {}
    begin = time.perf_counter()
    for n, (order_id, value) in enumerate(encoded):
        if rate is not None:
            delay = begin + n / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        sent[order_id] = time.time()
        producer.produce(topic, key=order_id.encode(), value=value)
        producer.poll(0)
    producer.flush(60)
    return sent


def percentile(values: list[float], p: float) -> float:
    """The `p`th percentile of `values` (nearest rank, no interpolation)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def pipeline(
    settings: Settings, *, count: int, rate: float, seconds: float, profile: Path | None
) -> dict[str, Any]:
    """The sustained and paced runs through `oms worker`; with `profile`, the worker writes its
    cProfile statistics there."""
    with tempfile.TemporaryDirectory() as tmp, scratch_topics(settings, "benchpipe") as scratch:
        catalogue = bench_catalogue(Path(tmp) / "catalogue.json")
        env = worker_env(scratch, catalogue)
        if profile is not None:
            env["OMS_PROFILE"] = str(profile)
        operations.send(
            scratch, operations.stock_receive("TEA-GIFT-M", "WH-SH", quantity=10**7, actor="bench")
        )
        # The stock the shipped orders need is in the ledger before they come (else some are
        # rightly out of stock and never routed).
        stocked = Watcher(scratch, scratch.topics.inventory)
        routed = Watcher(scratch, scratch.topics.orders)
        done = "OrderPrioritised"
        routed.also[done] = {}
        log = settings.home / "bench" / "pipeline-worker.log"
        processes = os.environ.get("OMS_BENCH_PROCESSES", "1")
        worker = [sys.executable, "-m", "oms.cli", "worker", "--processes", processes]
        with bench_process(worker, env, log=log):
            wait_for_group(scratch, members=int(processes), timeout_s=120)
            stocked.follow(None, until=1, timeout_s=120)
            stocked.close()
            warm = orders(50, run="warm")
            publish_orders(scratch, scratch.topics.intake, warm, rate=None)
            routed_want = "OrderRouted"
            routed.follow(routed_want, until=len(warm), timeout_s=120)

            load = orders(count, run="sustained")
            sent = publish_orders(scratch, scratch.topics.intake, load, rate=None)
            started = min(sent.values())  # the clock starts at the first order, once encoded
            routed.follow(routed_want, until=len(warm) + count, timeout_s=600)
            last = max(routed.seen[o.order_id] for o in load)
            sustained = count / (last - started)
            # The worker is done with them (shipped orders still reserve stock after routing).
            routed.follow(routed_want, until=len(warm) + count, timeout_s=600, kind=done)

            paced = orders(int(rate * seconds), run="paced")
            sent = publish_orders(scratch, scratch.topics.intake, paced, rate=rate)
            routed.follow(routed_want, until=len(warm) + count + len(paced), timeout_s=300)
            latencies = [(routed.seen[o.order_id] - sent[o.order_id]) * 1000 for o in paced]
        routed.close()
    return {
        "orders": count,
        "orders_per_s": sustained,
        "processes": int(processes),
        "profiled": "OMS_PROFILE" in env,
        "target_orders_per_s": THROUGHPUT_TARGET_PER_S,
        "meets_throughput_target": sustained >= THROUGHPUT_TARGET_PER_S,
        "rate_per_s": rate,
        "paced_orders": len(latencies),
        "p50_ms": percentile(latencies, 50),
        "p90_ms": percentile(latencies, 90),
        "p99_ms": percentile(latencies, 99),
        "max_ms": max(latencies),
        "target_p99_ms": P99_TARGET_MS,
        "meets_latency_target": percentile(latencies, 99) <= P99_TARGET_MS,
    }


def passthrough(settings: Settings, *, count: int) -> dict[str, Any]:
    """The same broker's floor: a Faust agent that forwards each message and decides nothing."""
    with scratch_topics(settings, "benchpass") as scratch:
        source, sink = scratch.topics.intake, scratch.topics.orders
        args = [
            sys.executable,
            "-m",
            "bench.passthrough",
            source,
            sink,
            scratch.consumer_group,
            scratch.kafka_bootstrap,
            str(settings.home / "bench" / "passthrough-data"),
        ]
        out = Watcher(scratch, sink)
        log = settings.home / "bench" / "passthrough-worker.log"
        with bench_process(args, dict(os.environ), log=log):
            warm = orders(50, run="warm")
            publish_orders(scratch, source, warm, rate=None)
            out.follow(None, until=len(warm), timeout_s=120)
            load = orders(count, run="load")
            started = min(publish_orders(scratch, source, load, rate=None).values())
            out.follow(None, until=len(warm) + count, timeout_s=600)
            last = max(out.seen.values())
        out.close()
    return {"events": count, "events_per_s": count / (last - started)}


def where_time_goes(profile: Path, *, top: int = 12) -> list[dict[str, Any]]:
    """The worker's main thread, by own time: the functions it spends most in."""
    stats = pstats.Stats(str(profile))
    rows = []
    entries = stats.stats.items()  # type: ignore[attr-defined]
    for (file, line, name), (_, calls, own, cumulative, _) in entries:
        rows.append(
            {
                "function": f"{Path(file).parent.name}/{Path(file).name}:{line} {name}",
                "calls": calls,
                "own_s": round(own, 3),
                "cumulative_s": round(cumulative, 3),
            }
        )
    rows.sort(key=lambda r: r["own_s"], reverse=True)
    total = sum(r["own_s"] for r in rows) or 1.0
    for row in rows:
        row["share"] = round(row["own_s"] / total, 3)
    return rows[:top]


def run(
    settings: Settings, *, orders_count: int, rate: float, seconds: float, profile: bool = False
) -> dict[str, Any]:
    """The pipeline's figures next to the pass-through agent's; `profile` runs the worker under
    cProfile (slower: for where the time goes, not for the figures)."""
    with tempfile.TemporaryDirectory() as tmp:
        stats = Path(tmp) / "worker.prof" if profile else None
        figures = pipeline(settings, count=orders_count, rate=rate, seconds=seconds, profile=stats)
        figures["profile_top"] = (
            where_time_goes(stats) if stats is not None and stats.exists() else []
        )
    figures["passthrough"] = passthrough(settings, count=orders_count)
    figures["ratio_to_passthrough"] = (
        figures["orders_per_s"] / figures["passthrough"]["events_per_s"]
    )
    return figures


def report(figures: dict[str, Any]) -> list[str]:
    f = figures
    lines = [
        f"pipeline intake -> routed, {f['orders']:,} orders, {f['processes']} worker process(es)"
        f"{', profiled' if f['profiled'] else ''}: {f['orders_per_s']:,.0f} orders/s  "
        f"{'meets' if f['meets_throughput_target'] else 'BELOW'} target "
        f"{THROUGHPUT_TARGET_PER_S:,}/s",
        f"  pass-through Faust agent, same broker: {f['passthrough']['events_per_s']:,.0f} "
        f"events/s (ours = {f['ratio_to_passthrough']:.0%} of it)",
        f"latency at {f['rate_per_s']:.0f} orders/s ({f['paced_orders']:,} orders): "
        f"p50 {f['p50_ms']:.0f} ms, p90 {f['p90_ms']:.0f} ms, p99 {f['p99_ms']:.0f} ms, "
        f"max {f['max_ms']:.0f} ms  {'meets' if f['meets_latency_target'] else 'BELOW'} "
        f"target p99 <= {P99_TARGET_MS:.0f} ms",
    ]
    if not f["profiled"]:
        return [*lines, "(--profile shows where the worker's main thread spends its time)"]
    lines.append("where the worker's main thread spends its time (own time):")
    lines += [
        f"  {r['share']:>5.1%}  {r['own_s']:>7.2f} s  {r['calls']:>9,}  {r['function']}"
        for r in f["profile_top"]
    ]
    return lines
