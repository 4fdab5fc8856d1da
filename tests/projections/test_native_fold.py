"""The native fold (native/avro_codec/src/projection/, wired by projections/native_fold.py)
against the Python reference (`projections.orders.fold`, `projections.stock.fold`).

- Without Kafka or ClickHouse: messages go straight to a native fold, its RowBinary is parsed.
  `order_events.payload` must be byte for byte pydantic's `model_dump_json()` (tricky floats,
  strings, datetimes; every order event type; hypothesis), and every table of a batch must
  hold the rows the Python fold makes of the same messages, rejected messages the same
  reasons — for logs that cover every event type, re-sent and stale events, older schema
  versions, corrupt bytes and events on the wrong topic, with fold states forgotten and read
  back in between.
- Integration, on both ClickHouse backends: one published log projected by
  `Projector(native=False)` into one database and by `Projector(native=True)` into another;
  every read model's content is the same.
"""

from __future__ import annotations

import io
import math
import re
import struct
import types
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from enum import Enum
from typing import Annotated, Any, Union, get_args, get_origin

import pytest
from confluent_kafka import Producer
from fastavro import schemaless_writer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import AwareDatetime, BaseModel

import projections.projector as projector_module
from events.bounds import out_of_bounds
from events.codec import AvroCodec, CodecError, LocalSchemaIds
from events.models import (
    ORDER_EVENTS,
    STOCK_COMMANDS,
    STOCK_EVENTS,
    Actor,
    ActorKind,
    Address,
    CancelledBy,
    CommitStock,
    Customer,
    DeadLetter,
    Event,
    ExpiryBatchAdded,
    ExpiryBatchExpired,
    FraudSignal,
    FulfilmentGroup,
    LineQuantity,
    LowStockAlerted,
    OrderAccepted,
    OrderAcceptedByStore,
    OrderCancelled,
    OrderCompleted,
    OrderDelivered,
    OrderEvent,
    OrderHeld,
    OrderLine,
    OrderMode,
    OrderModified,
    OrderPartiallyReserved,
    OrderPickedUp,
    OrderPreparing,
    OrderPrioritised,
    OrderReady,
    OrderReceived,
    OrderRefunded,
    OrderRejected,
    OrderReservationFailed,
    OrderReservationReleased,
    OrderReserved,
    OrderRouted,
    PaymentStatus,
    PlatformCiphertext,
    Product,
    ProductUpdated,
    RejectionReason,
    ReleaseStock,
    ReserveStock,
    ReturnLine,
    ReturnReceived,
    ReturnRequested,
    ReviewApproved,
    ReviewRejected,
    SafetyStockSet,
    ShipmentCreated,
    ShipmentStatusUpdated,
    StockAdjusted,
    StockCommitted,
    StockCounted,
    StockEvent,
    StockReceived,
    StockReleased,
    StockReservationRefused,
    StockReserved,
)
from events.privacy import PrivateCodec, subject_of
from infra.keystore import MemoryKeys
from infra.settings import Settings
from projections import native_fold, orders, stock
from projections.native_fold import AVAILABLE, COLUMNS, native_projection
from projections.orders import OrderRow, Position, event_row, seconds
from projections.privacy import AnalystView
from projections.projector import BatchStats, Projector
from projections.schema import MIGRATIONS, ORDERS_COLUMNS, READ_MODEL_NAMES, READ_MODELS
from projections.store import ClickHouseStore, Row, connect
from tests.projections.conftest import drop, physical_rows
from tests.projections.scenario import build

ORDERS_TOPIC, STOCK_TOPIC = "o", "s"
CODEC = AvroCodec()
SCHEMA_IDS = LocalSchemaIds()
SYSTEM = Actor(kind=ActorKind.SYSTEM, id="oms")
REVIEWER = Actor(kind=ActorKind.USER, id="reviewer-李")
T1 = datetime(2026, 11, 21, 8, 0, 0, 250000, tzinfo=UTC)


def require_native() -> None:
    """The native fold must be there: a missing build fails the test, it never skips it."""
    if not AVAILABLE:
        pytest.fail(
            "the native fold (orderstream_avro.Projection) is not built into .venv: run "
            "`make` (make test builds it; it needs cargo)",
            pytrace=False,
        )


# ---------------------------------------------------------------- tricky values

FLOATS = [
    1.0, 0.1, 1e-7, 1e16, 1.2345678901234568e20, -0.0, 0.0, 31.2344, 121.4737, 1e15, 1e-5,
    1e-4, 123456.789, 9007199254740993.0, 5e-324, 2.5e-308, 1.7976931348623157e308, 1e21,
    1e22, -1.5, math.nan, math.inf, -math.inf,
]  # fmt: skip
STRINGS = [
    "", "plain", 'quote " and \\ backslash \\"', "ctl \x01 nul \x00 us \x1f",
    "nl \n tab \t cr \r bs \x08 ff \x0c", "del \x7f", "中文", "emoji 😀 flag 🇨🇳",
    "separators \u2028 \u2029", "</script> & <b> 'single'", "e\u0301 \ufeff bom",
    "x" * 200, "long " + "y" * 20_000 + " 😀",
]  # fmt: skip
# Envelope times (occurred_at, recorded_at) must fit ClickHouse's DateTime (UInt32 seconds).
ENVELOPE_TIMES = [
    datetime(2026, 11, 21, 8, 0, 0, tzinfo=UTC),
    datetime(2026, 11, 21, 8, 0, 0, 250000, tzinfo=UTC),
    datetime(2026, 11, 21, 8, 0, 0, 1, tzinfo=UTC),
    datetime(2026, 11, 21, 8, 0, 0, 999999, tzinfo=UTC),
    datetime(1970, 1, 1, tzinfo=UTC),
    datetime(2106, 2, 7, 6, 28, 15, 999999, tzinfo=UTC),
]
# Times that only appear in the payload (placed_at of an order event, requested_at, ...).
PAYLOAD_TIMES = [
    *ENVELOPE_TIMES,
    datetime(1, 1, 1, tzinfo=UTC),
    datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
]


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _optional_member(annotation: Any) -> Any | None:
    if get_origin(annotation) in (Union, types.UnionType):
        members = [a for a in get_args(annotation) if a is not type(None)]
        if len(members) == 1:
            return members[0]
    return None


def minimal(annotation: Any) -> Any:
    """The plainest value of a type: optional fields left to their default (None), lists
    empty, the first enum member."""
    if get_origin(annotation) is Annotated:
        return minimal(get_args(annotation)[0])
    if get_origin(annotation) is list:
        return []
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return next(iter(annotation))
    if _is_model(annotation):
        return annotation.model_validate(
            {
                n: minimal(f.annotation)
                for n, f in annotation.model_fields.items()
                if f.is_required()
            }
        )
    simple: dict[Any, Any] = {str: "s", int: 1, float: 0.5, bool: False, bytes: b"",
                              date: date(2026, 1, 1), datetime: T1, AwareDatetime: T1}  # fmt: skip
    return simple[annotation]


def order_event(
    model: type[OrderEvent],
    order_id: str,
    sequence: int,
    at: datetime,
    *,
    channel: str = "webshop",
    actor: Actor = SYSTEM,
    **fields: Any,
) -> OrderEvent:
    """An order event with the envelope given and every other required field at its
    `minimal` value unless given."""
    values = {
        n: minimal(f.annotation)
        for n, f in model.model_fields.items()
        if f.is_required() and n not in fields
    }
    values.update(
        event_id=f"{order_id}-{sequence}", sequence=sequence, occurred_at=at, recorded_at=at,
        correlation_id=order_id, actor=actor, order_id=order_id, channel=channel,
        external_id=f"ext-{order_id}", **fields,
    )  # fmt: skip
    return model.model_validate(values)


def stock_event(
    model: type[StockEvent], sku: str, location: str, sequence: int, at: datetime, **fields: Any
) -> StockEvent:
    values = {
        n: minimal(f.annotation)
        for n, f in model.model_fields.items()
        if f.is_required() and n not in fields
    }
    values.update(
        event_id=f"{sku}@{location}-{sequence}", sequence=sequence, occurred_at=at,
        recorded_at=at, correlation_id=f"{sku}@{location}", actor=SYSTEM, sku=sku,
        location=location, **fields,
    )  # fmt: skip
    return model.model_validate(values)


def framed_with(schema_id: int, event: Event) -> bytes:
    """`event` as a producer still on schema `schema_id` (an older version) writes it."""
    registered = SCHEMA_IDS.by_id(schema_id)
    assert registered.name == type(event).__name__
    record = event.model_dump()
    record.update(event_type=registered.name, schema_version=registered.version)
    out = io.BytesIO()
    out.write(struct.pack(">bI", 0, schema_id))
    schemaless_writer(out, registered.parsed, record)
    data = out.getvalue()
    assert CODEC.decode(data) == event, "the older schema cannot carry this event unchanged"
    return data


