"""The prep-time learner's query (projections/sql/prep_facts.sql) and the ETA-accuracy report
over three orders whose every minute and estimate is known, projected on both backends (the
SQL must run on ClickHouse 18.16 as on current ClickHouse)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bench.eta import Simulated, history
from events.models import OrderLine, OrderMode
from infra.publisher import Publisher
from infra.settings import Settings
from projections.eta import prep_facts
from projections.reports import run_report
from projections.store import ClickHouseStore
from streams import eta
from tests.factories import received
from tests.projections.conftest import isolated, projected_on

pytestmark = pytest.mark.integration

T = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
WINDOW = {"since": T - timedelta(hours=1), "until": T + timedelta(hours=3)}


def known(order_id: str, store: str, mode: OrderMode, skus: list[str], *, ready_min: int,
          estimated_min: int, handed_min: int) -> Simulated:  # fmt: skip
    """Placed at T, accepted a minute later, ready `ready_min` after that (estimated
    `estimated_min`), handed on (delivered, picked up or served) `handed_min` after ready."""
    lines = [OrderLine(sku=sku, name=sku, quantity=1, unit_price=1000) for sku in skus]
    order = received(event_id=f"e-{order_id}", order_id=order_id, correlation_id=order_id,
                     external_id=order_id, mode=mode, lines=lines, total=1000 * len(lines) + 500,
                     placed_at=T, location_hint=store)  # fmt: skip
    accepted = T + timedelta(minutes=1)
    ready = accepted + timedelta(minutes=ready_min)
    guess = accepted + timedelta(minutes=estimated_min)
    estimate = eta.Estimate(guess, guess, guess, estimated_min * 60.0, "store×dish", "m-1")
    return Simulated(order, store, accepted, ready, ready + timedelta(minutes=handed_min), 0,
                     estimate, 0.0)  # fmt: skip


ORDERS = [
    known("o-1", "S1", OrderMode.PICKUP, ["DUMPLING-12"], ready_min=10, estimated_min=12,
          handed_min=5),  # 2 minutes early; the default (20 min after placement) 9 late
    known("o-2", "S1", OrderMode.DELIVERY, ["NOODLE-BEEF", "SOUP-HOTSOUR"], ready_min=20,
          estimated_min=16, handed_min=25),  # 4 minutes late; the default (45) 24 early
    known("o-3", "S2", OrderMode.DINE_IN, ["BUN-PORK-4"], ready_min=15, estimated_min=15,
          handed_min=1),  # on the minute; the default (15) 1 minute early
]  # fmt: skip


@pytest.fixture(scope="module")
def published(stack_settings: Settings) -> Settings:
    settings = isolated(stack_settings)
    publisher = Publisher(settings)
    for done in ORDERS:
        for event in history(done):
            publisher.publish(settings.topics.orders, event)
    publisher.flush()
    return settings


@pytest.fixture(scope="module", params=["server", "chdb"])
def store(
    request: pytest.FixtureRequest, published: Settings, chdb_path: Path
) -> Iterator[ClickHouseStore]:
    for _, projected in projected_on(published, request.param, chdb_path):
        yield projected


def test_the_learner_reads_each_finished_order_once_with_its_times_and_dishes(
    store: ClickHouseStore,
) -> None:
    rows = prep_facts(store, **WINDOW)
    facts = {f.order_id: f for f in eta.facts_from_rows(rows)}
    assert sorted(facts) == ["o-1", "o-2", "o-3"]
    for done in ORDERS:
        got = facts[done.order.order_id]
        assert (got.location, got.mode, sorted(got.skus)) == (
            done.store, done.order.mode.value, sorted(line.sku for line in done.order.lines)
        )  # fmt: skip
        assert (got.accepted_at, got.ready_at) == (done.accepted_at, done.ready_at)
        assert got.fulfilled_at == done.fulfilled_at
    assert facts["o-2"].prep_s == 20 * 60
    # Accepted outside the window: not read.
    assert prep_facts(store, since=T + timedelta(minutes=2), until=T + timedelta(hours=3)) == []


def test_eta_accuracy_gives_exact_p50_p90_of_the_absolute_error_per_store_and_overall(
    store: ClickHouseStore,
) -> None:
    rows = {r["location"]: r for r in run_report(store, "eta_accuracy", **WINDOW).as_dicts()}
    assert list(rows) == ["S1", "S2", "*"]
    got = {
        location: (row["orders"], float(row["p50_abs_error_min"]),
                   float(row["p90_abs_error_min"]), float(row["mean_error_min"]),
                   float(row["default_p50_abs_error_min"]),
                   float(row["default_p90_abs_error_min"]))
        for location, row in rows.items()
    }  # fmt: skip
    # quantileExact takes the element at position level × n of the sorted values.
    assert got["S1"] == (2, 4.0, 4.0, 1.0, 24.0, 24.0)  # errors -2, +4; the defaults 9 and 24 off
    assert got["S2"] == (1, 0.0, 0.0, 0.0, 1.0, 1.0)
    assert got["*"] == (3, 2.0, 4.0, 0.7, 9.0, 24.0)
