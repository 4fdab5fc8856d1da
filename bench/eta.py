"""Learned prep-time ETAs against the fixed defaults (`oms bench eta`).

The restaurant profile's kitchens (connectors.simulator: store speed, dish, lunch and dinner
rush, open tickets, lognormal noise) work through a warm-up day of orders. Its histories go
onto scratch topics and through the real projector into ClickHouse, the real learner query
(projections/sql/prep_facts.sql) and `streams.eta.learn` learn the model, and a second day is
estimated with it at each acceptance, as the order agent does. That day is projected too, and
the figure is the ETA-accuracy report's (projections/sql/eta_accuracy.sql) p90 absolute error
over all stores, next to the fixed defaults' and, for scale, an oracle that knows each order's
true median (the noise alone).

Target (issue 12): p90 absolute error <= 5 minutes after one warm-up day.
"""

from __future__ import annotations

import heapq
import math
import random
import tempfile
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.kafka_tools import scratch_topics
from connectors.simulator import (
    DISH_MINUTES,
    DISHES,
    PROFILES,
    SECONDS_PER_EXTRA_ITEM,
    SECONDS_PER_OPEN_TICKET,
    STORE_SPEED,
    STORES,
    kitchen_rush,
    restaurant_prep_seconds,
)
from events.codec import AvroCodec
from events.models import (
    Actor,
    ActorKind,
    Address,
    Customer,
    FulfilmentGroup,
    LineQuantity,
    OrderAccepted,
    OrderAcceptedByStore,
    OrderDelivered,
    OrderEvent,
    OrderLine,
    OrderMode,
    OrderPickedUp,
    OrderPreparing,
    OrderPrioritised,
    OrderReady,
    OrderReceived,
    OrderRouted,
    PaymentStatus,
    deterministic_id,
    follow_up,
)
from infra.kafka import producer_config
from infra.settings import Settings
from projections.eta import prep_facts
from projections.projector import Projector
from projections.reports import run_report
from projections.store import ClickHouseStore, connect, with_database_url
from streams import eta

TARGET_P90_MIN = 5.0
WARM_UP_DAY = datetime(2026, 12, 1, tzinfo=UTC)  # a Tuesday; the day estimated is Wednesday
SYSTEM = Actor(kind=ActorKind.SYSTEM, id="bench")
STAFF = Actor(kind=ActorKind.USER, id="kitchen")


@dataclass(frozen=True)
class Simulated:
    """One order of a simulated day: what the kitchen did and what was estimated."""

    order: OrderReceived
    store: str
    accepted_at: datetime
    ready_at: datetime
    fulfilled_at: datetime
    open_tickets: int
    estimate: eta.Estimate
    true_median_s: float  # the kitchen's median for it (no noise): the oracle's estimate

    @property
    def error_s(self) -> float:
        return (self.ready_at - self.estimate.ready_at).total_seconds()


def arrivals(rng: random.Random, *, day: datetime, orders: int) -> list[datetime]:
    """About `orders` placement times over `day`, following the restaurant profile's curve."""
    curve = PROFILES["restaurant"].curve
    mean = sum(curve(h / 10) for h in range(240)) / 240
    peak = max(curve(h / 10) for h in range(241))
    top_rate = orders / 86400 * peak / mean
    placed: list[datetime] = []
    t = 0.0
    while True:
        t += rng.expovariate(top_rate)
        if t >= 86400:
            return placed
        if rng.random() < curve(t / 3600) / peak:  # thinning
            placed.append(day + timedelta(seconds=round(t)))


