"""The stores' reports (issue 12): stage times per store and hour, acceptance and late rates,
and decline reasons, over three orders whose every step and second is known, projected on
both backends (the SQL must run on ClickHouse 18.16 as on current ClickHouse)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from events.models import (
    Actor,
    ActorKind,
    Customer,
    FulfilmentGroup,
    LineQuantity,
    OrderAccepted,
    OrderAcceptedByStore,
    OrderDeclinedByStore,
    OrderEvent,
    OrderLine,
    OrderMode,
    OrderPickedUp,
    OrderPreparing,
    OrderPrioritised,
    OrderReady,
    OrderReceived,
    OrderRouted,
)
from infra.publisher import Publisher
from infra.settings import Settings
from projections.reports import run_report
from projections.store import ClickHouseStore
from tests.projections.conftest import isolated, projected_on
from tests.projections.scenario import _History

pytestmark = pytest.mark.integration

T = datetime(2026, 11, 25, 12, 0)  # as ClickHouse holds it: naive UTC
PLACED = datetime.fromisoformat("2026-11-25T12:00:00+00:00")
WINDOW = {"since": T - timedelta(hours=1), "until": T + timedelta(hours=3)}
DUMPLINGS = OrderLine(sku="DUMPLING-12", name="水饺", quantity=1, unit_price=2800)
POLICY = Actor(kind=ActorKind.SYSTEM, id="orders")


def routed(store: str) -> tuple[type[OrderEvent], int, dict[str, Any]]:
    group = FulfilmentGroup(location=store, lines=[LineQuantity(sku="DUMPLING-12", quantity=1)])
    return OrderRouted, 0, {"location": store, "groups": [group], "reasons": ["NEAREST"]}


def prioritised(store: str, promise_minutes: int = 30) -> tuple[type[OrderEvent], int, Any]:
    return OrderPrioritised, 0, {"location": store, "score": 50, "promised_at": None,
                                 "_promise": promise_minutes}  # fmt: skip


def step(model: type[OrderEvent], after_s: int, store: str, **fields: Any) -> Any:
    return model, after_s, {"location": store, **fields}


def history(order_id: str, minute: int, steps: list[Any]) -> list[OrderEvent]:
    placed = PLACED + timedelta(minutes=minute)
    made = _History(random.Random(0), order_id, "meituan", f"mt-{order_id}", placed)
    made.add(OrderReceived, mode=OrderMode.PICKUP, currency="CNY", lines=[DUMPLINGS],
             total=2800, payment_status="paid", customer=Customer(name="王"),
             placed_at=placed)  # fmt: skip
    made.add(OrderAccepted, gap=(10, 10), total=2800, currency="CNY")
    for model, after_s, fields in steps:
        fields = dict(fields)
        promise = fields.pop("_promise", None)
        if promise is not None:
            fields["promised_at"] = placed + timedelta(minutes=promise)
        actor = fields.pop("actor", POLICY)
        made.add(model, gap=(after_s, after_s), actor=actor, **fields)
    return made.events


BUSY = {"reason_code": "BUSY", "reason": "rush hour"}
LATE = {"reason_code": "NOT_ACCEPTED", "reason": "S1 did not accept it within 8 minutes"}
ORDERS = [
    # declined by S1 after 2 minutes, taken by S2: ready after 10, on time
    history("o-1", 0, [routed("S1"), prioritised("S1"), step(OrderDeclinedByStore, 120, "S1",
            **BUSY), routed("S2"), prioritised("S2"), step(OrderAcceptedByStore, 300, "S2"),
            step(OrderPreparing, 60, "S2"), step(OrderReady, 600, "S2"),
            step(OrderPickedUp, 120, "S2", picked_up_by="customer")]),
    # nobody at S1 accepted it in 8 minutes; S2 took 40 minutes to make it: late
    history("o-2", 5, [routed("S1"), prioritised("S1"), step(OrderDeclinedByStore, 480, "S1",
            **LATE), routed("S2"), prioritised("S2"), step(OrderAcceptedByStore, 60, "S2"),
            step(OrderPreparing, 60, "S2"), step(OrderReady, 2400, "S2"),
            step(OrderPickedUp, 60, "S2", picked_up_by="customer")]),
    # S1 accepted it in a minute and handed it over in 17: on time
    history("o-3", 10, [routed("S1"), prioritised("S1"), step(OrderAcceptedByStore, 60, "S1"),
            step(OrderPreparing, 60, "S1"), step(OrderReady, 600, "S1"),
            step(OrderPickedUp, 300, "S1", picked_up_by="customer")]),
]  # fmt: skip


@pytest.fixture(scope="module")
def published(stack_settings: Settings) -> Settings:
    settings = isolated(stack_settings)
    publisher = Publisher(settings)
    for events in ORDERS:
        for event in events:
            publisher.publish(settings.topics.orders, event)
    publisher.flush()
    return settings


@pytest.fixture(scope="module", params=["server", "chdb"])
def store(
    request: pytest.FixtureRequest, published: Settings, chdb_path: Path
) -> Iterator[ClickHouseStore]:
    for _, projected in projected_on(published, request.param, chdb_path):
        yield projected


def report(store: ClickHouseStore, name: str, **params: Any) -> list[dict[str, Any]]:
    return run_report(store, name, **(WINDOW | params)).as_dicts()


def test_decline_reasons_per_store(store: ClickHouseStore) -> None:
    rows = report(store, "decline_reasons")
    assert [(r["location"], r["reason_code"], r["declines"]) for r in rows] == [
        ("S1", "BUSY", 1), ("S1", "NOT_ACCEPTED", 1)]  # fmt: skip


def test_acceptance_and_late_rates_per_store(store: ClickHouseStore) -> None:
    rows = report(store, "store_acceptance", as_of=T + timedelta(hours=2))
    got = {
        r["location"]: (r["reached"], r["accepted"], r["declined"], float(r["acceptance_rate"]),
                        r["promised"], r["late"], float(r["late_rate"]))
        for r in rows
    }  # fmt: skip
    # S1: three reached it, it accepted one and declined two; of its one order, none late.
    # S2: took both it was given; o-2 was handed over 52 minutes after a 30-minute promise.
    assert got == {"S1": (3, 1, 2, 0.3333, 1, 0, 0.0), "S2": (2, 2, 0, 1.0, 2, 1, 0.5)}


def test_stage_times_per_store_and_hour(store: ClickHouseStore) -> None:
    rows = report(store, "store_stage_times", tz="UTC")
    got = {(r["location"], r["hour"], r["stage"]): (r["orders"], r["p50_seconds"],
                                                    r["p90_seconds"]) for r in rows}  # fmt: skip
    assert got[("S1", 12, "prioritised")] == (3, 120, 480)  # waits: 60, 120, 480 seconds
    assert got[("S1", 12, "preparing")] == (1, 600, 600)
    assert got[("S2", 12, "preparing")] == (2, 2400, 2400)  # 600 and 2400 s: p50 of two
    assert got[("S2", 12, "ready")] == (2, 120, 120)  # the customers came after 120 and 60 s
    assert [r["stage"] for r in rows if (r["location"], r["hour"]) == ("S2", 12)] == [
        "prioritised", "accepted_by_store", "preparing", "ready"]  # fmt: skip
    shanghai = report(store, "store_stage_times", tz="Asia/Shanghai")
    assert {r["hour"] for r in shanghai} == {20}
