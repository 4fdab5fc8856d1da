"""The order process: one pure decision per input for one order, from intake to prioritised.

The order agent is the single writer of each order's history. Its state is the fold of the
order log (`apply`), so a restarted worker rebuilds it from Kafka and recognises every input it
already answered: an input is *seen* when a logged event carries its id or names it as cause.

Inputs and what they lead to:
- `OrderReceived` / `OrderModified` from connectors: dedup, sequencing, validation
  (`streams.intake`), then `advance`.
- `StockReserved` / `StockReservationRefused` (the ledger's one answer to each `ReserveStock`):
  the current routing attempt's lines are answered one by one (`OrderPartiallyReserved`); when
  all are in, `OrderReserved`, or `OrderReservationFailed` and a new attempt without the
  locations that refused. An answer for a reservation the order gave up is not answered: the
  order released it when it gave it up, and the ledger takes commands per key in order.
- `OrderReservationReleased` with reason EXPIRED, sent by the agent's own expiry timer when a
  reserved order's hold runs out (`expiry_due`): logged, the units go back, routed again.
- Decisions by people: `ReviewApproved` / `ReviewRejected`, `OrderCancelled`, and fulfilment
  updates from stores and carriers, checked against the lifecycle; a store's action must name
  the store the order is routed to. `OrderDeclinedByStore` gives the attempt up and routes the
  order again without that store (rejected when no store is left).

The reservation protocol (docs/reservations.md): each reservation id belongs to one routing
attempt; when the order gives an attempt up (a refusal, a revision, expiry, cancellation,
rejection) it releases every reservation the attempt requested, answered or not; when the
goods leave it commits what it holds. So every reservation ends released or committed, and no
stock message is ever sent in reply to a stock answer.

`advance` takes an order as far as it can go on its own: fraud screening (`OrderHeld` stops
it), routing with stock reservation, priority. Its results depend on shared views (stock,
load, customer history) and are written once; after a crash the redelivered input finds them
in the log. Stock commands are not in the log: `recover` lists those an order still owes (the
ledger ignores repeats); the agent re-sends them once per order after it rebuilt its state.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from events.lifecycle import (
    AMENDABLE,
    AT_RISK_STATUSES,
    REVISABLE,
    TOO_LATE_TO_AMEND,
    TRANSITIONS,
    OrderStatus,
    next_status,
)
from events.models import (
    Actor,
    ActorKind,
    CancelledBy,
    CommitStock,
    CourierStatusUpdated,
    LineQuantity,
    Location,
    OrderAcceptedByStore,
    OrderAmendmentAccepted,
    OrderAmendmentRefused,
    OrderAmendmentRequested,
    OrderAtRisk,
    OrderCancelled,
    OrderCompleted,
    OrderDeclinedByStore,
    OrderDelivered,
    OrderEvent,
    OrderMode,
    OrderModified,
    OrderPartiallyReserved,
    OrderPickedUp,
    OrderPreparing,
    OrderPrioritised,
    OrderReady,
    OrderReceived,
    OrderRefunded,
    OrderRejected,
    OrderReservationFailed,
    OrderReservationReleased,
    OrderReserved,
    OrderRouted,
    RefundRequestClosed,
    RefundRequested,
    RejectionReason,
    ReleaseStock,
    ReserveStock,
    ReturnApproved,
    ReturnDenied,
    ReturnInspected,
    ReturnLabelCreated,
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
    WhenNotAccepted,
    deterministic_id,
    follow_up,
)
from streams import eta, fraud, intake, priority, returns, routing, validation
from streams.catalogue import Catalogue
from streams.customers import CustomerHistory, customer_key

S = OrderStatus
ACTOR = Actor(kind=ActorKind.SYSTEM, id="orders")
AUTO_ACCEPT = Actor(kind=ActorKind.SYSTEM, id="auto-accept")  # a store's acceptance policy
NOT_ACCEPTED = "NOT_ACCEPTED"  # the reason code of an escalation (`acceptance_due`)
STORE_DECLINED = "STORE_DECLINED"  # rejected: the stores that could take it declined it
# Routing attempts an order may spend on stock refusals before it is rejected OUT_OF_STOCK.
# Attempts started by a revision or by an expired hold do not count.
MAX_ROUTING_ATTEMPTS = 3
RESERVATION_TTL: dict[OrderMode, timedelta] = {
    OrderMode.DELIVERY: timedelta(hours=3),
    OrderMode.PICKUP: timedelta(hours=3),
    OrderMode.DINE_IN: timedelta(hours=3),
    OrderMode.SHIP: timedelta(days=3),
}
# Statuses in which a reserved order's hold can run out (before a store takes it on: from
# then on the goods are being prepared, and the reservation stays until they leave).
EXPIRABLE = frozenset({S.RESERVED, S.PRIORITISED})
# Inputs people and stores send for an order, checked against the lifecycle and logged as is.
RELAYED: tuple[type[OrderEvent], ...] = (
    ReviewApproved,
    ReviewRejected,
    OrderCancelled,
    OrderAcceptedByStore,
    OrderDeclinedByStore,
    OrderAmendmentAccepted,
    OrderAmendmentRefused,
    OrderPreparing,
    OrderReady,
    OrderPickedUp,
    ShipmentCreated,
    ShipmentStatusUpdated,
    OrderDelivered,
    OrderCompleted,
    ReturnRequested,
    ReturnApproved,
    ReturnDenied,
    ReturnLabelCreated,
    ReturnReceived,
    ReturnInspected,
    OrderRefunded,
)
# A store's actions name the store: only the store the order is routed to may take them (so
# may a delivery or completion a store reports; a carrier's names none).
STORE_ACTIONS: tuple[type[OrderEvent], ...] = (
    OrderAcceptedByStore,
    OrderDeclinedByStore,
    OrderPreparing,
    OrderReady,
    OrderPickedUp,
    OrderAmendmentAccepted,
    OrderAmendmentRefused,
)


def reservation_id(order_id: str, attempt: int, sku: str, location: str, quantity: int) -> str:
    """One request's id. It names everything the request asks for: a routing decided again
    after a crash may split the same line differently, and must not pass for the first one."""
    return deterministic_id(order_id, "reservation", str(attempt), sku, location, str(quantity))


@dataclass(frozen=True)
class Held:
    """A unit count the ledger holds (or may hold) for this order."""

    sku: str
    location: str
    quantity: int


@dataclass(frozen=True)
class OrderState:
    """The fold of one order's log.

    Reservations: `requested` are this attempt's (sent to the ledger), `answers` what the
    ledger said of them, `held` those it reserved and the order still holds; a reservation
    leaves for `released` (a release was or is to be sent) or `committed` (the goods left)."""

    order: OrderReceived
    status: OrderStatus
    version: int
    last_event_id: str
    revision: int = 0
    seen: frozenset[str] = frozenset()
    reviewed: bool = False
    screened: bool = False  # passed fraud screening since the last receipt or revision
    attempt: int = 0  # routing attempts so far (each names its own reservation ids)
    failures: int = 0  # attempts given up because the ledger refused a line
    routed_at: datetime | None = None  # when this attempt was routed: its hold runs from here
    requested: Mapping[str, Held] = field(default_factory=dict)  # this attempt's lines
    answers: Mapping[str, bool] = field(default_factory=dict)  # reservation id -> reserved?
    held: Mapping[str, Held] = field(default_factory=dict)  # reservations the ledger holds
    released: Mapping[str, Held] = field(default_factory=dict)  # every one given back
    committed: Mapping[str, Held] = field(default_factory=dict)  # taken out with the goods
    refused_at: frozenset[str] = frozenset()  # locations that refused a line
    declined_at: frozenset[str] = frozenset()  # stores that declined the order
    missing: tuple[LineQuantity, ...] = ()  # what the last refused attempt could not get
    location: str | None = None
    prioritised_at: datetime | None = None  # when the order reached its store's queue
    promised_at: datetime | None = None  # the time promised when it was prioritised
    pending: OrderAmendmentRequested | None = None  # a revision waiting for the store's answer
    ready_by: datetime | None = None  # when the store said it will be ready (its acceptance)

    @property
    def hold_expires_at(self) -> datetime | None:
        """When this attempt's reservations run out (None before routing)."""
        if self.routed_at is None:
            return None
        return self.routed_at + RESERVATION_TTL[self.order.mode]

    def as_record(self) -> intake.OrderRecord:
        return intake.OrderRecord.model_construct(
            order=self.order,
            version=self.version,
            status=self.status,
            revision=self.revision,
            seen=list(self.seen),
        )


