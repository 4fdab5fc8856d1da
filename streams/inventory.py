"""The stock ledger of one `sku@location` (invariant 3 of docs/architecture.md), as pure functions.

`decide` answers a stock command with ledger events for `oms.inventory.v1`, `expire` makes the
events that the passing of time causes (perishable batches), and `apply` folds one ledger event
into a `StockLevel`.
A decision is computed by applying its own events one by one, so folding the ledger at start-up
rebuilds exactly the level every decision assumed.

What always holds (the property tests prove it):
- reserved ≤ on_hand − safety_stock, so `available_to_promise` is never negative;
- on_hand = received − committed + adjusted (counts and expired batches are adjustments);
- reserved = the sum of the open reservations.

The reservation protocol (docs/reservations.md): a `ReserveStock` gets exactly one answer,
`StockReserved` or `StockReservationRefused`, which is the ledger event itself (sent again,
identical, when the request is repeated); `ReleaseStock` and `CommitStock` close an open
reservation and are never answered — one for a reservation that is not open changes nothing.
The order process owns a reservation's life, expiry included: the ledger never closes one on
its own, so a commit can never find its units already given back.

Redelivery: every id derives from the command's id (or, for `expire`, from the batch), so a
command processed again makes identical events; a reservation already answered, a release or
commit of a reservation no longer open, and an operator command among the last
`APPLIED_IDS_KEPT` make none at all.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from typing import Any, TypeAlias

from immutables import Map

from events.models import (
    Actor,
    ActorKind,
    CommitStock,
    ExpiryBatchAdded,
    ExpiryBatchExpired,
    LowStockAlerted,
    Product,
    ReleaseStock,
    ReserveStock,
    SafetyStockSet,
    StockAdjusted,
    StockCommitted,
    StockCounted,
    StockEvent,
    StockReceived,
    StockReleased,
    StockReservationRefused,
    StockReserved,
    deterministic_id,
    stock_key,
)
from events.stock_levels import Levels, next_levels

ACTOR = Actor(kind=ActorKind.SYSTEM, id="inventory")

# How many answers to closed reservations, and how many operator command ids, a level keeps
# to recognise redeliveries. A redelivery older than that is decided again.
CLOSED_OUTCOMES_KEPT = 1000
APPLIED_IDS_KEPT = 1000

# Commands from people (or the WMS) that go onto the ledger as they are, re-sequenced.
OPERATOR_COMMANDS: tuple[type[StockEvent], ...] = (
    StockReceived,
    StockAdjusted,
    StockCounted,
    SafetyStockSet,
    ExpiryBatchAdded,
)
_ENVELOPE = frozenset(StockEvent.model_fields)

Outcome: TypeAlias = StockReserved | StockReservationRefused


class StockCommandRefused(ValueError):
    """A command the ledger will not carry out; `code` is machine-readable."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(f"{code}: {message}")


class LedgerInconsistent(ValueError):
    """A ledger event that cannot follow the level: a gap in the sequence, another key, or a
    reservation or batch the ledger does not hold. It means a lost event or a second writer."""


@dataclass(frozen=True)
class Reservation:
    order_id: str
    quantity: int
    expires_at: datetime | None = None


@dataclass(frozen=True)
class Batch:
    """The units of a perishable batch still on hand."""

    quantity: int
    expires_on: date


@dataclass(frozen=True)
class StockLevel:
    """What one `sku@location` ledger adds up to. Never mutated: `apply` returns a new one.

    The maps that grow with the open reservations are persistent (`immutables.Map`, a
    hash-array mapped trie): a new level shares all but O(log n) of the old one's, so an event
    costs the same with 10 or 100,000 reservations open on one key (a `dict` copied per event
    made a busy key's ledger quadratic: docs/benchmarks.md, "The day")."""

    sku: str
    location: str
    on_hand: int = 0
    reserved: int = 0
    safety_stock: int = 0
    sequence: int = 0
    received: int = 0
    committed: int = 0
    adjusted: int = 0
    reservations: Map[str, Reservation] = field(default_factory=Map)
    # The answer to each open reservation and to the last CLOSED_OUTCOMES_KEPT closed ones.
    outcomes: Map[str, Outcome] = field(default_factory=Map, repr=False)
    # The closed ones in the order they closed: closed[n] for closed_from <= n < closed_from
    # + len(closed); the oldest leave `outcomes` first.
    closed: Map[int, str] = field(default_factory=Map, repr=False)
    closed_from: int = field(default=0, repr=False)
    batches: Mapping[str, Batch] = field(default_factory=dict)
    alerted: bool = False
    alert_threshold: int = 0
    applied_ids: tuple[str, ...] = field(default=(), repr=False)

    @property
    def key(self) -> str:
        return stock_key(self.sku, self.location)

    @property
    def available_to_promise(self) -> int:
        return self.on_hand - self.reserved - self.safety_stock


