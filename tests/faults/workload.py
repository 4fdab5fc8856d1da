"""The load of a fault run: the restaurant and retail profiles together through the real
connectors, with what real channels and operators add — duplicates, revisions (several per
order, of orders already reserved), cancellations, stock receipts, store pauses and resumes,
and malformed inputs that must each end on the dead-letter topic once.

Seeded: the n-th action of a run is the same for a seed. The stock receipts and pauses follow a
timetable drawn up front, so only how actions interleave with them depends on the machine.
"""

from __future__ import annotations

import bisect
import contextlib
import heapq
import importlib
import json
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError

from connectors.base import Connector, PayloadRejected
from connectors.registry import available
from connectors.samples import SampleLine, SampleOrder
from connectors.simulator import DISHES, NAMES, PRODUCTS, PROFILES, STORES, STREETS
from events.models import DeadLetter, Event, OrderMode, OrderReceived, utc_now
from infra.publisher import Publisher, PublishError
from infra.settings import Settings
from oms import operations

WAREHOUSES = ("WH-SH", "WH-BJ")
ACTOR = "fault-harness"
UNITS_PER_RETAIL_ORDER = 5.0  # 1-4 lines of 1-3 units: what the stock is sized by


@dataclass(frozen=True)
class Load:
    """How much of what the workload sends. Shares are of the order-paced actions."""

    rate: float = 40.0  # orders per second (both profiles together), on average
    duration_s: float = 30.0
    retail_share: float = 0.4
    duplicate_share: float = 0.05
    revision_share: float = 0.08
    cancel_share: float = 0.03
    malformed_share: float = 0.02
    follow_up_revision: float = 0.35  # a revised order is revised again, 1-3 s later
    receipts_per_minute: float = 30.0
    pauses_per_minute: float = 8.0
    initial_stock: float = 0.6  # of the expected retail demand, received before the load
    received_during: float = 0.3  # of the expected demand, received while it runs


def write_catalogue(path: Path) -> Path:
    """The demo catalogue with no capacity limit: thousands of orders land in one slot."""
    demo = json.loads((Path(__file__).parents[2] / "streams/reference/demo.json").read_text())
    for location in demo["locations"]:
        location["capacity_per_slot"] = 0
    path.write_text(json.dumps(demo, ensure_ascii=False))
    return path


@dataclass
class Sent:
    """An order the workload placed, as its channel last described it."""

    channel: str
    order: SampleOrder
    order_id: str
    sent_at: float
    revision: int = 0


@dataclass
class WorkloadReport:
    acknowledged: set[str] = field(default_factory=set)  # order ids Kafka acknowledged
    malformed: list[bytes] = field(default_factory=list)  # acknowledged bad inputs
    actions: Counter[str] = field(default_factory=Counter)
    failed_deliveries: int = 0
    elapsed_s: float = 0.0

    def describe(self) -> str:
        done = ", ".join(f"{n} {kind}" for kind, n in sorted(self.actions.items()))
        return (
            f"{len(self.acknowledged)} orders acknowledged; {done}; "
            f"{self.failed_deliveries} deliveries failed"
        )


@dataclass(frozen=True, order=True)
class _Timed:
    at_s: float
    kind: str = field(compare=False)  # receipt, pause, resume
    args: tuple[Any, ...] = field(compare=False, default=())


