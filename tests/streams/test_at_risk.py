"""At-risk alerts (streams.orders.at_risk_due): the order's own timer warns before a store
lets an order wait past its acceptance window, and before a promise is missed."""

from __future__ import annotations

from datetime import timedelta

from events.models import Actor, ActorKind, OrderAcceptedByStore, OrderAtRisk, OrderReady
from streams import orders
from streams.partitions import OrderPartition
from tests.streams.test_orders import NOW, context, lunch, run, store_update, types, with_policy

MINUTE = timedelta(minutes=1)


def at_store(kind: type, n: int, **fields: object) -> object:
    return store_update(kind, n, location="S01", **fields).model_copy(update={"order_id": "o-1"})


def test_an_order_waiting_for_its_store_is_flagged_halfway_through_the_window() -> None:
    ctx = context(catalogue=with_policy(accept_within_minutes=8))
    state, _, _ = run([lunch()], ctx)
    assert state is not None and state.prioritised_at == NOW
    place = ctx.catalogue.locations["S01"]
    assert orders.at_risk_due(state, now=NOW + 3 * MINUTE, place=place) == []
    (alert,) = orders.at_risk_due(state, now=NOW + 4 * MINUTE, place=place)
    assert (alert.risk, alert.location, alert.due_at) == ("NOT_ACCEPTED", "S01", NOW + 8 * MINUTE)
    taken = orders.decide(state, alert, context(catalogue=ctx.catalogue, now=NOW + 4 * MINUTE))
    assert types(taken.to_log) == ["OrderAtRisk"] and taken.to_log[0].sequence == state.version + 1
    after = orders.fold(taken.to_log, state)
    assert after is not None and after.status is state.status
    assert orders.at_risk_due(after, now=NOW + 5 * MINUTE, place=place) == []  # once
    # The escalation itself still comes when the window closes.
    assert orders.acceptance_due(after, now=NOW + 8 * MINUTE, place=place) is not None


def test_a_promise_about_to_be_missed_is_flagged_against_the_store_s_own_eta() -> None:
    ctx = context()
    state, _, _ = run([lunch()], ctx)
    assert state is not None and state.promised_at is not None
    promised = state.promised_at
    assert orders.at_risk_due(state, now=promised - 6 * MINUTE, place=None) == []
    (late,) = orders.at_risk_due(state, now=promised - 5 * MINUTE, place=None)
    assert (late.risk, late.due_at) == ("LATE", promised)
    # The store accepts with an ETA of its own: that is what the alert now runs against.
    eta = promised + 20 * MINUTE
    accepted = at_store(OrderAcceptedByStore, 1, estimated_ready_at=eta)
    state = orders.fold(orders.decide(state, accepted, ctx).to_log, state)
    assert state is not None and state.ready_by == eta
    assert orders.at_risk_due(state, now=promised, place=None) == []
    stale = orders.decide(state, late, context(now=promised))
    assert (stale.to_log, stale.refusal) == ([], None)  # the old promise's: dropped quietly
    (late,) = orders.at_risk_due(state, now=eta - 2 * MINUTE, place=None)
    assert late.due_at == eta


def test_a_ready_order_is_not_at_risk_and_an_alert_from_before_is_dropped() -> None:
    ctx = context()
    state, _, _ = run([lunch(), at_store(OrderAcceptedByStore, 1)], ctx)
    assert state is not None and state.promised_at is not None
    (late,) = orders.at_risk_due(state, now=state.promised_at, place=None)
    from events.models import OrderPreparing

    for n, kind in ((2, OrderPreparing), (3, OrderReady)):
        state = orders.fold(orders.decide(state, at_store(kind, n), ctx).to_log, state)
    assert state is not None and state.status.value == "ready"
    assert orders.at_risk_due(state, now=state.promised_at + 9 * MINUTE, place=None) == []
    dropped = orders.decide(state, late, context(now=state.promised_at))
    assert (dropped.to_log, dropped.refusal) == ([], None)


def test_only_the_order_process_raises_alerts() -> None:
    state, _, _ = run([lunch()], context())
    assert state is not None and state.promised_at is not None
    (late,) = orders.at_risk_due(state, now=state.promised_at, place=None)
    forged = late.model_copy(update={"actor": Actor(kind=ActorKind.USER, id="mallory")})
    decision = orders.decide(state, forged, context(now=state.promised_at))
    assert decision.refusal is not None and decision.to_log == []


def test_the_timer_sends_each_alert_once() -> None:
    ctx = context(catalogue=with_policy(accept_within_minutes=8))
    partition = OrderPartition()
    partition.handle(lunch(), ctx)
    locations = ctx.catalogue.locations
    first = partition.expiries(NOW + 4 * MINUTE, locations)
    assert [type(e) for e in first] == [OrderAtRisk]
    assert partition.expiries(NOW + 5 * MINUTE, locations) == []
    alert = first[0]
    partition.handle(alert, context(catalogue=ctx.catalogue, now=NOW + 5 * MINUTE))
    promised = partition.orders["o-1"].promised_at
    assert promised is not None
    later = partition.expiries(promised - MINUTE, locations)
    assert [(type(e).__name__, getattr(e, "risk", None)) for e in later][:1] == [
        ("OrderAtRisk", "LATE")
    ]


def test_the_timer_schedule_names_the_moment_each_timer_falls_due() -> None:
    """`orders.timer_due` is when the timers next have something to say: nothing before it,
    something at it; without the store's policy, a time no later than that."""
    ctx = context(catalogue=with_policy(accept_within_minutes=8))
    state, _, _ = run([lunch()], ctx)
    assert state is not None
    place = ctx.catalogue.locations[state.location or ""]
    second = timedelta(seconds=1)
    alert_at = orders.timer_due(state, place=place)
    assert alert_at == NOW + 4 * MINUTE
    assert orders.at_risk_due(state, now=alert_at - second, place=place) == []
    assert orders.at_risk_due(state, now=alert_at, place=place) != []
    escalate_at = orders.timer_due(state, place=place, after=alert_at)
    assert escalate_at == NOW + 8 * MINUTE
    assert orders.acceptance_due(state, now=escalate_at - second, place=place) is None
    assert orders.acceptance_due(state, now=escalate_at, place=place) is not None
    unknown = orders.timer_due(state, place=None)
    assert unknown is not None and unknown <= alert_at
    due_at = state.ready_by or state.promised_at
    assert due_at is not None and due_at - 5 * MINUTE > escalate_at
    late_at = orders.timer_due(state, place=place, after=escalate_at)
    assert late_at == due_at - orders.AT_RISK_MINUTES * MINUTE
    assert orders.timer_due(state, place=place, after=late_at) is None  # none left after it
