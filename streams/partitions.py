"""What each agent keeps for one partition, and what one input does to it. No Kafka here:
the worker (`streams.worker.app`) feeds inputs in and writes the outputs; the reservation protocol's
model test (`tests/streams/test_reservation_protocol.py`) drives the very same objects through
random interleavings, crashes and redeliveries.

A partition's state is rebuilt from the agent's own output log after every (re)assignment —
`fold` each logged event, in order — so whatever a crash cut short is recognised when its
input comes again.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from itertools import islice
from typing import Protocol

from events import privacy
from events.models import (
    Event,
    Location,
    OrderEvent,
    Product,
    ReserveStock,
    StockEvent,
    StockReservationRefused,
    StockReserved,
    stock_key,
)
from streams import inventory, orders

# A recent stock command's events, or their sealed bytes (restored, not opened yet).
Recent = list[StockEvent] | bytes

# An order whose timer sent a command (or an alert) not yet on its log is looked at again
# this much later (the command is not sent twice meanwhile: `OrderPartition.expiries`).
RECHECK = timedelta(seconds=30)
# Orders a partition's timer looks at per tick at most (the rest at the next tick).
DUE_BATCH = 5_000


@dataclass(frozen=True)
class OrderStep:
    """What one input to the order agent writes: its log events, its stock commands, and the
    reason it was not taken (dead-lettered) if it was not. `after` is the order's state once
    the step is committed (None: unchanged)."""

    to_log: list[OrderEvent] = field(default_factory=list)
    commands: list[StockEvent] = field(default_factory=list)
    refusal: str | None = None
    order_id: str = ""
    after: orders.OrderState | None = None
    recovers: bool = False  # the commands include the order's recovery (sent once)


class SpilledOrders(Protocol):
    """Where an `OrderPartition` keeps the orders it holds no more in memory: exactly their
    state, read back when an input for one of them comes (a late refund, a channel re-sending
    an old order). The worker's is a file of its own per partition (streams.worker.spill)."""

    def get(self, order_id: str) -> orders.OrderState | None: ...

    def put(self, states: Mapping[str, orders.OrderState]) -> None: ...


class KeptInMemory(dict[str, orders.OrderState]):
    """`SpilledOrders` in a dict: for tests, and where memory does not matter."""

    def put(self, states: Mapping[str, orders.OrderState]) -> None:
        self.update(states)


@dataclass(frozen=True)
class OrdersCut:
    """An `OrderPartition` at one moment, for a snapshot (its states are immutable, so copies
    of the mappings are a consistent cut): the orders in memory in flight (`hot`) and settled
    (`cold`), and the timers' schedule. (The worker's snapshots restore them all into the
    spill file, decoded only when touched: streams/worker/snapshots.py.)"""

    hot: dict[str, orders.OrderState]
    cold: dict[str, orders.OrderState]
    due: list[tuple[str, datetime]]  # each order with a timer, and when to look at it


