from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from events.models import OrderMode
from streams.priority import (
    DEFAULT_PROMISE,
    QueueEntry,
    prioritise_event,
    priority,
    promised_at,
    queue_order,
)
from tests.factories import T0, received

MINUTE = timedelta(minutes=1)
TIERS = ["new", "regular", "vip"]


def test_the_promise_is_the_requested_time_when_the_customer_gave_one() -> None:
    wanted = T0 + timedelta(hours=3)
    assert promised_at(received(requested_at=wanted)) == wanted


@pytest.mark.parametrize(
    ("mode", "promise"),
    [
        (OrderMode.DELIVERY, timedelta(minutes=45)),
        (OrderMode.PICKUP, timedelta(minutes=20)),
        (OrderMode.DINE_IN, timedelta(minutes=15)),
        (OrderMode.SHIP, timedelta(hours=48)),
    ],
)
def test_the_promise_defaults_to_placement_plus_the_mode_s_promise(
    mode: OrderMode, promise: timedelta
) -> None:
    assert DEFAULT_PROMISE[mode] == promise
    assert promised_at(received(mode=mode)) == T0 + promise


def test_urgency_grows_as_the_promise_nears() -> None:
    order = received()
    scores = [priority(order, tier="new", now=T0 + m * MINUTE).score for m in (0, 20, 40, 44)]
    assert scores == sorted(scores) and len(set(scores)) == 4


def test_a_late_order_beats_an_on_time_one_and_later_beats_less_late() -> None:
    order = received()
    due = promised_at(order)
    on_time = priority(order, tier="new", now=due - MINUTE).score
    late = priority(order, tier="new", now=due + MINUTE).score
    later = priority(order, tier="new", now=due + 30 * MINUTE).score
    assert on_time < late < later


def test_vip_beats_regular_beats_new_at_equal_promise() -> None:
    order = received()
    now = T0 + 10 * MINUTE
    new, regular, vip = (priority(order, tier=t, now=now).score for t in TIERS)
    assert new < regular < vip


def test_value_cannot_lift_an_on_time_vip_above_a_late_new_order() -> None:
    now = T0 + 45 * MINUTE
    rich = received(total=10**9, requested_at=now)  # due this very minute
    modest = received(total=100, requested_at=now - MINUTE)
    assert priority(rich, tier="vip", now=now).score < priority(modest, tier="new", now=now).score


def test_value_adds_a_capped_bonus() -> None:
    now = T0 + 10 * MINUTE
    scores = [priority(received(total=t), tier="new", now=now).score for t in (0, 50_000, 10**12)]
    assert scores[0] < scores[1] < scores[2] <= scores[0] + 10


def test_an_unknown_tier_counts_as_new_and_says_so() -> None:
    order = received()
    unknown = priority(order, tier="gold", now=T0)
    assert unknown.score == priority(order, tier="new", now=T0).score
    assert any("unknown tier" in factor for factor in unknown.factors)


def test_the_factors_explain_the_score() -> None:
    p = priority(received(total=25_600), tier="vip", now=T0 + 50 * MINUTE)
    assert p.factors == ["late by 5 min: +2010", "tier vip: +15", "value 25600 CNY: +2"]
    assert p.score == 2010 + 15 + 2 and isinstance(p.score, int)


@given(
    st.sampled_from(TIERS),
    st.sampled_from(TIERS),
    st.integers(0, 10**9),
    st.integers(0, 10**9),
    st.integers(0, 3 * 24 * 60),
    st.integers(1, 3 * 24 * 60),
)
def test_any_late_order_outranks_any_order_on_time(
    tier_on_time: str, tier_late: str, value_on_time: int, value_late: int, left: int, late: int
) -> None:
    now = T0 + timedelta(days=10)
    on_time = received(total=value_on_time, requested_at=now + left * MINUTE)
    behind = received(total=value_late, requested_at=now - late * MINUTE)
    assert (
        priority(on_time, tier=tier_on_time, now=now).score
        < priority(behind, tier=tier_late, now=now).score
    )


def test_prioritised_event_id_follows_from_the_cause() -> None:
    order = received()
    p = priority(order, tier="regular", now=T0)
    first = prioritise_event(order, p, location="S01", sequence=5, causation_id="r-1", now=T0)
    again = prioritise_event(
        order, p, location="S01", sequence=5, causation_id="r-1", now=datetime.now(UTC)
    )
    other = prioritise_event(order, p, location="S01", sequence=5, causation_id="r-2", now=T0)
    assert first.event_id == again.event_id != other.event_id
    assert (first.location, first.score, first.promised_at, first.factors) == (
        "S01",
        p.score,
        p.promised_at,
        p.factors,
    )
    assert (first.actor.kind, first.actor.id, first.causation_id) == ("system", "priority", "r-1")


def test_the_queue_is_ordered_by_score_then_promise_then_order_id() -> None:
    early, late = T0, T0 + MINUTE
    entries = [
        QueueEntry("o-5", 10, None, "prioritised"),
        QueueEntry("o-4", 10, late, "prioritised"),
        QueueEntry("o-3", 10, early, "preparing"),
        QueueEntry("o-2", 10, early, "prioritised"),
        QueueEntry("o-1", 2000, late, "prioritised"),
    ]
    assert [e.order_id for e in queue_order(entries)] == ["o-1", "o-2", "o-3", "o-4", "o-5"]
