"""The order process: one pure decision per input for one order, from intake to prioritised.

The order agent is the single writer of each order's history. Its state is the fold of the
order log (`apply`), so a restarted worker rebuilds it from Kafka and recognises every input it
already answered: an input is *seen* when a logged event carries its id or names it as cause.

Inputs and what they lead to:
- `OrderReceived` / `OrderModified` from connectors: dedup, sequencing, validation
  (`streams.intake`), then `advance`.
- `StockReserved` / `StockReservationRefused` (replies of the inventory agent): the current
  routing attempt's lines are answered one by one (`OrderPartiallyReserved`); when all are in,
  `OrderReserved`, or `OrderReservationFailed` with the reserved lines released
  (compensation) and the order re-routed without the locations that refused.
- `StockReleased` with reason EXPIRED: the reservation lapsed; the order is routed again.
- Decisions by people: `ReviewApproved` / `ReviewRejected`, `OrderCancelled`, and fulfilment
  updates from stores and carriers, checked against the lifecycle.

`advance` takes an order as far as it can go on its own: fraud screening (`OrderHeld` stops
it), routing with stock reservation, priority. Its results depend on shared views (stock,
load, customer history) and are written once; after a crash the redelivered input finds them
in the log. Stock commands are not in the log: `recover` re-sends those an order still owes
(the ledger ignores repeats), which the agent does for every redelivered input.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from events.lifecycle import TRANSITIONS, OrderStatus
from events.models import (
    Actor,
    ActorKind,
    CommitStock,
    LineQuantity,
    OrderAcceptedByStore,
    OrderCancelled,
    OrderCompleted,
    OrderDelivered,
    OrderEvent,
    OrderMode,
    OrderModified,
    OrderPartiallyReserved,
    OrderPickedUp,
    OrderPreparing,
    OrderReady,
    OrderReceived,
    OrderRefunded,
    OrderRejected,
    OrderReservationFailed,
    OrderReservationReleased,
    OrderReserved,
    OrderRouted,
    RejectionReason,
    ReleaseStock,
    ReserveStock,
    ReturnReceived,
    ReturnRequested,
    ReviewApproved,
    ReviewRejected,
    ShipmentCreated,
    ShipmentStatusUpdated,
    StockEvent,
    StockReleased,
    StockReservationRefused,
    StockReserved,
    deterministic_id,
    follow_up,
)
from streams import fraud, intake, priority, routing, validation
from streams.catalogue import Catalogue
from streams.customers import CustomerHistory, customer_key

S = OrderStatus
ACTOR = Actor(kind=ActorKind.SYSTEM, id="orders")
MAX_ROUTING_ATTEMPTS = 3
RESERVATION_TTL: dict[OrderMode, timedelta] = {
    OrderMode.DELIVERY: timedelta(hours=3),
    OrderMode.PICKUP: timedelta(hours=3),
    OrderMode.DINE_IN: timedelta(hours=3),
    OrderMode.SHIP: timedelta(days=3),
}
# Inputs people and stores send for an order, checked against the lifecycle and logged as is.
RELAYED: tuple[type[OrderEvent], ...] = (
    ReviewApproved, ReviewRejected, OrderCancelled, OrderAcceptedByStore, OrderPreparing,
    OrderReady, OrderPickedUp, ShipmentCreated, ShipmentStatusUpdated, OrderDelivered,
    OrderCompleted, ReturnRequested, ReturnReceived, OrderRefunded,
)  # fmt: skip


def reservation_id(order_id: str, attempt: int, sku: str, location: str) -> str:
    return deterministic_id(order_id, "reservation", str(attempt), sku, location)


@dataclass(frozen=True)
class Held:
    """A unit count the ledger holds for this order."""

    sku: str
    location: str
    quantity: int


@dataclass(frozen=True)
class OrderState:
    """The fold of one order's log."""

    order: OrderReceived
    status: OrderStatus
    version: int
    last_event_id: str
    revision: int = 0
    seen: frozenset[str] = frozenset()
    reviewed: bool = False
    attempt: int = 0
    requested: Mapping[str, Held] = field(default_factory=dict)  # this attempt's lines
    answers: Mapping[str, bool] = field(default_factory=dict)  # reservation id -> reserved?
    held: Mapping[str, Held] = field(default_factory=dict)  # reservations the ledger holds
    released: Mapping[str, Held] = field(default_factory=dict)  # every one given back
    committed: Mapping[str, Held] = field(default_factory=dict)  # taken out with the goods
    refused_at: frozenset[str] = frozenset()  # locations that refused a line
    location: str | None = None

    def as_record(self) -> intake.OrderRecord:
        return intake.OrderRecord.model_construct(
            order=self.order, version=self.version, status=self.status,
            revision=self.revision, seen=list(self.seen),
        )  # fmt: skip