def _order(rng: random.Random, *, run: str, n: int, placed: datetime) -> OrderReceived:
    profile = PROFILES["restaurant"]
    channel = rng.choices(list(profile.channels), weights=list(profile.channels.values()))[0]
    modes = profile.modes[channel]
    mode = rng.choices(list(modes), weights=list(modes.values()))[0]
    store, _, lat, lon = rng.choice(STORES)
    lines = [
        OrderLine(sku=sku, name=name, quantity=rng.randint(1, 2), unit_price=price)
        for sku, name, price in rng.sample(DISHES, k=rng.randint(1, 3))
    ]
    total = sum(line.quantity * line.unit_price for line in lines)
    order_id = f"{run}-{n}"
    return OrderReceived(
        event_id=deterministic_id(run, str(n)),
        order_id=order_id,
        sequence=1,
        occurred_at=placed,
        recorded_at=placed,
        correlation_id=order_id,
        actor=Actor(kind=ActorKind.CHANNEL, id=channel),
        channel=channel,
        external_id=order_id,
        mode=mode,
        currency="CNY",
        lines=lines,
        total=total,
        payment_status=PaymentStatus.PAID,
        customer=Customer(name="顾客"),
        address=Address(text="南京东路", latitude=lat, longitude=lon)
        if mode is OrderMode.DELIVERY
        else None,
        location_hint=store,
        placed_at=placed,
    )


def true_median_s(order: OrderReceived, store: str, at: datetime, open_tickets: int) -> float:
    """The simulated kitchen's median for an order (what no model can beat on average)."""
    slowest = max(DISH_MINUTES.get(line.sku, 8.0) for line in order.lines) * 60
    extra = SECONDS_PER_EXTRA_ITEM * (sum(line.quantity for line in order.lines) - 1)
    rush = kitchen_rush(at.weekday(), at.hour + at.minute / 60)
    return (slowest + extra) * STORE_SPEED[store] * rush + SECONDS_PER_OPEN_TICKET * open_tickets


def simulate_day(
    rng: random.Random, *, day: datetime, orders: int, model: eta.PrepTimeModel | None, run: str
) -> list[Simulated]:
    """A day of orders through the stores' kitchens, each estimated at its acceptance with
    `model` (None: the fixed default) and the store's open tickets then."""
    placed = [
        _order(rng, run=run, n=n, placed=t)
        for n, t in enumerate(arrivals(rng, day=day, orders=orders))
    ]
    accepted = sorted(
        ((o.placed_at + timedelta(seconds=rng.randint(20, 120)), o) for o in placed),
        key=lambda pair: (pair[0], pair[1].order_id),
    )
    open_until: dict[str, list[datetime]] = defaultdict(list)  # per store: ready times, a heap
    done: list[Simulated] = []
    for at, order in accepted:
        store = order.location_hint or ""
        tickets = open_until[store]
        while tickets and tickets[0] <= at:
            heapq.heappop(tickets)
        items = [(line.sku, line.quantity) for line in order.lines]
        prep = restaurant_prep_seconds(
            rng, store=store, items=items, at=at, open_tickets=len(tickets)
        )
        ready = at + timedelta(seconds=round(prep))
        if order.mode is OrderMode.DELIVERY:
            fulfilled = ready + timedelta(seconds=round(rng.lognormvariate(math.log(1200), 0.3)))
        elif order.mode is OrderMode.PICKUP:
            fulfilled = ready + timedelta(seconds=rng.randint(60, 720))
        else:
            fulfilled = ready + timedelta(seconds=rng.randint(20, 120))
        estimate = eta.estimate(model, order, location=store, open_tickets=len(tickets), now=at)
        done.append(
            Simulated(
                order=order,
                store=store,
                accepted_at=at,
                ready_at=ready,
                fulfilled_at=fulfilled,
                open_tickets=len(tickets),
                estimate=estimate,
                true_median_s=true_median_s(order, store, at, len(tickets)),
            )
        )
        heapq.heappush(tickets, ready)
    return done