def empty(sku: str, location: str) -> StockLevel:
    """The level of a ledger with no events yet."""
    return StockLevel(sku=sku, location=location)


def outcome(level: StockLevel, reservation_id: str) -> Outcome | None:
    """The event that answered `reservation_id`, to answer a redelivered request again."""
    return level.outcomes.get(reservation_id)


def refusal(command: StockEvent, reason: str, *, now: datetime) -> StockReservationRefused | None:
    """The answer an order hears when the ledger could not take its `ReserveStock` at all (the
    command was refused as malformed, or deciding it failed, and it was dead-lettered):
    refused, nothing reserved, so the order re-routes or is rejected instead of waiting for an
    answer for good. It is no ledger event (the level did not change): the same command
    redelivered is refused and answered the same way (same event id). None for any other
    command (nothing waits on those)."""
    if not isinstance(command, ReserveStock):
        return None
    return StockReservationRefused(
        event_id=deterministic_id(command.event_id, StockReservationRefused.__name__),
        sequence=1,  # not on the ledger: no place in its sequence
        occurred_at=now,
        recorded_at=now,
        correlation_id=command.correlation_id,
        causation_id=command.event_id,
        actor=ACTOR,
        sku=command.sku,
        location=command.location,
        order_id=command.order_id,
        reservation_id=command.reservation_id,
        requested=command.quantity,
        available=0,
        reason=reason,
    )


# ---------------------------------------------------------------- fold


def apply(level: StockLevel, event: StockEvent) -> StockLevel:
    """The level after ledger event `event`; the same level for an event already applied
    (its sequence is not past the level's)."""
    if (event.sku, event.location) != (level.sku, level.location):
        raise LedgerInconsistent(f"{event.aggregate_id} event on the {level.key} ledger")
    if event.sequence <= level.sequence:
        return level
    if event.sequence != level.sequence + 1:
        raise LedgerInconsistent(
            f"{level.key}: expected sequence {level.sequence + 1}, got {event.sequence} "
            f"({event.event_type} {event.event_id})"
        )
    levels = next_levels(Levels(level.on_hand, level.reserved, level.safety_stock), event)
    after = replace(_effect(level, event), sequence=event.sequence, **levels._asdict())
    if (
        after.alerted
        and isinstance(event, OPERATOR_COMMANDS)
        and after.available_to_promise > after.alert_threshold
    ):
        # Re-armed by stock coming back (a receipt, a count, a lower safety stock), not by a
        # released reservation: that would alert again at the next order for one shortage.
        after = replace(after, alerted=False, alert_threshold=0)
    return after


def fold(events: Iterable[StockEvent], level: StockLevel | None = None) -> StockLevel:
    """Apply `events` in order to `level`, or to the empty level of the first event's key."""
    for event in events:
        level = apply(level if level is not None else empty(event.sku, event.location), event)
    if level is None:
        raise ValueError("an empty ledger names no sku@location: pass the level to start from")
    return level