def with_raw_times(event: Event, **micros: int) -> bytes:
    """`event` in its current schema with some timestamp/date fields replaced by raw numbers
    (microseconds or days), e.g. ones outside what a Python datetime can hold."""
    registered = SCHEMA_IDS.latest(type(event).__name__)
    record = event.model_dump()
    record.update(event_type=registered.name, schema_version=registered.version, **micros)
    out = io.BytesIO()
    out.write(struct.pack(">bI", 0, registered.schema_id))
    schemaless_writer(out, registered.parsed, record)
    return out.getvalue()


# ---------------------------------------------------------------- logs without Kafka


@dataclass(frozen=True)
class Out:
    """One message of a test log: on the order log ("orders") or the stock ledger ("stock"),
    keyed like the publisher keys it. `phase` 2 comes after a restart in the integration test."""

    log: str
    key: str
    value: bytes | None
    phase: int = 1


def put(event: Event, *, phase: int = 1) -> Out:
    log = "orders" if isinstance(event, OrderEvent) else "stock"
    return Out(log, event.aggregate_id, CODEC.encode(event), phase)


def lifecycle_log() -> list[Out]:
    """One order through everything the fold treats specially, tricky values throughout;
    the second half after the restart (the state is read back from ClickHouse)."""
    oid, channel = 'ord-edge-1 "中"', 'chan\t"quoted" \\ 中'
    at = T1
    lines = [
        OrderLine(sku="A-1", name='水饺 "12" \\ \x01', quantity=2, unit_price=1000,
                  options=["少辣", 'no "ice"', "\x01\n\t\x7f", "\u2028"]),
        OrderLine(sku="B-2", name="emoji 😀", quantity=1, unit_price=2500),
        OrderLine(sku="C-3", name="", quantity=3, unit_price=10),
    ]  # fmt: skip
    made: list[tuple[OrderEvent, int]] = []

    def add(model: type[OrderEvent], phase: int = 1, minutes: float = 7, **fields: Any) -> None:
        nonlocal at
        at += timedelta(minutes=minutes, microseconds=1)
        made.append((order_event(model, oid, len(made) + 1, at, channel=channel, **fields), phase))

    add(OrderReceived, minutes=0, mode=OrderMode.DELIVERY, currency="CNY", lines=lines,
        delivery_fee=500, packaging_fee=100, discount=50, total=5580, tax=7,
        payment_status=PaymentStatus.PAID,
        customer=Customer(id="cust-1", name='王 "伟" \\ \x01\n', phone=None, email="a@b.c"),
        address=Address(text="88 Nanjing Rd\u2028楼 😀", city="上海", country="CN",
                        latitude=31.2344, longitude=-0.0),
        location_hint="S1", requested_at=at + timedelta(minutes=45, microseconds=1),
        notes="n" * 20_000 + " 😀", placed_at=at - timedelta(microseconds=1))  # fmt: skip
    add(OrderAccepted, total=5580, currency="CNY")
    add(OrderModified, revision=2, lines=[lines[0], lines[1].model_copy(update={"quantity": 4})],
        total=12_500, tax=0)  # fmt: skip
    add(OrderAccepted, total=12_500, currency="CNY")
    add(OrderHeld, risk_score=80, threshold=50,
        signals=[FraudSignal(rule="VELOCITY", points=30, detail='3 "orders" \\ 1h')])  # fmt: skip
    add(ReviewApproved, actor=REVIEWER, minutes=61)
    add(OrderRouted, phase=2, location="S1", reasons=["NEAREST", "含中文"],
        groups=[
            FulfilmentGroup(location="S1", lines=[LineQuantity(sku="A-1", quantity=2)]),
            FulfilmentGroup(location="S2", distance_m=1200, cost=300,
                            lines=[LineQuantity(sku="B-2", quantity=4, location="S3")]),
        ])  # fmt: skip
    add(OrderReserved, phase=2, expires_at=at + timedelta(minutes=30, microseconds=999999),
        lines=[LineQuantity(sku="A-1", quantity=2, location="S1")])  # fmt: skip
    add(OrderPrioritised, phase=2, location="S1", score=70,
        promised_at=at + timedelta(minutes=40, microseconds=1))  # fmt: skip
    add(OrderPrioritised, phase=2, location="S2", score=90, promised_at=None, factors=["VIP"])
    add(OrderAcceptedByStore, phase=2, location="S2", estimated_ready_at=None)
    add(OrderPreparing, phase=2, location="S2")
    add(OrderReady, phase=2, location="S2", minutes=0)
    add(OrderPickedUp, phase=2, location="S2", picked_up_by='骑手 "Li"', courier_phone=None)
    add(OrderDelivered, phase=2, proof=None)
    add(OrderCompleted, phase=2)
    add(OrderRefunded, phase=2, refund_id="rf-1", amount=100, currency="CNY", reason="cold")
    add(ReturnRequested, phase=2, return_id="rt-1", reason="broken",
        lines=[ReturnLine(sku="A-1", quantity=1)])  # fmt: skip
    add(ReturnReceived, phase=2, return_id="rt-1", condition="DAMAGED",
        lines=[ReturnLine(sku="A-1", quantity=1, reason="cracked")])  # fmt: skip
    add(OrderRefunded, phase=2, refund_id="rf-2", amount=200, currency="CNY", reason="return",
        return_id="rt-1")  # fmt: skip
    log = [put(event, phase=phase) for event, phase in made]
    # Re-sent: right after (same batch or the next), and long after (a stale sequence).
    log.insert(2, put(made[1][0]))
    log.append(put(made[4][0], phase=2))
    return log


def older_schema_log() -> list[Out]:
    """An order whose first events were written with older schema versions (ids 1, 2 and 38
    in schemas/registry.json), one of them re-sent after the restart."""
    oid = "ord-edge-older"
    at = T1 + timedelta(hours=1)
    lines = [
        OrderLine(sku="TEA-1", name="龙井", quantity=1, unit_price=12_800),
        OrderLine(sku="MUG-2", name="mug", quantity=2, unit_price=6800, options=["gift"]),
    ]
    received = order_event(
        OrderReceived, oid, 1, at, channel="tmall", mode=OrderMode.SHIP, currency="CNY",
        lines=lines, total=26_400, payment_status=PaymentStatus.PAID, tax=0,
        customer=Customer(name="客户", phone="+8613800000001"),
        address=Address(text="1 Road", city="杭州", latitude=1e-7, longitude=1e16),
        placed_at=at,
    )  # fmt: skip
    v1 = order_event(OrderModified, oid, 2, at + timedelta(minutes=1), channel="tmall",
                     revision=2, lines=lines[:1], total=12_800, tax=0)  # fmt: skip
    v2 = order_event(OrderModified, oid, 3, at + timedelta(minutes=2, microseconds=1),
                     channel="tmall", revision=3, lines=lines, total=26_520, tax=120,
                     notes='"gift" wrap')  # fmt: skip
    rest = [
        order_event(OrderAccepted, oid, 4, at + timedelta(minutes=3), channel="tmall",
                    total=26_520, currency="CNY"),
        order_event(OrderRouted, oid, 5, at + timedelta(minutes=4), channel="tmall",
                    location="W1", reasons=[],
                    groups=[FulfilmentGroup(location="W1", lines=[
                        LineQuantity(sku="TEA-1", quantity=1)])]),
    ]  # fmt: skip
    later = [
        order_event(ShipmentCreated, oid, 6, at + timedelta(hours=2), channel="tmall",
                    shipment_id="sh-1", carrier="SF", tracking_number="SF1"),
        order_event(ShipmentStatusUpdated, oid, 7, at + timedelta(hours=3), channel="tmall",
                    shipment_id="sh-1", tracking_number="SF1", status="IN_TRANSIT",
                    description=None, place="上海"),
        order_event(OrderDelivered, oid, 8, at + timedelta(days=1), channel="tmall",
                    proof="sig"),
        order_event(OrderCompleted, oid, 9, at + timedelta(days=1, seconds=1),
                    channel="tmall"),
    ]  # fmt: skip
    return [
        Out("orders", oid, framed_with(1, received)),
        Out("orders", oid, framed_with(2, v1)),
        Out("orders", oid, framed_with(38, v2)),
        *(put(event) for event in rest),
        *(put(event, phase=2) for event in later),
        Out("orders", oid, framed_with(1, received), phase=2),
    ]