def history(done: Simulated) -> list[OrderEvent]:
    """The order's log as the order agent and the store would have written it."""
    order, store, estimate = done.order, done.store, done.estimate
    steps: list[tuple[type[OrderEvent], datetime, Actor, dict[str, Any]]] = []
    lines = [LineQuantity(sku=line.sku, quantity=line.quantity) for line in order.lines]
    routed_at = order.placed_at + timedelta(seconds=2)
    learned = estimate.model is not None
    steps += [
        (
            OrderAccepted,
            order.placed_at + timedelta(seconds=1),
            SYSTEM,
            {"total": order.total, "currency": order.currency},
        ),
        (
            OrderRouted,
            routed_at,
            SYSTEM,
            {
                "location": store,
                "reasons": ["bench"],
                "groups": [FulfilmentGroup(location=store, lines=lines)],
            },
        ),
        (
            OrderPrioritised,
            routed_at,
            SYSTEM,
            {
                "location": store,
                "score": 100,
                "promised_at": estimate.due_at,
                "estimated_ready_at": estimate.ready_at if learned else None,
                "eta_source": estimate.source,
                "eta_model": estimate.model,
            },
        ),
        (
            OrderAcceptedByStore,
            done.accepted_at,
            SYSTEM,
            {
                "location": store,
                "estimated_ready_at": estimate.ready_at,
                "eta_source": estimate.source,
                "eta_model": estimate.model,
            },
        ),
        (OrderPreparing, done.accepted_at + timedelta(seconds=5), STAFF, {"location": store}),
        (OrderReady, done.ready_at, STAFF, {"location": store}),
    ]
    if order.mode is OrderMode.DELIVERY:
        steps += [
            (
                OrderPickedUp,
                done.fulfilled_at - timedelta(seconds=600),
                STAFF,
                {"location": store, "picked_up_by": "courier"},
            ),
            (OrderDelivered, done.fulfilled_at, SYSTEM, {}),
        ]
        if steps[-2][1] < done.ready_at:  # a quick ride: picked up as soon as it was ready
            steps[-2] = (steps[-2][0], done.ready_at, STAFF, steps[-2][3])
    else:
        steps.append(
            (
                OrderPickedUp,
                done.fulfilled_at,
                STAFF,
                {"location": store, "picked_up_by": "customer"},
            )
        )
    events: list[OrderEvent] = [order]
    for sequence, (model, at, actor, fields) in enumerate(steps, start=2):
        envelope = follow_up(
            order, sequence=sequence, causation_id=events[-1].event_id, actor=actor, now=at
        )
        event_id = deterministic_id(order.event_id, model.__name__)
        events.append(model(event_id=event_id, **envelope, **fields))
    return events


def publish(settings: Settings, days: list[list[Simulated]]) -> int:
    from confluent_kafka import Producer

    codec = AvroCodec()
    producer = Producer(producer_config(settings.kafka_bootstrap, **{"linger.ms": 20}))
    count = 0
    for day in days:
        for done in day:
            for event in history(done):
                producer.produce(
                    settings.topics.orders, key=event.order_id.encode(), value=codec.encode(event)
                )
                producer.poll(0)
                count += 1
    if producer.flush(60):
        raise RuntimeError("Kafka did not take every simulated event")
    return count


def project(settings: Settings, store: ClickHouseStore) -> None:
    projector = Projector(
        settings=settings, store=store, batch_size=5000, batch_seconds=0.2, lease=False
    )
    projector.run(until=lambda _: projector.lag() == 0)


def _p(values: list[float], q: float) -> float:
    return round(eta.quantile(sorted(values), q) / 60, 2)