class OrderPartition:
    """The order agent's state for one partition: each order's fold of the order log.

    An input is taken in two steps, `decide` (which changes nothing) and `commit`: the worker
    encodes the step's outputs in between, so an input whose decision or outputs fail (a
    poison message, dead-lettered) leaves the state exactly as it was.

    Memory is bounded: past `max_in_memory` orders, `spill` moves the oldest settled ones (no
    reservation awaiting the ledger's answer) to `spilled`, from where `decide` and `fold`
    read them back exactly. An order in flight is never spilled; one holding its reservations
    until it ships is settled (it may wait hours).

    Timers: every order with one (a store yet to accept it, an alert or a promise due, a hold
    that expires) is on a schedule by the time it next may fall due (`orders.timer_due`), in
    memory or spilled; a tick looks only at the orders due (`expiries`), so it costs what is
    due, not every order kept."""

    def __init__(
        self, *, spilled: SpilledOrders | None = None, max_in_memory: int | None = None
    ) -> None:
        self.orders: dict[str, orders.OrderState] = {}
        # The timers' schedule: a heap of (when to look, order id), and each order's live
        # entry (an entry of the heap that is not is stale, skipped when it comes up). Looking
        # at every timed order each tick cost seconds of the event loop on a busy day.
        self._due: list[tuple[datetime, str]] = []
        self._due_at: dict[str, datetime] = {}
        # The settled orders in memory, oldest settled first: the only ones `spill` looks at.
        # (It walked every order until it had moved enough: with the memory full of orders
        # waiting for the ledger, it walked them all on every batch — the worker then had no
        # time left for the ledger's answers that would settle them, a livelock.)
        self._quiet: dict[str, None] = {}
        self.spilled: SpilledOrders = spilled if spilled is not None else KeptInMemory()
        self.max_in_memory = max_in_memory
        # Orders whose owed stock commands were re-sent since the rebuild: once is enough
        # (a crash can only have cut short what came before the rebuild), and re-sending on
        # every repeat would answer duplicates with duplicates.
        self._recovered: set[str] = set()
        # The expiry command sent for each order since the rebuild (the timer would repeat it
        # until it is logged; the order's next hold, if any, has a command of its own).
        self._expiry_sent: dict[str, str] = {}
        self._alert_sent: dict[str, str] = {}  # likewise, the last at-risk alert of each order

    def fold(self, event: Event) -> None:
        """One event of the order log, read back while rebuilding."""
        if isinstance(event, OrderEvent):
            self._put(event.order_id, orders.apply(self.state_of(event.order_id), event))

    def cut(self) -> OrdersCut:
        hot: dict[str, orders.OrderState] = {}
        cold: dict[str, orders.OrderState] = {}
        for order_id, state in self.orders.items():
            (cold if _settled(state) else hot)[order_id] = state
        return OrdersCut(hot, cold, list(self._due_at.items()))

    def restore(
        self, hot: Mapping[str, orders.OrderState], due: Iterable[tuple[str, datetime]]
    ) -> None:
        """Take a snapshot's orders in flight back into memory and its timers' schedule (the
        rest of it is put in `spilled` by whoever restores)."""
        for order_id, at in due:
            self._schedule(order_id, at)
        for order_id, state in hot.items():
            self._put(order_id, state)

    def close(self) -> None:
        close = getattr(self.spilled, "close", None)
        if close is not None:
            close()

    @property
    def in_flight(self) -> int:
        """Orders waiting for the ledger's answers (in memory: they never spill)."""
        return len(self.orders) - len(self._quiet)

    def state_of(self, order_id: str) -> orders.OrderState | None:
        state = self.orders.get(order_id)
        return state if state is not None else self.spilled.get(order_id)

    def evict(self, before: datetime) -> int:
        """Forget the spilled orders nothing touched since `before` (none in flight: only
        settled orders spill), some at a time; how many. An input for one later is refused
        like one for an order never received; the order log still holds its history, which a
        rebuild from the whole log reads back (until the next eviction)."""
        evict = getattr(self.spilled, "evict", None)
        return int(evict(before.timestamp())) if evict is not None else 0

    def forget_personal(self, customers: Collection[str], orders_: Collection[str] = ()) -> int:
        """Customers (pseudonymous keys) and orders whose data keys were forgotten: the
        orders in memory keep their receipt and pending revision as a reader without the key
        sees them (`events.privacy.scrubbed`), as a rebuild from the log would. Otherwise the
        next event, spill row or snapshot sealing them would make the customer a new data key
        and put the forgotten values back. (Spilled orders are sealed rows already: read back,
        they do not open.) How many orders were scrubbed."""
        scrubbed = 0
        for order_id, state in list(self.orders.items()):
            order = state.order
            customer = order.customer.key if order.customer is not None else None
            if customer not in customers and order_id not in orders_:
                continue
            clean = replace(
                state,
                order=privacy.scrubbed(order),
                pending=None if state.pending is None else privacy.scrubbed(state.pending),
            )
            if clean != state:
                self.orders[order_id] = clean
                scrubbed += 1
        return scrubbed

    def spill(self) -> int:
        """Move the oldest settled orders out of memory until a tenth below the bound (so
        spilling runs now and then, not on every order); how many moved."""
        if self.max_in_memory is None or len(self.orders) <= self.max_in_memory:
            return 0
        target = self.max_in_memory - self.max_in_memory // 10
        excess = len(self.orders) - target
        moved = {order_id: self.orders[order_id] for order_id in islice(self._quiet, excess)}
        self.spilled.put(moved)
        for order_id in moved:  # their timers stay on the schedule: read back when due
            del self.orders[order_id]
            del self._quiet[order_id]
            self._recovered.discard(order_id)
        return len(moved)

    def _put(self, order_id: str, state: orders.OrderState) -> None:
        self.orders[order_id] = state
        self._schedule(order_id, orders.timer_due(state, place=None))
        if _settled(state):
            self._quiet.setdefault(order_id, None)
        else:
            self._quiet.pop(order_id, None)

    def _schedule(self, order_id: str, at: datetime | None) -> None:
        """Look at the order's timers at `at` (None: it has none left)."""
        if at is None:
            if self._due_at.pop(order_id, None) is not None:  # its heap entry is stale now
                self._forget_timers(order_id)
            return
        if self._due_at.get(order_id) == at:
            return
        self._due_at[order_id] = at
        heapq.heappush(self._due, (at, order_id))
        if len(self._due) > 2 * len(self._due_at) + 1024:  # mostly stale: rebuilt (sorted)
            self._due = sorted((when, i) for i, when in self._due_at.items())

    def _forget_timers(self, order_id: str) -> None:
        self._expiry_sent.pop(order_id, None)
        self._alert_sent.pop(order_id, None)

    def handle(self, received: OrderEvent | StockEvent, ctx: orders.Context) -> OrderStep:
        step = self.decide(received, ctx)
        self.commit(step)
        return step

    def decide(self, received: OrderEvent | StockEvent, ctx: orders.Context) -> OrderStep:
        order_id = getattr(received, "order_id", "")
        state = self.state_of(order_id)
        decision = orders.decide(state, received, ctx)
        after = None
        if decision.to_log:
            after = decision.after or orders.fold(decision.to_log, state)
            assert after is not None
        commands = list(decision.commands)
        recovers = bool(decision.recovery) and order_id not in self._recovered
        if recovers:
            commands = decision.recovery + commands
        return OrderStep(decision.to_log, commands, decision.refusal, order_id, after, recovers)

    def commit(self, step: OrderStep) -> None:
        if step.after is not None:
            self._put(step.order_id, step.after)
        if step.recovers:
            self._recovered.add(step.order_id)

    def expiries(
        self, now: datetime, locations: Mapping[str, Location] | None = None
    ) -> list[OrderEvent]:
        """Commands for the orders whose time ran out, each sent once (the order agent takes
        them as inputs, so a crash between logging and acting is recovered like any): a store
        that has not accepted its order within its `accept_within_minutes` (`locations`, the
        catalogue's), else a hold that expired; and the alerts of orders at risk of missing
        their promise (`orders.at_risk_due`). Only the orders due are looked at (at most
        `DUE_BATCH`), read back if spilled."""
        due: list[OrderEvent] = []
        for _ in range(DUE_BATCH):
            if not self._due or self._due[0][0] > now:
                break
            at, order_id = heapq.heappop(self._due)
            if self._due_at.get(order_id) != at:
                continue  # stale: the order was scheduled again since
            del self._due_at[order_id]
            state = self.state_of(order_id)
            if state is None:
                self._forget_timers(order_id)
                continue
            place = (locations or {}).get(state.location or "")
            found = False
            for alert in orders.at_risk_due(state, now=now, place=place)[:1]:
                found = True
                if self._alert_sent.get(order_id) != alert.event_id:
                    self._alert_sent[order_id] = alert.event_id
                    due.append(alert)
            command: OrderEvent | None = None
            if state.status in orders.EXPIRABLE:
                command = orders.acceptance_due(state, now=now, place=place)
                command = command or orders.expiry_due(state, now=now)
            if command is not None:
                found = True
                if self._expiry_sent.get(order_id) != command.event_id:
                    self._expiry_sent[order_id] = command.event_id
                    due.append(command)
            # At its next timer, exactly now that its store is known; and while something
            # sent is not on its log yet (which schedules the order anew), within RECHECK.
            after = orders.timer_due(state, place=place, after=now)
            if found:
                after = min(after, now + RECHECK) if after is not None else now + RECHECK
            self._schedule(order_id, after)
            if after is None:
                self._forget_timers(order_id)
        return due


