"""The fault checker on small hand-made logs: one that is fine, and for each property one that
breaks it (so every check can fail)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from events.models import (
    Actor,
    ActorKind,
    CancelledBy,
    DeadLetter,
    FulfilmentGroup,
    LineQuantity,
    OrderAccepted,
    OrderCancelled,
    OrderEvent,
    OrderPrioritised,
    OrderRejected,
    OrderReservationFailed,
    OrderReserved,
    OrderRouted,
    RejectionReason,
    StockCommitted,
    StockEvent,
    StockReceived,
    StockReleased,
    StockReserved,
)
from tests.factories import T0, received
from tests.faults import checker
from tests.faults.checker import ClickHouseSnapshot, Observation, TailSample

SYSTEM = Actor(kind=ActorKind.SYSTEM, id="test")
DISH_TOTAL = 6100
WIDGETS = [LineQuantity(sku="WIDGET", quantity=2, location="WH-A")]


def follow(order_id: str, sequence: int, kind: type[OrderEvent], **payload: Any) -> OrderEvent:
    return kind.model_validate(
        {
            "event_id": f"{order_id}-{sequence}",
            "sequence": sequence,
            "occurred_at": T0,
            "recorded_at": T0,
            "correlation_id": order_id,
            "actor": SYSTEM,
            "order_id": order_id,
            "channel": "webshop",
            "external_id": order_id,
            **payload,
        }
    )


def routed(order_id: str, sequence: int, lines: list[LineQuantity]) -> OrderEvent:
    group = FulfilmentGroup(location=lines[0].location or "S01", lines=lines)
    return follow(
        order_id,
        sequence,
        OrderRouted,
        location=group.location,
        groups=[group],
        reasons=["NEAREST"],
    )


def start(order_id: str) -> list[OrderEvent]:
    return [
        received(event_id=f"{order_id}-1", order_id=order_id, correlation_id=order_id),
        follow(order_id, 2, OrderAccepted, total=DISH_TOTAL, currency="CNY"),
    ]


def prioritised(order_id: str, sequence: int) -> OrderEvent:
    location = "S01" if sequence == 4 else "WH-A"
    return follow(order_id, sequence, OrderPrioritised, location=location, score=50)


def dish(order_id: str) -> list[OrderEvent]:
    made = [LineQuantity(sku="DUMPLING-12", quantity=2)]
    return [*start(order_id), routed(order_id, 3, made), prioritised(order_id, 4)]


def shipped(order_id: str) -> list[OrderEvent]:
    return [
        *start(order_id),
        routed(order_id, 3, WIDGETS),
        follow(order_id, 4, OrderReserved, lines=WIDGETS),
        prioritised(order_id, 5),
    ]


def cancelled(order_id: str) -> list[OrderEvent]:
    return [
        *shipped(order_id),
        follow(
            order_id,
            6,
            OrderCancelled,
            cancelled_by=CancelledBy.CUSTOMER,
            reason_code="CHANGED_MIND",
            reason="no",
        ),
    ]


def rejected(order_id: str) -> list[OrderEvent]:
    reason = RejectionReason(code="UNKNOWN_SKU", message="no such thing")
    return [start(order_id)[0], follow(order_id, 2, OrderRejected, reasons=[reason])]


def stock(sequence: int, kind: type[StockEvent], **payload: Any) -> StockEvent:
    return kind.model_validate(
        {
            "event_id": f"WIDGET@WH-A-{sequence}",
            "sequence": sequence,
            "occurred_at": T0,
            "recorded_at": T0,
            "correlation_id": "WIDGET@WH-A",
            "actor": SYSTEM,
            "sku": "WIDGET",
            "location": "WH-A",
            **payload,
        }
    )


def reserve(sequence: int, order_id: str, quantity: int = 2) -> StockEvent:
    return stock(
        sequence,
        StockReserved,
        order_id=order_id,
        reservation_id=f"r-{order_id}",
        quantity=quantity,
    )


def release(sequence: int, order_id: str, quantity: int = 2) -> StockEvent:
    return stock(
        sequence,
        StockReleased,
        order_id=order_id,
        reservation_id=f"r-{order_id}",
        quantity=quantity,
        reason="CANCELLED",
    )


LEDGER = [
    stock(1, StockReceived, quantity=10),
    reserve(2, "o-2"),
    reserve(3, "o-3"),
    release(4, "o-3"),
]
BAD = b"\x00not an order"


def letter(dead_letter_id: str = "dl-1") -> DeadLetter:
    return DeadLetter(
        dead_letter_id=dead_letter_id,
        source="oms.intake.v1",
        source_ref="p0/o9",
        reason="not Avro",
        raw=BAD,
        failed_at=T0,
    )


def fine() -> Observation:
    log = [*dish("o-1"), *shipped("o-2"), *cancelled("o-3"), *rejected("o-4")]
    return Observation(
        acknowledged=frozenset({"o-1", "o-2", "o-3", "o-4"}),
        order_log=log,
        ledger=LEDGER,
        dead_letters=[letter(), letter()],  # a redelivered input: one letter, twice
        malformed=[BAD],
        topic_sizes={"oms.orders.v1": len(log), "oms.stock-commands.v1": 4},
        growth={"oms.stock-commands.v1": 0, "oms.order-commands.v1": 0},
        quiet_s=5,
        settle_s=30,
        clickhouse=ClickHouseSnapshot(
            orders={
                "o-1": ("prioritised", DISH_TOTAL),
                "o-2": ("prioritised", DISH_TOTAL),
                "o-3": ("cancelled", DISH_TOTAL),
                "o-4": ("rejected", DISH_TOTAL),
            },
            order_events={"o-1": (4, 10), "o-2": (5, 15), "o-3": (6, 21), "o-4": (2, 3)},
            stock={"WIDGET@WH-A": 4},
            stock_levels={"WIDGET@WH-A": (10, 2, 8)},
        ),
    )


def test_a_run_that_kept_every_promise_passes_every_property() -> None:
    result = checker.check(fine())
    assert result.ok, result.report()
    assert result.stats["outcomes"] == {"prioritised": 2, "cancelled": 1, "rejected": 1}


def _log(obs: Observation, order_id: str, events: list[OrderEvent]) -> Observation:
    others = [e for e in obs.order_log if e.order_id != order_id]
    return replace(obs, order_log=[*others, *events])


def acknowledged_but_missing(obs: Observation) -> Observation:
    return replace(obs, acknowledged=obs.acknowledged | {"o-9"})


def written_twice(obs: Observation) -> Observation:
    return replace(obs, order_log=[*obs.order_log, obs.order_log[2]])


def sequence_gap(obs: Observation) -> Observation:
    events = dish("o-1")
    return _log(obs, "o-1", [*events[:3], events[3].model_copy(update={"sequence": 5})])


def illegal_transition(obs: Observation) -> Observation:
    return _log(obs, "o-1", [start("o-1")[0], prioritised("o-1", 2)])


def failed_naming_nothing(obs: Observation) -> Observation:
    reason = RejectionReason(code="OUT_OF_STOCK", message="no stock after 3 routing attempts")
    events = [
        *start("o-6"),
        routed("o-6", 3, WIDGETS),
        follow("o-6", 4, OrderReservationFailed, missing=[], reason="OUT_OF_STOCK"),
        follow("o-6", 5, OrderRejected, reasons=[reason]),
    ]
    return replace(obs, order_log=[*obs.order_log, *events])


def oversold(obs: Observation) -> Observation:
    return replace(obs, ledger=[*obs.ledger, reserve(5, "o-5", quantity=9)])


def released_twice(obs: Observation) -> Observation:
    return replace(obs, ledger=[*obs.ledger, release(5, "o-3")])


def committed_more_than_reserved(obs: Observation) -> Observation:
    commit = stock(5, StockCommitted, order_id="o-2", reservation_id="r-o-2", quantity=3)
    return replace(obs, ledger=[*obs.ledger, commit])


def cancelled_but_still_holding(obs: Observation) -> Observation:
    return replace(obs, ledger=obs.ledger[:3])


def rejected_but_still_holding(obs: Observation) -> Observation:
    return replace(obs, ledger=[*obs.ledger, reserve(5, "o-4", quantity=1)])


def ledger_holds_other_than_log(obs: Observation) -> Observation:
    return replace(obs, ledger=[obs.ledger[0], reserve(2, "o-2", quantity=3), *obs.ledger[2:]])


def projection_behind(obs: Observation) -> Observation:
    assert obs.clickhouse is not None
    orders = {**obs.clickhouse.orders, "o-1": ("routed", DISH_TOTAL)}
    return replace(obs, clickhouse=replace(obs.clickhouse, orders=orders))


def stock_level_off(obs: Observation) -> Observation:
    assert obs.clickhouse is not None
    levels = {"WIDGET@WH-A": (10, 4, 6)}
    return replace(obs, clickhouse=replace(obs.clickhouse, stock_levels=levels))


def dead_letter_lost(obs: Observation) -> Observation:
    return replace(obs, dead_letters=[])


def dead_lettered_twice(obs: Observation) -> Observation:
    return replace(obs, dead_letters=[letter("dl-1"), letter("dl-2")])


def stuck_partially(obs: Observation) -> Observation:
    return replace(obs, order_log=[*obs.order_log, *start("o-5"), routed("o-5", 3, WIDGETS)])


def storm(obs: Observation) -> Observation:
    tail = TailSample(
        topic="oms.stock-commands.v1",
        partition=1,
        messages=3000,
        distinct_ids=31,
        types={"ReleaseStock": 3000},
    )
    return replace(obs, topic_sizes={"oms.stock-commands.v1": 10_000}, tails=[tail])


def still_growing(obs: Observation) -> Observation:
    return replace(obs, growth={"oms.stock-commands.v1": 3000, "oms.order-commands.v1": 0})


def projector_died(obs: Observation) -> Observation:
    return replace(obs, unexpected_exits=["projector#1 exited rc=1 at 41.2 s"])


BREAKAGES: list[tuple[checker.Property, Callable[[Observation], Observation]]] = [
    (checker.nothing_lost, acknowledged_but_missing),
    (checker.no_event_twice, written_twice),
    (checker.sequences_intact, sequence_gap),
    (checker.lifecycle_obeyed, illegal_transition),
    (checker.failures_name_what_is_missing, failed_naming_nothing),
    (checker.atp_never_negative, oversold),
    (checker.stock_conserved, released_twice),
    (checker.stock_conserved, committed_more_than_reserved),
    (checker.void_orders_hold_nothing, cancelled_but_still_holding),
    (checker.void_orders_hold_nothing, rejected_but_still_holding),
    (checker.ledger_matches_orders, ledger_holds_other_than_log),
    (checker.clickhouse_equals_log, projection_behind),
    (checker.clickhouse_equals_log, stock_level_off),
    (checker.dead_letters_once, dead_letter_lost),
    (checker.dead_letters_once, dead_lettered_twice),
    (checker.orders_settle, stuck_partially),
    (checker.bounded_amplification, storm),
    (checker.command_topics_quiet, still_growing),
    (checker.processes_stay_up, projector_died),
]


@pytest.mark.parametrize(("prop", "breakage"), BREAKAGES, ids=[b.__name__ for _, b in BREAKAGES])
def test_each_property_fails_on_a_log_that_breaks_it(
    prop: checker.Property, breakage: Callable[[Observation], Observation]
) -> None:
    assert prop(fine()) == []
    broken = breakage(fine())
    found = prop(broken)
    assert found and all(v.property == prop.__name__ for v in found)
    result = checker.check(broken)
    assert prop.__name__ in result.failed()
    assert "VIOLATED" in result.report()


def test_every_property_has_a_log_that_breaks_it() -> None:
    assert {p.__name__ for p, _ in BREAKAGES} == {p.__name__ for p in checker.PROPERTIES}


def test_a_violation_names_the_orders_concerned() -> None:
    (violation,) = checker.void_orders_hold_nothing(cancelled_but_still_holding(fine()))
    assert violation.examples == ("o-3 (last OrderCancelled) holds {'WIDGET@WH-A': 2}",)
    (storming,) = checker.bounded_amplification(storm(fine()))
    assert "ReleaseStock" in storming.examples[0] and "31 distinct" in storming.examples[0]


def test_leaked_reservations_say_whether_a_release_was_ever_sent() -> None:
    leaking = cancelled_but_still_holding(fine())
    assert checker.suspect_reservations(leaking.order_log, checker.fold_ledger(leaking.ledger)) == [
        "r-o-3"
    ]
    (never,) = checker.void_orders_hold_nothing(replace(leaking, release_commands={}))
    assert "for 1 of the 1 reservations in excess no ReleaseStock was ever sent" in never.summary
    (sent,) = checker.void_orders_hold_nothing(replace(leaking, release_commands={"r-o-3": 2}))
    assert "for 0 of the 1 reservations" in sent.summary