def run(settings: Settings, *, orders_per_day: int, seed: int, backend: str) -> dict[str, Any]:
    rng = random.Random(seed)
    run_id = f"eta{uuid.uuid4().hex[:6]}"
    started = time.perf_counter()
    warm_up = simulate_day(
        rng, day=WARM_UP_DAY, orders=orders_per_day, model=None, run=f"{run_id}-1"
    )
    day = WARM_UP_DAY + timedelta(days=1)
    with tempfile.TemporaryDirectory() as scratch, scratch_topics(settings, "bench-eta") as topics:
        database = f"oms_bench_{run_id}"
        url = (
            with_database_url(settings.resolved_clickhouse_url, database)
            if backend == "server"
            else f"chdb://{Path(scratch) / 'chdb'}?database={database}"
        )
        topics = topics.model_copy(update={"clickhouse_url": url})
        store = connect(url)
        try:
            publish(topics, [warm_up])
            project(topics, store)
            # The production learner: the read-model query, then streams.eta.learn.
            learned_at = day
            rows = prep_facts(store, since=WARM_UP_DAY, until=day)
            model = eta.learn(
                eta.facts_from_rows(rows), since=WARM_UP_DAY, until=day, learned_at=learned_at
            )
            estimated = simulate_day(
                rng, day=day, orders=orders_per_day, model=model, run=f"{run_id}-2"
            )
            publish(topics, [estimated])
            project(topics, store)
            report = run_report(
                store, "eta_accuracy", since=day, until=day + timedelta(days=1)
            ).as_dicts()
        finally:
            store.execute(f"DROP DATABASE IF EXISTS {store.database}")
            store.close()
    overall = next(row for row in report if row["location"] == "*")
    learned_errors = [abs(d.error_s) for d in estimated]
    defaults = [
        abs((d.ready_at - eta.default_estimate(d.order).ready_at).total_seconds())
        for d in estimated
    ]
    oracle = [
        abs((d.ready_at - d.accepted_at).total_seconds() - d.true_median_s) for d in estimated
    ]
    sources: dict[str, int] = defaultdict(int)
    for d in estimated:
        sources[d.estimate.source] += 1
    return {
        "orders_per_day": orders_per_day,
        "warm_up_orders": len(warm_up),
        "estimated_orders": len(estimated),
        "learned_from": len(rows),
        "model": model.version,
        "cells": len(model.cells),
        "load_s_per_ticket": model.load,
        "backend": backend,
        "report": report,
        "p50_abs_error_min": float(overall["p50_abs_error_min"]),
        "p90_abs_error_min": float(overall["p90_abs_error_min"]),
        "default_p50_abs_error_min": float(overall["default_p50_abs_error_min"]),
        "default_p90_abs_error_min": float(overall["default_p90_abs_error_min"]),
        "check_p90_abs_error_min": _p(learned_errors, 0.9),
        "check_default_p90_abs_error_min": _p(defaults, 0.9),
        "oracle_p90_abs_error_min": _p(oracle, 0.9),
        "sources": dict(sorted(sources.items(), key=lambda kv: -kv[1])),
        "target_p90_min": TARGET_P90_MIN,
        "met": float(overall["p90_abs_error_min"]) <= TARGET_P90_MIN,
        "seconds": round(time.perf_counter() - started, 1),
    }


def report(figures: dict[str, Any]) -> list[str]:
    lines = [
        f"ETA: {figures['warm_up_orders']} orders on a warm-up day, learned from "
        f"{figures['learned_from']} ({figures['cells']} cells, model {figures['model']}, "
        f"{figures['backend']}); {figures['estimated_orders']} estimated the next day",
        f"  learned:  p50 {figures['p50_abs_error_min']:.1f} min, "
        f"p90 {figures['p90_abs_error_min']:.1f} min absolute error "
        f"(target p90 <= {figures['target_p90_min']:.0f} min: "
        f"{'met' if figures['met'] else 'NOT met'})",
        f"  default:  p50 {figures['default_p50_abs_error_min']:.1f} min, "
        f"p90 {figures['default_p90_abs_error_min']:.1f} min (the fixed 45/20/15-minute promise)",
        f"  oracle:   p90 {figures['oracle_p90_abs_error_min']:.1f} min (each order's true "
        "median: the kitchens' noise alone)",
        "  estimates by source: "
        + ", ".join(f"{source} {n}" for source, n in figures["sources"].items()),
        "  per store (eta_accuracy report): "
        + ", ".join(
            f"{row['location']} p90 {float(row['p90_abs_error_min']):.1f}"
            for row in figures["report"]
            if row["location"] != "*"
        ),
        f"  took {figures['seconds']} s",
    ]
    return lines
