"""The pure return decisions (streams/returns.py): the return's steps, what may come back,
the refund (never more than was paid: hypothesis), and the restock an inspection leads to."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from events.models import (
    Actor,
    ActorKind,
    InspectedLine,
    OrderDelivered,
    OrderEvent,
    OrderLine,
    OrderRefunded,
    ReturnApproved,
    ReturnDenied,
    ReturnInspected,
    ReturnLine,
    ReturnReceived,
    ReturnRequested,
)
from streams.returns import (
    NEXT,
    OrderReturns,
    ReturnRefused,
    ReturnRules,
    Step,
    check_inspection,
    check_receipt,
    check_request,
    check_step,
    fold,
    paid_for,
    refund,
    restock,
    written_off,
)
from tests.factories import T0, received

DESK = Actor(kind=ActorKind.USER, id="desk")
RULES = ReturnRules(window_days=30, restocking_fee_bps=1000)
TEA = OrderLine(sku="TEA", name="茶", quantity=2, unit_price=3000, gross=6000, discount=600,
                total=5400)  # fmt: skip
MUG = OrderLine(sku="MUG", name="杯", quantity=3, unit_price=1000)


def then(kind: type[OrderEvent], n: int, **fields: Any) -> Any:
    return kind(
        event_id=f"e-{n}", order_id="o-1", sequence=n, occurred_at=T0 + timedelta(days=n),
        recorded_at=T0 + timedelta(days=n), correlation_id="o-1", actor=DESK,
        channel="webshop", external_id="1001", **fields,
    )  # fmt: skip


def delivered() -> list[OrderEvent]:
    order = received(lines=[TEA, MUG], delivery_fee=800, total=5400 + 3000 + 800)
    return [order, then(OrderDelivered, 2)]


def book_of(events: list[OrderEvent]) -> OrderReturns:
    return fold(events)["o-1"]


def requested(*lines: ReturnLine, reason: str = "changed mind") -> list[OrderEvent]:
    return [*delivered(), then(ReturnRequested, 3, return_id="R1", lines=list(lines),
                               reason=reason)]  # fmt: skip


def through_inspection(reason: str = "changed mind") -> list[OrderEvent]:
    lines = [ReturnLine(sku="TEA", quantity=1), ReturnLine(sku="MUG", quantity=2)]
    inspected = [
        InspectedLine(sku="TEA", quantity=1, condition="resellable", restock_location="WH-2"),
        InspectedLine(sku="MUG", quantity=2, condition="damaged"),
    ]
    return [
        *requested(*lines, reason=reason),
        then(ReturnApproved, 4, return_id="R1", return_location="WH-2"),
        then(ReturnReceived, 5, return_id="R1", lines=lines, condition="MIXED"),
        then(ReturnInspected, 6, return_id="R1", lines=inspected),
    ]


def test_a_return_goes_requested_approved_received_inspected_in_that_order() -> None:
    events = through_inspection()
    steps = [book_of(events[: i + 1]).returns.get("R1") for i in range(len(events))]
    assert [s.step.value if s else None for s in steps] == [
        None, None, "requested", "approved", "received", "inspected"]  # fmt: skip
    assert steps[-1] is not None and steps[-1].return_location == "WH-2"


def test_a_step_out_of_order_is_refused_naming_the_return() -> None:
    book = book_of(requested(ReturnLine(sku="TEA", quantity=1)))
    with pytest.raises(ReturnRefused) as caught:
        check_step(book, "R1", Step.RECEIVED)
    assert caught.value.field == "return_id" and "requested" in str(caught.value)
    with pytest.raises(ReturnRefused):
        check_step(book, "R2", Step.APPROVED)
    assert check_step(book, "R1", Step.APPROVED).return_id == "R1"


def test_denied_and_refunded_returns_take_no_further_step() -> None:
    assert NEXT[Step.DENIED] == frozenset() and NEXT[Step.REFUNDED] == frozenset()
    book = book_of([*requested(ReturnLine(sku="TEA", quantity=1)),
                    then(ReturnDenied, 4, return_id="R1", reason="used")])  # fmt: skip
    for step in Step:
        with pytest.raises(ReturnRefused):
            check_step(book, "R1", step)


def test_more_than_was_bought_cannot_be_returned() -> None:
    book = book_of(delivered())
    with pytest.raises(ReturnRefused) as caught:
        check_request(book, return_id="R1", lines=[ReturnLine(sku="MUG", quantity=4)],
                      now=T0, rules=RULES)  # fmt: skip
    assert caught.value.field == "lines" and "3 bought" in str(caught.value)
    with pytest.raises(ReturnRefused, match="not bought"):
        check_request(book, return_id="R1", lines=[ReturnLine(sku="PEN", quantity=1)],
                      now=T0, rules=RULES)  # fmt: skip


def test_a_line_cannot_be_returned_twice_unless_the_first_return_was_denied() -> None:
    events = requested(ReturnLine(sku="TEA", quantity=2))
    again = [ReturnLine(sku="TEA", quantity=1)]
    with pytest.raises(ReturnRefused, match="on their way already"):
        check_request(book_of(events), return_id="R2", lines=again, now=T0, rules=RULES)
    denied = [*events, then(ReturnDenied, 4, return_id="R1", reason="worn")]
    check_request(book_of(denied), return_id="R2", lines=again, now=T0, rules=RULES)


def test_a_return_past_the_window_after_delivery_is_refused() -> None:
    book = book_of(delivered())
    late = T0 + timedelta(days=2 + 31)
    with pytest.raises(ReturnRefused, match="too late"):
        check_request(book, return_id="R1", lines=[ReturnLine(sku="MUG", quantity=1)],
                      now=late, rules=RULES)  # fmt: skip


def test_more_received_than_the_return_asked_for_is_refused() -> None:
    events = [*requested(ReturnLine(sku="TEA", quantity=1)),
              then(ReturnApproved, 4, return_id="R1", return_location="WH-2")]  # fmt: skip
    with pytest.raises(ReturnRefused, match="asked for 1"):
        check_receipt(book_of(events), "R1", [ReturnLine(sku="TEA", quantity=2)])


def test_an_inspection_covers_what_was_received_and_resellable_goods_need_a_place() -> None:
    events = through_inspection()[:-1]
    ret = book_of(events).returns["R1"]
    with pytest.raises(ReturnRefused) as caught:
        unplaced = InspectedLine(sku="TEA", quantity=1, condition="resellable")
        check_inspection(ret, [unplaced, InspectedLine(sku="MUG", quantity=2, condition="damaged")])
    assert caught.value.field == "restock_location"
    with pytest.raises(ReturnRefused, match="received"):
        check_inspection(ret, [InspectedLine(sku="MUG", quantity=2, condition="damaged")])


def test_an_inspection_restocks_the_resellable_units_and_writes_off_the_damaged() -> None:
    inspected = through_inspection()[-1]
    assert isinstance(inspected, ReturnInspected)
    commands = restock(inspected, now=T0)
    assert [(c.sku, c.location, c.quantity, c.reference) for c in commands] == [
        ("TEA", "WH-2", 1, "return:R1")]  # fmt: skip
    assert restock(inspected, now=T0 + timedelta(hours=1))[0].event_id == commands[0].event_id
    assert written_off(inspected) == {"MUG": 2}


def test_a_partial_refund_is_the_lines_paid_share_less_the_restocking_fee() -> None:
    events = through_inspection()
    book = book_of(events)
    money = refund(book, book.returns["R1"], rules=RULES)
    # TEA: paid 5400 for 2 → 2700; MUG: 3000 for 3 → 2000; no shipping (not all came back).
    assert [(x.sku, x.quantity, x.amount) for x in money.lines] == [("MUG", 2, 2000),
                                                                     ("TEA", 1, 2700)]  # fmt: skip
    assert (money.shipping, money.restocking_fee, money.amount) == (0, 470, 4230)


def test_the_sellers_fault_refunds_shipping_and_charges_no_fee() -> None:
    book = book_of(through_inspection(reason="damaged"))
    money = refund(book, book.returns["R1"], rules=RULES)
    assert (money.shipping, money.restocking_fee, money.amount) == (800, 0, 2700 + 2000 + 800)


def test_a_refund_on_the_log_moves_the_return_and_counts_against_what_is_left() -> None:
    events = [*through_inspection(), then(OrderRefunded, 7, refund_id="refund:R1", amount=4230,
                                          currency="CNY", reason="x", return_id="R1")]  # fmt: skip
    book = book_of(events)
    assert book.returns["R1"].step is Step.REFUNDED and book.refunded == 4230


def test_a_line_without_a_stated_total_pays_gross_less_discount_plus_tax() -> None:
    line = OrderLine(sku="X", name="x", quantity=1, unit_price=1000, gross=1000, discount=100,
                     tax=50)  # fmt: skip
    assert paid_for(line) == 950
    assert paid_for(line.model_copy(update={"prices_include_tax": True})) == 900


money_lines = st.lists(
    st.tuples(
        st.sampled_from(["A", "B", "C"]),
        st.integers(1, 20),  # quantity
        st.integers(0, 10**9),  # gross
        st.integers(0, 10**9),  # discount
        st.integers(0, 10**8),  # tax
        st.booleans(),  # total stated
    ),
    min_size=1,
    max_size=6,
)


@given(
    lines=money_lines,
    delivery_fee=st.integers(0, 10**6),
    order_discount=st.integers(0, 10**9),
    refunded_before=st.integers(0, 10**9),
    returned_share=st.floats(0, 1),
    shipping=st.none() | st.booleans(),
    fee=st.none() | st.integers(0, 10**10),
    bps=st.integers(0, 10_000),
)
def test_a_refund_is_never_more_than_was_paid_and_never_negative(
    lines: list[tuple[str, int, int, int, int, bool]],
    delivery_fee: int,
    order_discount: int,
    refunded_before: int,
    returned_share: float,
    shipping: bool | None,
    fee: int | None,
    bps: int,
) -> None:
    bought = [
        OrderLine(sku=sku, name=sku, quantity=q, unit_price=0, gross=gross,
                  discount=min(discount, gross), tax=tax,
                  total=(gross - min(discount, gross) + tax) if stated else None)
        for sku, q, gross, discount, tax, stated in lines
    ]  # fmt: skip
    paid_lines = sum(paid_for(line) for line in bought)
    total = max(paid_lines + delivery_fee - order_discount, 0)
    order = received(lines=bought, delivery_fee=delivery_fee, total=total)
    units: dict[str, int] = {}
    for line in bought:
        units[line.sku] = units.get(line.sku, 0) + line.quantity
    back = [ReturnLine(sku=s, quantity=max(1, int(n * returned_share))) for s, n in units.items()]
    events: list[OrderEvent] = [
        order, then(OrderDelivered, 2),
        then(ReturnRequested, 3, return_id="R1", lines=back, reason="changed mind"),
        then(ReturnApproved, 4, return_id="R1", return_location="WH"),
        then(ReturnReceived, 5, return_id="R1", lines=back, condition="RESELLABLE"),
    ]  # fmt: skip
    book = book_of(events)
    book = OrderReturns(**{**book.__dict__, "refunded": min(refunded_before, total)})
    money = refund(book, book.returns["R1"], rules=ReturnRules(restocking_fee_bps=bps),
                   shipping=shipping, restocking_fee=fee)  # fmt: skip
    assert isinstance(money.amount, int)
    assert 0 <= money.amount <= total - book.refunded
    for refunded_line in money.lines:
        paid = sum(paid_for(x) for x in bought if x.sku == refunded_line.sku)
        assert 0 <= refunded_line.amount <= paid
    assert 0 <= money.restocking_fee <= sum(x.amount for x in money.lines)


@given(st.lists(st.tuples(st.sampled_from(["TEA", "MUG"]), st.integers(1, 4),
                          st.booleans()), max_size=8))  # fmt: skip
def test_no_sequence_of_requests_returns_more_than_was_bought(
    asks: list[tuple[str, int, bool]],
) -> None:
    events = delivered()
    n = len(events)
    for i, (sku, quantity, deny) in enumerate(asks):
        lines = [ReturnLine(sku=sku, quantity=quantity)]
        try:
            check_request(book_of(events), return_id=f"R{i}", lines=lines, now=T0, rules=RULES)
        except ReturnRefused:
            continue
        n += 1
        events.append(then(ReturnRequested, n, return_id=f"R{i}", lines=lines, reason="r"))
        if deny:
            n += 1
            events.append(then(ReturnDenied, n, return_id=f"R{i}", reason="no"))
    book = book_of(events)
    claimed = book.claimed()
    assert all(claimed.get(sku, 0) <= n for sku, n in book.bought().items())