def outcomes_log() -> list[Out]:
    """Orders that end otherwise: rejected, refused on review, cancelled after reservations,
    a history that does not start with the order, a revision first with time going back,
    sequence gaps and odd lines."""
    at = T1 + timedelta(hours=3)
    log: list[Out] = []

    def received(oid: str, n: int, **fields: Any) -> OrderEvent:
        values: dict[str, Any] = dict(
            mode=OrderMode.PICKUP, currency="USD", total=0, lines=[],
            payment_status=PaymentStatus.PENDING, customer=Customer(), placed_at=at,
        )  # fmt: skip
        values.update(fields)
        return order_event(OrderReceived, oid, n, at, **values)

    rejected = "ord-edge-rejected"
    log += [
        put(received(rejected, 1, total=1, lines=[
            OrderLine(sku="Z", name="z", quantity=1, unit_price=0)])),
        put(order_event(OrderRejected, rejected, 2, at + timedelta(seconds=1), reasons=[
            RejectionReason(code="UNKNOWN_SKU", field="lines[0].sku", message='no "Z"'),
            RejectionReason(code="TOTAL_MISMATCH", message="总额 \\ wrong")])),
    ]  # fmt: skip
    refused = "ord-edge-refused"
    log += [
        put(received(refused, 1, customer=Customer(phone="+1555"))),
        put(order_event(OrderAccepted, refused, 2, at + timedelta(seconds=2), total=0,
                        currency="USD")),
        put(order_event(OrderHeld, refused, 3, at + timedelta(seconds=3), risk_score=99,
                        threshold=50, signals=[])),
        put(order_event(ReviewRejected, refused, 4, at + timedelta(minutes=30),
                        actor=REVIEWER, reason="stolen card")),
    ]  # fmt: skip
    cancelled = "ord-edge-cancelled"
    quantity = [LineQuantity(sku="A", quantity=1)]
    log += [
        put(received(cancelled, 1, mode=OrderMode.DINE_IN, lines=[
            OrderLine(sku="A", name="a", quantity=1, unit_price=100)], total=100)),
        put(order_event(OrderAccepted, cancelled, 2, at, total=100, currency="USD")),
        put(order_event(OrderPartiallyReserved, cancelled, 3, at, reserved=quantity,
                        missing=[])),
        put(order_event(OrderReservationFailed, cancelled, 4, at, missing=quantity,
                        reason="NONE")),
        put(order_event(OrderReservationReleased, cancelled, 5, at, lines=quantity,
                        reason="CANCELLED"), phase=2),
        put(order_event(OrderCancelled, cancelled, 6, at + timedelta(minutes=5),
                        cancelled_by=CancelledBy.MERCHANT, reason_code="SOLD_OUT",
                        reason="sold out"), phase=2),
    ]  # fmt: skip
    headless = "ord-edge-headless"  # its OrderReceived arrives late, so is a duplicate
    log += [
        put(order_event(OrderAccepted, headless, 2, at, total=500, currency="CNY")),
        put(order_event(OrderRouted, headless, 3, at, location="S3", groups=[], reasons=[])),
        put(received(headless, 1, total=500)),
        put(order_event(OrderPreparing, headless, 5, at + timedelta(minutes=9),
                        location="S3"), phase=2),
    ]  # fmt: skip
    revised = "ord-edge-revised-first"
    log += [
        put(order_event(OrderModified, revised, 1, at, channel="meituan", revision=7,
                        lines=[OrderLine(sku="N", name="面", quantity=2, unit_price=1500)],
                        total=3000, mode=OrderMode.PICKUP, currency="CNY",
                        payment_status=PaymentStatus.PAID,
                        customer=Customer(id="mt-42", name="匿名"), location_hint="S2",
                        placed_at=at - timedelta(minutes=3))),
        put(order_event(OrderAccepted, revised, 2, at + timedelta(minutes=1), total=3000,
                        currency="CNY")),
        # time goes back: the stage it leaves lasted "negative" seconds
        put(order_event(OrderPrioritised, revised, 3, at - timedelta(minutes=10),
                        location="S2", score=5)),
        put(order_event(OrderCancelled, revised, 4, at + timedelta(minutes=2),
                        cancelled_by=CancelledBy.CUSTOMER, reason_code="CHANGED_MIND",
                        reason="")),
        put(order_event(OrderRefunded, revised, 5, at + timedelta(minutes=3),
                        refund_id="rf", amount=3000, currency="CNY", reason="cancelled")),
    ]  # fmt: skip
    gaps = "ord-edge-gaps"
    log += [
        put(received(gaps, 1, channel="", lines=[
            OrderLine(sku="NEG", name="refund line", quantity=-2, unit_price=100),
            OrderLine(sku="BIG", name="big", quantity=2_000_000, unit_price=9_999_999)],
            total=-200, address=Address(text="", city=None))),
        put(order_event(OrderAccepted, gaps, 3, at + timedelta(seconds=59), channel="",
                        total=-200, currency="USD")),
        put(order_event(OrderCompleted, gaps, 7, at + timedelta(seconds=61), channel="")),
        put(order_event(OrderModified, gaps, 6, at + timedelta(seconds=62), revision=1,
                        lines=[], total=0)),  # stale: sequence 6 after 7
        put(order_event(OrderDelivered, gaps, 9, at + timedelta(seconds=63)), phase=2),
    ]  # fmt: skip
    return log


def arrival_log() -> list[Out]:
    """Channel events recorded long after (and one before) the time they say they occurred:
    the orders' stages and activity minutes follow when they were recorded."""
    arrived = T1 + timedelta(hours=9, seconds=59, microseconds=999_999)
    log: list[Out] = []
    for n, late in enumerate([timedelta(days=9, hours=2), timedelta(seconds=1),
                              timedelta(seconds=-30)]):  # fmt: skip
        oid = f"ord-arrived-{n}"
        placed = arrived - late
        lines = [OrderLine(sku="A", name="a", quantity=1, unit_price=100)]
        received = order_event(OrderReceived, oid, 1, placed, mode=OrderMode.PICKUP,
                               currency="CNY", total=100, lines=lines,
                               payment_status=PaymentStatus.PAID, customer=Customer(),
                               placed_at=placed)  # fmt: skip
        revised = order_event(OrderModified, oid, 3, placed + timedelta(minutes=1), revision=2,
                              lines=lines * 2, total=200)  # fmt: skip
        log += [
            put(received.model_copy(update={"recorded_at": arrived})),
            put(order_event(OrderAccepted, oid, 2, arrived + timedelta(seconds=5), total=100,
                            currency="CNY")),
            put(revised.model_copy(update={"recorded_at": arrived + timedelta(minutes=2)})),
            put(order_event(OrderAccepted, oid, 4, arrived + timedelta(minutes=2, seconds=1),
                            total=200, currency="CNY"), phase=2),
        ]  # fmt: skip
    return log


def stock_log() -> list[Out]:
    """Every ledger event (and the stock commands, which are StockEvents too) for a key with
    tricky names; a second key that starts mid-ledger with gaps; re-sent and stale events."""
    sku, location = 'TEA "中" \\ 1', "W1\t"
    at = T1 + timedelta(hours=5)
    made: list[tuple[StockEvent, int]] = []

    def add(model: type[StockEvent], phase: int = 1, **fields: Any) -> None:
        made.append(
            (stock_event(model, sku, location, len(made) + 1,
                         at + timedelta(minutes=len(made), microseconds=len(made)), **fields),
             phase)
        )  # fmt: skip

    add(StockReceived, quantity=40, reference=None)
    add(StockAdjusted, delta=-3, reason="DAMAGED", note='"dropped"')
    add(StockCounted, counted=35)
    add(StockReserved, order_id="o-1", reservation_id="r-1", quantity=4,
        expires_at=at + timedelta(microseconds=1))  # fmt: skip
    add(StockReleased, order_id="o-1", reservation_id="r-1", quantity=4, reason="CANCELLED")
    add(StockReserved, order_id="o-2", reservation_id="r-2", quantity=3)
    add(StockCommitted, order_id="o-2", reservation_id="r-2", quantity=3)
    add(SafetyStockSet, quantity=5)
    add(ExpiryBatchAdded, batch_id="b-1", quantity=10, expires_on=date(2027, 1, 31))
    add(ExpiryBatchExpired, batch_id="b-0", quantity=2)
    add(StockReservationRefused, order_id="o-3", reservation_id="r-3", requested=99,
        available=35, reason="INSUFFICIENT_STOCK")  # fmt: skip
    add(LowStockAlerted, available=35, threshold=40, reorder_quantity=50)
    add(ReserveStock, order_id="o-4", reservation_id="r-4", quantity=1)
    add(ReleaseStock, order_id="o-4", reservation_id="r-4", reason="REROUTED")
    add(CommitStock, order_id="o-5", reservation_id="r-5")
    add(StockReceived, phase=2, quantity=20, reference='PO-2 "中"')
    add(StockCounted, phase=2, counted=0)
    log = [put(event, phase=phase) for event, phase in made]
    log.insert(3, put(made[2][0]))  # re-sent right after
    log.append(put(made[5][0], phase=2))  # stale, after the restart
    other = [
        stock_event(StockReserved, "HONEY", "S1", 4, at, order_id="x", reservation_id="rx",
                    quantity=2),
        stock_event(StockAdjusted, "HONEY", "S1", 9, at + timedelta(seconds=30), delta=7,
                    reason="FOUND"),
        stock_event(StockCommitted, "HONEY", "S1", 5, at + timedelta(seconds=40),
                    order_id="x", reservation_id="rx", quantity=2),  # stale
        stock_event(StockReleased, "HONEY", "S1", 12, at + timedelta(seconds=50),
                    order_id="x", reservation_id="rx", quantity=2, reason=""),
    ]  # fmt: skip
    return log + [put(event, phase=2 if n == 3 else 1) for n, event in enumerate(other)]


