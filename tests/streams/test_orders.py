"""The order process (streams.orders): pure decisions over an order's log and one input."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from events.models import (
    Actor,
    ActorKind,
    Address,
    CancelledBy,
    CommitStock,
    OrderAcceptedByStore,
    OrderCancelled,
    OrderCompleted,
    OrderDeclinedByStore,
    OrderEvent,
    OrderLine,
    OrderMode,
    OrderModified,
    OrderPickedUp,
    OrderPreparing,
    OrderReady,
    ReleaseStock,
    ReserveStock,
    ReviewApproved,
    ShipmentCreated,
    StockEvent,
    StockReleased,
    StockReservationRefused,
    StockReserved,
    deterministic_id,
)
from streams import orders
from streams.customers import CustomerHistory
from streams.fraud import FraudRules
from streams.reference import load_catalogue
from tests.factories import received

NOW = datetime(2026, 11, 25, 4, 0, tzinfo=UTC)  # 12:00 in Shanghai: the stores are open
CATALOGUE = load_catalogue()
ACTOR = Actor(kind=ActorKind.USER, id="li.reviewer")


def context(stock: Mapping[tuple[str, str], int] | None = None, **changes: Any) -> orders.Context:
    stock = stock or {}
    fields: dict[str, Any] = dict(
        catalogue=CATALOGUE, rules=FraudRules(), history=CustomerHistory(),
        available=lambda sku, location: stock.get((sku, location), 0), load={}, now=NOW,
    )  # fmt: skip
    fields.update(changes)
    return orders.Context(**fields)


def lunch(**overrides: Any) -> Any:
    """A Meituan-style delivery from store S01: dishes are made to order."""
    fields: dict[str, Any] = dict(location_hint="S01", placed_at=NOW,
                                  address=Address(text="南京东路 1号", latitude=31.235,
                                                  longitude=121.475))  # fmt: skip
    fields.update(overrides)
    return received(**fields)


def teapots(quantity: int = 2, **overrides: Any) -> Any:
    fields: dict[str, Any] = dict(
        order_id="o-ship", event_id="e-ship", mode=OrderMode.SHIP, placed_at=NOW,
        lines=[OrderLine(sku="KETTLE-IRON", name="铸铁茶壶", quantity=quantity, unit_price=45900)],
        delivery_fee=0, total=45900 * quantity,
        address=Address(text="北京 朝阳区", latitude=39.92, longitude=116.45),
    )  # fmt: skip
    fields.update(overrides)
    return received(**fields)


def run(
    inputs: list[Any], ctx: orders.Context
) -> tuple[orders.OrderState | None, list[OrderEvent], list[StockEvent]]:
    """Feed inputs one by one as the agent does; returns state, the log and the commands."""
    state: orders.OrderState | None = None
    log: list[OrderEvent] = []
    commands: list[StockEvent] = []
    for event in inputs:
        decision = orders.decide(state, event, ctx)
        folded = orders.fold(decision.to_log, state)
        assert decision.after is None or decision.after == folded  # what the agent keeps
        state = folded
        log += decision.to_log
        commands += decision.commands
    return state, log, commands


def types(log: list[Any]) -> list[str]:
    return [event.event_type for event in log]


def answer(command: ReserveStock, *, ok: bool) -> StockEvent:
    common: dict[str, Any] = dict(
        event_id=deterministic_id(command.event_id, "answer"), sequence=1, occurred_at=NOW,
        recorded_at=NOW, correlation_id=command.correlation_id,
        actor=Actor(kind=ActorKind.SYSTEM, id="inventory"), sku=command.sku,
        location=command.location, order_id=command.order_id,
        reservation_id=command.reservation_id,
    )  # fmt: skip
    if ok:
        return StockReserved(**common, quantity=command.quantity)
    return StockReservationRefused(**common, requested=command.quantity, available=0,
                                   reason="INSUFFICIENT_STOCK")  # fmt: skip


def test_made_to_order_delivery_is_routed_to_its_store_and_prioritised_without_stock() -> None:
    state, log, commands = run([lunch()], context())
    assert types(log) == ["OrderReceived", "OrderAccepted", "OrderRouted", "OrderPrioritised"]
    assert [e.sequence for e in log] == [1, 2, 3, 4]
    assert log[2].location == "S01" and commands == []
    assert state is not None and state.status.value == "prioritised"


def test_stocked_order_reserves_per_line_and_is_prioritised_when_all_are_reserved() -> None:
    ctx = context({("KETTLE-IRON", "WH-BJ"): 5, ("KETTLE-IRON", "WH-SH"): 5})
    state, log, commands = run([teapots()], ctx)
    assert types(log) == ["OrderReceived", "OrderAccepted", "OrderRouted"]
    assert log[-1].location == "WH-BJ"  # nearer to Beijing
    (reserve,) = commands
    assert isinstance(reserve, ReserveStock)
    assert (reserve.location, reserve.quantity) == ("WH-BJ", 2)
    state, more, _ = run([teapots(), answer(reserve, ok=True)], ctx)
    assert types(more)[3:] == ["OrderReserved", "OrderPrioritised"]


def test_refused_reservation_re_routes_to_another_location() -> None:
    ctx = context({("KETTLE-IRON", "WH-BJ"): 5, ("KETTLE-IRON", "WH-SH"): 5})
    _, _, (first,) = run([teapots()], ctx)
    state, log, commands = run([teapots(), answer(first, ok=False)], ctx)
    assert types(log)[3:] == ["OrderReservationFailed", "OrderRouted"]
    second = commands[-1]
    assert isinstance(second, ReserveStock) and second.location == "WH-SH"
    assert second.reservation_id != first.reservation_id
    state, log, _ = run([teapots(), answer(first, ok=False), answer(second, ok=True)], ctx)
    assert types(log)[-2:] == ["OrderReserved", "OrderPrioritised"]
    # The refused attempt was given up whole: its line is released (a no-op on the ledger,
    # which never reserved it), the second attempt's is held.
    assert state is not None and set(state.held) == {second.reservation_id}
    assert set(state.released) == {first.reservation_id}


def test_partial_reservation_is_compensated_when_another_line_is_refused() -> None:
    lines = [OrderLine(sku="KETTLE-IRON", name="壶", quantity=1, unit_price=45900),
             OrderLine(sku="MUG-CERAMIC", name="杯", quantity=1, unit_price=6800)]  # fmt: skip
    order = teapots(lines=lines, total=45900 + 6800)
    ctx = context({("KETTLE-IRON", "WH-BJ"): 1, ("MUG-CERAMIC", "WH-BJ"): 1})
    _, _, reserves = run([order], ctx)
    kettle, mug = sorted(reserves, key=lambda c: c.sku)
    state, log, commands = run([order, answer(kettle, ok=True), answer(mug, ok=False)], ctx)
    assert types(log)[3:5] == ["OrderPartiallyReserved", "OrderReservationFailed"]
    released = [c for c in commands if isinstance(c, ReleaseStock)]
    # The whole attempt goes back: the reserved kettle and the refused mug alike.
    assert sorted((c.reservation_id, c.reason) for c in released) == sorted([
        (kettle.reservation_id, "COMPENSATION"), (mug.reservation_id, "COMPENSATION")
    ])  # fmt: skip
    # Only WH-BJ had stock and it refused: nothing is left to try.
    assert types(log)[-1] == "OrderRejected" and log[-1].reasons[0].code == "OUT_OF_STOCK"


def test_no_stock_anywhere_is_rejected_with_the_reason() -> None:
    _, log, commands = run([teapots()], context())
    assert types(log)[2:] == ["OrderReservationFailed", "OrderRejected"]
    assert log[-1].reasons[0].code == "OUT_OF_STOCK" and commands == []


def test_a_redelivered_input_after_a_crash_finishes_what_was_cut_short() -> None:
    ctx = context({("KETTLE-IRON", "WH-BJ"): 5})
    _, full_log, full_commands = run([teapots()], ctx)
    # The worker died after writing the receipt and the verdict, before routing.
    cut = orders.fold(full_log[:2])
    decision = orders.decide(cut, teapots(), ctx)
    assert decision.to_log == full_log[2:]
    assert [c.event_id for c in decision.commands] == [c.event_id for c in full_commands]


def test_a_crash_between_the_receipt_and_its_verdict_is_finished_by_the_redelivery() -> None:
    ctx = context({("KETTLE-IRON", "WH-BJ"): 5})
    _, full_log, _ = run([teapots()], ctx)
    cut = orders.fold(full_log[:1])  # only OrderReceived reached the log
    decision = orders.decide(cut, teapots(), ctx)
    assert decision.to_log == full_log[1:]  # the same verdict (same id), then the rest


def test_a_redelivered_input_lists_the_reservations_still_unanswered_for_recovery() -> None:
    ctx = context({("KETTLE-IRON", "WH-BJ"): 5})
    state, _, (reserve,) = run([teapots()], ctx)
    again = orders.decide(state, teapots(), ctx)
    assert again.to_log == [] and again.commands == []
    assert [c.event_id for c in again.recovery] == [reserve.event_id]


def test_answers_are_taken_once() -> None:
    ctx = context({("KETTLE-IRON", "WH-BJ"): 5})
    _, _, (reserve,) = run([teapots()], ctx)
    reply = answer(reserve, ok=True)
    _, log, _ = run([teapots(), reply, reply], ctx)
    assert types(log).count("OrderReserved") == 1


def test_a_risky_order_is_held_and_a_reviewer_releases_it() -> None:
    history = CustomerHistory()
    for n in range(4):  # the same phone and address, four times within the hour
        history.record(lunch(order_id=f"o-{n}", event_id=f"e-{n}",
                             placed_at=NOW - timedelta(minutes=n + 1)))  # fmt: skip
    ctx = context(history=history)
    state, log, _ = run([lunch()], ctx)
    assert types(log)[-1] == "OrderHeld" and state is not None
    approve = ReviewApproved(
        event_id="review-1", sequence=1, occurred_at=NOW, recorded_at=NOW,
        correlation_id="o-1", actor=ACTOR, order_id="o-1", channel="", external_id="",
    )  # fmt: skip
    state, log, _ = run([lunch(), approve], ctx)
    assert types(log)[-3:] == ["ReviewApproved", "OrderRouted", "OrderPrioritised"]
    assert log[-3].actor == ACTOR and log[-3].channel == "webshop"  # filled in from the history


def test_approving_an_order_that_is_not_held_is_refused() -> None:
    state, _, _ = run([lunch()], context())
    approve = ReviewApproved(
        event_id="review-1", sequence=1, occurred_at=NOW, recorded_at=NOW,
        correlation_id="o-1", actor=ACTOR, order_id="o-1", channel="", external_id="",
    )  # fmt: skip
    decision = orders.decide(state, approve, context())
    assert decision.to_log == [] and "prioritised" in (decision.refusal or "")


def test_cancelling_a_reserved_order_releases_its_stock_and_late_answers_go_back() -> None:
    ctx = context({("KETTLE-IRON", "WH-BJ"): 5})
    _, _, (reserve,) = run([teapots()], ctx)
    cancel = OrderCancelled(
        event_id="cancel-1", sequence=1, occurred_at=NOW, recorded_at=NOW,
        correlation_id="o-ship", actor=ACTOR, order_id="o-ship", channel="", external_id="",
        cancelled_by=CancelledBy.CUSTOMER, reason_code="CHANGED_MIND", reason="no longer needed",
    )  # fmt: skip
    # Cancelled while the reservation was in flight: the late answer is given back.
    state, log, commands = run([teapots(), cancel, answer(reserve, ok=True)], ctx)
    assert types(log)[-1] == "OrderCancelled"
    assert [(c.event_type, c.reservation_id) for c in commands[1:]] == [
        ("ReleaseStock", reserve.reservation_id)
    ]
    # Cancelled after it was reserved: released with the reason.
    state, log, commands = run([teapots(), answer(reserve, ok=True), cancel], ctx)
    released = [c for c in commands if isinstance(c, ReleaseStock)]
    assert [(c.reservation_id, c.reason) for c in released] == [
        (reserve.reservation_id, "CANCELLED")
    ]


def test_an_expired_reservation_sends_the_order_to_routing_again() -> None:
    ctx = context({("KETTLE-IRON", "WH-BJ"): 5})
    _, _, (reserve,) = run([teapots()], ctx)
    lapsed = StockReleased(
        event_id="lapse-1", sequence=9, occurred_at=NOW, recorded_at=NOW,
        correlation_id="o-ship", actor=Actor(kind=ActorKind.SYSTEM, id="inventory"),
        sku="KETTLE-IRON", location="WH-BJ", order_id="o-ship",
        reservation_id=reserve.reservation_id, quantity=2, reason="EXPIRED",
    )  # fmt: skip
    state, log, commands = run([teapots(), answer(reserve, ok=True), lapsed], ctx)
    assert types(log)[-2:] == ["OrderReservationReleased", "OrderRouted"]
    assert isinstance(commands[-1], ReserveStock) and commands[-1].reservation_id != (
        reserve.reservation_id
    )


def test_input_for_an_unknown_order_is_refused() -> None:
    ctx = context({("KETTLE-IRON", "WH-BJ"): 5})
    _, _, (reserve,) = run([teapots()], ctx)
    decision = orders.decide(None, answer(reserve, ok=True), ctx)
    assert decision.refusal is not None and "never received" in decision.refusal


@settings(max_examples=60, deadline=None)
@given(st.lists(st.booleans(), min_size=1, max_size=6), st.integers(1, 3))
def test_the_state_rebuilt_from_the_log_equals_the_state_the_agent_kept(
    answers: list[bool], quantity: int
) -> None:
    ctx = context({("KETTLE-IRON", loc): 9 for loc in ("WH-BJ", "WH-SH")})
    state, log, commands = run([teapots(quantity)], ctx)
    inputs = [teapots(quantity)]
    for ok in answers:
        pending = [c for c in commands if isinstance(c, ReserveStock)]
        if not pending:
            break
        inputs.append(answer(pending[-1], ok=ok))
        state, log, commands = run(inputs, ctx)
    assert orders.fold(log) == state
    assert [e.sequence for e in log] == list(range(1, len(log) + 1))


def store_update(kind: type, n: int, **fields: Any) -> Any:
    return kind(event_id=f"store-{n}", sequence=1, occurred_at=NOW, recorded_at=NOW,
                correlation_id="o-ship", actor=ACTOR, order_id="o-ship", channel="",
                external_id="", **fields)  # fmt: skip


def test_the_goods_leaving_commit_the_reservation() -> None:
    ctx = context({("KETTLE-IRON", "WH-BJ"): 5})
    _, _, (reserve,) = run([teapots()], ctx)
    steps = [
        teapots(), answer(reserve, ok=True),
        store_update(OrderAcceptedByStore, 1, location="WH-BJ"),
        store_update(OrderPreparing, 2, location="WH-BJ"),
        store_update(OrderReady, 3, location="WH-BJ"),
        store_update(ShipmentCreated, 4, shipment_id="s-1", carrier="SF", tracking_number="SF1"),
    ]  # fmt: skip
    state, log, commands = run(steps, ctx)
    assert types(log)[-4:] == ["OrderAcceptedByStore", "OrderPreparing", "OrderReady",
                               "ShipmentCreated"]  # fmt: skip
    (commit,) = [c for c in commands if isinstance(c, CommitStock)]
    assert commit.reservation_id == reserve.reservation_id
    assert state is not None and not state.held and reserve.reservation_id in state.committed


def test_a_store_update_the_lifecycle_does_not_allow_is_refused() -> None:
    state, _, _ = run([lunch()], context())
    shipped = store_update(ShipmentCreated, 1, shipment_id="s", carrier="SF", tracking_number="1")
    decision = orders.decide(state, shipped.model_copy(update={"order_id": "o-1"}), context())
    assert decision.refusal is not None and "ShipmentCreated" in decision.refusal


def declined(n: int, location: str, order_id: str = "o-ship") -> Any:
    return store_update(OrderDeclinedByStore, n, location=location, reason_code="BUSY",
                        reason="rush hour").model_copy(update={"order_id": order_id})  # fmt: skip


def test_a_store_that_declines_is_left_out_and_the_order_routed_again() -> None:
    ctx = context({("KETTLE-IRON", "WH-BJ"): 5, ("KETTLE-IRON", "WH-SH"): 5})
    _, _, (first,) = run([teapots()], ctx)
    state, log, commands = run([teapots(), answer(first, ok=True), declined(1, "WH-BJ")], ctx)
    assert types(log)[-2:] == ["OrderDeclinedByStore", "OrderRouted"]
    assert log[-2].actor == ACTOR and log[-2].channel == "webshop"  # details from the history
    assert log[-1].location == "WH-SH"
    release, reserve = commands[-2:]
    assert isinstance(release, ReleaseStock) and release.reservation_id == first.reservation_id
    assert isinstance(reserve, ReserveStock) and reserve.location == "WH-SH"
    assert state is not None and state.status.value == "routed" and not state.held


def test_a_platform_order_declined_by_its_store_is_rejected() -> None:
    state, _, _ = run([lunch()], context())  # placed at S01 on the platform: pinned there
    decision = orders.decide(state, declined(1, "S01", "o-1"), context())
    assert types(decision.to_log) == ["OrderDeclinedByStore", "OrderRejected"]
    (reason,) = decision.to_log[-1].reasons
    assert reason.code == "STORE_DECLINED" and "declined by S01" in reason.message
    assert "OrderReservationFailed" not in types(decision.to_log)  # no stock failure made up


def test_a_declined_order_no_store_is_left_for_is_rejected() -> None:
    state, log, _ = run([lunch(location_hint=None)], context())  # any store near may cook it
    declined_at = []
    for n in range(1, 10):
        assert state is not None
        if state.status.value != "prioritised":
            break
        declined_at.append(state.location)
        decision = orders.decide(state, declined(n, state.location or "", "o-1"), context())
        assert decision.refusal is None
        state = orders.fold(decision.to_log, state)
        log += decision.to_log
    assert state is not None and state.status.value == "rejected"
    assert len(declined_at) >= 3 and len(set(declined_at)) == len(declined_at)  # never again
    routed_to = [e.location for e in log if e.event_type == "OrderRouted"]
    assert routed_to == declined_at  # each store routed to once, then declined


def test_only_the_store_the_order_is_at_may_take_its_steps() -> None:
    state, _, _ = run([lunch()], context())
    assert state is not None and state.location == "S01"

    def step(kind: type, n: int, **fields: Any) -> orders.Decision:
        event = store_update(kind, n, **fields).model_copy(update={"order_id": "o-1"})
        return orders.decide(state, event, context())

    busy = {"reason_code": "BUSY", "reason": "rush hour"}
    for refused in (step(OrderAcceptedByStore, 1, location="S02"),
                    step(OrderDeclinedByStore, 1, location="S02", **busy)):  # fmt: skip
        assert refused.refusal is not None and "is at S01, not S02" in refused.refusal
    for n, (kind, fields) in enumerate(
        [(OrderAcceptedByStore, {}), (OrderPreparing, {}), (OrderReady, {}),
         (OrderPickedUp, {"picked_up_by": "courier"})], start=1,
    ):  # fmt: skip
        taken = step(kind, n, location="S01", **fields)
        assert taken.refusal is None, taken.refusal
        state = orders.fold(taken.to_log, state)
    assert state is not None and state.status.value == "picked_up"
    assert step(OrderCompleted, 6, location="S02").refusal is not None  # another store's
    done = step(OrderCompleted, 6, location="S01")
    assert done.refusal is None and types(done.to_log) == ["OrderCompleted"]
    assert step(OrderCompleted, 7).refusal is None  # one naming no store (a carrier's)


def with_policy(**policy: Any) -> Any:
    """The demo catalogue with an acceptance policy at every store."""
    stores = {k: v.model_copy(update=policy) for k, v in CATALOGUE.locations.items()}
    return replace(CATALOGUE, locations=stores)


def test_a_store_auto_accepts_its_channels_orders_with_the_promise_as_eta() -> None:
    ctx = context(catalogue=with_policy(auto_accept_channels=["webshop"]))
    state, log, _ = run([lunch()], ctx)
    assert types(log)[-2:] == ["OrderPrioritised", "OrderAcceptedByStore"]
    accepted = log[-1]
    assert accepted.actor == orders.AUTO_ACCEPT and accepted.location == "S01"
    assert accepted.estimated_ready_at == log[-2].promised_at is not None
    assert state is not None and state.status.value == "accepted_by_store"
    other = context(catalogue=with_policy(auto_accept_channels=["meituan"]))
    assert types(run([lunch()], other)[1])[-1] == "OrderPrioritised"  # waits for a person


def test_an_order_not_accepted_in_time_is_routed_elsewhere_or_cancelled() -> None:
    policy = {"accept_within_minutes": 8}
    ctx = context(catalogue=with_policy(**policy))
    state, _, _ = run([lunch(location_hint=None)], ctx)  # the nearest store cooks it
    assert state is not None and state.prioritised_at == NOW
    place = ctx.catalogue.locations["S01"]
    assert orders.acceptance_due(state, now=NOW + timedelta(minutes=7), place=place) is None
    due = orders.acceptance_due(state, now=NOW + timedelta(minutes=8), place=place)
    assert isinstance(due, OrderDeclinedByStore)
    assert (due.location, due.reason_code, due.actor) == ("S01", "NOT_ACCEPTED", orders.ACTOR)
    later = context(catalogue=ctx.catalogue, now=NOW + timedelta(minutes=8))
    decision = orders.decide(state, due, later)
    assert types(decision.to_log)[:2] == ["OrderDeclinedByStore", "OrderRouted"]
    assert decision.to_log[1].location not in ("S01", "")

    cancelling = with_policy(**policy, when_not_accepted="cancel")
    due = orders.acceptance_due(state, now=NOW + timedelta(minutes=9),
                                place=cancelling.locations["S01"])  # fmt: skip
    assert isinstance(due, OrderCancelled) and due.cancelled_by is CancelledBy.SYSTEM
    at_nine = context(catalogue=cancelling, now=NOW + timedelta(minutes=9))
    assert types(orders.decide(state, due, at_nine).to_log) == ["OrderCancelled"]


def test_an_escalation_that_comes_after_the_store_accepted_is_dropped_quietly() -> None:
    ctx = context(catalogue=with_policy(accept_within_minutes=8))
    state, _, _ = run([lunch()], ctx)
    assert state is not None
    due = orders.acceptance_due(state, now=NOW + timedelta(minutes=8),
                                place=ctx.catalogue.locations["S01"])  # fmt: skip
    assert due is not None
    accepted = store_update(OrderAcceptedByStore, 1, location="S01").model_copy(
        update={"order_id": "o-1"})  # fmt: skip
    state = orders.fold(orders.decide(state, accepted, ctx).to_log, state)
    assert state is not None and state.status.value == "accepted_by_store"
    late = orders.decide(state, due, ctx)
    assert (late.to_log, late.refusal) == ([], None)  # not a dead letter: nothing went wrong
    assert orders.acceptance_due(state, now=NOW + timedelta(hours=1),
                                 place=ctx.catalogue.locations["S01"]) is None  # fmt: skip


def test_an_escalation_is_taken_only_while_the_policy_still_calls_for_it() -> None:
    ctx = context(catalogue=with_policy(accept_within_minutes=8))
    state, _, _ = run([lunch()], ctx)
    assert state is not None
    due = orders.acceptance_due(state, now=NOW + timedelta(minutes=8),
                                place=ctx.catalogue.locations["S01"])  # fmt: skip
    assert due is not None
    nine = NOW + timedelta(minutes=9)
    off = orders.decide(state, due, context(catalogue=with_policy(), now=nine))  # turned off
    assert (off.to_log, off.refusal) == ([], None)
    early = orders.decide(state, due, context(catalogue=ctx.catalogue, now=NOW))  # a clock ahead
    assert (early.to_log, early.refusal) == ([], None)
    # After a revision the order is routed again (a new attempt): the old timer's is stale.
    revised = orders.fold(orders.decide(state, revision_of_lunch(), ctx).to_log, state)
    assert revised is not None and revised.status.value == "prioritised"
    stale = orders.decide(revised, due, context(catalogue=ctx.catalogue, now=nine))
    assert (stale.to_log, stale.refusal) == ([], None)
    taken = orders.decide(state, due, context(catalogue=ctx.catalogue, now=nine))
    assert types(taken.to_log)[0] == "OrderDeclinedByStore"


def revision_of_lunch() -> Any:
    """The lunch order revised by its channel: one more bowl."""
    original = lunch()
    lines = [line.model_copy(update={"quantity": line.quantity + 1}) for line in original.lines]
    return OrderModified.model_validate(
        original.model_dump(exclude={"event_id", "sequence", "lines", "total"})
        | {"event_id": "m-lunch", "sequence": 2, "revision": 1, "lines": lines,
           "total": original.total + sum(line.unit_price for line in original.lines)}
    )  # fmt: skip


def revision(n: int, quantity: int = 2) -> Any:
    from events.models import OrderModified

    return OrderModified(
        event_id=f"rev-{n}", order_id="o-ship", sequence=1, occurred_at=NOW, recorded_at=NOW,
        correlation_id="o-ship", actor=Actor(kind=ActorKind.CHANNEL, id="webshop"),
        channel="webshop", external_id="1001", revision=n,
        lines=[OrderLine(sku="KETTLE-IRON", name="铸铁茶壶", quantity=quantity, unit_price=45900)],
        total=45900 * quantity,
    )  # fmt: skip


def test_revisions_do_not_use_up_the_routing_attempts_of_stock_refusals() -> None:
    ctx = context({("KETTLE-IRON", "WH-BJ"): 50})
    inputs: list[Any] = [teapots()]
    for n in range(1, 5):  # reserved in full, then revised, four times over
        _, _, commands = run(inputs, ctx)
        pending = [c for c in commands if isinstance(c, ReserveStock)]
        inputs += [answer(pending[-1], ok=True), revision(n, quantity=n)]
    state, log, commands = run(inputs, ctx)
    reserve = [c for c in commands if isinstance(c, ReserveStock)][-1]
    state, log, _ = run([*inputs, answer(reserve, ok=True)], ctx)
    assert types(log)[-2:] == ["OrderReserved", "OrderPrioritised"]
    assert "OrderRejected" not in types(log) and "OrderReservationFailed" not in types(log)
    assert state is not None and state.attempt == 5 and state.failures == 0


def test_the_rejection_after_the_last_refusal_names_what_was_missing() -> None:
    stock = {("KETTLE-IRON", loc): 5 for loc in ("WH-BJ", "WH-SH", "WH-GZ")}
    ctx = context(stock)
    inputs: list[Any] = [teapots()]
    for _ in range(orders.MAX_ROUTING_ATTEMPTS):
        _, log, commands = run(inputs, ctx)
        if types(log)[-1] == "OrderRejected":
            break
        inputs.append(answer([c for c in commands if isinstance(c, ReserveStock)][-1], ok=False))
    _, log, _ = run(inputs, ctx)
    assert types(log)[-1] == "OrderRejected" and log[-1].reasons[0].code == "OUT_OF_STOCK"
    failures = [e for e in log if e.event_type == "OrderReservationFailed"]
    assert failures and all(f.missing for f in failures)  # never `missing: []`


def test_an_order_no_location_can_take_is_rejected_without_a_reservation_failure() -> None:
    far = lunch(address=Address(text="拉萨", latitude=29.65, longitude=91.1), location_hint=None)
    _, log, _ = run([far], context())
    assert types(log)[-2:] == ["OrderAccepted", "OrderRejected"], types(log)
    assert log[-1].reasons[0].code == "OUT_OF_RANGE"


def test_a_reservation_answer_is_never_answered_for_a_request_the_order_gave_up() -> None:
    ctx = context({("KETTLE-IRON", "WH-BJ"): 5, ("KETTLE-IRON", "WH-SH"): 5})
    _, _, (first,) = run([teapots()], ctx)
    # Refused, re-routed; then the first request's answer comes again (a redelivery).
    state, _, _ = run([teapots(), answer(first, ok=False)], ctx)
    late = answer(first, ok=True).model_copy(update={"event_id": "another-answer"})
    decision = orders.decide(state, late, ctx)
    assert decision.to_log == [] and decision.commands == [] and decision.refusal is None


def test_units_reserved_for_a_request_the_log_never_recorded_are_given_back() -> None:
    ctx = context({("KETTLE-IRON", "WH-BJ"): 5})
    _, full_log, (reserve,) = run([teapots()], ctx)
    # The ReserveStock left, OrderRouted did not reach the log; the ledger reserved it.
    cut = orders.fold(full_log[:2])
    stranger = answer(reserve, ok=True).model_copy(
        update={"reservation_id": "from-a-routing-that-was-lost"})  # fmt: skip
    decision = orders.decide(cut, stranger, ctx)
    assert [(c.event_type, c.reservation_id, c.reason) for c in decision.commands] == [
        ("ReleaseStock", "from-a-routing-that-was-lost", "STALE")]  # fmt: skip


def test_a_hold_that_runs_out_is_released_by_the_order_and_routed_again() -> None:
    ctx = context({("KETTLE-IRON", "WH-BJ"): 5})
    _, _, (reserve,) = run([teapots()], ctx)
    state, log, _ = run([teapots(), answer(reserve, ok=True)], ctx)
    assert state is not None and types(log)[-1] == "OrderPrioritised"
    assert state.hold_expires_at == log[2].occurred_at + orders.RESERVATION_TTL[OrderMode.SHIP]
    assert orders.expiry_due(state, now=state.hold_expires_at - timedelta(seconds=1)) is None
    later = state.hold_expires_at + timedelta(minutes=1)
    due = orders.expiry_due(state, now=later)
    assert due is not None and due.reason == "EXPIRED"
    after_ctx = context({("KETTLE-IRON", "WH-BJ"): 5}, now=later)
    decision = orders.decide(state, due, after_ctx)
    assert types(decision.to_log)[:2] == ["OrderReservationReleased", "OrderRouted"]
    released = [c for c in decision.commands if isinstance(c, ReleaseStock)]
    assert [(c.reservation_id, c.reason) for c in released] == [
        (reserve.reservation_id, "EXPIRED")]  # fmt: skip
    after = decision.after
    assert after is not None and after.failures == 0 and after.attempt == 2
    # The same command again (the timer repeats until it is logged) changes nothing more.
    assert orders.decide(after, due, after_ctx).to_log == []


def test_a_store_that_took_the_order_keeps_its_reservation_past_the_hold() -> None:
    ctx = context({("KETTLE-IRON", "WH-BJ"): 5})
    _, _, (reserve,) = run([teapots()], ctx)
    state, _, _ = run([teapots(), answer(reserve, ok=True),
                       store_update(OrderAcceptedByStore, 1, location="WH-BJ")], ctx)  # fmt: skip
    assert state is not None and state.hold_expires_at is not None
    assert orders.expiry_due(state, now=state.hold_expires_at + timedelta(days=9)) is None


def test_a_rejected_order_gives_back_everything_it_had_asked_for() -> None:
    lines = [OrderLine(sku="KETTLE-IRON", name="壶", quantity=1, unit_price=45900),
             OrderLine(sku="MUG-CERAMIC", name="杯", quantity=1, unit_price=6800)]  # fmt: skip
    order = teapots(lines=lines, total=45900 + 6800)
    ctx = context({("KETTLE-IRON", "WH-BJ"): 1, ("MUG-CERAMIC", "WH-BJ"): 1})
    _, _, reserves = run([order], ctx)
    kettle, mug = sorted(reserves, key=lambda c: c.sku)
    state, log, _ = run([order, answer(kettle, ok=True), answer(mug, ok=False)], ctx)
    assert types(log)[-1] == "OrderRejected"
    assert state is not None and not state.held
    assert set(state.released) == {kettle.reservation_id, mug.reservation_id}