def _effect(level: StockLevel, event: StockEvent) -> StockLevel:
    """What the event changes besides on_hand, reserved and safety stock (`next_levels`)."""
    match event:
        case StockReceived(quantity=quantity):
            return _operator(level, event, received=level.received + quantity)
        case ExpiryBatchAdded(batch_id=batch_id, quantity=quantity, expires_on=expires_on):
            if batch_id in level.batches:
                raise LedgerInconsistent(f"{level.key}: batch {batch_id} added twice")
            return _operator(
                level,
                event,
                received=level.received + quantity,
                batches={**level.batches, batch_id: Batch(quantity, expires_on)},
            )
        case StockAdjusted(delta=delta):
            return _operator(level, event, **_adjustment(level, delta))
        case StockCounted(counted=counted):
            return _operator(level, event, **_adjustment(level, counted - level.on_hand))
        case SafetyStockSet():
            return _operator(level, event)
        case ExpiryBatchExpired(batch_id=batch_id, quantity=quantity):
            batch = level.batches.get(batch_id)
            if batch is None or quantity > batch.quantity:
                raise LedgerInconsistent(f"{level.key}: batch {batch_id} does not hold {quantity}")
            batches = dict(level.batches)
            if quantity == batch.quantity:
                del batches[batch_id]
            else:
                batches[batch_id] = replace(batch, quantity=batch.quantity - quantity)
            return replace(level, adjusted=level.adjusted - quantity, batches=batches)
        case StockReserved(reservation_id=reservation_id, quantity=quantity):
            if reservation_id in level.reservations:
                raise LedgerInconsistent(f"{level.key}: {reservation_id} reserved twice")
            held = Reservation(event.order_id, quantity, event.expires_at)
            return replace(
                level,
                reservations=level.reservations.set(reservation_id, held),
                outcomes=level.outcomes.set(reservation_id, event),
            )
        case StockReservationRefused(reservation_id=reservation_id):
            return _closed_answer(level, level.outcomes.set(reservation_id, event), reservation_id)
        case StockReleased(reservation_id=reservation_id, quantity=quantity):
            return _closed(level, reservation_id, quantity)
        case StockCommitted(reservation_id=reservation_id, quantity=quantity):
            return replace(
                _closed(level, reservation_id, quantity),
                committed=level.committed + quantity,
                batches=_consumed(level.batches, quantity),
            )
        case LowStockAlerted(threshold=threshold):
            return replace(level, alerted=True, alert_threshold=threshold)
    raise TypeError(f"not a stock ledger event: {event.event_type}")


def _operator(level: StockLevel, event: StockEvent, **changes: Any) -> StockLevel:
    """An operator's event: its command id joins the recent ones (for redelivery)."""
    command_id = event.causation_id or event.event_id
    applied = (*level.applied_ids, command_id)[-APPLIED_IDS_KEPT:]
    return replace(level, applied_ids=applied, **changes)


def _adjustment(level: StockLevel, delta: int) -> dict[str, Any]:
    return {
        "adjusted": level.adjusted + delta,
        "batches": _consumed(level.batches, -delta),
    }


def _consumed(batches: Mapping[str, Batch], quantity: int) -> Mapping[str, Batch]:
    """Batches after `quantity` units left on_hand: first expiring, first out (FEFO), so what is
    left in a batch never exceeds what is on hand."""
    if quantity <= 0 or not batches:
        return batches
    left = dict(batches)
    for batch_id, batch in sorted(batches.items(), key=lambda item: (item[1].expires_on, item[0])):
        taken = min(batch.quantity, quantity)
        if taken == batch.quantity:
            del left[batch_id]
        else:
            left[batch_id] = replace(batch, quantity=batch.quantity - taken)
        quantity -= taken
        if quantity == 0:
            break
    return left


def _closed(level: StockLevel, reservation_id: str, quantity: int) -> StockLevel:
    """The reservation leaves the open ones; its answer joins the newest closed ones."""
    held = level.reservations.get(reservation_id)
    if held is None or held.quantity != quantity:
        raise LedgerInconsistent(
            f"{level.key}: no open reservation {reservation_id} of {quantity} to close"
        )
    level = replace(level, reservations=level.reservations.delete(reservation_id))
    return _closed_answer(level, level.outcomes, reservation_id)


def _closed_answer(
    level: StockLevel, outcomes: Map[str, Outcome], reservation_id: str
) -> StockLevel:
    """`reservation_id`'s answer joins the closed ones; the oldest beyond CLOSED_OUTCOMES_KEPT
    are forgotten (an answer stays while its reservation is open)."""
    first = level.closed_from
    closed = level.closed.set(first + len(level.closed), reservation_id)
    if len(closed) > CLOSED_OUTCOMES_KEPT:
        with outcomes.mutate() as kept, closed.mutate() as order:
            while len(order) > CLOSED_OUTCOMES_KEPT:
                oldest = order.pop(first)
                first += 1
                if oldest not in level.reservations:
                    kept.pop(oldest, None)
            outcomes, closed = kept.finish(), order.finish()
    return replace(level, outcomes=outcomes, closed=closed, closed_from=first)


