"""Prep-time estimates (streams.eta): quantiles, the learned cells and their fallbacks, the load
term, and the estimates the order process records at routing and acceptance."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from events.models import OrderAcceptedByStore, OrderLine, OrderMode, OrderPrioritised
from streams import eta, orders
from tests.factories import received
from tests.streams.test_orders import NOW, context, lunch, run, types, with_policy

T = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)  # Tuesday noon UTC: hour of week 36
ORDER_SEQ = iter(range(1_000_000))


def fact(store: str, skus: tuple[str, ...], prep_min: float, *, at: datetime = T,
         mode: str = "pickup", handoff_min: float | None = None) -> eta.PrepFact:  # fmt: skip
    ready = at + timedelta(minutes=prep_min)
    fulfilled = None if handoff_min is None else ready + timedelta(minutes=handoff_min)
    return eta.PrepFact(f"o{next(ORDER_SEQ)}", store, mode, skus, at, ready, fulfilled)


def spaced(store: str, skus: tuple[str, ...], preps: list[float], *, start: datetime = T,
           **fields: Any) -> list[eta.PrepFact]:  # fmt: skip
    """Orders an hour apart each (so none is open when the next is accepted)."""
    return [fact(store, skus, p, at=start + timedelta(hours=5 * i), **fields)
            for i, p in enumerate(preps)]  # fmt: skip


def learned(facts: list[eta.PrepFact], **fields: Any) -> eta.PrepTimeModel:
    return eta.learn(facts, since=T - timedelta(days=1), until=T + timedelta(days=30),
                     learned_at=T + timedelta(days=30), **fields)  # fmt: skip


def order(*skus: str, mode: OrderMode = OrderMode.PICKUP) -> Any:
    lines = [OrderLine(sku=sku, name=sku, quantity=1, unit_price=100) for sku in skus]
    return received(lines=lines, total=100 * len(lines) + 500, mode=mode, placed_at=T)


def test_quantiles_interpolate_between_ranks_like_numpy() -> None:
    values = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0]
    assert eta.quantile(values, 0.5) == 5.5
    assert eta.quantile(values, 0.9) == pytest.approx(9.1)
    assert eta.quantile([7.0], 0.9) == 7.0
    with pytest.raises(ValueError):
        eta.quantile([], 0.5)


def test_cells_hold_p50_and_p90_of_their_orders_and_need_min_samples() -> None:
    facts = spaced("S1", ("NOODLE",), [10, 11, 12, 13, 14, 15, 16, 17, 18, 19])
    facts += spaced("S2", ("NOODLE",), [30, 30, 30])  # too few for a cell of their own
    model = learned(facts, min_samples=5)
    cell = model.cells["S1|NOODLE"]
    assert (cell.orders, cell.p50, cell.p90) == (10, 14.5 * 60, pytest.approx(18.1 * 60))
    assert "S2|NOODLE" not in model.cells and "S2" not in model.cells
    assert model.cells[eta.ALL].orders == 13


def test_the_estimate_falls_back_from_the_most_specific_cell_to_the_default() -> None:
    # S1: noodles at a known hour of week; S2: only a store cell; elsewhere: all stores.
    same_hour = [fact("S1", ("NOODLE",), 20, at=T + timedelta(weeks=i)) for i in range(6)]
    other_hours = spaced("S1", ("NOODLE",), [10] * 6, start=T + timedelta(hours=3))
    s2 = spaced("S2", ("DUMPLING",), [8] * 6, start=T + timedelta(hours=1))
    model = learned(same_hour + other_hours + s2, min_samples=5)
    pickup = order("NOODLE")

    def source(store: str, now: datetime, *skus: str) -> str:
        found = eta.estimate(model, order(*skus), location=store, open_tickets=0, now=now)
        return found.source

    assert source("S1", T, "NOODLE") == "store×dish×hour-of-week"
    assert source("S1", T + timedelta(hours=3), "NOODLE").startswith("store×dish")
    assert source("S2", T, "NOODLE").startswith("store")  # S2 never made noodles
    assert source("S9", T, "NOODLE").startswith("all stores")  # a store without history
    at_s1 = eta.estimate(model, pickup, location="S1", open_tickets=0, now=T)
    assert at_s1.ready_at == T + timedelta(minutes=20) and at_s1.model == model.version
    assert eta.estimate(None, pickup, location="S1", open_tickets=0, now=T).source == "default"
    shipped = order("NOODLE", mode=OrderMode.SHIP)
    assert eta.estimate(model, shipped, location="S1", open_tickets=0, now=T).source == "default"
    empty = learned([], min_samples=5)
    fallback = eta.estimate(empty, pickup, location="S1", open_tickets=0, now=T)
    assert (fallback.source, fallback.ready_at) == ("default", T + timedelta(minutes=20))


def test_the_slowest_dish_of_an_order_picks_its_cell() -> None:
    facts = spaced("S1", ("SOUP",), [5] * 5) + spaced("S1", ("NOODLE", "SOUP"), [15] * 5)
    model = learned(facts, min_samples=5)
    assert model.dish_rank["NOODLE"] > model.dish_rank["SOUP"]
    both = eta.estimate(model, order("SOUP", "NOODLE"), location="S1", open_tickets=0, now=T)
    soup = eta.estimate(model, order("SOUP"), location="S1", open_tickets=0, now=T)
    assert (both.prep_s, soup.prep_s) == (15 * 60, 5 * 60)


def test_open_tickets_are_counted_and_their_minutes_learned() -> None:
    # A burst: each order accepted while the ones before it are still being made, each ticket
    # open adding two minutes to a 10-minute dish.
    facts = []
    for burst in range(4):
        start = T + timedelta(hours=6 * burst)
        facts += [fact("S1", ("NOODLE",), 10 + 2 * i, at=start + timedelta(seconds=30 * i))
                  for i in range(5)]  # fmt: skip
    assert eta.tickets_open_at_acceptance(facts[:5]) == [0, 1, 2, 3, 4]
    model = learned(facts, min_samples=5)
    assert model.load["S1"] == pytest.approx(120, abs=1)
    quiet = eta.estimate(model, order("NOODLE"), location="S1", open_tickets=0, now=T)
    busy = eta.estimate(model, order("NOODLE"), location="S1", open_tickets=3, now=T)
    assert busy.prep_s - quiet.prep_s == pytest.approx(3 * 120, abs=3)


def test_a_rush_hour_factor_scales_the_cells_that_are_not_hour_specific() -> None:
    quiet = spaced("S1", ("NOODLE",), [10] * 10, start=T.replace(hour=15))
    rush = [fact("S1", ("NOODLE",), 15, at=T.replace(hour=19) + timedelta(days=i))
            for i in range(10)]  # fmt: skip
    model = learned(quiet + rush, min_samples=5)
    factor, level = eta.hour_factor(model, "S1", T.replace(hour=19) + timedelta(days=30))
    # 15 and 10 minutes around a median of 12.5: ×1.2 at the rush, ×0.8 in the afternoon.
    assert (level, factor) == ("hour-of-day", pytest.approx(1.2))
    at_rush = eta.estimate(model, order("NOODLE"), location="S1", open_tickets=0,
                           now=T.replace(hour=19) + timedelta(days=30))  # fmt: skip
    assert at_rush.prep_s == 15 * 60
    assert eta.hour_factor(model, "S1", T.replace(hour=3)) == (1.0, "")


def test_the_promise_adds_the_learned_handoff_to_the_p90() -> None:
    facts = spaced("S1", ("NOODLE",), [10] * 6, mode="delivery", handoff_min=30)
    model = learned(facts, min_samples=5)
    delivery = order("NOODLE", mode=OrderMode.DELIVERY)
    found = eta.estimate(model, delivery, location="S1", open_tickets=0, now=T)
    assert found.due_at == found.ready_by + timedelta(minutes=30)
    assert eta.handoff(model, "S1", OrderMode.PICKUP) == timedelta(0)  # none learned: default


def test_a_published_model_reads_back_and_a_bad_one_is_refused() -> None:
    model = learned(spaced("S1", ("NOODLE",), [10] * 5))
    assert eta.parse_model(model.model_dump_json().encode()) == model
    with pytest.raises(ValueError, match="version"):
        eta.parse_model(b'{"format": 1}')


def test_learning_twice_from_the_same_history_gives_the_same_version() -> None:
    facts = spaced("S1", ("NOODLE",), [10, 12, 14, 16, 18])
    assert learned(facts).version == learned(list(facts)).version
    assert learned(facts).version != learned(facts[:-1] + [fact("S1", ("NOODLE",), 40)]).version


# ---------------------------------------------------------------- recorded on the order's log


def lunch_model() -> eta.PrepTimeModel:
    """S01 makes dumplings in 12 minutes (p90 15) at any hour."""
    facts = spaced("S01", ("DUMPLING-12",), [10, 11, 12, 12, 12, 13, 14, 15, 16])
    return learned(facts, min_samples=5)


def test_routing_promises_the_learned_estimate_and_records_its_source() -> None:
    model = lunch_model()
    ctx = context(prep_model=model, open_tickets={"S01": 2})
    _, log, _ = run([lunch()], ctx)
    prioritised = log[-1]
    assert isinstance(prioritised, OrderPrioritised)
    expected = eta.estimate(model, lunch(), location="S01", open_tickets=2, now=NOW)
    assert prioritised.estimated_ready_at == expected.ready_at
    assert prioritised.promised_at == expected.due_at != NOW + timedelta(minutes=45)
    assert prioritised.eta_model == model.version
    assert prioritised.eta_source and prioritised.eta_source.startswith("store×dish")
    without = run([lunch()], context())[1][-1]
    assert without.promised_at == NOW + timedelta(minutes=45) and without.eta_source is None


def test_a_requested_time_stays_the_promise() -> None:
    wanted = NOW + timedelta(hours=3)
    _, log, _ = run([lunch(requested_at=wanted)], context(prep_model=lunch_model()))
    assert log[-1].promised_at == wanted


def test_acceptance_records_the_estimate_with_the_current_load() -> None:
    model = lunch_model()
    policy = with_policy(auto_accept_channels=["webshop"])
    _, log, _ = run([lunch()], context(catalogue=policy, prep_model=model,
                                       open_tickets={"S01": 4}))  # fmt: skip
    accepted = log[-1]
    assert isinstance(accepted, OrderAcceptedByStore) and accepted.actor == orders.AUTO_ACCEPT
    busy = eta.estimate(model, lunch(), location="S01", open_tickets=4, now=NOW)
    assert accepted.estimated_ready_at == busy.ready_at
    assert (accepted.eta_source, accepted.eta_model) == (busy.source, model.version)


def test_a_store_accepting_without_an_eta_gets_the_estimate_and_one_with_keeps_its_own() -> None:
    model = lunch_model()
    ctx = context(prep_model=model)
    state, log, _ = run([lunch()], ctx)
    assert types(log)[-1] == "OrderPrioritised"
    envelope: dict[str, Any] = dict(
        event_id="acc-1", order_id="o-1", sequence=1, occurred_at=NOW, recorded_at=NOW,
        correlation_id="o-1", actor=log[-1].actor, channel="webshop", external_id="1001",
        location="S01",
    )  # fmt: skip
    bare = orders.decide(state, OrderAcceptedByStore(**envelope), ctx).to_log[0]
    assert isinstance(bare, OrderAcceptedByStore)
    assert bare.estimated_ready_at == NOW + timedelta(minutes=12)
    assert bare.eta_model == model.version
    typed = NOW + timedelta(minutes=30)
    own = OrderAcceptedByStore(**envelope, estimated_ready_at=typed)
    kept = orders.decide(state, own, ctx).to_log[0]
    assert isinstance(kept, OrderAcceptedByStore)
    assert (kept.estimated_ready_at, kept.eta_source, kept.eta_model) == (typed, "store", None)


# ---------------------------------------------------------------- the worker's shared views


def test_the_views_count_each_stores_open_tickets_and_keep_the_newest_model() -> None:
    from events.codec import AvroCodec
    from events.models import Actor, ActorKind, OrderReady
    from streams.reference import load_catalogue
    from streams.worker.views import SharedViews

    views = SharedViews(catalogue=load_catalogue(), codec=AvroCodec())
    staff = Actor(kind=ActorKind.USER, id="cook")

    def step(kind: type, order_id: str, sequence: int, store: str = "S01") -> Any:
        return kind(event_id=f"{order_id}-{sequence}", order_id=order_id, sequence=sequence,
                    occurred_at=T, recorded_at=T, correlation_id=order_id, actor=staff,
                    channel="webshop", external_id=order_id, location=store)  # fmt: skip

    views.note(step(OrderAcceptedByStore, "o-1", 5))
    views.note(step(OrderAcceptedByStore, "o-2", 5))
    views.note(step(OrderAcceptedByStore, "o-3", 5, store="S02"))
    views.note(step(OrderReady, "o-1", 7))
    views.note(step(OrderAcceptedByStore, "o-1", 5))  # read back late: still ready
    assert dict(views.open_tickets()) == {"S01": 1, "S02": 1}
    views.forget_before(T + timedelta(hours=1))  # closed tickets go, open ones stay
    assert "o-1" not in views.tickets and dict(views.open_tickets()) == {"S01": 1, "S02": 1}
    views.forget_before(T + timedelta(hours=13))  # left open half a day: not counted
    assert dict(views.open_tickets()) == {}

    older = learned(spaced("S1", ("NOODLE",), [10] * 5))
    newer = eta.learn([], since=T, until=T, learned_at=T + timedelta(days=60))
    views.note_prep_model(newer.model_dump_json().encode())
    views.note_prep_model(older.model_dump_json().encode())  # an older one read late
    views.note_prep_model(b"not a model")
    assert views.prep_model == newer