@dataclass(frozen=True)
class Context:
    """What a decision may look at besides the order: shared views, rules and the clock."""

    catalogue: Catalogue
    rules: fraud.FraudRules
    history: CustomerHistory
    available: Callable[[str, str], int]
    load: Mapping[str, int]
    now: datetime


@dataclass(frozen=True)
class Decision:
    to_log: list[OrderEvent] = field(default_factory=list)  # in sequence
    commands: list[StockEvent] = field(default_factory=list)  # to the inventory agent
    refusal: str | None = None  # why the input was not taken (dead-lettered)
    after: OrderState | None = None  # the state with `to_log` applied (saves a second fold)


# ---------------------------------------------------------------- fold


def apply(state: OrderState | None, event: OrderEvent) -> OrderState:
    """The state after one logged event (the log is already sequenced and checked)."""
    seen = frozenset({event.event_id} | ({event.causation_id} if event.causation_id else set()))
    if state is None:
        assert isinstance(event, OrderReceived), "an order's log starts with OrderReceived"
        return OrderState(order=event, status=S.RECEIVED, version=event.sequence,
                          last_event_id=event.event_id, seen=seen)  # fmt: skip
    status = TRANSITIONS[state.status].get(type(event), state.status)
    changes: dict[str, Any] = {
        "status": status, "version": event.sequence, "seen": state.seen | seen,
        "last_event_id": event.event_id,
    }  # fmt: skip
    if isinstance(event, OrderModified):
        changes |= {"order": intake.merge(state.order, event), "revision": event.revision}
        changes |= _give_back(state, state.held)
    elif isinstance(event, ReviewApproved):
        changes["reviewed"] = True
    elif isinstance(event, OrderRouted):
        attempt = state.attempt + 1
        requested = {
            reservation_id(event.order_id, attempt, line.sku, group.location): Held(
                line.sku, group.location, line.quantity
            )
            for group in event.groups
            for line in group.lines
            if line.location is not None  # made to order: nothing to reserve
        }
        changes |= {"attempt": attempt, "requested": requested, "answers": {},
                    "location": event.location}  # fmt: skip
    elif isinstance(event, OrderPartiallyReserved | OrderReserved | OrderReservationFailed):
        reserved = event.reserved if isinstance(event, OrderPartiallyReserved) else (
            event.lines if isinstance(event, OrderReserved) else [])  # fmt: skip
        missing = event.missing if not isinstance(event, OrderReserved) else []
        answers = dict(state.answers)
        held = dict(state.held)
        for line in reserved:
            rid = reservation_id(event.order_id, state.attempt, line.sku, line.location or "")
            answers[rid] = True
            held[rid] = Held(line.sku, line.location or "", line.quantity)
        for line in missing:
            rid = reservation_id(event.order_id, state.attempt, line.sku, line.location or "")
            answers[rid] = False
        changes |= {"answers": answers, "held": held}
        if isinstance(event, OrderReservationFailed):
            # Compensation: everything this attempt reserved goes back.
            attempt_held = {rid: h for rid, h in held.items() if rid in state.requested}
            changes |= _give_back(replace(state, held=held), attempt_held)
            changes["refused_at"] = state.refused_at | {
                line.location for line in missing if line.location
            }
    elif isinstance(event, OrderReservationReleased):
        released = {rid for rid, h in state.held.items()
                    if any(line.sku == h.sku and line.location == h.location
                           for line in event.lines)}  # fmt: skip
        changes |= _give_back(state, {rid: state.held[rid] for rid in released})
    elif isinstance(event, OrderCancelled | ReviewRejected):
        changes |= _give_back(state, state.held)
    elif isinstance(event, OrderPickedUp | ShipmentCreated):
        changes |= {"held": {}, "committed": {**state.committed, **state.held}}
    return _evolve(state, changes)


def _evolve(state: OrderState, changes: dict[str, Any]) -> OrderState:
    """`dataclasses.replace` without re-running the frozen `__init__` field by field (this runs
    for every event of every order; the fields are copied as they are either way)."""
    after = object.__new__(OrderState)
    after.__dict__.update(state.__dict__)
    after.__dict__.update(changes)
    return after