# ---------------------------------------------------------------- decisions


@dataclass
class _Decision:
    """Events being decided: each is sequenced and applied as it is made, so the next one (and
    the low-stock check) sees the level it leaves behind."""

    level: StockLevel
    now: datetime
    events: list[StockEvent] = field(default_factory=list)

    def emit(
        self,
        event_type: type[StockEvent],
        *,
        event_id: str,
        correlation_id: str,
        causation_id: str | None,
        actor: Actor = ACTOR,
        occurred_at: datetime | None = None,
        **payload: Any,
    ) -> None:
        event = event_type(
            event_id=event_id,
            sequence=self.level.sequence + 1,
            occurred_at=occurred_at or self.now,
            recorded_at=self.now,
            correlation_id=correlation_id,
            causation_id=causation_id,
            actor=actor,
            sku=self.level.sku,
            location=self.level.location,
            **payload,
        )
        self.level = apply(self.level, event)
        self.events.append(event)

    def alert_if_low(
        self, product: Product | None, *, event_id: str, correlation_id: str, causation_id: str
    ) -> None:
        """LowStockAlerted when these events leave ATP at or under the product's reorder point
        and no alert is out; it suggests at least enough to bring ATP to twice the point."""
        if not self.events or product is None or not product.stock_tracked:
            return
        point = product.reorder_point
        available = self.level.available_to_promise
        if point <= 0 or self.level.alerted or available > point:
            return
        self.emit(
            LowStockAlerted,
            event_id=event_id,
            correlation_id=correlation_id,
            causation_id=causation_id,
            available=available,
            threshold=point,
            reorder_quantity=max(product.reorder_quantity, 2 * point - available),
        )


def decide(
    level: StockLevel, command: StockEvent, *, product: Product | None, now: datetime
) -> list[StockEvent]:
    """The ledger events `command` causes (empty for a redelivery), sequenced after `level`.

    Refuses, with `StockCommandRefused`, a command that is malformed, not for this ledger, or
    would leave reserved > on_hand − safety_stock. An `ExpiryBatchAdded` is a receipt too: its
    units join on_hand and `received`, and leave again FEFO or when the batch expires."""
    if (command.sku, command.location) != (level.sku, level.location):
        raise StockCommandRefused("WRONG_LEDGER", f"{command.aggregate_id} sent to {level.key}")
    decision = _Decision(level, now)

    def emit(event_type: type[StockEvent], **fields: Any) -> None:
        decision.emit(
            event_type,
            event_id=deterministic_id(command.event_id, event_type.__name__),
            correlation_id=command.correlation_id,
            causation_id=command.event_id,
            **fields,
        )

    if isinstance(command, ReserveStock):
        _reserve(level, command, emit)
    elif isinstance(command, ReleaseStock | CommitStock):
        held = level.reservations.get(command.reservation_id)
        if held is None:
            return []  # never reserved here, or already released, committed or expired
        if held.order_id != command.order_id:
            raise StockCommandRefused(
                "ORDER_MISMATCH",
                f"{command.reservation_id} on {level.key} belongs to order {held.order_id}, "
                f"not {command.order_id}",
            )
        answer: dict[str, Any] = {
            "order_id": held.order_id,
            "reservation_id": command.reservation_id,
            "quantity": held.quantity,
        }
        if isinstance(command, ReleaseStock):
            emit(StockReleased, reason=command.reason, **answer)
        else:
            emit(StockCommitted, **answer)
    elif isinstance(command, OPERATOR_COMMANDS):
        if command.event_id in level.applied_ids:
            return []
        _check_operator(level, command)
        payload = {name: getattr(command, name) for name in type(command).model_fields}
        for name in _ENVELOPE - {"occurred_at", "actor"}:
            del payload[name]
        emit(type(command), **payload)
        after = decision.level
        if after.available_to_promise < 0:
            raise StockCommandRefused(
                "BELOW_RESERVED",
                f"{command.event_type} would leave {level.key} with on_hand {after.on_hand} < "
                f"reserved {after.reserved} + safety stock {after.safety_stock}",
            )
    else:
        raise StockCommandRefused(
            "NOT_A_COMMAND", f"{command.event_type} is not a command the stock ledger takes"
        )
    decision.alert_if_low(
        product,
        event_id=deterministic_id(command.event_id, LowStockAlerted.__name__),
        correlation_id=command.correlation_id,
        causation_id=command.event_id,
    )
    return decision.events


