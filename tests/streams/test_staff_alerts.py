"""Which staff hear of what (streams/staff_alerts.py): pure decisions, no broker."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from events.models import (
    Actor,
    ActorKind,
    CancelledBy,
    Event,
    FraudSignal,
    LowStockAlerted,
    OrderCancelled,
    OrderDelivered,
    OrderHeld,
    OrderLine,
    OrderMode,
    OrderModified,
    OrderPrioritised,
    ShipmentCreated,
    ShipmentStatusUpdated,
)
from events.staff_alerts import AlertKind, SinkKind, alert_key
from streams.staff_alerts import AlertState, StaffAlertsConfig, decide
from tests.factories import T0, received

SYSTEM = Actor(kind=ActorKind.SYSTEM, id="worker")
CONFIG = StaffAlertsConfig.model_validate(
    {
        "stores": {
            "S03": {"wecom": "KEY-S03", "printer": "10.0.0.5:9100", "sms": ["+8613800000000"]},
            "S04": {"printer": "10.0.0.6:9100"},
        },
        "reviewers": {"wecom": "KEY-REVIEW"},
        "buyers": {
            "sms": ["+8613900000000"],
            "locations": {"W01": {"wecom": "KEY-WAREHOUSE"}},
        },
    }
)
SINCE = T0 - timedelta(minutes=15)


def _follow(kind: type[Event], seq: int, order_id: str = "o-1", **fields: Any) -> Event:
    return kind.model_validate(
        dict(
            event_id=f"{kind.__name__}-{order_id}-{seq}", order_id=order_id, sequence=seq,
            occurred_at=T0, recorded_at=T0, correlation_id=order_id, actor=SYSTEM,
            channel="webshop", external_id="1001",
        ) | fields
    )  # fmt: skip


def _prioritised(location: str = "S03", **fields: Any) -> Event:
    return _follow(OrderPrioritised, 3, location=location, score=10, **fields)


def _low_stock(location: str) -> LowStockAlerted:
    return LowStockAlerted(
        event_id=f"low-{location}", sku="FLOUR-25KG", location=location, sequence=9,
        occurred_at=T0, recorded_at=T0, correlation_id="c", actor=SYSTEM,
        available=2, threshold=5, reorder_quantity=20,
    )  # fmt: skip


def _decide(state: AlertState, *events: Event) -> list[Any]:
    alerts: list[Any] = []
    for event in events:
        alerts += decide(state, event, config=CONFIG, since=SINCE)
    return alerts


def test_an_order_reaching_a_store_alerts_each_of_its_sinks_with_its_lines() -> None:
    state = AlertState()
    order = received(mode=OrderMode.DINE_IN, table="7", requested_at=T0 + timedelta(minutes=30))
    alerts = _decide(state, order, _prioritised())
    assert sorted(a.sink_kind for a in alerts) == [SinkKind.PRINTER, SinkKind.SMS, SinkKind.WECOM]
    assert {a.sink.rsplit(".", 1)[0] for a in alerts} == {"stores.S03", "stores.S03.sms"}
    for alert in alerts:
        assert alert.kind is AlertKind.NEW_ORDER and alert.location == "S03"
        assert (alert.channel, alert.external_id, alert.table) == ("webshop", "1001", "7")
        assert alert.mode is OrderMode.DINE_IN and alert.due_at == T0 + timedelta(minutes=30)
        assert [(line.name, line.quantity) for line in alert.lines] == [("水饺", "2")]
        assert alert.key == alert_key(cause_event_id=alert.cause_event_id, sink=alert.sink)


def test_a_ticket_shows_the_lines_as_last_modified_and_no_personal_data() -> None:
    state = AlertState()
    modified = _follow(
        OrderModified, 2, revision=2, total=0,
        lines=[OrderLine(sku="BEEF-1", name="", quantity=1, unit_price=0, options=["少辣"]),
               OrderLine(sku="PORK", name="猪肉", quantity=2, unit="kg", unit_price=0,
                         quantity_millionths=1_500_000)],
    )  # fmt: skip
    [printed] = [a for a in _decide(state, received(), modified, _prioritised("S04"))]
    assert [(x.name, x.quantity, x.options) for x in printed.lines] == [
        ("BEEF-1", "1", ["少辣"]),
        ("猪肉", "1.5kg", []),
    ]
    dumped = printed.model_dump_json()
    assert "王伟" not in dumped and "13800000000" not in dumped and "Nanjing" not in dumped
    assert "KEY-S03" not in dumped


def test_a_store_without_configured_sinks_gets_nothing() -> None:
    assert _decide(AlertState(), received(), _prioritised("S99")) == []


def test_a_held_order_goes_to_the_reviewers_only() -> None:
    held = _follow(
        OrderHeld, 2, risk_score=80, threshold=60,
        signals=[FraudSignal(rule="VELOCITY_PHONE", points=50, detail="5 orders in 10 min")],
    )  # fmt: skip
    [alert] = _decide(AlertState(), received(), held)
    assert (alert.sink, alert.kind, alert.risk_score, alert.threshold) == (
        "reviewers.wecom",
        AlertKind.HELD,
        80,
        60,
    )
    assert alert.signals == ["VELOCITY_PHONE +50: 5 orders in 10 min"]


def test_low_stock_goes_to_its_locations_buyers_else_to_all_buyers() -> None:
    [warehouse] = _decide(AlertState(), _low_stock("W01"))
    assert warehouse.sink == "buyers.locations.W01.wecom"
    [store] = _decide(AlertState(), _low_stock("S03"))
    assert store.sink.startswith("buyers.sms.") and store.sink_kind is SinkKind.SMS
    assert (store.sku, store.available, store.threshold, store.reorder_quantity) == (
        "FLOUR-25KG",
        2,
        5,
        20,
    )


def test_events_before_the_window_alert_nobody_but_are_folded() -> None:
    state = AlertState()
    old = T0 - timedelta(hours=20)
    order = received(occurred_at=old, recorded_at=old)
    assert _decide(state, order, _prioritised(occurred_at=old, recorded_at=old)) == []
    assert "o-1" in state.orders  # its lines are there for a later event
    assert len(_decide(state, _prioritised(event_id="again", sequence=4))) == 3


def test_orders_leave_the_fold_when_they_end_and_the_fold_is_bounded() -> None:
    state = AlertState(max_orders=3)
    cancelled = _follow(
        OrderCancelled, 2, cancelled_by=CancelledBy.CUSTOMER, reason_code="X", reason="x"
    )
    _decide(state, received(), cancelled)
    assert state.orders == {}
    for n in range(5):
        _decide(state, received(order_id=f"o-{n}", event_id=f"e-{n}"))
    assert list(state.orders) == ["o-2", "o-3", "o-4"]


def test_a_bad_file_names_the_field() -> None:
    with pytest.raises(ValidationError, match=r"stores\.S03\.printer"):
        StaffAlertsConfig.model_validate({"stores": {"S03": {"printer": "no-port"}}})
    with pytest.raises(ValidationError, match=r"reviewers\.sms"):
        StaffAlertsConfig.model_validate({"reviewers": {"sms": ["138"]}})


def _shipped(carrier: str, number: str, location: str, seq: int) -> Event:
    return _follow(ShipmentCreated, seq, shipment_id=f"{carrier}:{number}", carrier=carrier,
                   tracking_number=number, location=location)  # fmt: skip


def _carrier_said(status: str, number: str = "SF1", carrier: str = "sf", seq: int = 9) -> Event:
    return _follow(
        ShipmentStatusUpdated, seq, event_id=f"st-{number}-{status}",
        shipment_id=f"{carrier}:{number}", tracking_number=number, status=status,
        carrier=carrier, carrier_status="33",
        description="收件人电话无法接通", place="深圳南山",
    )  # fmt: skip


def test_a_parcel_in_trouble_alerts_the_location_it_shipped_from() -> None:
    state = AlertState()
    alerts = _decide(state, received(mode=OrderMode.SHIP), _shipped("sf", "SF1", "S03", 5),
                     _shipped("jdl", "JD2", "S04", 6))  # fmt: skip
    assert alerts == []
    at_s03 = _decide(state, _carrier_said("exception"))
    assert sorted(a.sink for a in at_s03)[0] == "stores.S03.printer"
    assert {a.sink.split(".")[1] for a in at_s03} == {"S03"} and len(at_s03) == 3
    for alert in at_s03:
        assert alert.kind is AlertKind.SHIPMENT_EXCEPTION and alert.location == "S03"
        assert (alert.channel, alert.external_id) == ("webshop", "1001")
        assert (alert.carrier, alert.tracking_number) == ("sf", "SF1")
        assert (alert.shipment_status, alert.carrier_status) == ("exception", "33")
        assert (alert.description, alert.place) == ("收件人电话无法接通", "深圳南山")
    # The other parcel of the split order went from S04: its printer, only.
    [back] = _decide(state, _carrier_said("returned_to_sender", "JD2", "jdl", seq=10))
    assert (back.sink, back.shipment_status) == ("stores.S04.printer", "returned_to_sender")


def test_a_parcel_on_its_way_alerts_nobody_and_a_delivered_order_leaves_the_fold() -> None:
    state = AlertState()
    _decide(state, received(mode=OrderMode.SHIP), _shipped("sf", "SF1", "S03", 5))
    for status in ("picked_up", "in_transit", "out_for_delivery", "delivered"):
        assert _decide(state, _carrier_said(status)) == []
    assert state.orders["o-1"].shipped_from == {"sf:SF1": "S03"}
    _decide(state, _follow(OrderDelivered, 11))
    assert state.orders == {}
    assert _decide(state, _carrier_said("exception", seq=12)) == []  # nothing known of it now


def test_a_parcel_from_a_location_without_sinks_or_unknown_alerts_nobody() -> None:
    state = AlertState()
    _decide(state, received(mode=OrderMode.SHIP), _shipped("sf", "SF1", "W09", 5))
    assert _decide(state, _carrier_said("exception")) == []
    assert _decide(state, _carrier_said("exception", "SF404")) == []