def _give_back(state: OrderState, lines: Mapping[str, Held]) -> dict[str, Any]:
    return {
        "held": {rid: h for rid, h in state.held.items() if rid not in lines},
        "released": {**state.released, **lines},
    }


def _fold_on(events: list[OrderEvent], state: OrderState) -> OrderState:
    for event in events:
        state = apply(state, event)
    return state


def fold(events: list[OrderEvent], state: OrderState | None = None) -> OrderState | None:
    for event in events:
        state = apply(state, event)
    return state


# ---------------------------------------------------------------- decide


def decide(state: OrderState | None, received: OrderEvent | StockEvent, ctx: Context) -> Decision:
    """What one input means for its order."""
    if state is not None and received.event_id in state.seen:
        # Answered before — but a crash may have cut the answer short: finish what the order
        # can do on its own, and re-send the stock commands it owes.
        resumed = _then_advance(state, [], [], ctx)
        return replace(resumed, commands=recover(state, now=ctx.now) + resumed.commands)
    if isinstance(received, OrderReceived | OrderModified):
        record = None if state is None else state.as_record()
        taken = intake.decide(record, received, now=ctx.now, catalogue=ctx.catalogue)
        if taken.refusal is not None or not taken.to_log:
            return Decision(refusal=taken.refusal)
        return _then_advance(state, taken.to_log, [], ctx)
    if state is None:
        return Decision(refusal=f"{received.event_type} for an order never received")
    if isinstance(received, StockReserved | StockReservationRefused):
        return _answer(state, received, ctx)
    if isinstance(received, StockReleased):
        return _lapsed(state, received, ctx)
    if isinstance(received, OrderEvent) and isinstance(received, RELAYED):
        if type(received) not in TRANSITIONS[state.status]:
            return Decision(refusal=f"order {state.order.order_id} is {state.status.value}: "
                            f"{received.event_type} is not allowed")  # fmt: skip
        order = state.order  # a command names the order; its details come from the history
        relayed = received.model_copy(update={
            "sequence": state.version + 1, "channel": order.channel,
            "external_id": order.external_id, "correlation_id": order.correlation_id,
        })  # fmt: skip
        return _then_advance(state, [relayed], [], ctx)
    return Decision(refusal=f"{received.event_type} is not an input of the order process")


def advance(state: OrderState, ctx: Context, *, cause: str) -> Decision:
    """The steps an order takes on its own from where it stands (nothing when it waits)."""
    order = state.order
    if state.status is S.RECEIVED:
        # Received (or revised) and not yet judged: a crash came between the two. The verdict
        # follows from the same cause, so it is the event that would have been written.
        verdict = validation.verdict(
            order, cause=state.last_event_id, sequence=state.version + 1, now=ctx.now,
            catalogue=ctx.catalogue,
        )  # fmt: skip
        return Decision([verdict])
    if state.status is S.ACCEPTED:
        if not state.reviewed:
            screening = fraud.screen(
                order, history=ctx.history, catalogue=ctx.catalogue, rules=ctx.rules,
                now=ctx.now,
            )  # fmt: skip
            if screening.held:
                held = fraud.hold(
                    order, screening, threshold=ctx.rules.threshold,
                    sequence=state.version + 1, causation_id=cause, now=ctx.now,
                )  # fmt: skip
                return Decision([held])
        return _route(state, ctx, cause=cause)
    if state.status is S.RESERVATION_FAILED:
        return _route(state, ctx, cause=cause)
    if state.status is S.RESERVED or (state.status is S.ROUTED and not state.requested):
        location = state.location or ""
        customer = customer_key(order)
        tier = ctx.history.tier(customer) if customer else "new"
        rank = priority.priority(order, tier=tier, now=ctx.now)
        event = priority.prioritise_event(
            order, rank, location=location, sequence=state.version + 1, causation_id=cause,
            now=ctx.now,
        )  # fmt: skip
        return Decision([event])
    return Decision()


def recover(state: OrderState, *, now: datetime) -> list[StockEvent]:
    """Stock commands the order still owes the ledger (all idempotent there)."""
    commands: list[StockEvent] = []
    if state.status in (S.ROUTED, S.PARTIALLY_RESERVED):
        commands += _reserve(state, now=now, only_unanswered=True)
    commands += [_release(state, rid, held, reason="RECOVERY", now=now)
                 for rid, held in state.released.items()]  # fmt: skip
    commands += [_commit(state, rid, held, now=now) for rid, held in state.committed.items()]
    return commands