@dataclass(frozen=True)
class Context:
    """What a decision may look at besides the order: shared views, rules and the clock."""

    catalogue: Catalogue
    rules: fraud.FraudRules
    history: CustomerHistory
    available: Callable[[str, str], int]
    load: Mapping[str, int]
    now: datetime
    # Prep-time estimates (streams.eta): the newest learned model (None: fixed defaults) and
    # the tickets each store has accepted and not yet marked ready.
    prep_model: eta.PrepTimeModel | None = None
    open_tickets: Mapping[str, int] = field(default_factory=dict)

    def estimate(self, order: OrderReceived, location: str) -> eta.Estimate:
        """When `order` would be ready at `location` if taken on now."""
        return eta.estimate(
            self.prep_model,
            order,
            location=location,
            open_tickets=self.open_tickets.get(location, 0),
            now=self.now,
        )


@dataclass(frozen=True)
class Decision:
    to_log: list[OrderEvent] = field(default_factory=list)  # in sequence
    commands: list[StockEvent] = field(default_factory=list)  # to the inventory agent
    refusal: str | None = None  # why the input was not taken (dead-lettered)
    after: OrderState | None = None  # the state with `to_log` applied (saves a second fold)
    # Stock commands the order may owe from before a crash (`recover`): for an input already
    # seen, to be sent once per order after the agent rebuilt its state, never on every repeat.
    recovery: list[StockEvent] = field(default_factory=list)


# ---------------------------------------------------------------- fold


