"""The reservation protocol between the order agent and the stock ledger, as a model test.

Hypothesis drives the agents' real per-partition objects (`streams.partitions`) through random
interleavings of orders, revisions, cancellations, shipments, stock receipts, the passing of
time (hold expiry) and crashes. The topics are modelled as Kafka keeps them: one FIFO per
partition, an agent's outputs held back until it flushes (only then are its inputs acked), and
a crash lands any prefix of each partition's unflushed outputs, then replays the inputs after
the last ack into a state rebuilt from the agent's own log — exactly what `streams.worker.app` does.

When the run ends the system is drained, and what must hold is checked
(docs/reservations.md):
- no message loops: draining ends, and each order caused a bounded number of stock messages;
- every reservation ends released or committed, unless the order holding it holds it now —
  the ledger's open reservations are exactly the orders' held ones;
- stock is conserved and never oversold; every rejected or cancelled order holds nothing;
- the order log has no event twice, no gap, and obeys the lifecycle;
- every order settles.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from events import lifecycle
from events.models import (
    Actor,
    ActorKind,
    Address,
    CancelledBy,
    OrderAcceptedByStore,
    OrderCancelled,
    OrderEvent,
    OrderLine,
    OrderMode,
    OrderModified,
    OrderPreparing,
    OrderReady,
    ReserveStock,
    ShipmentCreated,
    StockEvent,
    StockReceived,
    StockReserved,
    deterministic_id,
    stock_key,
)
from streams import inventory, orders
from streams.customers import CustomerHistory
from streams.fraud import FraudRules
from streams.partitions import KeptInMemory, LedgerPartition, OrderPartition
from streams.reference import load_catalogue
from tests.events import lifecycle_checker
from tests.factories import received

CATALOGUE = load_catalogue()
START = datetime(2026, 11, 25, 4, 0, tzinfo=UTC)
SKUS = {"KETTLE-IRON": 45900, "MUG-CERAMIC": 6800}
WAREHOUSES = ("WH-BJ", "WH-SH")
ORDER_IDS = [f"o-{n}" for n in range(4)]
STOCK_PARTITIONS = 2
# Orders the order agent keeps in memory: so few that settled ones are spilled and read back
# all the time (streams.partitions.OrderPartition.spill).
IN_MEMORY = 2
OPERATOR = Actor(kind=ActorKind.USER, id="ops")
STORE = Actor(kind=ActorKind.USER, id="store")
RESTING = {
    lifecycle.OrderStatus.PRIORITISED, lifecycle.OrderStatus.REJECTED,
    lifecycle.OrderStatus.CANCELLED, lifecycle.OrderStatus.SHIPPED, lifecycle.OrderStatus.HELD,
    lifecycle.OrderStatus.ACCEPTED_BY_STORE, lifecycle.OrderStatus.PREPARING,
    lifecycle.OrderStatus.READY,
}  # fmt: skip
# Stock messages one order may cause: per routing attempt a reserve and a release per line,
# plus what one recovery re-sends. Far below what a loop makes.
STOCK_MESSAGES_PER_ATTEMPT = 12


def stock_partition(command: StockEvent) -> int:
    return sum(stock_key(command.sku, command.location).encode()) % STOCK_PARTITIONS


@dataclass
class Topic:
    """One partition: what landed, in order."""

    messages: list[Any] = field(default_factory=list)


@dataclass
class Agent:
    """An agent's read and acked positions on its inputs, and its outputs on their way: log
    events, messages for other agents that wait for those (write-ahead, as `streams.worker.app`
    does), and messages already sent."""

    read: dict[str, int]
    acked: dict[str, int]
    pending: list[tuple[str, Any]] = field(default_factory=list)  # log events, unconfirmed
    waiting: list[tuple[str, Any]] = field(default_factory=list)  # until `pending` lands
    sent: list[tuple[str, Any]] = field(default_factory=list)  # produced, unconfirmed


class ReservationProtocol(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = START
        self.topics: dict[str, Topic] = {
            "intake": Topic(), "order-commands": Topic(), "orders": Topic(),
            **{f"stock-commands/{p}": Topic() for p in range(STOCK_PARTITIONS)},
            **{f"ledger/{p}": Topic() for p in range(STOCK_PARTITIONS)},
        }  # fmt: skip
        self.order_agent = Agent(read={"intake": 0, "order-commands": 0},
                                 acked={"intake": 0, "order-commands": 0})  # fmt: skip
        stock_inputs = {f"stock-commands/{p}": 0 for p in range(STOCK_PARTITIONS)}
        self.ledger_agent = Agent(read=dict(stock_inputs), acked=dict(stock_inputs))
        self.order_partition = OrderPartition(max_in_memory=IN_MEMORY)
        self.ledger_partitions = {p: LedgerPartition() for p in range(STOCK_PARTITIONS)}
        self.placed: list[str] = []
        self.revisions: Counter[str] = Counter()
        self.serial = 0
        self.crashes = 0

    # ------------------------------------------------------------ the world outside

    def next_id(self, kind: str) -> str:
        self.serial += 1
        return f"{kind}-{self.serial}"

    @initialize()
    def stock_arrives(self) -> None:
        """The run starts with stock on every ledger (more comes during it)."""
        for location in WAREHOUSES:
            for sku in SKUS:
                self.receive(sku, location, 2)
        for source in self.unread(self.ledger_agent):
            while source in self.unread(self.ledger_agent):
                self.step_ledger_agent(source)
        self.flush(self.ledger_agent)

    def receive(self, sku: str, location: str, quantity: int) -> None:
        command = StockReceived(
            event_id=self.next_id("receipt"), sequence=1, occurred_at=self.now,
            recorded_at=self.now, correlation_id="ops", actor=OPERATOR, sku=sku,
            location=location, quantity=quantity,
        )  # fmt: skip
        self.topics[f"stock-commands/{stock_partition(command)}"].messages.append(command)

    @precondition(lambda self: len(self.placed) < len(ORDER_IDS))
    @rule(skus=st.lists(st.sampled_from(sorted(SKUS)), min_size=1, max_size=2, unique=True),
          quantity=st.integers(1, 3))  # fmt: skip
    def place_order(self, skus: list[str], quantity: int) -> None:
        order_id = ORDER_IDS[len(self.placed)]
        lines = [OrderLine(sku=sku, name=sku, quantity=quantity, unit_price=SKUS[sku])
                 for sku in skus]  # fmt: skip
        order = received(
            order_id=order_id, event_id=f"receipt-{order_id}", correlation_id=order_id,
            external_id=order_id, mode=OrderMode.SHIP, lines=lines, delivery_fee=0,
            total=sum(line.quantity * line.unit_price for line in lines), placed_at=self.now,
            occurred_at=self.now, recorded_at=self.now,
            address=Address(text="北京 朝阳区", latitude=39.92, longitude=116.45),
        )  # fmt: skip
        self.placed.append(order_id)
        self.topics["intake"].messages.append(order)

    @precondition(lambda self: bool(self.placed))
    @rule(data=st.data(), quantity=st.integers(1, 3))
    def revise(self, data: st.DataObject, quantity: int) -> None:
        order_id = data.draw(st.sampled_from(self.placed))
        self.revisions[order_id] += 1
        revision = self.revisions[order_id]
        sku = data.draw(st.sampled_from(sorted(SKUS)))
        line = OrderLine(sku=sku, name=sku, quantity=quantity, unit_price=SKUS[sku])
        self.topics["intake"].messages.append(OrderModified(
            event_id=f"revision-{order_id}-{revision}", order_id=order_id, sequence=1,
            occurred_at=self.now, recorded_at=self.now, correlation_id=order_id,
            actor=Actor(kind=ActorKind.CHANNEL, id="webshop"), channel="webshop",
            external_id=order_id, revision=revision, lines=[line],
            total=line.quantity * line.unit_price,
        ))  # fmt: skip

    @precondition(lambda self: bool(self.placed))
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        order_id = data.draw(st.sampled_from(self.placed))
        self.topics["order-commands"].messages.append(OrderCancelled(
            **self.command_envelope(order_id, "cancel"), cancelled_by=CancelledBy.CUSTOMER,
            reason_code="CHANGED_MIND", reason="no longer wanted",
        ))  # fmt: skip

    @precondition(lambda self: bool(self.placed))
    @rule(data=st.data())
    def ship(self, data: st.DataObject) -> None:
        """The warehouse takes the order on, packs it and hands it to a carrier (each step is
        refused, harmlessly, if the order is not where the step needs it)."""
        order_id = data.draw(st.sampled_from(self.placed))
        state = self.order_partition.state_of(order_id)
        location = (state.location if state else None) or "WH-BJ"
        inbox = self.topics["order-commands"].messages
        inbox.append(OrderAcceptedByStore(**self.command_envelope(order_id, "accept"),
                                          location=location))  # fmt: skip
        inbox.append(
            OrderPreparing(**self.command_envelope(order_id, "prepare"), location=location)
        )
        inbox.append(OrderReady(**self.command_envelope(order_id, "ready"), location=location))
        inbox.append(ShipmentCreated(**self.command_envelope(order_id, "ship"),
                                     shipment_id=order_id, carrier="SF",
                                     tracking_number=order_id))  # fmt: skip

    def command_envelope(self, order_id: str, kind: str) -> dict[str, Any]:
        return {
            "event_id": self.next_id(kind),
            "sequence": 1,
            "occurred_at": self.now,
            "recorded_at": self.now,
            "correlation_id": order_id,
            "actor": STORE,
            "order_id": order_id,
            "channel": "",
            "external_id": "",
        }

    @rule(sku=st.sampled_from(sorted(SKUS)), location=st.sampled_from(WAREHOUSES),
          quantity=st.integers(1, 3))  # fmt: skip
    def stock_received(self, sku: str, location: str, quantity: int) -> None:
        self.receive(sku, location, quantity)

    @rule(hours=st.sampled_from([1, 6, 80]))
    def time_passes(self, hours: int) -> None:
        """Time moves on and the order agent's expiry timer runs (ship holds last 3 days)."""
        self.now += timedelta(hours=hours)
        for due in self.order_partition.expiries(self.now):
            self.order_agent.sent.append(("order-commands", due))

    # ------------------------------------------------------------ the agents

    def context(self) -> orders.Context:
        """What the order agent decides with; its stock view is the ledger that landed."""
        levels: dict[str, inventory.StockLevel] = {}
        for p in range(STOCK_PARTITIONS):
            for event in self.topics[f"ledger/{p}"].messages:
                key = stock_key(event.sku, event.location)
                level = levels.get(key) or inventory.empty(event.sku, event.location)
                levels[key] = inventory.apply(level, event)

        def available(sku: str, location: str) -> int:
            level = levels.get(stock_key(sku, location))
            return 0 if level is None else level.available_to_promise

        return orders.Context(
            catalogue=CATALOGUE, rules=FraudRules(), history=CustomerHistory(),
            available=available, load={}, now=self.now,
        )  # fmt: skip

    def unread(self, agent: Agent) -> list[str]:
        return [name for name, at in agent.read.items() if at < len(self.topics[name].messages)]

    def step_order_agent(self, source: str) -> None:
        agent = self.order_agent
        received = self.topics[source].messages[agent.read[source]]
        agent.read[source] += 1
        step = self.order_partition.handle(received, self.context())
        self.order_partition.spill()  # settled orders leave memory, and come back when needed
        agent.pending += [("orders", event) for event in step.to_log]
        agent.waiting += [(f"stock-commands/{stock_partition(c)}", c) for c in step.commands]

    def step_ledger_agent(self, source: str) -> None:
        agent = self.ledger_agent
        partition = int(source.split("/")[1])
        command = self.topics[source].messages[agent.read[source]]
        agent.read[source] += 1
        product = CATALOGUE.products.get(command.sku)
        try:
            step = self.ledger_partitions[partition].handle(command, product=product,
                                                            now=self.now)  # fmt: skip
        except inventory.StockCommandRefused:
            return  # dead-lettered
        agent.pending += [(f"ledger/{partition}", event) for event in step.events]
        agent.waiting += [("order-commands", answer) for answer in step.answers]

    @precondition(lambda self: bool(self.unread(self.order_agent)))
    @rule(data=st.data())
    def order_agent_takes_an_input(self, data: st.DataObject) -> None:
        self.step_order_agent(data.draw(st.sampled_from(self.unread(self.order_agent))))

    @precondition(lambda self: bool(self.unread(self.ledger_agent)))
    @rule(data=st.data())
    def ledger_agent_takes_a_command(self, data: st.DataObject) -> None:
        self.step_ledger_agent(data.draw(st.sampled_from(self.unread(self.ledger_agent))))

    def log_confirmed(self, agent: Agent) -> None:
        """Kafka has the log events: the messages that follow from them are sent."""
        for topic, message in agent.pending:
            self.topics[topic].messages.append(message)
        agent.pending.clear()
        agent.sent += agent.waiting
        agent.waiting.clear()

    def flush(self, agent: Agent) -> None:
        """Kafka acknowledged every output: they are on their topics, the inputs are acked."""
        self.log_confirmed(agent)
        for topic, message in agent.sent:
            self.topics[topic].messages.append(message)
        agent.sent.clear()
        agent.acked = dict(agent.read)

    @rule()
    def order_agent_log_confirmed(self) -> None:
        self.log_confirmed(self.order_agent)

    @rule()
    def ledger_agent_log_confirmed(self) -> None:
        self.log_confirmed(self.ledger_agent)

    @rule()
    def order_agent_flushes(self) -> None:
        self.flush(self.order_agent)

    @rule()
    def ledger_agent_flushes(self) -> None:
        self.flush(self.ledger_agent)

    def crash(self, agent: Agent, data: st.DataObject) -> None:
        """kill -9: of each partition's unconfirmed outputs some first ones had landed (what
        still waited for the log never left); the inputs after the last ack come again."""
        self.crashes += 1
        by_topic: dict[str, list[Any]] = {}
        for topic, message in agent.pending + agent.sent:
            by_topic.setdefault(topic, []).append(message)
        for topic, messages in sorted(by_topic.items()):
            landed = data.draw(st.integers(0, len(messages)), label=f"landed on {topic}")
            self.topics[topic].messages += messages[:landed]
        agent.pending.clear()
        agent.waiting.clear()
        agent.sent.clear()
        agent.read = dict(agent.acked)

    @rule(data=st.data())
    def order_agent_crashes(self, data: st.DataObject) -> None:
        self.crash(self.order_agent, data)
        self.order_partition = OrderPartition(max_in_memory=IN_MEMORY)
        for event in self.topics["orders"].messages:
            self.order_partition.fold(event)
            self.order_partition.spill()

    @rule(data=st.data())
    def ledger_agent_crashes(self, data: st.DataObject) -> None:
        self.crash(self.ledger_agent, data)
        for p in range(STOCK_PARTITIONS):
            self.ledger_partitions[p] = LedgerPartition()
            for event in self.topics[f"ledger/{p}"].messages:
                self.ledger_partitions[p].fold(event)

    # ------------------------------------------------------------ checks

    @invariant()
    def ledger_never_oversells(self) -> None:
        for level in self.ledger_levels().values():
            assert level.available_to_promise >= 0, level.key
            assert level.on_hand == level.received - level.committed + level.adjusted

    def ledger_levels(self) -> dict[str, inventory.StockLevel]:
        levels: dict[str, inventory.StockLevel] = {}
        for p in range(STOCK_PARTITIONS):
            for event in self.topics[f"ledger/{p}"].messages:
                key = stock_key(event.sku, event.location)
                level = levels.get(key) or inventory.empty(event.sku, event.location)
                assert event.sequence == level.sequence + 1, f"{key}: a ledger gap"
                levels[key] = inventory.apply(level, event)
        return levels

    def drain(self) -> int:
        """Let both agents run, flushing as they go, until nothing moves; returns the number of
        steps it took (a loop never ends: the bound says so)."""
        steps = 0
        while True:
            moved = False
            for source in self.unread(self.order_agent):
                self.step_order_agent(source)
                moved = True
            self.flush(self.order_agent)
            for source in self.unread(self.ledger_agent):
                self.step_ledger_agent(source)
                moved = True
            self.flush(self.ledger_agent)
            if not moved and not self.unread(self.order_agent):
                return steps
            steps += 1
            assert steps < 200, "the agents keep answering each other: a message loop"

    def teardown(self) -> None:
        self.drain()
        spilled = self.order_partition.spilled
        assert isinstance(spilled, KeptInMemory)
        states = {**spilled, **self.order_partition.orders}
        levels = self.ledger_levels()
        log: dict[str, list[OrderEvent]] = {}
        for event in self.topics["orders"].messages:
            log.setdefault(event.order_id, []).append(event)

        # The order log: every order placed, no event twice, in sequence, by the lifecycle.
        assert sorted(log) == sorted(self.placed), "an order is missing from the log"
        for order_id, events in log.items():
            ids = [e.event_id for e in events]
            assert len(ids) == len(set(ids)), f"{order_id}: an event written twice"
            lifecycle_checker.fold(events)  # raises on a gap or an illegal transition
            assert orders.fold(events) == states[order_id], f"{order_id}: state != fold of log"

        # Every order settled, and the ledger holds exactly what the orders hold.
        open_on_ledger = {
            rid: (held.order_id, held.quantity)
            for level in levels.values()
            for rid, held in level.reservations.items()
        }
        held_by_orders = {
            rid: (order_id, held.quantity)
            for order_id, state in states.items()
            for rid, held in state.held.items()
        }
        for order_id, state in states.items():
            assert state.status in RESTING, f"{order_id} did not settle: {state.status}"
            if state.status in (lifecycle.OrderStatus.REJECTED, lifecycle.OrderStatus.CANCELLED):
                assert not state.held, f"{order_id} is {state.status} and holds {state.held}"
        assert open_on_ledger == held_by_orders, "a reservation leaked (or vanished)"

        # Goods that left were committed once each, and nothing else was.
        committed = Counter(
            e.reservation_id for p in range(STOCK_PARTITIONS)
            for e in self.topics[f"ledger/{p}"].messages if e.event_type == "StockCommitted"
        )  # fmt: skip
        assert all(n == 1 for n in committed.values()), "a reservation committed twice"
        shipped = {rid for state in states.values() for rid in state.committed}
        assert set(committed) == shipped

        # A reservation is made at most once per request, and every one was asked for.
        reserved = Counter(
            e.reservation_id for p in range(STOCK_PARTITIONS)
            for e in self.topics[f"ledger/{p}"].messages if isinstance(e, StockReserved)
        )  # fmt: skip
        assert all(n == 1 for n in reserved.values()), "a request reserved twice"

        # Bounded: the stock messages an order caused stay within a few per attempt.
        commands: Counter[str] = Counter(
            getattr(c, "order_id", "ops") for p in range(STOCK_PARTITIONS)
            for c in self.topics[f"stock-commands/{p}"].messages
        )  # fmt: skip
        for order_id, state in states.items():
            # each attempt sends its own; each crash may make it re-send what it owes
            bound = STOCK_MESSAGES_PER_ATTEMPT * (state.attempt + 1) * (1 + self.crashes)
            assert commands[order_id] <= bound, f"{order_id}: {commands[order_id]} messages"