# ---------------------------------------------------------------- steps


def _then_advance(
    state: OrderState | None, logged: list[OrderEvent], commands: list[StockEvent], ctx: Context
) -> Decision:
    """Log `logged`, then let the order go on as far as it can."""
    to_log = list(logged)
    commands = list(commands)
    folded = fold(logged, state)
    assert folded is not None, "an order's first input is its receipt"
    after: OrderState = folded
    for _ in range(2 * MAX_ROUTING_ATTEMPTS + 4):  # each step moves the order; bounded anyway
        step = advance(after, ctx, cause=after.last_event_id)
        if not step.to_log:
            commands += step.commands
            break
        to_log += step.to_log
        commands += step.commands
        after = step.after or _fold_on(step.to_log, after)
    # Whatever the logged events gave back or committed goes to the ledger — before any new
    # reservation, so a re-route to the same location finds the units free again.
    start = state or after
    why = _why_released(to_log)
    settled = [
        _release(after, rid, held, reason=why, now=ctx.now)
        for rid, held in after.released.items()
        if rid not in start.released
    ]
    settled += [
        _commit(after, rid, held, now=ctx.now)
        for rid, held in after.committed.items()
        if rid not in start.committed
    ]
    return Decision(to_log, settled + commands, after=after)


def _route(state: OrderState, ctx: Context, *, cause: str) -> Decision:
    order = state.order
    exclude = frozenset(state.refused_at)
    plan = (
        routing.route(
            order,
            catalogue=ctx.catalogue,
            available=ctx.available,
            load=ctx.load,
            now=ctx.now,
            exclude=exclude,
        )  # fmt: skip
        if state.attempt < MAX_ROUTING_ATTEMPTS
        else routing.NoRoute(
            code="OUT_OF_STOCK",
            message=f"no stock after {state.attempt} routing attempts",
            missing=[],
            reasons=[],
        )  # fmt: skip
    )
    if isinstance(plan, routing.NoRoute):
        events: list[OrderEvent] = []
        sequence = state.version + 1
        if state.status is not S.RESERVATION_FAILED:
            events.append(OrderReservationFailed(
                **_envelope(order, sequence=sequence, cause=cause, kind="OrderReservationFailed",
                            now=ctx.now),
                missing=plan.missing, reason=plan.code,
            ))  # fmt: skip
            sequence += 1
        events.append(OrderRejected(
            **_envelope(order, sequence=sequence, cause=cause, kind="OrderRejected", now=ctx.now),
            reasons=[RejectionReason(code=plan.code, message=plan.message)],
        ))  # fmt: skip
        return Decision(events)
    routed = routing.route_event(
        order, _mark_made_to_order(plan, ctx.catalogue), sequence=state.version + 1,
        causation_id=cause, attempt=state.attempt + 1, now=ctx.now,
    )  # fmt: skip
    after = apply(state, routed)
    return Decision([routed], _reserve(after, now=ctx.now, only_unanswered=False), after=after)


def _mark_made_to_order(plan: routing.Route, catalogue: Catalogue) -> routing.Route:
    """Lines of made-to-order goods carry no location: there is no stock to reserve."""

    def tracked(sku: str) -> bool:
        product = catalogue.products.get(sku)
        return product is not None and product.stock_tracked

    def marked(line: LineQuantity, location: str) -> LineQuantity:
        wanted = location if tracked(line.sku) else None
        return line if line.location == wanted else line.model_copy(update={"location": wanted})

    groups = []
    for group in plan.groups:
        lines = [marked(line, group.location) for line in group.lines]
        unchanged = all(new is old for new, old in zip(lines, group.lines, strict=True))
        groups.append(group if unchanged else group.model_copy(update={"lines": lines}))
    return replace(plan, groups=groups)