def apply(state: OrderState | None, event: OrderEvent) -> OrderState:
    """The state after one logged event (the log is already sequenced and checked)."""
    seen = frozenset({event.event_id} | ({event.causation_id} if event.causation_id else set()))
    if state is None:
        assert isinstance(event, OrderReceived), "an order's log starts with OrderReceived"
        return OrderState(
            order=event,
            status=S.RECEIVED,
            version=event.sequence,
            last_event_id=event.event_id,
            seen=seen,
        )
    status = next_status(state.status, type(event))
    changes: dict[str, Any] = {
        "status": status,
        "version": event.sequence,
        "seen": state.seen | seen,
        "last_event_id": event.event_id,
    }
    if isinstance(event, OrderAmendmentRequested):  # (an OrderModified the store has not taken)
        changes |= {"pending": event, "revision": event.revision}
    elif isinstance(event, OrderModified) and state.status in AMENDABLE:
        # An amendment the store accepted: the same goods from stock (`_amendment`), so what
        # the order holds stays held; the kitchen makes the rest as amended.
        changes |= {"order": intake.merge(state.order, event), "pending": None}
    elif isinstance(event, OrderAmendmentRefused):
        if state.pending is not None and state.pending.revision == event.revision:
            changes["pending"] = None
    elif isinstance(event, OrderModified):
        changes |= {
            "order": intake.merge(state.order, event),
            "revision": event.revision,
            "screened": False,
        }
        changes |= _give_back(state, _outstanding(state))
    elif isinstance(event, ReviewApproved):
        changes["reviewed"] = True
    elif isinstance(event, OrderRouted):
        attempt = state.attempt + 1
        requested = {
            reservation_id(event.order_id, attempt, line.sku, group.location, line.quantity): Held(
                line.sku, group.location, line.quantity
            )
            for group in event.groups
            for line in group.lines
            if line.location is not None  # made to order: nothing to reserve
        }
        # A new attempt: whatever an earlier one still had out goes back first.
        changes |= _give_back(state, _outstanding(state))
        changes |= {
            "attempt": attempt,
            "requested": requested,
            "answers": {},
            "location": event.location,
            "routed_at": event.occurred_at,
            "screened": True,
        }
    elif isinstance(event, OrderPartiallyReserved | OrderReserved | OrderReservationFailed):
        reserved = (
            event.reserved
            if isinstance(event, OrderPartiallyReserved)
            else (event.lines if isinstance(event, OrderReserved) else [])
        )
        missing = event.missing if not isinstance(event, OrderReserved) else []
        answers = dict(state.answers)
        held = dict(state.held)
        for line in reserved:
            rid = reservation_id(
                event.order_id, state.attempt, line.sku, line.location or "", line.quantity
            )
            answers[rid] = True
            held[rid] = Held(line.sku, line.location or "", line.quantity)
        for line in missing:
            rid = reservation_id(
                event.order_id, state.attempt, line.sku, line.location or "", line.quantity
            )
            answers[rid] = False
        changes |= {"answers": answers, "held": held}
        if isinstance(event, OrderReservationFailed):
            # Compensation: the attempt is given up, every line it asked for goes back —
            # answered or not, reserved or refused (releasing is idempotent on the ledger).
            after = replace(state, held=held)
            changes |= _give_back(after, _outstanding(after))
            changes["refused_at"] = state.refused_at | {
                line.location for line in missing if line.location
            }
            if missing:
                changes |= {"failures": state.failures + 1, "missing": tuple(missing)}
    elif isinstance(event, OrderReservationReleased):
        released = {
            rid
            for rid, h in state.held.items()
            if any(line.sku == h.sku and line.location == h.location for line in event.lines)
        }
        changes |= _give_back(state, {rid: state.held[rid] for rid in released})
        if status is S.ACCEPTED:  # routed again: the order was screened already
            changes["screened"] = True
    elif isinstance(event, OrderCancelled | ReviewRejected | OrderRejected):
        changes |= _give_back(state, _outstanding(state))
    elif isinstance(event, OrderDeclinedByStore):
        # Routed again without the store that declined; screened already.
        changes |= _give_back(state, _outstanding(state))
        changes |= {"declined_at": state.declined_at | {event.location}, "screened": True}
    elif isinstance(event, OrderPrioritised):
        if state.status is not S.PRIORITISED:  # it reached the store's queue (again)
            changes |= {"prioritised_at": event.occurred_at, "promised_at": event.promised_at}
    elif isinstance(event, OrderPickedUp | ShipmentCreated):
        changes |= {"held": {}, "committed": {**state.committed, **state.held}}
    elif isinstance(event, OrderAcceptedByStore):
        # The time an at-risk alert runs against: the store's own word; a model's median
        # estimate is no promise (LATE alerts would fire on half the orders by design).
        changes["ready_by"] = event.estimated_ready_at if event.eta_source == "store" else None
    return _evolve(state, changes)


def _evolve(state: OrderState, changes: dict[str, Any]) -> OrderState:
    """`dataclasses.replace` without re-running the frozen `__init__` field by field (this runs
    for every event of every order; the fields are copied as they are either way)."""
    after = object.__new__(OrderState)
    after.__dict__.update(state.__dict__)
    after.__dict__.update(changes)
    return after


def _outstanding(state: OrderState) -> dict[str, Held]:
    """Reservations the ledger may hold for the order: what it holds, and every line of the
    current attempt not yet given back (an unanswered one may be reserved any moment)."""
    closed = state.released.keys() | state.committed.keys()
    lines = {**state.requested, **state.held}
    return {rid: held for rid, held in lines.items() if rid not in closed}


def _give_back(state: OrderState, lines: Mapping[str, Held]) -> dict[str, Any]:
    return {
        "held": {rid: h for rid, h in state.held.items() if rid not in lines},
        "released": {**state.released, **lines},
    }


def fold(events: list[OrderEvent], state: OrderState | None = None) -> OrderState | None:
    for event in events:
        state = apply(state, event)
    return state


# ---------------------------------------------------------------- decide


def decide(state: OrderState | None, received: OrderEvent | StockEvent, ctx: Context) -> Decision:
    """What one input means for its order."""
    if state is not None and received.event_id in state.seen:
        # Answered before — but a crash may have cut the answer short: finish what the order
        # can do on its own, and list the stock commands it owes (sent once per rebuild).
        resumed = _then_advance(state, [], [], ctx)
        return replace(resumed, recovery=recover(state, now=ctx.now))
    if isinstance(received, OrderAmendmentRequested):
        return Decision(refusal="OrderAmendmentRequested is the order process's own, not an input")
    if (
        isinstance(received, OrderModified)
        and state is not None
        and received.revision > state.revision
        and intake.merge(state.order, received) == state.order
    ):
        # A revision that changes nothing: a shop echoing our own status update (Square and
        # WooCommerce send the whole order on every change), or a payment-only update.
        return Decision()
    if (
        isinstance(received, OrderModified)
        and state is not None
        and state.status not in REVISABLE
        and (state.status in AMENDABLE or state.status in TOO_LATE_TO_AMEND)
    ):
        return _amendment(state, received, ctx)
    if isinstance(received, OrderReceived | OrderModified):
        record = None if state is None else state.as_record()
        taken = intake.decide(record, received, now=ctx.now, catalogue=ctx.catalogue)
        if taken.refusal is not None or not taken.to_log:
            return Decision(refusal=taken.refusal)
        return _then_advance(state, taken.to_log, [], ctx)
    if state is None:
        return Decision(
            refusal=f"{received.event_type} for an order never received (or forgotten: "
            "settled and untouched for longer than the worker keeps orders)"
        )
    if isinstance(received, StockReserved | StockReservationRefused):
        return _answer(state, received, ctx)
    if isinstance(received, StockReleased):
        return _lapsed(state, received, ctx)
    if isinstance(received, OrderReservationReleased):
        return _expired(state, received, ctx)
    if isinstance(received, OrderAtRisk):
        return _alert(state, received, ctx)
    if _escalation(received) and not _still_due(state, received, ctx):
        return Decision()  # the store took the order on, or it moved on, before time ran out
    if isinstance(received, OrderCancelled) and _already_over(state, received):
        return Decision()  # the platform's word of an end the order has reached already
    if isinstance(received, CourierStatusUpdated | RefundRequested | RefundRequestClosed):
        return _platform_notice(state, received, ctx)
    if isinstance(received, OrderEvent) and isinstance(received, RELAYED):
        if type(received) not in TRANSITIONS[state.status]:
            return Decision(
                refusal=f"order {state.order.order_id} is {state.status.value}: "
                f"{received.event_type} is not allowed"
            )
        store = getattr(received, "location", None)
        if (isinstance(received, STORE_ACTIONS) or store is not None) and store != state.location:
            return Decision(
                refusal=f"order {state.order.order_id} is at {state.location or 'no store'}, "
                f"not {store}: {received.event_type} is not {store}'s to send"
            )
        if isinstance(received, OrderAmendmentAccepted | OrderAmendmentRefused):
            return _amendment_answer(state, received, ctx)
        relayed = _relayed(state, received)
        if isinstance(relayed, OrderAcceptedByStore):
            relayed = relayed.model_copy(update=_ready_estimate(state, ctx, given=relayed))
        return _then_advance(state, [relayed], [], ctx)
    return Decision(refusal=f"{received.event_type} is not an input of the order process")