# `make chaos` runs many more (OMS_PROTOCOL_EXAMPLES=20000).
ReservationProtocol.TestCase.settings = settings(
    max_examples=int(os.environ.get("OMS_PROTOCOL_EXAMPLES", "500")),
    stateful_step_count=50,
    deadline=None,
)
test_reservation_protocol = ReservationProtocol.TestCase


def test_a_stale_answer_is_not_answered() -> None:
    """The storm's seed, as a single case: an order rejected while its reservation was on the
    way gets the late StockReserved; the order sends nothing back, and the release it sent
    when it gave the attempt up closes the reservation on the ledger."""
    machine = ReservationProtocol()
    machine.stock_arrives()
    machine.place_order(skus=["KETTLE-IRON"], quantity=1)
    machine.step_order_agent("intake")
    machine.flush(machine.order_agent)
    cancel_id = "cancel-early"
    machine.topics["order-commands"].messages.append(OrderCancelled(
        **(machine.command_envelope("o-0", "cancel") | {"event_id": cancel_id}),
        cancelled_by=CancelledBy.CUSTOMER, reason_code="CHANGED_MIND", reason="no",
    ))  # fmt: skip
    machine.step_order_agent("order-commands")  # cancelled before the answer
    machine.flush(machine.order_agent)
    sent_before = sum(len(machine.topics[f"stock-commands/{p}"].messages) for p in (0, 1))
    machine.drain()
    sent_after = sum(len(machine.topics[f"stock-commands/{p}"].messages) for p in (0, 1))
    assert sent_after == sent_before, "the late answer was answered"
    assert not any(level.reservations for level in machine.ledger_levels().values())
    machine.teardown()


def test_deterministic_ids_make_the_answer_to_a_repeated_request_the_same() -> None:
    ledger = LedgerPartition()
    receipt = StockReceived(
        event_id="r", sequence=1, occurred_at=START, recorded_at=START, correlation_id="c",
        actor=OPERATOR, sku="KETTLE-IRON", location="WH-BJ", quantity=1,
    )  # fmt: skip
    ledger.handle(receipt, product=None, now=START)
    request = ReserveStock(
        event_id=deterministic_id("rid", "ReserveStock"), sequence=1, occurred_at=START,
        recorded_at=START, correlation_id="c", actor=OPERATOR, sku="KETTLE-IRON",
        location="WH-BJ", order_id="o", reservation_id="rid", quantity=1,
    )  # fmt: skip
    first = ledger.handle(request, product=None, now=START)
    again = ledger.handle(request, product=None, now=START + timedelta(seconds=5))
    assert [e.event_id for e in first.answers] == [e.event_id for e in again.answers]
    assert again.events == [] and len(first.events) == 1