def dead_letter_log() -> list[Out]:
    """Messages neither fold can take: corrupt bytes (also in an older schema), unknown schema
    ids, a tombstone, and events (or other records) on the wrong topic."""
    at = T1 + timedelta(hours=6)
    accepted = CODEC.encode(order_event(OrderAccepted, "ord-dl", 1, at, total=1, currency="X"))
    stray_stock = stock_event(StockReceived, "SKU", "W1", 1, at, quantity=1)
    marked = order_event(OrderAccepted, "ord-dl-utf8", 1, at, total=1, currency="X")
    bad_utf8 = CODEC.encode(marked).replace(b"ord-dl-utf8-1", b"ord-dl-\xff\xfe\xfd8-1")
    letter = DeadLetter.of(source="t", source_ref="r", reason="why", raw=b"\x00\x01")
    product = ProductUpdated.model_validate(dict(
        event_id="p-1", sequence=1, occurred_at=at, recorded_at=at, correlation_id="p",
        actor=SYSTEM, entity_id="SKU", product=Product(sku="SKU", name="n")))  # fmt: skip
    older = order_event(
        OrderReceived, "ord-dl-older", 1, at, mode=OrderMode.PICKUP, currency="CNY", lines=[],
        total=0, payment_status=PaymentStatus.PAID, customer=Customer(), placed_at=at,
    )  # fmt: skip
    return [
        Out("orders", "bad-1", b"\x00\x00\x00\x00\x01\xff\xff"),  # older schema id, corrupt
        Out("orders", "bad-2", b"not avro"),
        Out("orders", "bad-3", b""),
        Out("orders", "bad-4", accepted[:-3]),  # truncated
        Out("orders", "bad-5", accepted + b"\x00\x00"),  # bytes left over
        Out("orders", "bad-6", b"\x00\x00\x00\x27\x0f" + accepted[5:]),  # unknown id 9999
        Out("orders", "bad-7", bad_utf8),
        Out("orders", "bad-8", CODEC.encode(stray_stock)),  # a stock event on the order log
        Out("orders", "bad-9", CODEC.encode(letter)),  # not an event at all
        Out("orders", "bad-10", CODEC.encode(product), phase=2),  # a catalogue event
        Out("stock", "bad-11", None),  # tombstone
        Out("stock", "bad-12", accepted),  # an order event on the ledger
        Out("stock", "bad-13", framed_with(1, older)),  # ... in an older schema version
        Out("stock", "bad-14", b"\x00garbage", phase=2),
        Out("stock", "bad-15", b"\x00\x00\x00"),
    ]


def out_of_range_log() -> list[Out]:
    """Well-formed Avro whose times a Python datetime or date cannot hold: the Python codec
    rejects them ("year ... is out of range"), so they are dead letters there."""
    at = T1 + timedelta(hours=7)
    accepted = order_event(OrderAccepted, "ord-far", 1, at, total=1, currency="X")
    batch = stock_event(ExpiryBatchAdded, "FAR", "W1", 1, at, batch_id="b", quantity=1,
                        expires_on=date(2027, 1, 1))  # fmt: skip
    return [
        Out("orders", "ord-far", with_raw_times(accepted, occurred_at=2**62)),
        Out("orders", "ord-far", with_raw_times(accepted, recorded_at=-(2**62))),
        Out("stock", "FAR@W1", with_raw_times(batch, expires_on=10**9)),
    ]


def unstorable_log() -> list[Out]:
    """Events a Python datetime can hold but the read models cannot (events/bounds.py): both
    folds dead-letter each for the same reason, and the orders around them are projected."""
    at = T1 + timedelta(hours=8)
    line = OrderLine(sku="S", name="n", quantity=1, unit_price=100)

    def order(order_id: str, **fields: Any) -> OrderEvent:
        fields = {"lines": [line], "placed_at": at, "total": 100, **fields}
        return order_event(OrderReceived, order_id, 1, at, **fields)

    return [
        put(order("ord-ok-1")),
        put(order("ord-9999", placed_at=datetime(9999, 12, 31, tzinfo=UTC))),
        put(order("ord-0001", requested_at=datetime(1, 1, 1, tzinfo=UTC))),
        put(order("ord-2106", placed_at=datetime(2106, 2, 7, 6, 28, 16, tzinfo=UTC))),
        put(order("ord-qty", lines=[line, line.model_copy(update={"quantity": 3_000_000_000})])),
        put(order("ord-neg", lines=[line.model_copy(update={"quantity": -1_000_001})])),
        put(order("ord-many", lines=[line] * 4_001)),
        put(order_event(OrderAccepted, "ord-seq", 2**32, at)),
        put(order("ord-ok-2", placed_at=datetime(2106, 2, 7, 6, 28, 15, tzinfo=UTC))),
    ]


LOGS: dict[str, Callable[[], list[Out]]] = {
    "lifecycle": lifecycle_log,
    "older-schemas": older_schema_log,
    "outcomes": outcomes_log,
    "stock": stock_log,
    "arrived-late": arrival_log,
    "dead-letters": dead_letter_log,
    "out-of-range-times": out_of_range_log,
    "unstorable": unstorable_log,
}


def scenario_log(orders: int, stock_events: int, seed: int) -> list[Out]:
    scenario = build(orders=orders, stock_events=stock_events, seed=seed, duplicates=0.05)
    return [put(event) for event in (*scenario.order_log, *scenario.stock_log)]


# ---------------------------------------------------------------- the two folds, in memory


@dataclass(frozen=True)
class FakeMessage:
    """A fake of confluent_kafka's Message: the four methods the folds call."""

    topic_: str
    partition_: int
    offset_: int
    value_: bytes | None

    def topic(self) -> str:
        return self.topic_

    def partition(self) -> int:
        return self.partition_

    def offset(self) -> int:
        return self.offset_

    def value(self) -> bytes | None:
        return self.value_


def on_partitions(log: Sequence[Out], partitions: int = 3) -> list[FakeMessage]:
    """The log as Kafka would hold it: one partition per key, offsets counted per partition."""
    offsets: Counter[tuple[str, int]] = Counter()
    messages = []
    for out in log:
        topic = ORDERS_TOPIC if out.log == "orders" else STOCK_TOPIC
        partition = sum(out.key.encode()) % partitions
        messages.append(FakeMessage(topic, partition, offsets[(topic, partition)], out.value))
        offsets[(topic, partition)] += 1
    return messages


Rejected = tuple[str, int, int, bytes, str]


@dataclass
class Batch:
    tables: dict[str, list[Row]]
    rejected: list[Rejected]
    order_events: int
    stock_events: int
    duplicates: int


def _epoch(value: Any) -> Any:
    return (
        int((value - datetime(1970, 1, 1)).total_seconds())
        if isinstance(value, datetime)
        else value
    )


@dataclass
class PythonFold:
    """The reference: what `PythonFold` does with a batch on fresh tables — the
    Python codec, `orders.fold` and `stock.fold`, one row per key and batch for the tables
    read with FINAL, the activity summed per minute and partition."""

    order_states: dict[str, OrderRow] = field(default_factory=dict)
    levels: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    view: AnalystView | None = None  # what analysts may see of personal data, as projected

    def batch(self, messages: Sequence[FakeMessage]) -> Batch:
        rejected: list[Rejected] = []
        order_events: list[tuple[OrderEvent, Position]] = []
        stock_events: list[tuple[StockEvent, Position]] = []
        for message in messages:
            where = Position(message.topic(), message.partition(), message.offset())
            raw = original = message.value() or b""
            if self.view is not None:
                raw = self.view.message(message).value() or b""
            try:
                event = CODEC.decode(raw)
                if (unstorable := out_of_bounds(event)) is not None:
                    raise CodecError(f"{type(event).__name__}: {unstorable}")
                if where.topic == ORDERS_TOPIC and isinstance(event, OrderEvent):
                    order_events.append((event, where))
                elif where.topic == STOCK_TOPIC and isinstance(event, StockEvent):
                    stock_events.append((event, where))
                else:
                    raise CodecError(f"{type(event).__name__} does not belong on {where.topic}")
            except CodecError as exc:
                rejected.append((*where, original, exc.reason))
        tables: dict[str, list[Row]] = {name: [] for name in COLUMNS}
        duplicates = 0
        line_rows: dict[tuple[str, int], Row] = {}
        stage_rows: dict[tuple[str, int], Row] = {}
        activity: dict[tuple[Any, ...], list[int]] = {}
        changed: dict[str, tuple[OrderRow, Position]] = {}
        for event, where in order_events:
            at = seconds(event.occurred_at)
            tables["order_events"].append(event_row(event, where, at))
            change = orders.fold(self.order_states.get(event.order_id), event, where, at)
            if change is None:
                duplicates += 1
                continue
            self.order_states[event.order_id] = change.row
            changed[event.order_id] = (change.row, where)
            for line in change.lines:
                line_rows[(event.order_id, line[1])] = line
            for stage in change.stages:
                stage_rows[(event.order_id, stage[1])] = stage
            a = change.activity
            total = activity.setdefault((*a[:4], where.topic, where.partition), [0, 0, 0])
            total[0] += 1
            total[1] += a.amount
            total[2] = max(total[2], where.offset)
        tables["order_lines"] = list(line_rows.values())
        tables["fulfilment_stages"] = list(stage_rows.values())
        tables["order_activity_per_minute"] = [
            (*key[:4], n, amount, key[4], key[5], offset)
            for key, (n, amount, offset) in activity.items()
        ]
        tables["orders"] = [tuple(row[c] for c in ORDERS_COLUMNS) for row, _ in changed.values()]
        changed_levels: dict[tuple[str, str], dict[str, Any]] = {}
        for event, where in stock_events:
            key = (event.sku, event.location)
            stock_change = stock.fold(self.levels.get(key), event, where)
            if stock_change is None:
                duplicates += 1
                continue
            self.levels[key] = changed_levels[key] = stock_change.level
            tables["stock"].append(stock_change.history)
        tables["stock_levels"] = [
            tuple(level[c] for c in COLUMNS["stock_levels"]) for level in changed_levels.values()
        ]
        return Batch(tables, rejected, len(order_events), len(stock_events), duplicates)

    def order_state(self, order_id: str) -> tuple[Any, ...] | None:
        """The order's state as the projector reads it back (`ORDER_STATE_SELECT`)."""
        row = self.order_states.get(order_id)
        if row is None:
            return None
        return tuple(_epoch(row[c]) for c in ORDERS_COLUMNS if not c.startswith("_"))

    def level_state(self, key: tuple[str, str]) -> tuple[Any, ...] | None:
        """The level as the projector reads it back (`LEVEL_STATE_SELECT`)."""
        level = self.levels.get(key)
        if level is None:
            return None
        columns = COLUMNS["stock_levels"]
        return tuple(_epoch(level[c]) for c in columns if not c.startswith("_"))


