"""`oms kitchen simulate`: every store's staff, played by a program, for demos and the restaurant
day test. It follows the order log and takes each order that reaches a store's queue through
the store's steps, as people at the store would: accept, start, ready after a random
preparation time, hand off (to the table, the customer or a courier), deliver (its own
riders), complete. Each step is a command on the order-command topic like `oms store ...`
sends, with an id derived from the order and its version, so a step sent twice (the
simulator's own retry, after a restarted worker) is taken once.

It only reacts to what the log says: a step the order's agent has not yet written is sent
again after `retry_s`. Stores are played (the catalogue's `kind` store); with `warehouses`,
so are the warehouses' packers, who take an order that ships (mode ship) as far as ready:
from there a shipping wave (`oms ship wave`) buys its label. Carriers are not simulated.
"""

from __future__ import annotations

import heapq
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from confluent_kafka import Consumer

from events.codec import AvroCodec, CodecError
from events.lifecycle import OrderStatus, next_status
from events.models import OrderEvent, deterministic_id
from infra.kafka import consumer_config
from infra.publisher import Publisher
from infra.settings import Settings
from oms.operations import store_action, topic_for
from streams.reference import load_catalogue

ACTOR = "kitchen-simulator"
# The step a store takes from each status, and the handoff by mode.
NEXT = {
    "prioritised": "accept",
    "accepted_by_store": "start",
    "preparing": "ready",
    "ready": "handoff",
}
HANDOFF_TO = {"dine_in": "table", "pickup": "customer", "delivery": "courier"}


@dataclass
class Ticket:
    """What the simulator knows of one order: from its last event on the log."""

    order_id: str
    mode: str = ""
    location: str = ""
    status: str = ""
    version: int = 0


@dataclass(frozen=True)
class Prep:
    """How long the simulated staff take, in seconds (uniform between the bounds)."""

    accept: tuple[float, float] = (0.05, 0.3)
    cook: tuple[float, float] = (0.2, 1.5)
    hand_off: tuple[float, float] = (0.05, 0.5)
    ride: tuple[float, float] = (0.2, 1.0)


@dataclass
class KitchenSimulator:
    settings: Settings
    seed: int = 0
    prep: Prep = Prep()
    retry_s: float = 5.0
    stores: frozenset[str] | None = None  # None: every store of the catalogue
    warehouses: frozenset[str] = frozenset()  # whose packers are played, up to ready
    tickets: dict[str, Ticket] = field(default_factory=dict)
    sent: int = 0

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.codec = AvroCodec()
        self.publisher = Publisher(self.settings)
        self._due: list[tuple[float, str, int]] = []  # (when, order id, version it answers)
        if self.stores is None:
            catalogue = load_catalogue(self.settings.catalogue_file)
            self.stores = frozenset(k for k, v in catalogue.locations.items() if v.kind == "store")

    def run(self, *, until: Callable[[KitchenSimulator], bool], timeout_s: float) -> None:
        """Follow the log and act until `until(self)` holds (or fail after `timeout_s`)."""
        consumer = Consumer(
            consumer_config(
                self.settings.kafka_bootstrap,
                group_id=f"kitchen-sim-{uuid.uuid4().hex}",
                **{"auto.offset.reset": "earliest"},
            )
        )
        consumer.subscribe([self.settings.topics.orders])
        deadline = time.monotonic() + timeout_s
        try:
            while not until(self):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the simulated kitchens did not finish: {self.open()}")
                for message in consumer.consume(500, timeout=0.1):
                    if message.error() is None:
                        self._read(message.value())
                self._act(time.monotonic())
                self.publisher.poll(0)
        finally:
            self.publisher.flush(30)
            consumer.close()

    def open(self) -> dict[str, int]:
        """Orders at a store that have not reached an end, by status."""
        counts: dict[str, int] = {}
        for ticket in self.tickets.values():
            if ticket.location in (self.stores or ()) and ticket.status not in (
                "completed",
                "cancelled",
                "rejected",
            ):
                counts[ticket.status] = counts.get(ticket.status, 0) + 1
        return counts

    def _read(self, value: bytes | None) -> None:
        try:
            event = self.codec.decode(value or b"")
        except CodecError:
            return
        if not isinstance(event, OrderEvent):
            return
        ticket = self.tickets.setdefault(event.order_id, Ticket(event.order_id))
        if event.sequence <= ticket.version:
            return  # a repeat
        ticket.version = event.sequence
        mode = getattr(event, "mode", None)
        if mode is not None:
            ticket.mode = mode.value
        location = getattr(event, "location", None)
        if location:
            ticket.location = location
        before = OrderStatus(ticket.status) if ticket.status else None
        ticket.status = next_status(before, type(event)).value
        if self._ours(ticket):
            delay = self._delay(ticket)
            heapq.heappush(self._due, (time.monotonic() + delay, ticket.order_id, ticket.version))

    def _ours(self, ticket: Ticket) -> bool:
        if ticket.mode == "ship":
            # Packed at a warehouse up to ready; the wave takes it from there.
            packing = ("prioritised", "accepted_by_store", "preparing")
            return ticket.location in self.warehouses and ticket.status in packing
        if ticket.location not in (self.stores or ()):
            return False
        return ticket.status in NEXT or ticket.status in ("picked_up", "delivered")

    def _delay(self, ticket: Ticket) -> float:
        bounds = {
            "prioritised": self.prep.accept,
            "preparing": self.prep.cook,
            "picked_up": self.prep.ride,
        }.get(ticket.status, self.prep.hand_off)
        return self.rng.uniform(*bounds)

    def _act(self, now: float) -> None:
        while self._due and self._due[0][0] <= now:
            _, order_id, version = heapq.heappop(self._due)
            ticket = self.tickets[order_id]
            if ticket.version != version:
                continue  # the order moved on meanwhile
            action = self._action(ticket)
            if action is None:
                continue
            to = HANDOFF_TO.get(ticket.mode, "courier") if action == "handoff" else None
            courier = "骑手 Li" if to == "courier" else None
            command = store_action(
                action, order_id, ticket.location, by=ACTOR, to=to, courier=courier
            )
            command = command.model_copy(
                update={"event_id": deterministic_id(order_id, ACTOR, action, str(version))}
            )
            self.publisher.publish(topic_for(self.settings, command), command)
            self.sent += 1
            # Not on the log by then (a worker restarting): the same step again, same id.
            heapq.heappush(self._due, (now + self.retry_s, order_id, version))

    @staticmethod
    def _action(ticket: Ticket) -> str | None:
        if ticket.status == "picked_up":
            return "deliver" if ticket.mode == "delivery" else "complete"
        if ticket.status == "delivered":
            return "complete"
        return NEXT.get(ticket.status)