def advance(state: OrderState, ctx: Context, *, cause: str) -> Decision:
    """The steps an order takes on its own from where it stands (nothing when it waits)."""
    order = state.order
    if state.pending is not None and state.status in TOO_LATE_TO_AMEND:
        # The store marked it ready with an amendment unanswered: too late for it now.
        return Decision([_amendment_refused(state, state.pending, cause, "TOO_LATE", now=ctx.now)])
    if state.status is S.RECEIVED:
        # Received (or revised) and not yet judged: a crash came between the two. The verdict
        # follows from the same cause, so it is the event that would have been written.
        verdict = validation.verdict(
            order,
            cause=state.last_event_id,
            sequence=state.version + 1,
            now=ctx.now,
            catalogue=ctx.catalogue,
        )
        return Decision([verdict])
    if state.status is S.ACCEPTED:
        if not state.reviewed and not state.screened:
            screening = fraud.screen(
                order,
                history=ctx.history,
                catalogue=ctx.catalogue,
                rules=ctx.rules,
                now=ctx.now,
            )
            if screening.held:
                held = fraud.hold(
                    order,
                    screening,
                    threshold=ctx.rules.threshold,
                    sequence=state.version + 1,
                    causation_id=cause,
                    now=ctx.now,
                )
                return Decision([held])
        return _route(state, ctx, cause=cause)
    if state.status is S.RESERVATION_FAILED:
        return _route(state, ctx, cause=cause)
    if state.status is S.RESERVED or (state.status is S.ROUTED and not state.requested):
        location = state.location or ""
        customer = customer_key(order)
        tier = ctx.history.tier(customer) if customer else "new"
        # A learned estimate sets the promise (unless the channel asked for a time); without
        # a model the promise stays the mode's fixed default.
        estimate = ctx.estimate(order, location) if ctx.prep_model is not None else None
        due = estimate.due_at if estimate is not None and estimate.model else None
        # Routed again (a decline, an escalation, a revision): the customer keeps the promise.
        due = state.promised_at or due
        rank = priority.priority(order, tier=tier, now=ctx.now, promise=due)
        event = priority.prioritise_event(
            order,
            rank,
            location=location,
            sequence=state.version + 1,
            causation_id=cause,
            now=ctx.now,
            estimate=estimate,
        )
        return Decision([event])
    if state.status is S.PRIORITISED:
        place = ctx.catalogue.locations.get(state.location or "")
        if place is not None and order.channel in place.auto_accept_channels:
            envelope = _envelope(
                order,
                sequence=state.version + 1,
                cause=cause,
                kind="OrderAcceptedByStore",
                now=ctx.now,
            )
            accepted = OrderAcceptedByStore(
                **(envelope | {"actor": AUTO_ACCEPT}),
                location=state.location or "",
                **_ready_estimate(state, ctx),
            )
            return Decision([accepted])
    return Decision()


def _ready_estimate(
    state: OrderState, ctx: Context, *, given: OrderAcceptedByStore | None = None
) -> dict[str, Any]:
    """`estimated_ready_at` and its source for an acceptance: the store's own when it gave
    one; else the prep-time estimate with the store's current load; else (no model) the
    promised time for the store's policy, nothing for a person who gave none (as before there
    were estimates)."""
    if given is not None and given.estimated_ready_at is not None:
        return {"eta_source": given.eta_source or "store", "eta_model": given.eta_model}
    if ctx.prep_model is not None:
        estimate = ctx.estimate(state.order, state.location or "")
        if estimate.model is not None:
            return {
                "estimated_ready_at": estimate.ready_at,
                "eta_source": estimate.source,
                "eta_model": estimate.model,
            }
    if given is not None:
        return {}
    return {"estimated_ready_at": state.promised_at, "eta_source": "promise", "eta_model": None}


def acceptance_due(
    state: OrderState, *, now: datetime, place: Location | None
) -> OrderDeclinedByStore | OrderCancelled | None:
    """The escalation of an order its store has not accepted within the store's
    `accept_within_minutes` (sent to the order's own inputs, like `expiry_due`): declined in
    the store's name, so it is routed elsewhere (or rejected when no store is left), or
    cancelled, as the store's `when_not_accepted` says."""
    if (
        state.status is not S.PRIORITISED
        or place is None
        or not place.accept_within_minutes
        or state.prioritised_at is None
        or now < state.prioritised_at + timedelta(minutes=place.accept_within_minutes)
    ):
        return None
    order = state.order
    envelope = {
        "event_id": deterministic_id(
            order.order_id, NOT_ACCEPTED, state.location or "", str(state.attempt)
        ),
        **follow_up(
            order,
            sequence=state.version + 1,
            causation_id=state.last_event_id,
            actor=ACTOR,
            now=now,
        ),
    }
    reason = f"{place.id} did not accept it within {place.accept_within_minutes} minutes"
    if place.when_not_accepted == WhenNotAccepted.CANCEL:
        return OrderCancelled(
            **envelope, cancelled_by=CancelledBy.SYSTEM, reason_code=NOT_ACCEPTED, reason=reason
        )
    return OrderDeclinedByStore(
        **envelope, location=state.location or "", reason_code=NOT_ACCEPTED, reason=reason
    )


