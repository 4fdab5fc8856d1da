"""What the kitchen screen and the dashboard read besides the tickets (issue 12): the orders at
risk of missing a promise (`orders_at_risk`) and the amendments waiting for a store's answer
(`kitchen_changes`), over a few orders whose every step is known, on both backends."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from events.models import (
    OrderAcceptedByStore,
    OrderAmendmentRefused,
    OrderAmendmentRequested,
    OrderAtRisk,
    OrderLine,
    OrderPreparing,
    OrderReady,
)
from infra.publisher import Publisher
from infra.settings import Settings
from projections.read_api import pending_change
from projections.reports import run_report
from projections.store import ClickHouseStore
from tests.projections.conftest import isolated, projected_on
from tests.projections.test_store_reports import PLACED, history, prioritised, routed, step

pytestmark = pytest.mark.integration

DUE = PLACED + timedelta(minutes=30)
TEA = OrderLine(sku="TEA-OOLONG", name="冻顶乌龙茶", quantity=2, unit_price=1200,
                options=["少冰"])  # fmt: skip
DUMPLINGS = OrderLine(sku="DUMPLING-12", name="水饺", quantity=1, unit_price=2800)


def risk(store: str, kind: str) -> Any:
    return step(OrderAtRisk, 60, store, risk=kind, due_at=DUE, reason=f"{kind} at {store}")


def amendment(revision: int) -> Any:
    model, after, fields = step(OrderAmendmentRequested, 30, "S1", revision=revision,
                                lines=[DUMPLINGS, TEA], total=2800 + 2400)  # fmt: skip
    del fields["location"]  # a revision names no store
    return model, after, fields


ORDERS = [
    # S1 was slow to accept, is making it now and will be late; a change waits for S1's answer.
    history("o-r1", 0, [routed("S1"), prioritised("S1"), risk("S1", "NOT_ACCEPTED"),
            step(OrderAcceptedByStore, 60, "S1"), step(OrderPreparing, 60, "S1"),
            risk("S1", "LATE"), amendment(1)]),
    # At risk while it was made, then ready: no longer at risk; its change was refused.
    history("o-r2", 1, [routed("S1"), prioritised("S1"), step(OrderAcceptedByStore, 60, "S1"),
            step(OrderPreparing, 60, "S1"), amendment(1),
            step(OrderAmendmentRefused, 30, "S1", revision=1, reason_code="COOKED",
                 reason="in the wok"),
            risk("S1", "LATE"), step(OrderReady, 60, "S1")]),
    # S2 has not accepted it and half its window is gone.
    history("o-r3", 2, [routed("S2"), prioritised("S2"), risk("S2", "NOT_ACCEPTED")]),
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


def test_orders_at_risk_are_the_open_ones_with_their_newest_alert(store: ClickHouseStore) -> None:
    rows = run_report(store, "orders_at_risk").as_dicts()
    got = [(r["order_id"], r["location"], r["risk"], r["channel"]) for r in rows]
    assert got == [("o-r1", "S1", "LATE", "meituan"), ("o-r3", "S2", "NOT_ACCEPTED", "meituan")]
    assert all(r["due_at"].startswith(DUE.strftime("%Y-%m-%dT%H:%M")) for r in rows)
    at_s2 = run_report(store, "orders_at_risk", location="S2").as_dicts()
    assert [r["order_id"] for r in at_s2] == ["o-r3"]


def test_kitchen_changes_are_the_amendments_a_store_has_not_answered(
    store: ClickHouseStore,
) -> None:
    rows = run_report(store, "kitchen_changes", location="S1").as_dicts()
    assert [(r["order_id"], r["last_event"]) for r in rows] == [("o-r1", "OrderAmendmentRequested")]
    change = pending_change(rows[0])
    assert change["revision"] == 1
    assert [(line["name"], line["quantity"], line["options"]) for line in change["lines"]] == [
        ("水饺", 1, ""), ("冻顶乌龙茶", 2, "少冰")]  # fmt: skip
    assert run_report(store, "kitchen_changes", location="S2").as_dicts() == []
