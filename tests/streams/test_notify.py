"""Which messages customers get, and when (streams/notify.py): pure decisions, no broker."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from events.models import (
    Actor,
    ActorKind,
    CancelledBy,
    CourierStatusUpdated,
    Customer,
    Event,
    OrderAcceptedByStore,
    OrderCancelled,
    OrderDelivered,
    OrderMode,
    OrderPickedUp,
    OrderPrioritised,
    OrderReady,
    OrderRefunded,
    ShipmentCreated,
)
from events.notifications import MessageChannel, MessageKind, Notice, notice_key
from streams.notify import (
    Action,
    NotifyState,
    Policy,
    Preferences,
    QuietHours,
    decide,
    forget,
    schedule,
)
from tests.factories import T0, received

COOK = Actor(kind=ActorKind.USER, id="cook")
KEY = "c0123456789abcdef01234567"
SHANGHAI = ZoneInfo("Asia/Shanghai")
POLICY = Policy(
    quiet_hours=QuietHours(time(22), time(8)),
    zone=SHANGHAI,
    rate_limit=3,
    rate_window=timedelta(hours=1),
    max_age=timedelta(days=1),
)


def _customer(**fields: Any) -> Customer:
    return Customer(name="王伟", email="wang@example.com", key=KEY, **fields)


def _follow(kind: type[Event], seq: int, *, order_id: str = "o-1", **fields: Any) -> Any:
    envelope = dict(
        event_id=f"{kind.__name__}-{order_id}-{seq}", order_id=order_id, sequence=seq,
        occurred_at=T0 + timedelta(minutes=seq), recorded_at=T0 + timedelta(minutes=seq),
        correlation_id=order_id, actor=COOK, channel="webshop", external_id="1001",
    )  # fmt: skip
    return kind.model_validate(envelope | fields)


def _state(mode: OrderMode = OrderMode.DELIVERY, **prefs: Preferences) -> NotifyState:
    state = NotifyState(locale="zh-CN", preferences=prefs)
    decide(state, received(mode=mode, customer=_customer()))
    return state


def _kinds(state: NotifyState, *events: Event) -> list[MessageKind]:
    return [m.notice.kind for e in events for m in decide(state, e)]


def _notice(kind: MessageKind = MessageKind.CONFIRMED, *, at: datetime = T0) -> Notice:
    return Notice(
        idempotency_key="k", kind=kind, channel=MessageChannel.EMAIL, locale="en",
        cause_event_id="e", cause_type="X", caused_at=at, order_id="o-1",
        order_channel="webshop", external_id="1001", customer_key=KEY,
    )  # fmt: skip


def test_acceptance_confirms_with_the_stores_estimate_and_the_address_opened() -> None:
    state = _state()
    eta = T0 + timedelta(minutes=25)
    [message] = decide(
        state, _follow(OrderAcceptedByStore, 2, location="S01", estimated_ready_at=eta)
    )
    notice = message.notice
    assert (notice.kind, notice.eta, notice.locale, notice.location) == (
        MessageKind.CONFIRMED, eta, "zh-CN", "S01",
    )  # fmt: skip
    assert message.contact is not None and message.contact.email == "wang@example.com"
    assert notice.customer_key == KEY and "wang" not in notice.model_dump_json()
    assert notice.idempotency_key == notice_key(
        kind=MessageKind.CONFIRMED,
        channel=MessageChannel.EMAIL,
        cause_event_id=notice.cause_event_id,
    )


def test_acceptance_without_an_estimate_takes_the_prioritised_one() -> None:
    state = _state()
    eta = T0 + timedelta(minutes=30)
    assert (
        _kinds(state, _follow(OrderPrioritised, 2, location="S01", score=1, estimated_ready_at=eta))
        == []
    )
    [message] = decide(state, _follow(OrderAcceptedByStore, 3, location="S01"))
    assert message.notice.eta == eta


def test_an_estimate_that_moves_after_confirmation_is_an_eta_change_a_small_move_is_not() -> None:
    state = _state()
    eta = T0 + timedelta(minutes=25)
    decide(state, _follow(OrderAcceptedByStore, 2, location="S01", estimated_ready_at=eta))
    nudged = _follow(
        OrderPrioritised, 3, location="S01", score=1, estimated_ready_at=eta + timedelta(minutes=5)
    )
    assert _kinds(state, nudged) == []
    later = eta + timedelta(minutes=20)
    [moved] = decide(
        state, _follow(OrderPrioritised, 4, location="S01", score=1, estimated_ready_at=later)
    )
    assert (moved.notice.kind, moved.notice.eta, moved.notice.previous_eta) == (
        MessageKind.ETA_CHANGED, later, eta,
    )  # fmt: skip


def test_ready_is_told_to_pickup_customers_only() -> None:
    assert _kinds(_state(OrderMode.PICKUP), _follow(OrderReady, 2, location="S01")) == [
        MessageKind.READY_FOR_PICKUP
    ]
    assert _kinds(_state(OrderMode.DELIVERY), _follow(OrderReady, 2, location="S01")) == []


def test_a_courier_pickup_is_out_for_delivery_a_customer_collecting_is_nothing() -> None:
    state = _state(OrderMode.DELIVERY)
    [message] = decide(state, _follow(OrderPickedUp, 2, location="S01", picked_up_by="李师傅"))
    assert (message.notice.kind, message.notice.courier) == (MessageKind.OUT_FOR_DELIVERY, "李师傅")
    [derived] = decide(state, _follow(OrderPickedUp, 3, location="S01", picked_up_by="courier"))
    assert derived.notice.courier is None  # a platform rider: no name on the log
    collected = _follow(OrderPickedUp, 2, location="S01", picked_up_by="customer")
    assert _kinds(_state(OrderMode.PICKUP), collected) == []


def test_a_platform_riders_pickup_report_is_told_once_by_the_pickup_it_causes() -> None:
    state = _state(OrderMode.DELIVERY)
    report = _follow(CourierStatusUpdated, 2, status="picked_up", platform_status="meituan:20")
    assert _kinds(state, report) == []
    derived = _follow(OrderPickedUp, 3, location="S01", picked_up_by="courier")
    assert _kinds(state, derived) == [MessageKind.OUT_FOR_DELIVERY]


def test_shipment_delivery_cancellation_and_refund_each_have_their_message() -> None:
    state = _state(OrderMode.SHIP)
    state.tracking_url = "https://track.example/{carrier}/{tracking_number}"
    shipped = _follow(ShipmentCreated, 2, shipment_id="s1", carrier="SF", tracking_number="SF 1/2")
    [message] = decide(state, shipped)
    assert message.notice.kind is MessageKind.SHIPPED
    assert message.notice.tracking_url == "https://track.example/SF/SF%201%2F2"
    assert _kinds(state, _follow(OrderDelivered, 3)) == [MessageKind.DELIVERED]
    cancelled = _follow(
        OrderCancelled, 4, cancelled_by=CancelledBy.MERCHANT, reason_code="BUSY", reason="太忙"
    )
    [told] = decide(state, cancelled)
    assert (told.notice.kind, told.notice.reason) == (MessageKind.CANCELLED, "太忙")
    refund = _follow(OrderRefunded, 5, refund_id="r1", amount=1250, currency="CNY", reason="x")
    [money] = decide(state, refund)
    assert (money.notice.kind, money.notice.amount, money.notice.currency) == (
        MessageKind.REFUNDED, 1250, "CNY",
    )  # fmt: skip


def test_a_customer_without_an_email_address_gets_no_message() -> None:
    state = NotifyState()
    decide(state, received(customer=Customer(name="王伟", phone="+8613800000000")))
    assert _kinds(state, _follow(OrderAcceptedByStore, 2, location="S01")) == []


def test_a_forgotten_customer_gets_a_message_without_an_address() -> None:
    state = NotifyState()
    sealed = received(customer=Customer(key=KEY), sealed="pii1:k:" + KEY + ":AAAA")
    decide(state, sealed)
    [message] = decide(state, _follow(OrderAcceptedByStore, 2, location="S01"))
    assert message.contact is None  # recorded skipped by the notifier
    # Forgotten while the order is in flight: its next message has no address either.
    state = _state()
    assert forget(state, [KEY]) == 1
    [later] = decide(state, _follow(OrderAcceptedByStore, 2, location="S01"))
    assert later.contact is None


def test_the_customers_locale_and_channels_are_taken() -> None:
    prefs = Preferences(locale="en", channels=(MessageChannel.EMAIL, MessageChannel.SMS))
    state = NotifyState(locale="zh-CN", preferences={KEY: prefs})
    decide(state, received(customer=_customer(phone="+8613800000000")))
    messages = decide(state, _follow(OrderAcceptedByStore, 2, location="S01"))
    assert [(m.notice.channel, m.notice.locale) for m in messages] == [
        (MessageChannel.EMAIL, "en"), (MessageChannel.SMS, "en"),
    ]  # fmt: skip
    assert len({m.notice.idempotency_key for m in messages}) == 2


def test_the_same_event_read_twice_names_the_same_message() -> None:
    event = _follow(OrderAcceptedByStore, 2, location="S01")
    first = decide(_state(), event)[0].notice.idempotency_key
    assert decide(_state(), event)[0].notice.idempotency_key == first


# ---------------------------------------------------------------- when


def test_an_opted_out_customer_is_skipped() -> None:
    verdict = schedule(
        _notice(), preferences=Preferences(opted_out=True), recent=[], policy=POLICY, now=T0
    )
    assert (verdict.action, verdict.reason) == (Action.SKIP, "the customer opted out")


def test_a_message_in_quiet_hours_waits_for_their_end() -> None:
    night = datetime(2026, 11, 25, 23, 30, tzinfo=SHANGHAI).astimezone(UTC)
    verdict = schedule(
        _notice(at=night), preferences=Preferences(), recent=[], policy=POLICY, now=night
    )
    assert verdict.action is Action.DEFER
    assert verdict.until == datetime(2026, 11, 26, 8, 0, tzinfo=SHANGHAI)
    morning = datetime(2026, 11, 26, 8, 0, tzinfo=SHANGHAI).astimezone(UTC)
    assert schedule(_notice(at=night), preferences=Preferences(), recent=[], policy=POLICY,
                    now=morning).action is Action.SEND  # fmt: skip


def test_ready_and_out_for_delivery_are_sent_in_quiet_hours() -> None:
    night = datetime(2026, 11, 25, 23, 30, tzinfo=SHANGHAI).astimezone(UTC)
    for kind in (MessageKind.READY_FOR_PICKUP, MessageKind.OUT_FOR_DELIVERY):
        verdict = schedule(
            _notice(kind, at=night), preferences=Preferences(), recent=[], policy=POLICY, now=night
        )
        assert verdict.action is Action.SEND


@pytest.mark.parametrize(
    ("text", "inside", "outside"),
    [("22:00-08:00", [time(23), time(0), time(7, 59)], [time(8), time(12), time(21, 59)]),
     ("13:00-14:00", [time(13), time(13, 59)], [time(14), time(12, 59)])],
)  # fmt: skip
def test_quiet_hours_may_run_past_midnight(
    text: str, inside: list[time], outside: list[time]
) -> None:
    quiet = QuietHours.parse(text)
    assert quiet is not None
    assert all(quiet.contains(t) for t in inside) and not any(quiet.contains(t) for t in outside)
    assert QuietHours.parse("") is None
    with pytest.raises(ValueError):
        QuietHours.parse("22")


def test_over_the_rate_limit_a_message_waits_for_a_slot_and_an_eta_change_is_dropped() -> None:
    recent = [T0 - timedelta(minutes=m) for m in (50, 20, 10)]
    held = schedule(_notice(), preferences=Preferences(), recent=recent, policy=POLICY, now=T0)
    assert (held.action, held.until) == (Action.DEFER, T0 + timedelta(minutes=10))
    dropped = schedule(
        _notice(MessageKind.ETA_CHANGED),
        preferences=Preferences(),
        recent=recent,
        policy=POLICY,
        now=T0,
    )
    assert (dropped.action, dropped.reason) == (Action.SKIP, "rate limited")
    older = [T0 - timedelta(minutes=m) for m in (70, 20, 10)]  # one out of the window
    assert schedule(_notice(), preferences=Preferences(), recent=older, policy=POLICY,
                    now=T0).action is Action.SEND  # fmt: skip


def test_a_message_past_the_max_age_expires() -> None:
    old = _notice(at=T0 - timedelta(days=2))
    verdict = schedule(old, preferences=Preferences(), recent=[], policy=POLICY, now=T0)
    assert verdict.action is Action.EXPIRE