AT_RISK_MINUTES = 5  # a LATE alert this long before the order is due


def at_risk_due(state: OrderState, *, now: datetime, place: Location | None) -> list[OrderAtRisk]:
    """The alerts due for the order and not yet on its log (sent to the order's own inputs by
    its timer, like `acceptance_due`): NOT_ACCEPTED once half the store's acceptance window is
    gone, LATE from `AT_RISK_MINUTES` before the order is due (the store's ETA, else the
    promise) while it is not ready. Each alert is logged once per store, attempt and due time."""
    if state.status not in AT_RISK_STATUSES or not state.location:
        return []
    alerts: list[tuple[str, datetime, str, str]] = []
    window = timedelta(minutes=place.accept_within_minutes if place is not None else 0)
    if state.status is S.PRIORITISED and window and state.prioritised_at is not None:
        due = state.prioritised_at + window
        if now >= state.prioritised_at + window / 2:
            why = f"{state.location} has not accepted it; it escalates at {due:%H:%M} UTC"
            alerts.append(("NOT_ACCEPTED", due, str(state.attempt), why))
    due_at = state.ready_by or state.promised_at
    if due_at is not None and now >= due_at - timedelta(minutes=AT_RISK_MINUTES):
        why = f"not ready and due at {due_at:%H:%M} UTC at {state.location}"
        alerts.append(("LATE", due_at, due_at.isoformat(), why))
    order = state.order
    found = []
    for risk, due, key, why in alerts:
        event_id = deterministic_id(order.order_id, "OrderAtRisk", risk, state.location, key)
        if event_id in state.seen:
            continue
        envelope = follow_up(
            order,
            sequence=state.version + 1,
            causation_id=state.last_event_id,
            actor=ACTOR,
            now=now,
        )
        found.append(
            OrderAtRisk(
                event_id=event_id,
                **envelope,
                location=state.location,
                risk=risk,
                due_at=due,
                reason=why,
            )
        )
    return found


def _alert(state: OrderState, alert: OrderAtRisk, ctx: Context) -> Decision:
    """The timer's alert: logged while it is still due (the order may have moved on since:
    then it is dropped quietly); nobody else sends alerts."""
    if alert.actor != ACTOR:
        return Decision(refusal="OrderAtRisk is the order process's own alert, not an input")
    place = ctx.catalogue.locations.get(state.location or "")
    due = {a.event_id for a in at_risk_due(state, now=ctx.now, place=place)}
    if alert.event_id not in due:
        return Decision()
    return _then_advance(state, [_relayed(state, alert)], [], ctx)


def _escalation(received: OrderEvent | StockEvent) -> bool:
    """An escalation the order's own timer sent (`acceptance_due`), not a person's step."""
    return (
        isinstance(received, OrderDeclinedByStore | OrderCancelled)
        and received.reason_code == NOT_ACCEPTED
        and received.actor == ACTOR
    )


def _still_due(state: OrderState, received: OrderEvent | StockEvent, ctx: Context) -> bool:
    """Whether the escalation is the one the order's store policy calls for now: the same
    store and routing attempt (its id says so), still waiting, the policy still on."""
    place = ctx.catalogue.locations.get(state.location or "")
    due = acceptance_due(state, now=ctx.now, place=place)
    return due is not None and due.event_id == received.event_id


def recover(state: OrderState, *, now: datetime) -> list[StockEvent]:
    """Stock commands the order may still owe the ledger (all idempotent there): the
    unanswered reservations of the attempt it waits on, every release and every commit."""
    commands: list[StockEvent] = []
    if state.status in (S.ROUTED, S.PARTIALLY_RESERVED):
        commands += _reserve(state, now=now, only_unanswered=True)
    commands += [
        _release(state, rid, held, reason="RECOVERY", now=now)
        for rid, held in state.released.items()
    ]
    commands += [_commit(state, rid, held, now=now) for rid, held in state.committed.items()]
    return commands


def expiry_due(state: OrderState, *, now: datetime) -> OrderReservationReleased | None:
    """The command that gives back a reserved order's units once its hold has run out (the
    agent's timer sends it to the order's own inputs, so it is logged like any input)."""
    expires_at = state.hold_expires_at
    if state.status not in EXPIRABLE or not state.held or expires_at is None or now < expires_at:
        return None
    order = state.order
    return OrderReservationReleased(
        event_id=deterministic_id(order.order_id, "expired", str(state.attempt)),
        **follow_up(
            order,
            sequence=state.version + 1,
            causation_id=state.last_event_id,
            actor=ACTOR,
            now=now,
        ),
        lines=[_line(held) for held in state.held.values()],
        reason="EXPIRED",
    )


def timer_due(
    state: OrderState, *, place: Location | None, after: datetime | None = None
) -> datetime | None:
    """When the order's timers (`acceptance_due`, `at_risk_due`, `expiry_due`) may next have
    something to say, later than `after` when given; None when none is left to run. Exact
    with the store's `place`; without it (the acceptance window unknown) a time no later than
    the exact one — the order is looked at then and scheduled exactly."""
    times: list[datetime] = []
    if state.status in AT_RISK_STATUSES and state.location:
        if state.status is S.PRIORITISED and state.prioritised_at is not None:
            if place is None:
                times.append(state.prioritised_at)
            elif place.accept_within_minutes:
                window = timedelta(minutes=place.accept_within_minutes)
                times += [state.prioritised_at + window / 2, state.prioritised_at + window]
        due_at = state.ready_by or state.promised_at
        if due_at is not None:
            times.append(due_at - timedelta(minutes=AT_RISK_MINUTES))
    expires_at = state.hold_expires_at
    if state.status in EXPIRABLE and state.held and expires_at is not None:
        times.append(expires_at)
    return min((t for t in times if after is None or t > after), default=None)


# ---------------------------------------------------------------- steps