class Workload:
    def __init__(self, settings: Settings, load: Load, *, seed: int) -> None:
        self.settings = settings
        self.load = load
        self.seed = seed
        self.rng = random.Random(f"{seed}:actions")
        self.publisher = Publisher(settings)
        self.report = WorkloadReport()
        installed = available()
        channels = {*PROFILES["restaurant"].channels, *PROFILES["retail"].channels}
        self.connectors: dict[str, Connector] = {c: installed[c]() for c in channels}
        self.samplers: dict[str, Callable[..., tuple[bytes, dict[str, str]]]] = {
            c: importlib.import_module(f"connectors.{c}").sample_payload for c in channels
        }
        self.sent: list[Sent] = []
        self._numbers = 0
        self._seen_malformed: set[bytes] = set()

    # ------------------------------------------------------------ stock

    def demand_per_sku(self) -> float:
        orders = self.load.rate * self.load.duration_s * self.load.retail_share
        return orders * UNITS_PER_RETAIL_ORDER / len(PRODUCTS)

    def initial_stock(self) -> list[Event]:
        """Receipts before the load: most at the Shanghai warehouse, some in Beijing and in
        every store (square sells the goods over the counter)."""
        units = self.demand_per_sku() * self.load.initial_stock
        split = {"WH-SH": 0.55, "WH-BJ": 0.25, **{s[0]: 0.04 for s in STORES}}
        return [
            operations.stock_receive(
                sku,
                location,
                quantity=max(1, round(units * share)),
                actor=ACTOR,
                reference=f"initial-{sku}-{location}",
            )
            for sku, _, _ in PRODUCTS
            for location, share in split.items()
        ]

    def timetable(self) -> list[_Timed]:
        """Receipts and pauses at seeded times (drawn apart from the actions, so a slow
        machine changes when they interleave, not what they are)."""
        rng = random.Random(f"{self.seed}:timetable")
        load, minutes = self.load, self.load.duration_s / 60
        receipts = max(1, round(load.receipts_per_minute * minutes))
        units = self.demand_per_sku() * len(PRODUCTS) * load.received_during / receipts
        timed = []
        for n in range(receipts):
            location = rng.choices(
                [*WAREHOUSES, *(s[0] for s in STORES)], weights=[5, 2, 1, 1, 1, 1, 1]
            )[0]
            sku = rng.choice(PRODUCTS)[0]
            quantity = max(1, round(units * rng.uniform(0.5, 1.5)))
            timed.append(
                _Timed(
                    rng.uniform(0, load.duration_s), "receipt", (sku, location, quantity, f"PO-{n}")
                )
            )
        for _ in range(round(load.pauses_per_minute * minutes)):
            location = rng.choice([*(s[0] for s in STORES), "WH-BJ"])
            start = rng.uniform(0, load.duration_s * 0.85)
            timed.append(_Timed(start, "pause", (location,)))
            timed.append(
                _Timed(min(start + rng.uniform(2, 6), load.duration_s), "resume", (location,))
            )
        return sorted(timed)

    # ------------------------------------------------------------ the run

    def run(self) -> WorkloadReport:
        """Send the load for `duration_s`, then wait for Kafka's acknowledgements."""
        load = self.load
        timed = self.timetable()
        follow_ups: list[tuple[float, int]] = []  # (due, index into sent): another revision
        began = last = time.monotonic()
        credit = 0.0
        while (now := time.monotonic()) - began < load.duration_s:
            elapsed = now - began
            while timed and timed[0].at_s <= elapsed:
                self._timed(heapq.heappop(timed))
            while follow_ups and follow_ups[0][0] <= elapsed:
                _, index = heapq.heappop(follow_ups)
                self._revise(self.sent[index])
            credit += (now - last) * load.rate
            last = now
            while credit >= 1:
                credit -= 1
                self._act(elapsed, follow_ups)
            self.publisher.poll(0)
            time.sleep(0.005)
        for item in sorted(timed):  # every paused location is resumed before the end
            if item.kind == "resume":
                self._timed(item)
        # What Kafka never confirmed is not acknowledged: the checker expects no more.
        with contextlib.suppress(PublishError):
            self.publisher.flush(90)
        self.report.elapsed_s = time.monotonic() - began
        return self.report

    def _act(self, elapsed: float, follow_ups: list[tuple[float, int]]) -> None:
        load, roll = self.load, self.rng.random()
        # Revisions and cancellations pick among the last 2,000 orders placed at least 1.5 s
        # ago: most of those are reserved (or prioritised) by now.
        ripe = bisect.bisect_right(self.sent, time.monotonic() - 1.5, key=lambda s: s.sent_at)
        oldest = max(0, ripe - 2000)
        if roll < load.duplicate_share and self.sent:
            self._resend(self.rng.choice(self.sent))
        elif roll < load.duplicate_share + load.revision_share and ripe:
            index = self.rng.randrange(oldest, ripe)
            for _ in range(4):  # mostly stocked goods: their revisions move reservations
                if self.sent[index].order.mode is OrderMode.SHIP or self.rng.random() < 0.3:
                    break
                index = self.rng.randrange(oldest, ripe)
            self._revise(self.sent[index])
            if self.rng.random() < load.follow_up_revision:
                heapq.heappush(follow_ups, (elapsed + self.rng.uniform(1, 3), index))
        elif roll < load.duplicate_share + load.revision_share + load.cancel_share and ripe:
            self._cancel(self.sent[self.rng.randrange(oldest, ripe)])
        elif roll > 1 - load.malformed_share:
            self._malformed()
        else:
            self._place()

    # ------------------------------------------------------------ actions

    def _place(self) -> None:
        profile = "retail" if self.rng.random() < self.load.retail_share else "restaurant"
        channel = _pick(self.rng, PROFILES[profile].channels)
        order = self._sample(profile, channel)
        body, headers = self.samplers[channel](order)
        event = self.connectors[channel].parse(body, received_at=utc_now(), headers=headers)
        assert isinstance(event, OrderReceived)
        self.sent.append(Sent(channel, order, event.order_id, time.monotonic()))
        self._intake(event)
        self.report.actions["orders"] += 1

    def _resend(self, sent: Sent) -> None:
        """The channel delivers the same order (or revision) again: the same event id."""
        body, headers = self.samplers[sent.channel](sent.order, revision=sent.revision)
        self._intake(
            self.connectors[sent.channel].parse(body, received_at=utc_now(), headers=headers)
        )
        self.report.actions["duplicates"] += 1

    def _revise(self, sent: Sent) -> None:
        """The customer changes the order: one more of the first line, or one line fewer."""
        lines = sent.order.lines
        if len(lines) > 1 and self.rng.random() < 0.3:
            lines = lines[:-1]
        else:
            lines = [replace(lines[0], quantity=lines[0].quantity + 1), *lines[1:]]
        sent.order = replace(sent.order, lines=lines)
        sent.revision += 1
        body, headers = self.samplers[sent.channel](sent.order, revision=sent.revision)
        self._intake(
            self.connectors[sent.channel].parse(body, received_at=utc_now(), headers=headers)
        )
        self.report.actions["revisions"] += 1

    def _cancel(self, sent: Sent) -> None:
        command = operations.cancel(
            sent.order_id,
            by=ACTOR,
            reason_code="CUSTOMER_CANCELLED",
            reason="the customer changed their mind",
        )
        self._command(command)
        self.report.actions["cancellations"] += 1

    def _malformed(self) -> None:
        """A payload cut off mid-way (the connector refuses it: the intake dead-letters it), or
        bytes no codec reads on a topic an agent consumes (the agent dead-letters them)."""
        self._numbers += 1
        number = self._numbers
        where = self.rng.choice(["connector", "intake", "order_commands", "stock_commands"])
        if where == "connector":
            profile = "retail" if self.rng.random() < self.load.retail_share else "restaurant"
            channel = _pick(self.rng, PROFILES[profile].channels)
            body, headers = self.samplers[channel](self._sample(profile, channel))
            raw = body[: len(body) // 2]
            if raw in self._seen_malformed:
                return
            try:
                self.connectors[channel].parse(raw, received_at=utc_now(), headers=headers)
                return  # still a whole order: not malformed after all
            except PayloadRejected as exc:
                reason = str(exc)
            letter = DeadLetter.of(
                source=channel, source_ref=f"fault-run:{self.seed}:{number}", reason=reason, raw=raw
            )
            self._seen_malformed.add(raw)
            self.publisher.dead_letter(letter, then=self._bad_input(raw))
        else:
            raw = f"not an event: fault run {self.seed}, input {number}".encode()
            topic = getattr(self.settings.topics, where)
            self.publisher.produce(topic, f"garbage-{number}", raw, then=self._bad_input(raw))
        self.report.actions[f"malformed ({where})"] += 1

    def _timed(self, item: _Timed) -> None:
        if item.kind == "receipt":
            sku, location, quantity, reference = item.args
            self._command(
                operations.stock_receive(
                    sku, location, quantity=quantity, actor=ACTOR, reference=reference
                )
            )
        else:
            (location,) = item.args
            self._command(
                operations.location_pause(
                    location,
                    paused=item.kind == "pause",
                    reason=f"fault run: {item.kind}",
                    actor=ACTOR,
                )
            )
        self.report.actions[item.kind + "s"] += 1

    def _command(self, command: Event) -> None:
        topic = operations.topic_for(self.settings, command)
        self.publisher.publish(topic, command, then=self._counted)

    def send_initial_stock(self) -> int:
        receipts = self.initial_stock()
        for receipt in receipts:
            self._command(receipt)
        self.publisher.flush(60)
        return len(receipts)

    # ------------------------------------------------------------ plumbing

    def _intake(self, event: Any) -> None:
        order_id = event.order_id
        is_receipt = isinstance(event, OrderReceived)

        def then(err: KafkaError | None) -> None:
            if err is not None:
                self.report.failed_deliveries += 1
            elif is_receipt:
                self.report.acknowledged.add(order_id)

        self.publisher.intake(event, then=then)

    def _bad_input(self, raw: bytes) -> Callable[[KafkaError | None], None]:
        def then(err: KafkaError | None) -> None:
            if err is None:
                self.report.malformed.append(raw)
            else:
                self.report.failed_deliveries += 1

        return then

    def _counted(self, err: KafkaError | None) -> None:
        if err is not None:
            self.report.failed_deliveries += 1

    def _sample(self, profile: str, channel: str) -> SampleOrder:
        """A new order shaped like the simulator's (`connectors.simulator`), with an external
        id unique to this run."""
        rng = self.rng
        self._numbers += 1
        mode = _pick(rng, PROFILES[profile].modes[channel])
        store, _, lat, lon = rng.choice(STORES)
        catalogue = DISHES if profile == "restaurant" else PRODUCTS
        items = rng.sample(catalogue, k=rng.randint(1, 4))
        lines = [SampleLine(sku, name, rng.randint(1, 3), price) for sku, name, price in items]
        delivery = mode in (OrderMode.DELIVERY, OrderMode.SHIP)
        restaurant = profile == "restaurant"
        placed = datetime.now(UTC).replace(microsecond=0)
        if channel == "phone":
            placed = placed.replace(second=0)  # the phone form has minutes only
        subtotal = sum(line.quantity * line.unit_price for line in lines)
        return SampleOrder(
            external_id=f"{channel[:2].upper()}{self.seed % 10**8:08d}{self._numbers:07d}",
            store=store,
            placed_at=placed,
            mode=mode,
            lines=lines,
            customer_name=rng.choice(NAMES),
            customer_phone=f"13{rng.randint(100_000_000, 999_999_999)}",
            delivery_fee=(rng.choice([0, 300, 500]) if restaurant else rng.choice([0, 0, 1000]))
            if delivery
            else 0,
            packaging_fee=rng.choice([100, 200]) if restaurant and mode != OrderMode.DINE_IN else 0,
            discount=min(rng.choice([0, 0, 0, 300, 500, 1000]), subtotal // 2),
            address_text=f"上海市{rng.choice(STREETS)}{rng.randint(1, 9999)}号"
            if delivery
            else None,
            latitude=round(lat + rng.uniform(-0.025, 0.025), 6) if delivery else None,
            longitude=round(lon + rng.uniform(-0.025, 0.025), 6) if delivery else None,
        )


def _pick(rng: random.Random, shares: dict[Any, float]) -> Any:
    return rng.choices(list(shares), weights=list(shares.values()))[0]
