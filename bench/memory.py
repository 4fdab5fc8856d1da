"""`oms bench memory`: the worker's resident memory over a long day of orders.

The order and inventory agents' own objects (`OrderPartition`, `LedgerPartition`,
`SharedViews`) and their timers, in one process, without Kafka: orders come in, are decided,
their stock commands go to the ledger and its answers back; every simulated 30 s the expiry
timer and the views' housekeeping run as in the worker (`Worker.expire`). Time is simulated:
a million orders spread over a day (one every 86 ms). One order in five is stocked goods: the
warehouse ships it (accepted, prepared, ready, shipment created, which commits its stock) ten
simulated minutes later; the others are restaurant dishes, made to order.

Resident memory (VmRSS) is sampled every `sample_every` orders. With the order agent's bound
(`orders_in_memory`) it must level off; `--unbounded` runs the same day with no bound and no
pruning, for comparison.
"""

from __future__ import annotations

import gc
import random
import tempfile
import time
from collections import deque
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from bench.pipeline import bench_catalogue
from events.models import (
    Actor,
    ActorKind,
    Address,
    Customer,
    Event,
    OrderAcceptedByStore,
    OrderEvent,
    OrderLine,
    OrderMode,
    OrderPreparing,
    OrderReady,
    OrderReceived,
    PaymentStatus,
    ShipmentCreated,
    StockEvent,
    deterministic_id,
)
from oms import operations
from streams import orders
from streams.fraud import FraudRules
from streams.partitions import LedgerPartition, OrderPartition
from streams.reference import load_catalogue
from streams.worker.spill import SpillFile
from streams.worker.views import SharedViews

START = datetime.fromisoformat("2026-12-01T00:00:00+00:00")
STAFF = Actor(kind=ActorKind.USER, id="warehouse")
TIMER_S = 30  # simulated seconds between two runs of the expiry timer
SHIP_AFTER = timedelta(minutes=10)
FLAT_WITHIN = 0.10  # the bounded run's last sample within 10 % of its sample at 30 %


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def order_stream(count: int, *, seed: int = 7) -> Iterator[OrderReceived]:
    """A day of orders, one at a time (a list of them would be what is measured)."""
    rng = random.Random(seed)
    catalogue = load_catalogue()
    stores = [loc for loc in catalogue.locations.values() if loc.kind == "store"]
    dishes = [p for p in catalogue.products.values() if not p.stock_tracked]
    gift = catalogue.products["TEA-GIFT-M"]
    spacing = timedelta(days=1) / max(count, 1)
    for n in range(count):
        at = START + n * spacing
        ship = n % 5 == 0
        store = stores[n % len(stores)]
        products = [gift] if ship else rng.sample(dishes, k=rng.randint(1, 3))
        lines = [
            OrderLine(
                sku=p.sku, name=p.name, quantity=rng.randint(1, 2), unit_price=p.unit_price or 0
            )
            for p in products
        ]
        fee = 0 if ship else 500
        yield OrderReceived(
            event_id=deterministic_id("mem", str(n)),
            order_id=f"mem-{n}",
            sequence=1,
            occurred_at=at,
            recorded_at=at,
            correlation_id=f"mem-{n}",
            actor=Actor(kind=ActorKind.CHANNEL, id="meituan"),
            channel="meituan",
            external_id=f"mem-{n}",
            mode=OrderMode.SHIP if ship else OrderMode.DELIVERY,
            currency="CNY",
            lines=lines,
            delivery_fee=fee,
            total=sum(line.quantity * line.unit_price for line in lines) + fee,
            payment_status=PaymentStatus.PAID,
            # 50,000 regular customers: their norms and tiers stay, their velocity is pruned
            customer=Customer(name="顾客", phone=f"+86137{rng.randrange(50_000):08d}"),
            address=Address(
                text=f"{n % 200_000} 南京东路",
                latitude=store.latitude + 0.004,
                longitude=store.longitude,
            ),
            location_hint=None if ship else store.id,
            placed_at=at,
        )