def _amendment(state: OrderState, revision: OrderModified, ctx: Context) -> Decision:
    """A channel's revision of an order its store has accepted: held for the store's answer
    (`OrderAmendmentRequested`; one still pending is SUPERSEDED), or refused at once: TOO_LATE
    once the order is ready, INVALID when the revised order would not pass validation,
    STOCKED_GOODS when it changes goods reserved from stock (those are picked against the
    reservation: such a change is a cancellation and a new order)."""
    if revision.revision <= state.revision:
        return Decision(
            refusal=f"revision {revision.revision} is not newer than {state.revision}: stale"
        )
    cause = revision.event_id
    if state.status in TOO_LATE_TO_AMEND:
        return _then_advance(
            state, [_amendment_refused(state, revision, cause, "TOO_LATE", now=ctx.now)], [], ctx
        )
    merged = intake.merge(state.order, revision)
    verdict = validation.verdict(
        merged, cause=cause, sequence=state.version + 1, now=ctx.now, catalogue=ctx.catalogue
    )
    if isinstance(verdict, OrderRejected):
        why = "; ".join(f"{r.code}: {r.message}" for r in verdict.reasons)
        refused = _amendment_refused(state, revision, cause, "INVALID", now=ctx.now, why=why)
        return _then_advance(state, [refused], [], ctx)
    if _stocked(merged, ctx.catalogue) != _stocked(state.order, ctx.catalogue):
        refused = _amendment_refused(state, revision, cause, "STOCKED_GOODS", now=ctx.now)
        return _then_advance(state, [refused], [], ctx)
    logged: list[OrderEvent] = []
    if state.pending is not None:
        logged.append(_amendment_refused(state, state.pending, cause, "SUPERSEDED", now=ctx.now))
    requested = OrderAmendmentRequested(
        **{name: getattr(revision, name) for name in OrderModified.model_fields}
        | {
            "sequence": state.version + 1 + len(logged),
            "customer": revision.customer or state.order.customer,
        }
    )
    return _then_advance(state, [*logged, requested], [], ctx)


AMENDMENT_REFUSALS = {
    "TOO_LATE": "the order is {status}: too late to change it",
    "INVALID": "the amended order would not pass validation: {why}",
    "STOCKED_GOODS": "it changes goods reserved from stock: cancel and order again",
    "SUPERSEDED": "a newer revision replaced it",
}


def _amendment_refused(
    state: OrderState,
    revision: OrderModified,
    cause: str,
    code: str,
    *,
    now: datetime,
    why: str = "",
) -> OrderAmendmentRefused:
    """The order process's own refusal of an amendment (the store's is relayed as it comes)."""
    kind = f"OrderAmendmentRefused:{revision.revision}"
    return OrderAmendmentRefused(
        **_envelope(state.order, sequence=state.version + 1, cause=cause, kind=kind, now=now),
        revision=revision.revision,
        reason_code=code,
        reason=AMENDMENT_REFUSALS[code].format(status=state.status.value, why=why),
    )


def _amendment_answer(
    state: OrderState, answer: OrderAmendmentAccepted | OrderAmendmentRefused, ctx: Context
) -> Decision:
    """The store's answer to the pending amendment (revision 0: whichever is pending). An
    accepted one is followed by the revision itself, as `OrderModified`."""
    pending = state.pending
    if pending is None:
        return Decision(refusal=f"no amendment of order {state.order.order_id} is pending")
    if answer.revision not in (0, pending.revision):
        return Decision(
            refusal=f"revision {answer.revision} of order {state.order.order_id} is not the "
            f"pending one ({pending.revision})"
        )
    relayed = _relayed(state, answer).model_copy(update={"revision": pending.revision})
    if isinstance(answer, OrderAmendmentRefused):
        return _then_advance(state, [relayed], [], ctx)
    if _stocked(intake.merge(state.order, pending), ctx.catalogue) != _stocked(
        state.order, ctx.catalogue
    ):  # the catalogue changed since: the goods are stock now
        refused = _amendment_refused(state, pending, answer.event_id, "STOCKED_GOODS", now=ctx.now)
        return _then_advance(state, [refused], [], ctx)
    applied = OrderModified(
        **{name: getattr(pending, name) for name in OrderModified.model_fields}
        | {
            "event_id": deterministic_id(answer.event_id, "OrderModified", pending.order_id),
            "sequence": state.version + 2,
            "causation_id": answer.event_id,
            "occurred_at": ctx.now,
            "recorded_at": ctx.now,
        }
    )
    return _then_advance(state, [relayed, applied], [], ctx)


# ---------------------------------------------------------------- what a platform reports

# The steps a rider's report stands for, from where the order stands: the goods left the store
# (as the store's hand-off: `OrderPickedUp` commits what the order holds), or reached the
# customer. A kitchen that did not bump the ticket is caught up; from anywhere else the report
# is information only (an out-of-order or repeated push: the order is past it, or not there).
COURIER_MOVES: dict[str, dict[OrderStatus, tuple[type[OrderEvent], ...]]] = {
    "picked_up": {
        S.ACCEPTED_BY_STORE: (OrderPreparing, OrderReady, OrderPickedUp),
        S.PREPARING: (OrderReady, OrderPickedUp),
        S.READY: (OrderPickedUp,),
    },
    "delivered": {
        S.ACCEPTED_BY_STORE: (OrderPreparing, OrderReady, OrderPickedUp, OrderDelivered),
        S.PREPARING: (OrderReady, OrderPickedUp, OrderDelivered),
        S.READY: (OrderPickedUp, OrderDelivered),
        S.PICKED_UP: (OrderDelivered,),
    },
}
REFUND_AGREED = "REFUND_AGREED"  # the reason code of a cancellation by an agreed full refund


def _already_over(state: OrderState, cancelled: OrderCancelled) -> bool:
    """A platform's cancellation of an order already cancelled or rejected (its own refund
    agreed first, or a re-push): nothing to do, and nothing wrong."""
    return cancelled.actor.kind is ActorKind.CHANNEL and state.status in (S.CANCELLED, S.REJECTED)