class RowBinaryReader:
    """ClickHouse RowBinary, for the column types the fold writes."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise AssertionError(f"RowBinary ends at byte {len(self.data)}, wanted {n} more")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def varint(self) -> int:
        result = shift = 0
        while True:
            byte = self.take(1)[0]
            result |= (byte & 0x7F) << shift
            if byte < 0x80:
                return result
            shift += 7

    def value(self, kind: str) -> Any:
        if kind.startswith("Nullable("):
            return None if self.take(1)[0] else self.value(kind[9:-1])
        if kind.startswith("Array("):
            return [self.value(kind[6:-1]) for _ in range(self.varint())]
        if kind == "String":
            return self.take(self.varint()).decode()  # strict: the column must be UTF-8
        if kind == "DateTime":
            return datetime(1970, 1, 1) + timedelta(seconds=self.value("UInt32"))
        sizes = {"8": 1, "16": 2, "32": 4, "64": 8}
        if kind.startswith("UInt"):
            return int.from_bytes(self.take(sizes[kind[4:]]), "little")
        if kind.startswith("Int"):
            return int.from_bytes(self.take(sizes[kind[3:]]), "little", signed=True)
        raise AssertionError(f"no RowBinary reader for {kind}")


def read_rows(data: bytes, kinds: Sequence[str], count: int) -> list[Row]:
    reader = RowBinaryReader(data)
    rows = [tuple(reader.value(kind) for kind in kinds) for _ in range(count)]
    assert reader.pos == len(data), f"{len(data) - reader.pos} bytes after {count} rows"
    return rows


class NativeFold:
    """A native fold fed as the projector feeds it; the states it asks for are the
    reference's (what ClickHouse would hold when both folds agree)."""

    def __init__(
        self,
        column_types: dict[str, list[str]],
        capacity: int,
        analyst: AnalystView | None = None,
    ) -> None:
        require_native()
        self.fold = native_projection(
            codec=CODEC,
            orders_topic=ORDERS_TOPIC,
            stock_topic=STOCK_TOPIC,
            capacity=capacity,
            analyst=analyst,
        )
        self.decoder = self.fold.decoder()
        self.column_types = column_types

    def batch(self, messages: Sequence[FakeMessage], reference: PythonFold) -> Batch:
        decoded, rejected, _, n_orders, n_stock = self.decoder.decode(list(messages))
        missing_orders, missing_levels = self.fold.missing(decoded)
        states = [reference.order_state(order_id) for order_id in missing_orders]
        self.fold.load_orders([state for state in states if state is not None])
        levels = [reference.level_state(tuple(key)) for key in missing_levels]
        self.fold.load_levels([level for level in levels if level is not None])
        encoded, duplicates, _ = self.fold.fold(decoded, {})
        tables = {}
        for table, (count, buffer) in encoded.items():
            tables[table] = read_rows(bytes(buffer), self.column_types[table], count)
        return Batch(tables, [tuple(r) for r in rejected], n_orders, n_stock, duplicates)


# How many leading columns name a row, per table (as compared: COLUMNS, or `content`).
KEY_WIDTH = {
    "dead_letters": 3, "rejected": 3, "order_events": 1, "orders": 1, "order_lines": 2,
    "fulfilment_stages": 2, "order_activity_per_minute": 4, "stock": 3, "stock_levels": 2,
    "projector_offsets": 2,
}  # fmt: skip


def differences(
    table: str, columns: Sequence[str], python: Sequence[Row], native: Sequence[Row]
) -> list[str]:
    """Where two tables' rows differ: rows paired by their key, each differing column with
    both values; rows only one side has. Row order only counts for order_events (of an
    event re-sent within one batch, the copy inserted last is the one FINAL keeps)."""
    if list(python) == list(native):
        return []
    native_left = Counter(repr(row) for row in native)
    python_only = []
    for row in python:
        if native_left[repr(row)]:
            native_left[repr(row)] -= 1
        else:
            python_only.append(row)
    python_left = Counter(repr(row) for row in python)
    native_only = []
    for row in native:
        if python_left[repr(row)]:
            python_left[repr(row)] -= 1
        else:
            native_only.append(row)
    if not python_only and not native_only:
        return [f"{table}: the same rows in another order"] if table == "order_events" else []
    found = []
    if len(python) != len(native):
        found.append(f"{table}: {len(python)} rows from the Python fold, {len(native)} native")
    width = KEY_WIDTH.get(table, 1)
    unpaired: dict[str, list[Row]] = {}
    for row in native_only:
        unpaired.setdefault(repr(row[:width]), []).append(row)
    for p in python_only:
        candidates = unpaired.get(repr(p[:width]))
        if not candidates:
            found.append(f"{table}: only from the Python fold: {_short(p)}")
            continue
        q = candidates.pop(0)
        cells = [
            f"{c}: python={_short(a)} native={_short(b)}"
            for c, a, b in zip(columns, p, q, strict=True)
            if a != b
        ]
        key = ", ".join(f"{c}={_short(v)}" for c, v in zip(columns, p[:width], strict=False))
        found.append(f"{table} [{key}]: " + "; ".join(cells))
    found += [
        f"{table}: only from the native fold: {_short(q)}"
        for rows in unpaired.values()
        for q in rows
    ]
    if len(found) > 10:  # enough to see the pattern; the other tables' turn
        found[10:] = [f"{table}: … and {len(found) - 10} more differences"]
    return found


def _short(value: Any, limit: int = 300) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} chars)"


_CREATE = re.compile(r"CREATE TABLE IF NOT EXISTS \{database\}\.(\w+) \((.*?)\n\) ENGINE", re.S)
_ADD = re.compile(r"ALTER TABLE \{database\}\.(\w+) ADD COLUMN (\w+) (\S+?)(?: DEFAULT .*)?;?$")


@pytest.fixture(scope="module")
def column_types() -> dict[str, list[str]]:
    """The ClickHouse type of each column the native fold writes, read from the migrations'
    DDL (no ClickHouse needed)."""
    kinds: dict[tuple[str, str], str] = {}
    for migration in MIGRATIONS:
        for statement in migration.statements:
            if created := _CREATE.search(statement):
                for line in created.group(2).splitlines():
                    if line.strip():
                        name, kind = line.strip().rstrip(",").split()
                        kinds[(created.group(1), name)] = kind
            elif added := _ADD.search(statement.strip()):
                kinds[(added.group(1), added.group(2))] = added.group(3)
    return {t: [kinds[(t, c)] for c in columns] for t, columns in COLUMNS.items()}


def fold_both(
    log: Sequence[Out],
    column_types: dict[str, list[str]],
    *,
    batch_size: int,
    capacity: int,
    view: AnalystView | None = None,
    native_rows: dict[str, list[Row]] | None = None,
) -> tuple[list[str], dict[str, int]]:
    """Fold `log` in batches both ways (personal data as `view` shows it); every difference,
    and the rows per table (the native fold's rows themselves into `native_rows`)."""
    reference, native = PythonFold(view=view), NativeFold(column_types, capacity, view)
    messages = on_partitions(log)
    found: list[str] = []
    rows: Counter[str] = Counter()
    for start in range(0, len(messages), batch_size):
        batch = messages[start : start + batch_size]
        theirs = native.batch(batch, reference)  # first: it asks for the states before
        ours = reference.batch(batch)
        if native_rows is not None:
            for table, rows_of_table in theirs.tables.items():
                native_rows.setdefault(table, []).extend(rows_of_table)
        where = f"batch at message {start}: "
        for table, columns in COLUMNS.items():
            rows[table] += len(ours.tables[table])
            found += [
                where + d
                for d in differences(table, columns, ours.tables[table], theirs.tables[table])
            ]
        rows["rejected"] += len(ours.rejected)
        rejected_columns = ("topic", "partition", "offset", "raw", "reason")
        found += [
            where + d
            for d in differences("rejected", rejected_columns, ours.rejected, theirs.rejected)
        ]
        counts = ("order_events", "stock_events", "duplicates")
        ours_n, theirs_n = ([getattr(b, c) for c in counts] for b in (ours, theirs))
        if ours_n != theirs_n:
            found.append(f"{where}{counts} python={ours_n} native={theirs_n}")
    return found, dict(rows)