def held_back(in_flight: Mapping[int, int], held: Iterable[int], *, limit: int) -> set[int]:
    """The partitions whose intake to hold back: those with `limit` orders in flight or more,
    and those already `held` until their orders in flight fall to half of it (so a partition
    is not paused and resumed on every batch)."""
    held = set(held)
    return {p for p, n in in_flight.items() if n >= limit or (p in held and n > limit // 2)}


def _settled(state: orders.OrderState) -> bool:
    """Nothing in flight: no reservation awaiting the ledger's answer. (An order holding its
    reservations until it ships is settled: it may wait hours, and its hold's expiry is on the
    timers' schedule like any timer.)"""
    return all(rid in state.answers for rid in state.requested)


@dataclass(frozen=True)
class LedgerStep:
    """What one stock command writes: ledger events, and the answers the orders hear.
    `key`/`after` are the level it changes and its value once committed."""

    events: list[StockEvent] = field(default_factory=list)
    answers: list[StockEvent] = field(default_factory=list)
    command_id: str = ""
    key: str = ""
    after: inventory.StockLevel | None = None


class LedgerPartition:
    """The inventory agent's state for one partition: each `sku@location` level, and the
    commands behind the last `RECENT_COMMANDS` ledger writes. Like `OrderPartition`, a
    command is taken by `decide` (no change) then `commit`.

    The recent commands make redelivery exact: a batch of inputs is redelivered after a crash
    only while it is unacknowledged, at most 8 batches of 500 (`streams.worker.sink.Acks`), so every
    redelivered command whose events reached the ledger is among them, whatever the levels
    have forgotten of their closed reservations since."""

    RECENT_COMMANDS = 10_000

    def __init__(self) -> None:
        self.levels: dict[str, inventory.StockLevel] = {}
        # A recent command's events, or (restored from a snapshot) their sealed bytes, opened
        # by `_open` only if the command comes again: a restart decodes none of them (it
        # decoded all of them: ~5.7 s of a restart after 1,000,000 orders).
        self._recent: OrderedDict[str, Recent] = OrderedDict()
        self._open: Callable[[bytes], list[StockEvent]] | None = None

    def cut(self) -> tuple[dict[str, inventory.StockLevel], list[tuple[str, Recent]]]:
        """The levels (immutable) and the recent commands (copied: `_remember` extends them;
        those still sealed as they are), for a snapshot."""
        recent = [(k, v if isinstance(v, bytes) else list(v)) for k, v in self._recent.items()]
        return dict(self.levels), recent

    def restore(
        self,
        levels: Mapping[str, inventory.StockLevel],
        recent: Iterable[tuple[str, Recent]],
        *,
        opener: Callable[[bytes], list[StockEvent]] | None = None,
    ) -> None:
        """Take a snapshot's levels and recent commands; `opener` opens the commands given
        sealed (bytes)."""
        self.levels.update(levels)
        self._recent = OrderedDict(recent)
        self._open = opener

    def recent(self, command_id: str) -> list[StockEvent] | None:
        """The events a recent command wrote (opened now if they were kept sealed)."""
        done = self._recent.get(command_id)
        if isinstance(done, bytes):
            if self._open is None:
                raise RuntimeError("a sealed recent command and nothing to open it with")
            done = self._recent[command_id] = self._open(done)
        return done

    def fold(self, event: Event) -> None:
        """One event of the stock ledger, read back while rebuilding."""
        if isinstance(event, StockEvent):
            key = stock_key(event.sku, event.location)
            level = self.levels.get(key) or inventory.empty(event.sku, event.location)
            self.levels[key] = inventory.apply(level, event)
            if event.causation_id is not None:
                self._remember(event.causation_id, [event])

    def handle(self, command: StockEvent, *, product: Product | None, now: datetime) -> LedgerStep:
        step = self.decide(command, product=product, now=now)
        self.commit(step)
        return step

    def decide(self, command: StockEvent, *, product: Product | None, now: datetime) -> LedgerStep:
        """Raises `inventory.StockCommandRefused` for a command the ledger will not take."""
        done = self.recent(command.event_id)
        if done is not None:  # redelivered or repeated: answer as before, write nothing
            return LedgerStep(answers=_answers(command, done))
        key = stock_key(command.sku, command.location)
        level = self.levels.get(key) or inventory.empty(command.sku, command.location)
        events = inventory.decide(level, command, product=product, now=now)
        answers = _answers(command, events)
        if not events and isinstance(command, ReserveStock):
            answered = inventory.outcome(level, command.reservation_id)
            answers = [answered] if answered is not None else []
        after = _applied(level, events) if events else None
        return LedgerStep(events, answers, command.event_id, key, after)

    def commit(self, step: LedgerStep) -> None:
        if step.after is not None:
            self.levels[step.key] = step.after
            self._remember(step.command_id, step.events)

    def expire(
        self, *, now: datetime, products: Mapping[str, Product]
    ) -> Iterable[tuple[str, list[StockEvent]]]:
        """What time did to each level (perishable batches): ledger events only."""
        for key, level in list(self.levels.items()):
            lapsed = inventory.expire(level, now=now, product=products.get(level.sku))
            if lapsed:
                self.levels[key] = _applied(level, lapsed)
                yield key, lapsed

    def _remember(self, command_id: str, events: list[StockEvent]) -> None:
        known = self.recent(command_id)
        if known is not None:
            known.extend(events)
            return
        self._recent[command_id] = list(events)
        if len(self._recent) > self.RECENT_COMMANDS:
            self._recent.popitem(last=False)


def _applied(level: inventory.StockLevel, events: list[StockEvent]) -> inventory.StockLevel:
    for event in events:
        level = inventory.apply(level, event)
    return level


def _answers(command: StockEvent, events: list[StockEvent]) -> list[StockEvent]:
    """A reservation request is answered on the order's inputs; nothing else is."""
    if not isinstance(command, ReserveStock):
        return []
    return [e for e in events if isinstance(e, StockReserved | StockReservationRefused)]