def _platform_notice(
    state: OrderState,
    received: CourierStatusUpdated | RefundRequested | RefundRequestClosed,
    ctx: Context,
) -> Decision:
    """A platform's report, logged on the order as information, then what it stands for: a
    rider's pickup or delivery moves the order (`COURIER_MOVES`); an agreed refund of the whole
    order cancels it while it may still be cancelled. Each step is derived from the report's
    id, with the platform as actor (so no platform is told what it said itself)."""
    if type(received) not in TRANSITIONS[state.status]:
        return Decision(
            refusal=f"order {state.order.order_id} is {state.status.value}: "
            f"{received.event_type} is not taken"
        )
    logged: list[OrderEvent] = [_relayed(state, received)]
    steps: tuple[type[OrderEvent], ...] = ()
    if isinstance(received, CourierStatusUpdated):
        steps = COURIER_MOVES.get(received.status, {}).get(state.status, ())
    elif (
        isinstance(received, RefundRequestClosed)
        and received.outcome == "agreed"
        and not received.partial
        and OrderCancelled in TRANSITIONS[state.status]
    ):
        steps = (OrderCancelled,)
    for kind in steps:
        envelope = {"event_id": deterministic_id(received.event_id, kind.__name__)} | follow_up(
            state.order,
            sequence=state.version + 1 + len(logged),
            causation_id=received.event_id,
            actor=received.actor,
            now=ctx.now,
        )
        logged.append(_derived(kind, envelope, state, received))
    return _then_advance(state, logged, [], ctx)


def _derived(
    kind: type[OrderEvent],
    envelope: dict[str, Any],
    state: OrderState,
    received: CourierStatusUpdated | RefundRequested | RefundRequestClosed,
) -> OrderEvent:
    if kind is OrderCancelled:
        reason = received.reason if isinstance(received, RefundRequestClosed) else ""
        return OrderCancelled(
            **envelope,
            cancelled_by=CancelledBy.CUSTOMER,
            reason_code=REFUND_AGREED,
            reason=reason or f"{received.channel} agreed to refund the whole order",
        )
    if kind is OrderPickedUp:
        return OrderPickedUp(**envelope, location=state.location or "", picked_up_by="courier")
    if kind is OrderDelivered:
        return OrderDelivered(**envelope)
    if kind is OrderReady:
        return OrderReady(**envelope, location=state.location or "")
    return OrderPreparing(**envelope, location=state.location or "")


def _stocked(order: OrderReceived, catalogue: Catalogue) -> list[tuple[Any, ...]]:
    """The order's goods taken from stock (not made to order), in a comparable form."""
    stocked = []
    for line in order.lines:
        product = catalogue.products.get(line.sku)
        if product is None or product.stock_tracked:
            stocked.append((line.sku, line.unit, line.quantity, line.quantity_millionths or 0))
    return sorted(stocked)


def _relayed(state: OrderState, received: OrderEvent) -> OrderEvent:
    """A command, sequenced into the order's history; its details come from the history."""
    order = state.order
    return received.model_copy(
        update={
            "sequence": state.version + 1,
            "channel": order.channel,
            "external_id": order.external_id,
            "correlation_id": order.correlation_id,
        }
    )


def _then_advance(
    state: OrderState | None, logged: list[OrderEvent], commands: list[StockEvent], ctx: Context
) -> Decision:
    """Log `logged`, then let the order go on as far as it can. Whatever an event gives back
    or commits goes to the ledger right after it (before a new attempt's reservations, so a
    re-route to the same location finds the units free again), with that event's reason."""
    to_log: list[OrderEvent] = []
    sent = list(commands)
    after = state

    def log(events: list[OrderEvent]) -> None:
        nonlocal after
        for event in events:
            before, after = after, apply(after, event)
            to_log.append(event)
            if before is None:
                continue
            if after.released is not before.released:
                why = _why_released(event)
                sent.extend(
                    _release(after, rid, held, reason=why, now=ctx.now)
                    for rid, held in after.released.items()
                    if rid not in before.released
                )
            if after.committed is not before.committed:
                sent.extend(
                    _commit(after, rid, held, now=ctx.now)
                    for rid, held in after.committed.items()
                    if rid not in before.committed
                )
            if isinstance(event, ReturnInspected):
                # Resellable units go back to the ledger once the inspection is on the log.
                sent.extend(returns.restock(event, now=ctx.now))

    log(logged)
    assert after is not None, "an order's first input is its receipt"
    for _ in range(2 * MAX_ROUTING_ATTEMPTS + 4):  # each step moves the order; bounded anyway
        step = advance(after, ctx, cause=after.last_event_id)
        log(step.to_log)
        sent += step.commands
        if not step.to_log:
            break
    return Decision(to_log, sent, after=after)