def _reserve(level: StockLevel, command: ReserveStock, emit: Callable[..., None]) -> None:
    if command.quantity <= 0:
        raise StockCommandRefused(
            "NON_POSITIVE_QUANTITY",
            f"reservation {command.reservation_id} asks for {command.quantity} units",
        )
    if command.reservation_id in level.outcomes:
        return  # answered already: the caller re-sends `outcome(level, reservation_id)`
    line = {"order_id": command.order_id, "reservation_id": command.reservation_id}
    available = level.available_to_promise
    if available >= command.quantity:
        emit(StockReserved, quantity=command.quantity, expires_at=command.expires_at, **line)
    else:
        emit(
            StockReservationRefused,
            requested=command.quantity,
            available=max(available, 0),
            reason="INSUFFICIENT_STOCK",
            **line,
        )


def _check_operator(level: StockLevel, command: StockEvent) -> None:
    """Refuse what no ledger state can accept; what the level cannot take is checked after."""
    match command:
        case StockReceived(quantity=quantity) | ExpiryBatchAdded(quantity=quantity) if (
            quantity <= 0
        ):
            raise StockCommandRefused(
                "NON_POSITIVE_QUANTITY",
                f"{command.event_type} of {quantity} on {level.key}: must be positive",
            )
        case ExpiryBatchAdded(batch_id=batch_id) if batch_id in level.batches:
            raise StockCommandRefused(
                "DUPLICATE_BATCH", f"batch {batch_id} is already on hand at {level.key}"
            )
        case StockAdjusted(delta=0):
            raise StockCommandRefused("ZERO_DELTA", f"adjustment of {level.key} by 0")
        case StockCounted(counted=counted) if counted < 0:
            raise StockCommandRefused("NEGATIVE_COUNT", f"{level.key} counted at {counted}")
        case SafetyStockSet(quantity=quantity) if quantity < 0:
            raise StockCommandRefused(
                "NEGATIVE_SAFETY_STOCK", f"safety stock of {level.key} set to {quantity}"
            )


def expire(level: StockLevel, *, now: datetime, product: Product | None = None) -> list[StockEvent]:
    """What time did to the ledger by `now`: an ExpiryBatchExpired for every perishable batch
    whose `expires_on` is before now's UTC date, and a low-stock alert if these leave ATP low.
    (Reservations do not lapse here: the order process releases them when its hold runs out.)

    Decision: a batch expires only as far as it leaves reserved ≤ on_hand − safety_stock, i.e.
    at most the ATP. The rest stays in the batch (the goods are spoken for) and expires at a
    later call once units are free again, or leaves when it is committed (FEFO)."""
    decision = _Decision(level, now)
    today = now.astimezone(UTC).date()
    for batch_id, batch in sorted(level.batches.items(), key=lambda i: (i[1].expires_on, i[0])):
        quantity = min(batch.quantity, decision.level.available_to_promise)
        if batch.expires_on >= today or quantity <= 0:
            break
        sequence = decision.level.sequence + 1
        decision.emit(
            ExpiryBatchExpired,
            # a batch may expire in parts: the ledger position tells the parts apart
            event_id=deterministic_id(level.key, batch_id, "ExpiryBatchExpired", str(sequence)),
            correlation_id=batch_id,
            causation_id=None,
            batch_id=batch_id,
            quantity=quantity,
        )
    if decision.events:
        last = decision.events[-1]
        decision.alert_if_low(
            product,
            event_id=deterministic_id(level.key, "LowStockAlerted", str(last.sequence + 1)),
            correlation_id=last.correlation_id,
            causation_id=last.event_id,
        )
    return decision.events