def report(found: list[str], limit: int = 80) -> str:
    more = f"\n… and {len(found) - limit} more" if len(found) > limit else ""
    return "the native fold differs from the Python fold:\n" + "\n".join(found[:limit]) + more


# ---------------------------------------------------------------- order_events.payload


def payload_cases() -> dict[str, list[OrderEvent]]:
    base: dict[str, Any] = dict(
        mode=OrderMode.DELIVERY, currency="CNY", total=1, payment_status=PaymentStatus.PAID,
        lines=[OrderLine(sku="A", name="a", quantity=1, unit_price=1)],
        customer=Customer(name="c"), placed_at=T1,
    )  # fmt: skip

    def received(n: int, at: datetime = T1, **fields: Any) -> OrderEvent:
        return order_event(OrderReceived, f"o-{n}", 1, at, **{**base, **fields})

    cases: dict[str, list[OrderEvent]] = {
        "floats": [
            received(n, address=Address(text="t", latitude=f, longitude=-f))
            for n, f in enumerate(FLOATS)
        ],
        "strings": [
            order_event(
                OrderReceived,
                f"{s}",
                1,
                T1,
                channel=s,
                actor=Actor(kind=ActorKind.USER, id=s),
                **{
                    **base,
                    "currency": s,
                    "notes": s,
                    "device_id": s,
                    "location_hint": s,
                    "lines": [OrderLine(sku=s, name=s, quantity=1, unit_price=1, options=[s, s])],
                    "customer": Customer(id=s, name=s, phone=s, email=s),
                    "address": Address(text=s, city=s, postal_code=s, country=s),
                },
            )
            for s in STRINGS
        ],  # fmt: skip
        "envelope-times": [
            received(n, at, placed_at=at, requested_at=at) for n, at in enumerate(ENVELOPE_TIMES)
        ],
        "payload-times": [
            received(n, placed_at=at, requested_at=at) for n, at in enumerate(PAYLOAD_TIMES)
        ],
        "recorded-later": [
            order_event(OrderAccepted, "o", 2, T1, total=-(2**63), currency="X").model_copy(
                update={"recorded_at": T1 + timedelta(days=3, microseconds=7)}
            ),
            order_event(
                OrderRefunded,
                "o",
                3,
                T1,
                refund_id="r",
                amount=2**63 - 1,
                currency="X",
                reason="r",
                return_id=None,
            ),
        ],  # fmt: skip
        "every-type-minimal": [order_event(m, f"m-{m.__name__}", 1, T1) for m in ORDER_EVENTS],
    }
    return cases


def check_order_events(events: Sequence[OrderEvent], column_types: dict[str, list[str]]) -> None:
    """Each event through the native fold alone: its order_events row is `event_row` of the
    decoded event, its payload pydantic's JSON of the event."""
    native = NativeFold(column_types, capacity=100)
    log = [Out("orders", event.order_id, CODEC.encode(event)) for event in events]
    messages = [
        FakeMessage(ORDERS_TOPIC, n % 65536, 2**63 - 1 - n, out.value) for n, out in enumerate(log)
    ]
    batch = native.batch(messages, PythonFold())
    # What the read models cannot store is rejected, for the reason events/bounds.py gives.
    unstorable = {
        m.offset(): f"{type(e).__name__}: {why}"
        for e, m in zip(events, messages, strict=True)
        if (why := out_of_bounds(e)) is not None
    }
    assert {r[2]: r[4] for r in batch.rejected} == unstorable
    events = [e for e, m in zip(events, messages, strict=True) if m.offset() not in unstorable]
    messages = [m for m in messages if m.offset() not in unstorable]
    rows = batch.tables["order_events"]
    assert len(rows) == len(events)
    columns = COLUMNS["order_events"]
    payload = columns.index("payload")
    found = []
    for event, message, row in zip(events, messages, rows, strict=True):
        decoded = CODEC.decode(message.value() or b"")
        assert isinstance(decoded, OrderEvent)
        where = Position(message.topic(), message.partition(), message.offset())
        expected = event_row(decoded, where)
        if row != expected:
            found += differences("order_events", columns, [expected], [row])
        if row[payload] != event.model_dump_json():  # the event as it was, not as decoded
            found.append(f"payload of {event!r}: native={_short(row[payload])}")
    assert not found, report(found)


@pytest.mark.parametrize("case", list(payload_cases()))
def test_order_events_rows_and_payload_are_what_python_writes(
    case: str, column_types: dict[str, list[str]]
) -> None:
    check_order_events(payload_cases()[case], column_types)


def tricky(annotation: Any) -> st.SearchStrategy[Any]:
    """Any value of a contract type, leaning on the ones JSON writers get wrong."""
    if get_origin(annotation) is Annotated:
        return tricky(get_args(annotation)[0])
    member = _optional_member(annotation)
    if member is not None:
        return st.none() | tricky(member)
    if get_origin(annotation) is list:
        return st.lists(tricky(get_args(annotation)[0]), max_size=3)
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return st.sampled_from(list(annotation))
    if _is_model(annotation):
        fields = {n: tricky(f.annotation) for n, f in annotation.model_fields.items()}
        return st.fixed_dictionaries(fields).map(annotation.model_validate)
    times = st.sampled_from(PAYLOAD_TIMES) | st.datetimes(timezones=st.just(UTC))
    simple: dict[Any, st.SearchStrategy[Any]] = {
        str: st.sampled_from(STRINGS[:-1]) | st.text(max_size=12),
        int: st.integers(-(2**63), 2**63 - 1),
        float: st.sampled_from(FLOATS) | st.floats(),
        bool: st.booleans(),
        bytes: st.binary(max_size=8),
        date: st.dates(),
        datetime: times,
        AwareDatetime: times,
    }
    return simple[annotation]


ENVELOPE_TIME = st.sampled_from(ENVELOPE_TIMES) | st.datetimes(
    min_value=datetime(1970, 1, 1),
    max_value=datetime(2106, 2, 7, 6, 28, 15, 999999),
    timezones=st.just(UTC),
)


def any_order_event(model: type[OrderEvent]) -> st.SearchStrategy[OrderEvent]:
    fields = {n: tricky(f.annotation) for n, f in model.model_fields.items()}
    fields.update(
        sequence=st.integers(1, 2**32 - 1), occurred_at=ENVELOPE_TIME, recorded_at=ENVELOPE_TIME
    )
    if "covers" in fields:  # the contract's bounds (ge=1, le=10_000)
        fields["covers"] = st.none() | st.integers(1, 10_000)
    return st.fixed_dictionaries(fields).map(model.model_validate)