def _route(state: OrderState, ctx: Context, *, cause: str) -> Decision:
    order = state.order
    if state.failures >= MAX_ROUTING_ATTEMPTS:
        plan: routing.Route | routing.NoRoute = routing.NoRoute(
            code="OUT_OF_STOCK",
            message=f"no stock after {state.failures} routing attempts",
            missing=list(state.missing),
        )
    else:
        plan = routing.route(
            order,
            catalogue=ctx.catalogue,
            available=ctx.available,
            load=ctx.load,
            now=ctx.now,
            exclude=frozenset(state.refused_at | state.declined_at),
        )
    if isinstance(plan, routing.NoRoute) and state.declined_at and plan.code != "OUT_OF_STOCK":
        # The stores left out declined it: that, not stock, is why nowhere can take it.
        declined = ", ".join(sorted(state.declined_at))
        plan = routing.NoRoute(
            code=STORE_DECLINED,
            message=f"declined by {declined}, and no other location can take it ({plan.message})",
        )
    if (
        isinstance(plan, routing.NoRoute)
        and state.failures
        and plan.code not in ("OUT_OF_STOCK", STORE_DECLINED)
    ):
        # The locations left out are the ones that refused: stock is what stopped it.
        plan = routing.NoRoute(
            code="OUT_OF_STOCK",
            message=f"no location left after {state.failures} refused ({plan.message})",
            missing=list(state.missing),
        )
    if isinstance(plan, routing.NoRoute):
        events: list[OrderEvent] = []
        sequence = state.version + 1
        if state.status is not S.RESERVATION_FAILED and plan.missing:
            # Stock is what stopped it: say which lines, then reject.
            events.append(
                OrderReservationFailed(
                    **_envelope(
                        order,
                        sequence=sequence,
                        cause=cause,
                        kind="OrderReservationFailed",
                        now=ctx.now,
                    ),
                    missing=plan.missing,
                    reason=plan.code,
                )
            )
            sequence += 1
        events.append(
            OrderRejected(
                **_envelope(
                    order, sequence=sequence, cause=cause, kind="OrderRejected", now=ctx.now
                ),
                reasons=[RejectionReason(code=plan.code, message=plan.message)],
            )
        )
        return Decision(events)
    routed = routing.route_event(
        order,
        _mark_made_to_order(plan, ctx.catalogue),
        sequence=state.version + 1,
        causation_id=cause,
        attempt=state.attempt + 1,
        now=ctx.now,
    )
    after = apply(state, routed)
    return Decision([routed], _reserve(after, now=ctx.now, only_unanswered=False))


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
        known = rid in state.requested or rid in state.released or rid in state.committed
        if known or not isinstance(reply, StockReserved):
            # Late: the order answered it already or gave it up, and giving up released it
            # (the ledger takes the release after the reservation). Nothing to say back.
            return Decision()
        # Units reserved for a request the log does not know: a crash cut the routing short
        # after its ReserveStock left and before OrderRouted was logged. Give them back (a
        # release is never answered, so this ends here).
        return Decision(
            commands=[
                _release_line(state, rid, reply.sku, reply.location, reason="STALE", now=ctx.now)
            ]
        )
    answers = {**state.answers, rid: isinstance(reply, StockReserved)}
    line = state.requested[rid]
    reserved = [_line(state.requested[r]) for r, ok in answers.items() if ok]
    missing = [_line(state.requested[r]) for r, ok in answers.items() if not ok]
    envelope = _envelope(
        state.order,
        sequence=state.version + 1,
        cause=reply.event_id,
        kind=f"answer:{line.sku}@{line.location}",
        now=ctx.now,
    )
    if len(answers) < len(state.requested):
        event: OrderEvent = OrderPartiallyReserved(**envelope, reserved=reserved, missing=missing)
    elif not missing:
        event = OrderReserved(**envelope, lines=reserved, expires_at=state.hold_expires_at)
    else:
        short = ", ".join(f"{m.sku}@{m.location}" for m in missing)
        event = OrderReservationFailed(
            **envelope, missing=missing, reason=f"INSUFFICIENT_STOCK: {short}"
        )
    return _then_advance(state, [event], [], ctx)


def _lapsed(state: OrderState, released: StockReleased, ctx: Context) -> Decision:
    """The ledger released a reservation on its own (ledgers written before the order process
    owned expiry did): the order records that it no longer holds it."""
    rid = released.reservation_id
    if rid not in state.held or OrderReservationReleased not in TRANSITIONS[state.status]:
        return Decision()  # not held (any more): nothing to record
    event = OrderReservationReleased(
        **_envelope(
            state.order,
            sequence=state.version + 1,
            cause=released.event_id,
            kind="OrderReservationReleased",
            now=ctx.now,
        ),
        lines=[_line(state.held[rid])],
        reason=released.reason,
    )
    return _then_advance(state, [event], [], ctx)


def _expired(state: OrderState, due: OrderReservationReleased, ctx: Context) -> Decision:
    """The expiry timer's command: logged if the hold it names is still the order's and has
    run out (by then the order may have moved on: then it is simply not needed)."""
    current = expiry_due(state, now=ctx.now)
    if current is None or current.event_id != due.event_id:
        return Decision()
    return _then_advance(state, [_relayed(state, due)], [], ctx)


# ---------------------------------------------------------------- helpers


def _reserve(state: OrderState, *, now: datetime, only_unanswered: bool) -> list[StockEvent]:
    order = state.order
    expires = state.hold_expires_at or now + RESERVATION_TTL[order.mode]
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
        )
        for rid, held in state.requested.items()
        if not (only_unanswered and rid in state.answers)
    ]


def _release(state: OrderState, rid: str, held: Held, *, reason: str, now: datetime) -> StockEvent:
    return _release_line(state, rid, held.sku, held.location, reason=reason, now=now)


def _release_line(
    state: OrderState, rid: str, sku: str, location: str, *, reason: str, now: datetime
) -> StockEvent:
    return ReleaseStock(
        event_id=deterministic_id(rid, "ReleaseStock"),
        sequence=1,
        occurred_at=now,
        recorded_at=now,
        correlation_id=state.order.correlation_id,
        actor=ACTOR,
        sku=sku,
        location=location,
        order_id=state.order.order_id,
        reservation_id=rid,
        reason=reason,
    )


def _commit(state: OrderState, rid: str, held: Held, *, now: datetime) -> StockEvent:
    return CommitStock(
        event_id=deterministic_id(rid, "CommitStock"),
        sequence=1,
        occurred_at=now,
        recorded_at=now,
        correlation_id=state.order.correlation_id,
        actor=ACTOR,
        sku=held.sku,
        location=held.location,
        order_id=state.order.order_id,
        reservation_id=rid,
    )


def _why_released(event: OrderEvent) -> str:
    if isinstance(event, OrderCancelled | ReviewRejected):
        return "CANCELLED"
    if isinstance(event, OrderModified):
        return "MODIFIED"
    if isinstance(event, OrderRejected):
        return "REJECTED"
    if isinstance(event, OrderReservationFailed):
        return "COMPENSATION"
    if isinstance(event, OrderReservationReleased):
        return event.reason
    if isinstance(event, OrderDeclinedByStore):
        return "DECLINED"
    return "REROUTED"


def _line(held: Held) -> LineQuantity:
    return LineQuantity(sku=held.sku, quantity=held.quantity, location=held.location)


def _envelope(
    order: OrderReceived, *, sequence: int, cause: str, kind: str, now: datetime
) -> dict[str, Any]:
    return {"event_id": deterministic_id(cause, kind, order.order_id)} | follow_up(
        order, sequence=sequence, causation_id=cause, actor=ACTOR, now=now
    )
