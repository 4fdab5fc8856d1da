"""The stock ledger: every command path, redelivery, expiry, low-stock alerts, and (hypothesis)
the ledger invariants over random command sequences."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

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
)
from streams import inventory
from streams.inventory import (
    ACTOR,
    OPERATOR_COMMANDS,
    Batch,
    LedgerInconsistent,
    Reservation,
    StockCommandRefused,
    StockLevel,
    apply,
    decide,
    empty,
    expire,
    fold,
    outcome,
)

SKU, LOCATION = "DUMPLING-12", "store-1"
NOW = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)
TODAY = NOW.date()
MANAGER = Actor(kind=ActorKind.USER, id="manager-li")
ORDERS = Actor(kind=ActorKind.SYSTEM, id="reservations")
DUMPLINGS = Product(sku=SKU, name="水饺", reorder_point=5, reorder_quantity=20, perishable=True)
UNTRACKED = Product(sku=SKU, name="水饺")  # no reorder point: never alerts


def envelope(event_id: str, actor: Actor = MANAGER, **fields: Any) -> dict[str, Any]:
    return dict(event_id=event_id, sequence=1, occurred_at=NOW - timedelta(minutes=5),
                recorded_at=NOW, correlation_id=f"corr-{event_id}", actor=actor, sku=SKU,
                location=LOCATION, **fields)  # fmt: skip


def receive(quantity: int, event_id: str = "rcv-1") -> StockReceived:
    return StockReceived(**envelope(event_id, quantity=quantity, reference="PO-7"))


def adjust(delta: int, event_id: str = "adj-1") -> StockAdjusted:
    return StockAdjusted(**envelope(event_id, delta=delta, reason="DAMAGED"))


def count(counted: int, event_id: str = "cnt-1") -> StockCounted:
    return StockCounted(**envelope(event_id, counted=counted))


def safety(quantity: int, event_id: str = "ss-1") -> SafetyStockSet:
    return SafetyStockSet(**envelope(event_id, quantity=quantity))


def batch(batch_id: str, quantity: int, expires_on: date, event_id: str = "") -> ExpiryBatchAdded:
    fields = envelope(event_id or f"add-{batch_id}", batch_id=batch_id, quantity=quantity)
    return ExpiryBatchAdded(expires_on=expires_on, **fields)


def reserve(reservation_id: str, quantity: int, *, order_id: str = "o-1",
            expires_at: datetime | None = None, event_id: str = "") -> ReserveStock:  # fmt: skip
    fields = envelope(event_id or f"req-{reservation_id}", ORDERS, order_id=order_id)
    return ReserveStock(reservation_id=reservation_id, quantity=quantity, expires_at=expires_at,
                        **fields)  # fmt: skip


def release(reservation_id: str, *, order_id: str = "o-1", event_id: str = "") -> ReleaseStock:
    fields = envelope(event_id or f"rel-{reservation_id}", ORDERS, order_id=order_id)
    return ReleaseStock(reservation_id=reservation_id, reason="CANCELLED", **fields)


def commit(reservation_id: str, *, order_id: str = "o-1", event_id: str = "") -> CommitStock:
    fields = envelope(event_id or f"com-{reservation_id}", ORDERS, order_id=order_id)
    return CommitStock(reservation_id=reservation_id, **fields)


@dataclass
class Ledger:
    """A ledger in memory: what the inventory agent does, without Kafka."""

    product: Product | None = UNTRACKED
    now: datetime = NOW
    level: StockLevel = field(default_factory=lambda: empty(SKU, LOCATION))
    events: list[StockEvent] = field(default_factory=list)

    def send(self, command: StockEvent) -> list[StockEvent]:
        return self.append(decide(self.level, command, product=self.product, now=self.now))

    def expire(self, now: datetime) -> list[StockEvent]:
        return self.append(expire(self.level, now=now, product=self.product))

    def append(self, events: list[StockEvent]) -> list[StockEvent]:
        self.level = fold(events, self.level)
        self.events.extend(events)
        return events


def stocked(quantity: int, product: Product | None = UNTRACKED) -> Ledger:
    ledger = Ledger(product=product)
    ledger.send(receive(quantity))
    return ledger


def types(events: list[StockEvent]) -> list[str]:
    return [event.event_type for event in events]


# ---------------------------------------------------------------- reservations


def test_reservation_within_available_to_promise_is_reserved() -> None:
    ledger = stocked(10)
    expires = NOW + timedelta(minutes=30)
    (reserved,) = ledger.send(reserve("r-1", 4, expires_at=expires))
    assert isinstance(reserved, StockReserved)
    assert (reserved.quantity, reserved.expires_at, reserved.sequence) == (4, expires, 2)
    assert reserved.event_id == deterministic_id("req-r-1", "StockReserved")
    assert (reserved.causation_id, reserved.correlation_id) == ("req-r-1", "corr-req-r-1")
    assert reserved.actor == ACTOR
    level = ledger.level
    assert (level.on_hand, level.reserved, level.available_to_promise) == (10, 4, 6)
    assert dict(level.reservations) == {"r-1": Reservation("o-1", 4, expires)}


def test_second_order_for_last_unit_is_refused() -> None:
    ledger = stocked(1)
    ledger.send(reserve("r-1", 1, order_id="o-1"))
    (refused,) = ledger.send(reserve("r-2", 1, order_id="o-2"))
    assert isinstance(refused, StockReservationRefused)
    assert (refused.requested, refused.available, refused.reason) == (1, 0, "INSUFFICIENT_STOCK")
    assert (ledger.level.reserved, ledger.level.available_to_promise) == (1, 0)
    assert "r-2" not in ledger.level.reservations


def test_safety_stock_is_not_promised() -> None:
    ledger = stocked(10)
    ledger.send(safety(8))
    (refused,) = ledger.send(reserve("r-1", 3))
    assert isinstance(refused, StockReservationRefused) and refused.available == 2
    assert isinstance(ledger.send(reserve("r-2", 2))[0], StockReserved)


@pytest.mark.parametrize("quantity", [0, -1])
def test_reservation_of_no_units_is_refused_with_a_code(quantity: int) -> None:
    with pytest.raises(StockCommandRefused) as refused:
        decide(stocked(5).level, reserve("r-1", quantity), product=None, now=NOW)
    assert refused.value.code == "NON_POSITIVE_QUANTITY"
    assert isinstance(refused.value, ValueError) and "r-1" in refused.value.message


@pytest.mark.parametrize("stock", [5, 0], ids=["reserved", "refused"])
def test_redelivered_reservation_makes_nothing_and_its_answer_is_given_again(stock: int) -> None:
    ledger = Ledger()
    if stock:
        ledger.send(receive(stock))
    (answer,) = ledger.send(reserve("r-1", 2))
    assert ledger.send(reserve("r-1", 2)) == []
    assert ledger.send(reserve("r-1", 2, event_id="a-retry-with-a-new-id")) == []
    assert outcome(ledger.level, "r-1") == answer
    assert ledger.level.reserved == (2 if stock else 0)


def test_answer_to_a_closed_reservation_is_still_given() -> None:
    ledger = stocked(5)
    (reserved,) = ledger.send(reserve("r-1", 2))
    ledger.send(commit("r-1"))
    assert ledger.send(reserve("r-1", 2)) == []
    assert outcome(ledger.level, "r-1") == reserved
    assert outcome(ledger.level, "r-unknown") is None


def test_only_the_most_recent_closed_answers_are_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inventory, "CLOSED_OUTCOMES_KEPT", 2)
    ledger = stocked(10)
    ledger.send(reserve("open", 1))
    for n in range(4):
        ledger.send(reserve(f"r-{n}", 1))
        ledger.send(release(f"r-{n}"))
    assert set(ledger.level.outcomes) == {"open", "r-2", "r-3"}
    assert_invariants(ledger.level)


def test_a_refused_answer_is_kept_and_forgotten_in_the_order_answers_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(inventory, "CLOSED_OUTCOMES_KEPT", 2)
    ledger = stocked(1)
    ledger.send(reserve("held", 1))
    ledger.send(reserve("refused", 1))
    ledger.send(commit("held"))
    assert set(ledger.level.outcomes) == {"held", "refused"}
    ledger.send(reserve("late", 1))  # refused too: the one unit is sold
    assert set(ledger.level.outcomes) == {"held", "late"}
    assert ledger.send(reserve("refused", 1, event_id="again"))[0].reservation_id == "refused"


def test_release_gives_the_units_back() -> None:
    ledger = stocked(5)
    ledger.send(reserve("r-1", 3))
    (released,) = ledger.send(release("r-1"))
    assert isinstance(released, StockReleased)
    assert (released.quantity, released.reason, released.order_id) == (3, "CANCELLED", "o-1")
    assert (ledger.level.reserved, ledger.level.available_to_promise) == (0, 5)
    assert not ledger.level.reservations


def test_release_of_an_unknown_or_closed_reservation_makes_nothing() -> None:
    ledger = stocked(5)
    assert ledger.send(release("r-never")) == []
    ledger.send(reserve("r-1", 3))
    ledger.send(release("r-1"))
    assert ledger.send(release("r-1")) == []
    assert ledger.send(release("r-1", event_id="another-id")) == []
    assert ledger.level.reserved == 0 and ledger.level.sequence == 3


def test_commit_takes_the_units_out_of_on_hand_and_reserved() -> None:
    ledger = stocked(5)
    ledger.send(reserve("r-1", 3))
    (committed,) = ledger.send(commit("r-1"))
    assert isinstance(committed, StockCommitted) and committed.quantity == 3
    level = ledger.level
    assert (level.on_hand, level.reserved, level.committed, level.available_to_promise) == (
        2, 0, 3, 2)  # fmt: skip


def test_commit_redelivered_or_after_release_makes_nothing() -> None:
    ledger = stocked(5)
    ledger.send(reserve("r-1", 3))
    ledger.send(commit("r-1"))
    assert ledger.send(commit("r-1")) == []
    ledger.send(reserve("r-2", 1))
    ledger.send(release("r-2"))
    assert ledger.send(commit("r-2")) == []
    assert ledger.send(commit("r-unknown")) == []
    assert (ledger.level.on_hand, ledger.level.committed) == (2, 3)


@pytest.mark.parametrize("command", [release, commit])
def test_release_or_commit_naming_another_order_is_refused(command: Any) -> None:
    ledger = stocked(5)
    ledger.send(reserve("r-1", 3, order_id="o-1"))
    with pytest.raises(StockCommandRefused) as refused:
        ledger.send(command("r-1", order_id="o-2"))
    assert refused.value.code == "ORDER_MISMATCH"
    assert ledger.level.reserved == 3


# ---------------------------------------------------------------- operator commands


def test_receipt_goes_onto_the_ledger_resequenced_with_the_operators_actor() -> None:
    ledger = stocked(5)
    command = receive(7, event_id="rcv-2")
    (received,) = ledger.send(command)
    assert isinstance(received, StockReceived)
    assert (received.quantity, received.reference, received.sequence) == (7, "PO-7", 2)
    assert received.event_id == deterministic_id("rcv-2", "StockReceived") != command.event_id
    assert (received.actor, received.occurred_at) == (MANAGER, command.occurred_at)
    assert (received.recorded_at, received.causation_id) == (NOW, "rcv-2")
    assert (ledger.level.on_hand, ledger.level.received) == (12, 12)


def test_adjustment_moves_on_hand_and_the_adjusted_total() -> None:
    ledger = stocked(5)
    (adjusted,) = ledger.send(adjust(-2))
    assert isinstance(adjusted, StockAdjusted) and adjusted.reason == "DAMAGED"
    assert (ledger.level.on_hand, ledger.level.adjusted) == (3, -2)


def test_count_becomes_the_ledger_event_and_adjusts_on_hand_to_it() -> None:
    ledger = stocked(5)
    ledger.send(reserve("r-1", 2))
    (counted,) = ledger.send(count(3))
    assert isinstance(counted, StockCounted) and counted.counted == 3
    level = ledger.level
    assert (level.on_hand, level.adjusted, level.reserved) == (3, -2, 2)
    ledger.send(count(9, event_id="cnt-2"))
    assert (ledger.level.on_hand, ledger.level.adjusted) == (9, 4)


def test_safety_stock_is_set() -> None:
    ledger = stocked(5)
    ledger.send(safety(2))
    assert (ledger.level.safety_stock, ledger.level.available_to_promise) == (2, 3)
    ledger.send(safety(0, event_id="ss-2"))
    assert ledger.level.available_to_promise == 5


def test_expiry_batch_is_a_receipt_of_perishable_units() -> None:
    ledger = stocked(5)
    ledger.send(batch("B-1", 4, TODAY + timedelta(days=2)))
    level = ledger.level
    assert (level.on_hand, level.received) == (9, 9)
    assert level.batches == {"B-1": Batch(4, TODAY + timedelta(days=2))}


@pytest.mark.parametrize(
    "command",
    [receive(3, "x"), adjust(-1, "x"), count(4, "x"), safety(1, "x"), batch("B", 2, TODAY, "x")],
    ids=["receive", "adjust", "count", "safety", "batch"],
)
def test_redelivered_operator_command_makes_nothing(command: StockEvent) -> None:
    ledger = stocked(5)
    assert len(ledger.send(command)) == 1
    level = ledger.level
    assert ledger.send(command) == []
    assert ledger.level == level


def test_only_the_most_recent_operator_command_ids_are_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(inventory, "APPLIED_IDS_KEPT", 2)
    ledger = Ledger()
    for n in range(3):
        ledger.send(receive(1, event_id=f"rcv-{n}"))
    assert ledger.level.applied_ids == ("rcv-1", "rcv-2")


@pytest.mark.parametrize(
    ("command", "code"),
    [
        (receive(0, "x"), "NON_POSITIVE_QUANTITY"),
        (batch("B", -1, TODAY, "x"), "NON_POSITIVE_QUANTITY"),
        (adjust(0, "x"), "ZERO_DELTA"),
        (count(-1, "x"), "NEGATIVE_COUNT"),
        (safety(-1, "x"), "NEGATIVE_SAFETY_STOCK"),
        (batch("B-1", 1, TODAY, "x"), "DUPLICATE_BATCH"),
    ],
)
def test_malformed_operator_command_is_refused_with_its_code(
    command: StockEvent, code: str
) -> None:
    ledger = stocked(5)
    ledger.send(batch("B-1", 2, TODAY))
    with pytest.raises(StockCommandRefused) as refused:
        ledger.send(command)
    assert refused.value.code == code


@pytest.mark.parametrize(
    ("command", "numbers"),
    [
        (adjust(-4, "x"), "on_hand 6 < reserved 5 + safety stock 2"),
        (count(6, "x"), "on_hand 6 < reserved 5 + safety stock 2"),
        (safety(6, "x"), "on_hand 10 < reserved 5 + safety stock 6"),
    ],
    ids=["adjust-below-reserved", "count-below-reserved", "safety-above-free"],
)
def test_operator_command_that_would_oversell_is_refused_naming_the_numbers(
    command: StockEvent, numbers: str
) -> None:
    ledger = stocked(10)
    ledger.send(safety(2))
    ledger.send(reserve("r-1", 5))
    before = ledger.level
    with pytest.raises(StockCommandRefused) as refused:
        ledger.send(command)
    assert refused.value.code == "BELOW_RESERVED" and numbers in refused.value.message
    assert ledger.level == before
    assert len(ledger.send(adjust(-3, "y"))) == 1  # down to exactly reserved + safety stock


def test_command_for_another_ledger_is_refused() -> None:
    other = StockReceived(**{**envelope("x", quantity=1), "location": "store-2"})
    with pytest.raises(StockCommandRefused) as refused:
        decide(empty(SKU, LOCATION), other, product=None, now=NOW)
    assert refused.value.code == "WRONG_LEDGER"


def test_ledger_event_sent_as_a_command_is_refused() -> None:
    alert = LowStockAlerted(**envelope("x", available=0, threshold=1, reorder_quantity=1))
    with pytest.raises(StockCommandRefused) as refused:
        decide(empty(SKU, LOCATION), alert, product=None, now=NOW)
    assert refused.value.code == "NOT_A_COMMAND"


# ---------------------------------------------------------------- expiry


def test_the_ledger_never_releases_a_reservation_on_its_own() -> None:
    # The order process owns a reservation's life: were the ledger to expire one while the
    # goods are being packed, their commit would find nothing to take and on_hand would lie.
    ledger = stocked(5)
    ledger.send(reserve("r-1", 2, expires_at=NOW + timedelta(minutes=10)))
    assert ledger.expire(NOW + timedelta(days=30)) == []
    assert set(ledger.level.reservations) == {"r-1"}
    (committed,) = ledger.send(commit("r-1"))
    assert isinstance(committed, StockCommitted) and ledger.level.on_hand == 3


def test_expiry_of_the_same_level_makes_the_same_events() -> None:
    ledger = stocked(5)
    ledger.send(reserve("r-1", 2, expires_at=NOW))
    ledger.send(batch("B-1", 2, TODAY - timedelta(days=1)))
    later = NOW + timedelta(minutes=1)
    first = expire(ledger.level, now=later)
    assert types(first) == ["ExpiryBatchExpired"]
    assert expire(ledger.level, now=later + timedelta(seconds=1))[0].event_id == first[0].event_id


def test_batch_past_its_date_leaves_on_hand() -> None:
    ledger = stocked(5)
    ledger.send(batch("B-1", 4, TODAY))
    assert ledger.expire(NOW + timedelta(hours=12)) == []  # expires at the end of its day
    (expired,) = ledger.expire(NOW + timedelta(days=1))
    assert isinstance(expired, ExpiryBatchExpired) and (expired.batch_id, expired.quantity) == (
        "B-1", 4)  # fmt: skip
    level = ledger.level
    assert (level.on_hand, level.adjusted, level.batches) == (5, -4, {})
    assert ledger.expire(NOW + timedelta(days=2)) == []


def test_batch_whose_units_are_reserved_expires_only_what_is_free() -> None:
    ledger = Ledger()
    ledger.send(batch("B-1", 5, TODAY))
    ledger.send(safety(1))
    ledger.send(reserve("r-1", 3))
    (expired,) = ledger.expire(NOW + timedelta(days=1))
    assert isinstance(expired, ExpiryBatchExpired) and expired.quantity == 1
    assert ledger.level.batches == {"B-1": Batch(4, TODAY)}
    assert (ledger.level.on_hand, ledger.level.available_to_promise) == (4, 0)
    ledger.send(release("r-1"))
    (rest,) = ledger.expire(NOW + timedelta(days=1))
    assert isinstance(rest, ExpiryBatchExpired) and rest.quantity == 3
    assert rest.event_id != expired.event_id
    # the last unit is the safety stock: it stays (in its batch) until stock comes in
    assert (ledger.level.on_hand, ledger.level.batches) == (1, {"B-1": Batch(1, TODAY)})
    ledger.send(receive(1))
    assert types(ledger.expire(NOW + timedelta(days=1))) == ["ExpiryBatchExpired"]
    assert (ledger.level.on_hand, ledger.level.batches) == (1, {})


def test_units_leave_the_first_expiring_batch_first() -> None:
    ledger = stocked(2)
    ledger.send(batch("LATE", 3, TODAY + timedelta(days=5)))
    ledger.send(batch("SOON", 3, TODAY + timedelta(days=1)))
    ledger.send(reserve("r-1", 4))
    ledger.send(commit("r-1"))
    assert ledger.level.batches == {"LATE": Batch(2, TODAY + timedelta(days=5))}
    ledger.send(adjust(-3))
    assert (ledger.level.on_hand, ledger.level.batches) == (1, {})


# ---------------------------------------------------------------- low stock


def test_low_stock_alert_fires_once_and_rearms_when_stock_returns() -> None:
    ledger = stocked(10, product=DUMPLINGS)  # reorder point 5, reorder quantity 20
    assert types(ledger.send(reserve("r-1", 4))) == ["StockReserved"]  # ATP 6
    reserved, alert = ledger.send(reserve("r-2", 2))  # ATP 4
    assert isinstance(alert, LowStockAlerted)
    assert (alert.available, alert.threshold, alert.reorder_quantity) == (4, 5, 20)
    assert (alert.sequence, alert.causation_id) == (reserved.sequence + 1, "req-r-2")
    assert alert.event_id == deterministic_id("req-r-2", "LowStockAlerted")
    assert ledger.level.alerted
    assert types(ledger.send(reserve("r-3", 1))) == ["StockReserved"]  # still alerted
    ledger.send(receive(3, event_id="rcv-2"))  # ATP 6: above the point, re-armed
    assert not ledger.level.alerted
    assert types(ledger.send(reserve("r-4", 1))) == ["StockReserved", "LowStockAlerted"]


def test_a_released_reservation_does_not_rearm_the_alert_for_the_same_shortage() -> None:
    ledger = stocked(10, product=DUMPLINGS)  # reorder point 5
    ledger.send(reserve("r-1", 4))
    assert types(ledger.send(reserve("r-2", 2)))[-1] == "LowStockAlerted"  # ATP 4
    ledger.send(release("r-2"))  # ATP 6: back over the point, but no stock came in
    assert ledger.level.alerted
    assert types(ledger.send(reserve("r-3", 2))) == ["StockReserved"]  # no second alert


def test_reorder_suggestion_brings_available_back_to_twice_the_point() -> None:
    product = DUMPLINGS.model_copy(update={"reorder_point": 50, "reorder_quantity": 10})
    (_, alert) = stocked(30, product=product).events
    assert isinstance(alert, LowStockAlerted) and alert.reorder_quantity == 70


def test_refused_reservation_can_raise_the_alert() -> None:
    ledger = Ledger(product=DUMPLINGS)
    assert types(ledger.send(reserve("r-1", 1))) == ["StockReservationRefused", "LowStockAlerted"]


@pytest.mark.parametrize(
    "product",
    [None, UNTRACKED, DUMPLINGS.model_copy(update={"stock_tracked": False})],
    ids=["unknown", "no-reorder-point", "made-to-order"],
)
def test_no_alert_without_a_stock_tracked_reorder_point(product: Product | None) -> None:
    ledger = Ledger(product=product)
    assert types(ledger.send(receive(1))) == ["StockReceived"]


def test_expiry_can_raise_the_alert() -> None:
    ledger = Ledger(product=DUMPLINGS)
    ledger.send(receive(5))
    ledger.send(batch("B-1", 5, TODAY))  # ATP 10
    expired, alert = ledger.expire(NOW + timedelta(days=1))
    assert isinstance(alert, LowStockAlerted) and alert.causation_id == expired.event_id
    assert ledger.expire(NOW + timedelta(days=2)) == []


# ---------------------------------------------------------------- the fold


def test_decisions_applied_equal_the_fold_of_the_ledger() -> None:
    ledger = Ledger(product=DUMPLINGS)
    for command in [receive(10), batch("B-1", 3, TODAY), reserve("r-1", 4, expires_at=NOW),
                    reserve("r-2", 6), safety(1), commit("r-2"), count(5), adjust(2)]:  # fmt: skip
        ledger.send(command)
    ledger.expire(NOW + timedelta(days=1))
    assert fold(ledger.events) == ledger.level
    assert [e.sequence for e in ledger.events] == list(range(1, len(ledger.events) + 1))


def test_ledger_event_read_twice_is_applied_once() -> None:
    ledger = stocked(5)
    assert apply(ledger.level, ledger.events[0]) == ledger.level
    assert fold(ledger.events + ledger.events) == ledger.level


def test_gap_in_the_ledger_is_refused() -> None:
    gap = StockReceived(**{**envelope("x", quantity=1), "sequence": 3})
    with pytest.raises(LedgerInconsistent, match="expected sequence 2"):
        apply(stocked(5).level, gap)


def test_event_of_another_ledger_is_refused() -> None:
    with pytest.raises(LedgerInconsistent):
        apply(empty(SKU, "store-2"), receive(1))


def test_closing_a_reservation_the_ledger_does_not_hold_is_refused() -> None:
    ledger = stocked(5)
    ledger.send(reserve("r-1", 1))
    fields = envelope("x", order_id="o-1", reservation_id="r-9", quantity=1, reason="CANCELLED")
    released = StockReleased(**{**fields, "sequence": 3})
    with pytest.raises(LedgerInconsistent):
        apply(ledger.level, released)


def test_command_is_not_a_ledger_event() -> None:
    with pytest.raises(TypeError):
        apply(empty(SKU, LOCATION), reserve("r-1", 1))


def test_fold_of_nothing_needs_a_level() -> None:
    assert fold([], empty(SKU, LOCATION)) == empty(SKU, LOCATION)
    with pytest.raises(ValueError):
        fold([])


# ---------------------------------------------------------------- properties


def assert_invariants(level: StockLevel) -> None:
    """Invariant 3 (no oversell, docs/architecture.md), and the bookkeeping behind it."""
    assert level.available_to_promise >= 0
    assert level.reserved <= level.on_hand - level.safety_stock
    assert level.on_hand == level.received - level.committed + level.adjusted
    assert level.reserved == sum(held.quantity for held in level.reservations.values())
    assert level.safety_stock >= 0
    assert all(b.quantity > 0 for b in level.batches.values())
    assert sum(b.quantity for b in level.batches.values()) <= level.on_hand
    for reservation_id in level.reservations:
        assert isinstance(level.outcomes[reservation_id], StockReserved)
    # the answers kept are the open ones and the closed ones in the ring, nothing else
    first = level.closed_from
    ring = [level.closed[n] for n in range(first, first + len(level.closed))]
    assert len(ring) <= inventory.CLOSED_OUTCOMES_KEPT
    assert set(level.outcomes) == set(level.reservations) | set(ring)


KINDS = ["receive", "adjust", "count", "safety", "batch", "reserve", "reserve", "reserve",
         "release", "commit"]  # fmt: skip


@st.composite
def commands(draw: st.DrawFn, size: int = 30) -> list[StockEvent]:
    """Random commands, as their senders make them: a reservation id always asks for the same
    quantity, and is released or committed only after it was asked for."""
    requests: dict[str, ReserveStock] = {}
    made: list[StockEvent] = []
    for n in range(draw(st.integers(0, size))):
        event_id = f"cmd-{n}"
        kind = draw(st.sampled_from(KINDS))
        if kind == "receive":
            made.append(receive(draw(st.integers(-1, 10)), event_id))
        elif kind == "adjust":
            made.append(adjust(draw(st.integers(-6, 6)), event_id))
        elif kind == "count":
            made.append(count(draw(st.integers(-1, 20)), event_id))
        elif kind == "safety":
            made.append(safety(draw(st.integers(-1, 5)), event_id))
        elif kind == "batch":
            days = timedelta(days=draw(st.integers(-2, 2)))
            batch_id = f"B-{draw(st.integers(0, 4))}"
            made.append(batch(batch_id, draw(st.integers(-1, 6)), TODAY + days, event_id))
        elif kind == "reserve":
            reservation_id = f"r-{draw(st.integers(0, 9))}"
            if reservation_id not in requests:
                minutes = draw(st.none() | st.integers(-5, 120))
                expires_at = None if minutes is None else NOW + timedelta(minutes=minutes)
                requests[reservation_id] = reserve(
                    reservation_id, draw(st.integers(-1, 6)), order_id=f"o-{reservation_id}",
                    expires_at=expires_at)  # fmt: skip
            request = requests[reservation_id]
            made.append(request.model_copy(update={"event_id": event_id}))
        elif requests:
            request = requests[draw(st.sampled_from(sorted(requests)))]
            send = release if kind == "release" else commit
            made.append(send(request.reservation_id, order_id=request.order_id,
                             event_id=event_id))  # fmt: skip
    return made


def delivered(ledger: Ledger, command: StockEvent) -> bool:
    """Sends `command`; False when it was refused (and nothing changed)."""
    before = ledger.level
    try:
        ledger.send(command)
    except StockCommandRefused:
        assert ledger.level == before
        return False
    return True


@settings(max_examples=200, deadline=None)
@given(commands(), st.sampled_from([None, DUMPLINGS]))
def test_every_command_delivered_twice_makes_the_same_ledger(
    sequence: list[StockEvent], product: Product | None
) -> None:
    once, twice = Ledger(product=product), Ledger(product=product)
    accepted = []
    for command in sequence:
        if delivered(once, command):
            accepted.append(command)
        delivered(twice, command)
        assert_invariants(twice.level)
        delivered(twice, command)
        assert_invariants(twice.level)
    assert twice.events == once.events
    assert fold(once.events, empty(SKU, LOCATION)) == once.level
    # The whole sequence again (say, a consumer group reset) adds nothing. Refused operator
    # commands are left out: no ledger event records a refusal, so one redelivered after the
    # stock changed can be accepted then.
    for command in accepted:
        assert once.send(command) == []


class StockLedgerMachine(RuleBasedStateMachine):
    """Random commands, clock ticks and redeliveries against one ledger."""

    def __init__(self) -> None:
        super().__init__()
        self.ledger = Ledger(product=DUMPLINGS)
        self.now = NOW
        self.requests: dict[str, ReserveStock] = {}
        self.accepted: list[StockEvent] = []
        self.ids = 0

    def next_id(self) -> str:
        self.ids += 1
        return f"cmd-{self.ids}"

    def send(self, command: StockEvent) -> None:
        if delivered(self.ledger, command):
            self.accepted.append(command)

    @rule(quantity=st.integers(-1, 10))
    def receive(self, quantity: int) -> None:
        self.send(receive(quantity, self.next_id()))

    @rule(delta=st.integers(-6, 6))
    def adjust(self, delta: int) -> None:
        self.send(adjust(delta, self.next_id()))

    @rule(counted=st.integers(-1, 20))
    def count(self, counted: int) -> None:
        self.send(count(counted, self.next_id()))

    @rule(quantity=st.integers(-1, 5))
    def set_safety_stock(self, quantity: int) -> None:
        self.send(safety(quantity, self.next_id()))

    @rule(batch_id=st.integers(0, 4), quantity=st.integers(-1, 6), days=st.integers(-1, 3))
    def add_batch(self, batch_id: int, quantity: int, days: int) -> None:
        expires_on = self.now.date() + timedelta(days=days)
        self.send(batch(f"B-{batch_id}", quantity, expires_on, self.next_id()))

    @rule(n=st.integers(0, 12), quantity=st.integers(-1, 6), minutes=st.none() | st.integers(0, 90))
    def reserve(self, n: int, quantity: int, minutes: int | None) -> None:
        reservation_id = f"r-{n}"
        if reservation_id not in self.requests:
            expires_at = None if minutes is None else self.now + timedelta(minutes=minutes)
            self.requests[reservation_id] = reserve(
                reservation_id, quantity, order_id=f"o-{n}", expires_at=expires_at)  # fmt: skip
        request = self.requests[reservation_id]
        self.send(request.model_copy(update={"event_id": self.next_id()}))

    @precondition(lambda self: bool(self.requests))
    @rule(data=st.data(), commit_it=st.booleans())
    def release_or_commit(self, data: st.DataObject, commit_it: bool) -> None:
        request = self.requests[data.draw(st.sampled_from(sorted(self.requests)))]
        send = commit if commit_it else release
        self.send(send(request.reservation_id, order_id=request.order_id, event_id=self.next_id()))

    @rule(minutes=st.integers(1, 36 * 60))
    def time_passes(self, minutes: int) -> None:
        self.now += timedelta(minutes=minutes)
        self.ledger.now = self.now
        self.ledger.expire(self.now)
        level = self.ledger.level
        assert expire(level, now=self.now, product=DUMPLINGS) == []
        if level.available_to_promise > 0:
            assert all(b.expires_on >= self.now.date() for b in level.batches.values())

    @precondition(lambda self: bool(self.accepted))
    @rule(data=st.data())
    def redeliver(self, data: st.DataObject) -> None:
        command = data.draw(st.sampled_from(self.accepted))
        before = self.ledger.level
        assert self.ledger.send(command) == []
        assert self.ledger.level == before

    @invariant()
    def stock_adds_up(self) -> None:
        assert_invariants(self.ledger.level)

    @invariant()
    def level_is_the_fold_of_the_ledger(self) -> None:
        events = self.ledger.events
        assert fold(events, empty(SKU, LOCATION)) == self.ledger.level
        assert [e.sequence for e in events] == list(range(1, len(events) + 1))
        assert len({e.event_id for e in events}) == len(events)

    @invariant()
    def low_stock_is_alerted(self) -> None:
        level = self.ledger.level
        point = DUMPLINGS.reorder_point
        assert level.sequence == 0 or level.alerted or level.available_to_promise > point
        last = self.ledger.events[-1] if self.ledger.events else None
        if isinstance(last, OPERATOR_COMMANDS) and level.alerted:  # stock came in: re-armed
            assert level.available_to_promise <= level.alert_threshold


StockLedgerMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None
)
test_stock_ledger_under_random_commands = StockLedgerMachine.TestCase