class Day:
    """The two agents and the views, fed by hand as the worker feeds them."""

    def __init__(self, *, bounded: bool, in_memory: int, spill_dir: Path) -> None:
        self.bounded = bounded
        catalogue = load_catalogue(bench_catalogue(spill_dir / "catalogue.json"))
        self.views = SharedViews(catalogue=catalogue, codec=None)  # type: ignore[arg-type]
        self.rules = FraudRules()
        self.orders = OrderPartition(
            spilled=SpillFile(spill_dir, 0) if bounded else None,
            max_in_memory=in_memory if bounded else None,
        )
        self.ledger = LedgerPartition()
        self.to_ship: deque[tuple[datetime, str, str]] = deque()
        self.serial = 0
        self.events = 0
        for location in ("WH-SH", "WH-BJ"):
            self.ledger_input(
                operations.stock_receive("TEA-GIFT-M", location, quantity=10**8, actor="bench"),
                START,
            )

    def context(self, now: datetime) -> orders.Context:
        views = self.views
        return orders.Context(
            catalogue=views.catalogue,
            rules=self.rules,
            history=views.history,
            available=views.available,
            load=views.load(now),
            now=now,
        )

    def order_input(self, event: Event, now: datetime) -> None:
        """One input of the order agent, and everything it sets going."""
        pending: deque[Event] = deque([event])  # the input, then the ledger's answers
        while pending:
            received = pending.popleft()
            assert isinstance(received, OrderEvent | StockEvent)
            step = self.orders.handle(received, self.context(now))
            for outcome in step.to_log:
                self.views.note(outcome)
                self.events += 1
                if outcome.event_type == "OrderPrioritised":
                    self.maybe_ship(outcome.order_id, now)
            for command in step.commands:
                pending.extend(self.ledger_input(command, now))
        if self.bounded:
            self.orders.spill()

    def ledger_input(self, command: Event, now: datetime) -> list[Event]:
        assert isinstance(command, StockEvent)
        product = self.views.catalogue.products.get(command.sku)
        step = self.ledger.handle(command, product=product, now=now)
        for outcome in step.events:
            self.views.note(outcome)
            self.events += 1
        return list(step.answers)

    def maybe_ship(self, order_id: str, now: datetime) -> None:
        state = self.orders.state_of(order_id)
        if state is not None and state.order.mode is OrderMode.SHIP and state.location:
            self.to_ship.append((now + SHIP_AFTER, order_id, state.location))

    def ship_due(self, now: datetime) -> None:
        while self.to_ship and self.to_ship[0][0] <= now:
            _, order_id, location = self.to_ship.popleft()
            for kind, extra in (
                (OrderAcceptedByStore, {"location": location}),
                (OrderPreparing, {"location": location}),
                (OrderReady, {"location": location}),
                (
                    ShipmentCreated,
                    {"shipment_id": order_id, "carrier": "SF", "tracking_number": order_id},
                ),
            ):
                self.serial += 1
                command = kind(
                    event_id=f"staff-{self.serial}",
                    sequence=1,
                    occurred_at=now,
                    recorded_at=now,
                    correlation_id=order_id,
                    actor=STAFF,
                    order_id=order_id,
                    channel="",
                    external_id="",
                    **extra,
                )
                self.order_input(command, now)

    def timer(self, now: datetime) -> None:
        """`Worker.expire`: holds that ran out, then the views' housekeeping."""
        for due in self.orders.expiries(now):
            self.order_input(due, now)
        if self.bounded:
            self.views.forget_the_past(now, window=timedelta(minutes=self.rules.window_minutes))
        else:
            self.views.forget_before(now - timedelta(hours=2))


def run(*, orders_count: int, in_memory: int, sample_every: int, bounded: bool) -> dict[str, Any]:
    gc.collect()
    samples: list[tuple[int, float]] = [(0, rss_mib())]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="oms-bench-memory-") as spill_dir:
        day = Day(bounded=bounded, in_memory=in_memory, spill_dir=Path(spill_dir))
        next_timer = START
        for n, order in enumerate(order_stream(orders_count), 1):
            now = order.placed_at
            if now >= next_timer:
                day.ship_due(now)
                day.timer(now)
                next_timer = now + timedelta(seconds=TIMER_S)
            day.order_input(order, now)
            if n % sample_every == 0:
                samples.append((n, rss_mib()))
        in_memory_at_end = len(day.orders.orders)
        spilled = day.orders.spilled.count if isinstance(day.orders.spilled, SpillFile) else 0
        velocity = day.views.history.tracked_orders
        events = day.events
        day.orders.close()
    seconds = time.perf_counter() - started
    at_30 = next((rss for n, rss in samples if n >= orders_count * 0.3), samples[-1][1])
    last = samples[-1][1]
    return {
        "orders": orders_count,
        "bounded": bounded,
        "orders_in_memory_bound": in_memory if bounded else None,
        "samples_mib": samples,
        "rss_start_mib": samples[0][1],
        "rss_at_30pct_mib": at_30,
        "rss_end_mib": last,
        "growth_after_30pct": (last - at_30) / at_30 if at_30 else 0.0,
        "flat": bounded and (last - at_30) <= FLAT_WITHIN * at_30,
        "orders_in_memory_at_end": in_memory_at_end,
        "states_spilled": spilled,
        "velocity_entries_at_end": velocity,
        "events": events,
        "seconds": round(seconds, 1),
        "orders_per_s": round(orders_count / seconds),
    }


def report(figures: dict[str, Any]) -> list[str]:
    mode = (
        f"bounded at {figures['orders_in_memory_bound']:,} orders in memory"
        if figures["bounded"]
        else "unbounded (no spill, no pruning)"
    )
    lines = [f"{figures['orders']:,} orders over a simulated day, {mode}:"]
    lines += [f"  after {n:>9,} orders: {rss:8.1f} MiB" for n, rss in figures["samples_mib"]]
    growth = figures["growth_after_30pct"] * 100
    lines.append(
        f"growth from 30 % to the end: {growth:+.1f} % "
        + (
            ("(flat: within 10 %)" if figures["flat"] else "(NOT flat: over 10 %)")
            if figures["bounded"]
            else "(for comparison)"
        )
    )
    lines.append(
        f"orders in memory at the end: {figures['orders_in_memory_at_end']:,}; states spilled: "
        f"{figures['states_spilled']:,}; velocity entries: {figures['velocity_entries_at_end']:,}"
    )
    lines.append(
        f"{figures['events']:,} log events in {figures['seconds']} s "
        f"({figures['orders_per_s']:,} orders/s, one core, no Kafka)"
    )
    return lines