def _answer(
    state: OrderState, reply: StockReserved | StockReservationRefused, ctx: Context
) -> Decision:
    rid = reply.reservation_id
    current = rid in state.requested and rid not in state.answers
    if not current or state.status not in (S.ROUTED, S.PARTIALLY_RESERVED):
        # A late answer (order cancelled, re-routed, or answered already): give units back.
        if isinstance(reply, StockReserved) and rid not in state.held:
            return Decision(commands=[_release_line(state, rid, reply.sku, reply.location,
                                                    reason="STALE", now=ctx.now)])  # fmt: skip
        return Decision()
    answers = {**state.answers, rid: isinstance(reply, StockReserved)}
    line = state.requested[rid]
    reserved = [_line(state.requested[r]) for r, ok in answers.items() if ok]
    missing = [_line(state.requested[r]) for r, ok in answers.items() if not ok]
    envelope = _envelope(state.order, sequence=state.version + 1, cause=reply.event_id,
                         kind=f"answer:{line.sku}@{line.location}", now=ctx.now)  # fmt: skip
    if len(answers) < len(state.requested):
        event: OrderEvent = OrderPartiallyReserved(**envelope, reserved=reserved, missing=missing)
    elif not missing:
        expires = ctx.now + RESERVATION_TTL[state.order.mode]
        event = OrderReserved(**envelope, lines=reserved, expires_at=expires)
    else:
        short = ", ".join(f"{m.sku}@{m.location}" for m in missing)
        event = OrderReservationFailed(**envelope, missing=missing,
                                       reason=f"INSUFFICIENT_STOCK: {short}")  # fmt: skip
    return _then_advance(state, [event], [], ctx)


def _lapsed(state: OrderState, released: StockReleased, ctx: Context) -> Decision:
    rid = released.reservation_id
    if rid not in state.held or OrderReservationReleased not in TRANSITIONS[state.status]:
        return Decision()  # not held (any more): nothing to record
    event = OrderReservationReleased(
        **_envelope(state.order, sequence=state.version + 1, cause=released.event_id,
                    kind="OrderReservationReleased", now=ctx.now),
        lines=[_line(state.held[rid])], reason=released.reason,
    )  # fmt: skip
    return _then_advance(state, [event], [], ctx)


# ---------------------------------------------------------------- helpers


def _reserve(state: OrderState, *, now: datetime, only_unanswered: bool) -> list[StockEvent]:
    order = state.order
    expires = now + RESERVATION_TTL[order.mode]
    return [
        ReserveStock(
            event_id=deterministic_id(rid, "ReserveStock"),
            sequence=1,
            occurred_at=now,
            recorded_at=now,
            correlation_id=order.correlation_id,
            causation_id=order.event_id,
            actor=ACTOR,
            sku=held.sku,
            location=held.location,
            order_id=order.order_id,
            reservation_id=rid,
            quantity=held.quantity,
            expires_at=expires,
        )  # fmt: skip
        for rid, held in state.requested.items()
        if not (only_unanswered and rid in state.answers)
    ]


def _release(state: OrderState, rid: str, held: Held, *, reason: str, now: datetime) -> StockEvent:
    return _release_line(state, rid, held.sku, held.location, reason=reason, now=now)


def _release_line(
    state: OrderState, rid: str, sku: str, location: str, *, reason: str, now: datetime
) -> StockEvent:
    return ReleaseStock(
        event_id=deterministic_id(rid, "ReleaseStock"), sequence=1, occurred_at=now,
        recorded_at=now, correlation_id=state.order.correlation_id, actor=ACTOR, sku=sku,
        location=location, order_id=state.order.order_id, reservation_id=rid, reason=reason,
    )  # fmt: skip


def _commit(state: OrderState, rid: str, held: Held, *, now: datetime) -> StockEvent:
    return CommitStock(
        event_id=deterministic_id(rid, "CommitStock"), sequence=1, occurred_at=now,
        recorded_at=now, correlation_id=state.order.correlation_id, actor=ACTOR, sku=held.sku,
        location=held.location, order_id=state.order.order_id, reservation_id=rid,
    )  # fmt: skip


def _why_released(logged: list[OrderEvent]) -> str:
    for event in reversed(logged):
        if isinstance(event, OrderCancelled | ReviewRejected):
            return "CANCELLED"
        if isinstance(event, OrderModified):
            return "MODIFIED"
        if isinstance(event, OrderReservationFailed):
            return "COMPENSATION"
        if isinstance(event, OrderReservationReleased):
            return event.reason
    return "RELEASED"


def _line(held: Held) -> LineQuantity:
    return LineQuantity(sku=held.sku, quantity=held.quantity, location=held.location)


def _envelope(
    order: OrderReceived, *, sequence: int, cause: str, kind: str, now: datetime
) -> dict[str, Any]:
    return {"event_id": deterministic_id(cause, kind, order.order_id)} | follow_up(
        order, sequence=sequence, causation_id=cause, actor=ACTOR, now=now
    )