@pytest.mark.parametrize("model", ORDER_EVENTS, ids=lambda m: m.__name__)
@settings(max_examples=40, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_order_event_gives_the_python_row_and_payload(
    model: type[OrderEvent], data: st.DataObject, column_types: dict[str, list[str]]
) -> None:
    events = data.draw(st.lists(any_order_event(model), min_size=1, max_size=3))
    check_order_events(events, column_types)


# ---------------------------------------------------------------- every table, no Kafka


@pytest.mark.parametrize("capacity", [2, 100_000], ids=["states-forgotten", "states-kept"])
@pytest.mark.parametrize("batch_size", [1, 7, 1000])
@pytest.mark.parametrize("name", list(LOGS))
def test_every_table_of_every_batch_is_what_the_python_fold_makes(
    name: str, batch_size: int, capacity: int, column_types: dict[str, list[str]]
) -> None:
    log = LOGS[name]()
    found, rows = fold_both(log, column_types, batch_size=batch_size, capacity=capacity)
    assert not found, report(found)
    assert sum(rows.values()) > 0


def test_what_the_read_models_cannot_store_is_rejected_by_both_folds_and_the_rest_projected(
    column_types: dict[str, list[str]],
) -> None:
    messages = on_partitions(unstorable_log())
    native = NativeFold(column_types, capacity=100).batch(messages, PythonFold())
    reasons = sorted(reason for *_, reason in native.rejected)
    assert reasons == [
        "OrderAccepted: sequence 4294967296 is outside 0..4294967295",
        "OrderReceived: 4001 lines: at most 4000 are stored",
        "OrderReceived: lines[0].quantity -1000001 is outside ±1000000",
        "OrderReceived: lines[1].quantity 3000000000 is outside ±1000000",
        "OrderReceived: placed_at is outside the times stored (1970 to 2106)",
        "OrderReceived: placed_at is outside the times stored (1970 to 2106)",
        "OrderReceived: requested_at is outside the times stored (1970 to 2106)",
    ]
    projected = {row[0] for row in native.tables["orders"]}
    assert projected == {"ord-ok-1", "ord-ok-2"}


def personal_log(keys: MemoryKeys) -> tuple[list[Out], list[str]]:
    """Orders carrying personal data every way the log holds it: sealed (the key there, then
    forgotten, or the seal tampered with or not a seal at all), in clear from before sealing
    (a channel's customer id, a phone on a relay with its extension, a key already set, no
    identity), the platform's ciphertext with its masks; and the clear texts analysts must
    never see."""
    sealing = PrivateCodec(keys)
    clear = ["Jane Doe", "13812345678", "jane@example.com", "Room 5, 1 Nanjing Rd",
             "device-77", "ring twice", "cust-9", "200001"]  # fmt: skip
    customer = Customer(id="cust-9", name="Jane Doe", phone="+86 138-1234-5678",
                        email="jane@example.com")  # fmt: skip
    address = Address(text="Room 5, 1 Nanjing Rd", city="Shanghai", postal_code="200001",
                      latitude=31.23, longitude=121.47)  # fmt: skip
    personal = dict(address=address, device_id="device-77", notes="ring twice")
    log: list[Out] = []

    def add(event: OrderEvent, *, sealed: bool, tamper: str = "") -> None:
        raw = (sealing if sealed else CODEC).encode(event)
        if tamper:
            decoded = CODEC.decode(raw)
            assert isinstance(decoded, OrderReceived) and decoded.sealed
            forged = decoded.sealed[:-4] + "AAAA" if tamper == "ciphertext" else "not:a:seal"
            raw = CODEC.encode(decoded.model_copy(update={"sealed": forged}))
        log.append(Out("orders", event.order_id, raw))

    def received(order_id: str, who: Customer, **fields: Any) -> OrderReceived:
        event = order_event(OrderReceived, order_id, 1, T1, channel="meituan", customer=who,
                            **(personal | fields))  # fmt: skip
        assert isinstance(event, OrderReceived)
        return event

    add(received("p-sealed", customer), sealed=True)
    add(order_event(OrderModified, "p-sealed", 2, T1 + timedelta(minutes=3), channel="meituan",
                    customer=customer, **personal), sealed=True)  # fmt: skip
    add(received("p-forgotten", customer.model_copy(update={"id": "cust-10"})), sealed=True)
    add(received("p-tampered", customer), sealed=True, tamper="ciphertext")
    add(received("p-not-a-seal", Customer(name="Jane Doe")), sealed=True, tamper="not a seal")
    add(received("p-clear-id", customer), sealed=False)
    relay = Customer(name="张三", phone="13012345678", phone_extension="8421")
    add(received("p-relay", relay), sealed=False)
    add(received("p-keyed", customer.model_copy(update={"key": "c0123456789abcdef01234567"})),
        sealed=False)  # fmt: skip
    add(received("p-nobody", Customer(name="Jane Doe")), sealed=False)
    cipher = PlatformCiphertext(platform="jd", name="~enc~", phone="~enc~", address="~enc~",
                                name_mask="张**", phone_mask="138****5678")  # fmt: skip
    add(received("p-platform", Customer(), platform_ciphertext=cipher), sealed=True)
    add(received("p-platform-clear", Customer(), platform_ciphertext=cipher), sealed=False)
    keys.forget([subject_of(received("p-forgotten", customer.model_copy(
        update={"id": "cust-10"})), keys.pepper)])  # fmt: skip
    return log, clear


@pytest.mark.parametrize("batch_size", [1, 50])
def test_personal_data_is_masked_alike_by_both_folds(
    column_types: dict[str, list[str]], batch_size: int
) -> None:
    """The native decoder masks what `AnalystView` masks for the Python fold: the same rows
    in every table, no clear personal text in any, and the masks where they belong."""
    keys = MemoryKeys()
    log, clear = personal_log(keys)
    rows: dict[str, list[Row]] = {}
    found, counts = fold_both(log, column_types, batch_size=batch_size, capacity=100,
                              view=AnalystView(CODEC, keys), native_rows=rows)  # fmt: skip
    assert not found, report(found)
    assert counts["order_events"] == len(log) and counts["rejected"] == 0
    text = repr(rows)
    assert [t for t in clear if t in text] == []
    shown = {row[ORDERS_COLUMNS.index("order_id")]: row for row in rows["orders"]}

    def column(order_id: str, name: str) -> Any:
        return shown[order_id][ORDERS_COLUMNS.index(name)]

    assert (column("p-sealed", "customer_name"), column("p-sealed", "customer_phone")) == (
        "J*", "138****5678")  # fmt: skip
    assert column("p-forgotten", "customer_name") == ""
    assert column("p-forgotten", "customer_key").startswith("c")
    assert column("p-relay", "customer_name") == "张*"
    assert column("p-keyed", "customer_key") == "c0123456789abcdef01234567"
    assert column("p-nobody", "customer_key") == ""
    assert column("p-platform", "customer_name") == "张**"
    assert column("p-platform-clear", "customer_phone") == "138****5678"


@pytest.mark.parametrize("capacity", [5, 100_000], ids=["states-forgotten", "states-kept"])
@pytest.mark.parametrize("batch_size", [7, 50])
def test_a_busy_scenario_folds_the_same_both_ways(
    batch_size: int, capacity: int, column_types: dict[str, list[str]]
) -> None:
    log = scenario_log(orders=150, stock_events=150, seed=3)
    for name in LOGS:
        log += LOGS[name]()
    found, rows = fold_both(log, column_types, batch_size=batch_size, capacity=capacity)
    assert not found, report(found)
    assert all(rows[table] for table in COLUMNS), rows


LOCATIONS = ["", "S1", "S2", "W1"]
SKUS = ["A", "B", "C"]


@st.composite
def order_history(draw: st.DrawFn, order_id: str) -> list[OrderEvent]:
    """An order's events in any order of types (legal moves or not), sequences mostly
    rising, some repeated; times that can go back; a few SKUs and locations."""
    small = st.integers(-5, 2000)
    line = st.builds(OrderLine, sku=st.sampled_from(SKUS), name=st.sampled_from(["n", "名"]),
                     quantity=st.integers(-2, 5), unit_price=small,
                     unit=st.sampled_from(["each", "kg", "lb"]),
                     options=st.lists(st.sampled_from(["少辣", "加蛋", 'x "y"']), max_size=2),
                     # a measure: amounts round half to even alike in both folds
                     quantity_millionths=st.none() | st.integers(1, 5_000_000)
                     | st.sampled_from([500_000, 1_500_000, 250_000]))  # fmt: skip
    quantity = st.builds(LineQuantity, sku=st.sampled_from(SKUS), quantity=small,
                         location=st.none() | st.sampled_from(LOCATIONS))  # fmt: skip
    overrides: dict[str, st.SearchStrategy[Any]] = {
        "location": st.sampled_from(LOCATIONS),
        "location_hint": st.none() | st.sampled_from(LOCATIONS),
        "groups": st.lists(
            st.builds(FulfilmentGroup, location=st.sampled_from(LOCATIONS),
                      lines=st.lists(quantity, max_size=3)),
            max_size=2),
        "total": small, "amount": small, "score": small, "risk_score": small,
        # times the orders table shows must fit its DateTime columns
        "placed_at": ENVELOPE_TIME, "promised_at": st.none() | ENVELOPE_TIME,
        "estimated_ready_at": st.none() | ENVELOPE_TIME,
        "table": st.none() | st.sampled_from(["", "B07"]), "covers": st.none() | st.integers(1, 12),
        "currency": st.sampled_from(["CNY", "USD"]),
        "address": st.none() | st.builds(Address, text=st.just("t"),
                                         city=st.none() | st.sampled_from(["", "上海"])),
        "customer": st.builds(Customer, id=st.none() | st.just("c1"),
                              phone=st.none() | st.sampled_from(["", "+86"])),
    }  # fmt: skip
    by_type: dict[Any, st.SearchStrategy[Any]] = {
        list[OrderLine]: st.lists(line, max_size=3),
        list[LineQuantity]: st.lists(quantity, max_size=3),
    }
    models = st.sampled_from(ORDER_EVENTS)
    starts: list[type[OrderEvent]] = [OrderReceived, OrderModified]
    first: type[OrderEvent] = draw(st.sampled_from(starts) | models)
    rest: list[type[OrderEvent]] = draw(st.lists(models, max_size=12))
    events: list[OrderEvent] = []
    sequence, at = 0, T1
    for model in [first, *rest]:
        sequence = draw(st.sampled_from([sequence + 1, sequence + 1, sequence + 2, sequence]))
        sequence = max(sequence, 1)
        at += timedelta(seconds=draw(st.integers(-120, 3600)), microseconds=draw(small))
        fields = {
            n: draw(by_type.get(f.annotation, overrides.get(n, tricky(f.annotation))))
            for n, f in model.model_fields.items()
            if n not in Event.model_fields and n not in OrderEvent.model_fields
        }
        channel = draw(st.sampled_from(["webshop", "", "meituan"]))
        events.append(order_event(model, order_id, sequence, at, channel=channel, **fields))
    return events


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_order_histories_fold_the_same_both_ways(
    data: st.DataObject, column_types: dict[str, list[str]]
) -> None:
    histories = [data.draw(order_history(f"h-{n}")) for n in range(data.draw(st.integers(1, 4)))]
    # The orders interleaved, each one's events in their order (as on its partition).
    labels = data.draw(st.permutations([n for n, h in enumerate(histories) for _ in h]))
    pending = [iter(history) for history in histories]
    mixed = [put(next(pending[n])) for n in labels]
    found, _ = fold_both(
        mixed,
        column_types,
        batch_size=data.draw(st.integers(1, 8)),
        capacity=data.draw(st.sampled_from([1, 3, 100])),
    )
    assert not found, report(found)


@st.composite
def stock_ledger(draw: st.DrawFn, sku: str, location: str) -> list[StockEvent]:
    """A sku@location's ledger events of any types (the stock commands too) in any order,
    quantities of either sign, sequences mostly rising, some repeated."""
    small = st.integers(-50, 500)
    overrides: dict[str, st.SearchStrategy[Any]] = {
        "quantity": small, "delta": small, "counted": small, "requested": small,
        "available": small, "threshold": small, "reorder_quantity": small,
        "reservation_id": st.sampled_from(["r1", "r2"]), "order_id": st.sampled_from(["o1", ""]),
        "batch_id": st.sampled_from(["b1", "b2"]), "reason": st.sampled_from(["", "WHY"]),
        "reference": st.none() | st.just("PO"),
    }  # fmt: skip
    models = st.sampled_from([*STOCK_EVENTS, *STOCK_COMMANDS])
    events: list[StockEvent] = []
    sequence, at = 0, T1
    for model in draw(st.lists(models, min_size=1, max_size=12)):
        sequence = max(
            draw(st.sampled_from([sequence + 1, sequence + 1, sequence + 3, sequence])), 1
        )
        at += timedelta(seconds=draw(st.integers(-120, 3600)))
        fields = {
            n: draw(overrides.get(n, tricky(f.annotation)))
            for n, f in model.model_fields.items()
            if n not in Event.model_fields and n not in StockEvent.model_fields
        }
        events.append(stock_event(model, sku, location, sequence, at, **fields))
    return events


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_stock_ledgers_fold_the_same_both_ways(
    data: st.DataObject, column_types: dict[str, list[str]]
) -> None:
    """The native fold moves the levels as `events.stock_levels.next_levels` says (which the
    Python fold uses), for every ledger event type."""
    keys = [("A", "W1"), ("A", "S1"), ("B", "W1")][: data.draw(st.integers(1, 3))]
    ledgers = [data.draw(stock_ledger(sku, location)) for sku, location in keys]
    labels = data.draw(st.permutations([n for n, ledger in enumerate(ledgers) for _ in ledger]))
    pending = [iter(ledger) for ledger in ledgers]
    ordered = [next(pending[n]) for n in labels]
    mixed = [put(event) for event in ordered]
    found, rows = fold_both(
        mixed,
        column_types,
        batch_size=data.draw(st.integers(1, 8)),
        capacity=data.draw(st.sampled_from([1, 100])),
    )
    assert not found, report(found)
    # Times the tricky strategy draws may be beyond what is stored: those are rejected alike.
    if any(out_of_bounds(event) is None for event in ordered):
        assert rows["stock"] > 0


def test_a_column_the_native_fold_cannot_write_is_refused_when_it_is_made(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    require_native()
    columns = {**COLUMNS, "orders": (*COLUMNS["orders"], "loyalty_tier")}
    monkeypatch.setattr(native_fold, "COLUMNS", columns)
    with pytest.raises(ValueError, match='gives orders a column "loyalty_tier"'):
        native_projection(codec=CODEC, orders_topic=ORDERS_TOPIC, stock_topic=STOCK_TOPIC,
                          capacity=10)  # fmt: skip


def test_the_native_fold_writes_the_columns_it_is_given_in_their_order(
    monkeypatch: pytest.MonkeyPatch, column_types: dict[str, list[str]]
) -> None:
    """projections/schema.py is the one source of the columns: given them in another order,
    the native fold's rows follow it."""
    reversed_columns = {table: tuple(reversed(columns)) for table, columns in COLUMNS.items()}
    monkeypatch.setattr(native_fold, "COLUMNS", reversed_columns)
    native = NativeFold({t: list(reversed(kinds)) for t, kinds in column_types.items()}, 100)
    reference = PythonFold()
    messages = on_partitions(LOGS["lifecycle"]() + LOGS["stock"]())
    theirs = native.batch(messages, reference)
    ours = reference.batch(messages)
    found = []
    for table, columns in reversed_columns.items():
        expected = [tuple(reversed(row)) for row in ours.tables[table]]
        found += differences(table, columns, expected, theirs.tables[table])
        assert theirs.tables[table], table
    assert not found, report(found)


# ---------------------------------------------------------------- both projectors, for real


def publish(settings: Settings, log: Sequence[Out]) -> None:
    """Raw messages as the Publisher sends events (same partitioner, so a key's messages
    share a partition with its other events), in order."""
    producer = Producer(
        {"bootstrap.servers": settings.kafka_bootstrap, "enable.idempotence": True,
         "partitioner": "murmur2_random"}
    )  # fmt: skip
    failed: list[str] = []
    for out in log:
        topic = settings.topics.orders if out.log == "orders" else settings.topics.inventory
        producer.produce(
            topic,
            key=out.key.encode(),
            value=out.value,
            on_delivery=lambda err, _: failed.append(str(err)) if err else None,
        )
    assert producer.flush(30) == 0 and not failed, failed


def project(settings: Settings, store: ClickHouseStore, *, native: bool) -> Counter[str]:
    """Run a fresh projector until it has everything on the topics; its batch stats summed."""
    projector = Projector(
        settings=settings, store=store, batch_size=7, batch_seconds=0.2, lease=False,
        native=native,
    )  # fmt: skip
    # The projector falls back to the Python fold silently where the extension is missing.
    assert isinstance(projector.fold, native_fold.NativeFold) == native
    totals: Counter[str] = Counter()

    def count(stats: BatchStats) -> None:
        totals.update(events=stats.events, stock_events=stats.stock_events,
                      duplicates=stats.duplicates, dead_lettered=stats.dead_lettered)  # fmt: skip

    projector.run(until=lambda _: projector.lag() == 0, on_batch=count)
    return totals


def named_contents(store: ClickHouseStore) -> dict[str, tuple[list[str], list[Row]]]:
    """`ReadModel.content` of every read model (FINAL applied, per-batch rows summed)."""
    out = {}
    for model in READ_MODELS:
        sql = model.content.replace("{table}", f"{store.database}.{model.name}")
        out[model.name] = store.query_with_columns(sql)
    return out


def compare_databases(python: ClickHouseStore, native: ClickHouseStore, when: str) -> None:
    ours, theirs = named_contents(python), named_contents(native)
    found = []
    for table in READ_MODEL_NAMES:
        columns, rows = ours[table]
        found += [f"{when}: {d}" for d in differences(table, columns, rows, theirs[table][1])]
    assert not found, report(found)
    empty = [table for table in READ_MODEL_NAMES if not ours[table][1]]
    assert not empty, f"{when}: nothing projected into {empty}: the comparison proves nothing"
    assert physical_rows(python) == physical_rows(native), when


@pytest.mark.integration
def test_native_and_python_projectors_write_the_same_read_models(
    backend_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_native()
    # A small state cache: both folds forget states and read them back from ClickHouse.
    monkeypatch.setattr(projector_module, "STATE_CACHE_SIZE", 12)
    settings = backend_settings
    edge = [out for name in LOGS for out in LOGS[name]()]
    scenario = build(orders=80, stock_events=150, seed=23, duplicates=0.05)
    scenario.publish(settings)
    publish(settings, [out for out in edge if out.phase == 1])
    python = connect(settings.resolved_clickhouse_url)
    native = python.with_database(f"{python.database}_native")
    try:
        python_stats = project(settings, python, native=False)
        native_stats = project(settings, native, native=True)
        compare_databases(python, native, "after the first run")
        assert native_stats == python_stats

        # A restart with more on the log: fresh projectors resume from what ClickHouse holds.
        publish(settings, [out for out in edge if out.phase == 2])
        python_stats += project(settings, python, native=False)
        native_stats += project(settings, native, native=True)
        compare_databases(python, native, "after the restart")
        assert native_stats == python_stats
        assert python_stats["events"] + python_stats["stock_events"] + python_stats[
            "dead_lettered"
        ] == scenario.messages + len(edge)
        assert python_stats["duplicates"] > 0 and python_stats["dead_lettered"] > 0
    finally:
        drop(native)
        python.close()


def test_oms_native_fold_0_selects_the_python_fold() -> None:
    import os
    import subprocess
    import sys

    probe = "from projections.native_fold import AVAILABLE; print(AVAILABLE)"
    for value, expected in (("0", "False"), ("1", "True")):
        env = os.environ | {"OMS_NATIVE_FOLD": value}
        out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True,
                             text=True, check=True).stdout.strip()  # fmt: skip
        assert out == expected, (value, out)
