from __future__ import annotations

import io
import json
import struct
from datetime import UTC, datetime, timedelta

import pytest
from fastavro import parse_schema, schemaless_reader
from hypothesis import given
from hypothesis import strategies as st

from events.avro_schema import CONTRACT, SCHEMA_DIR, render
from events.codec import AvroCodec, CodecError, UnknownSchemaId
from events.models import (
    Actor,
    ActorKind,
    Address,
    Customer,
    DeadLetter,
    OrderLine,
    OrderMode,
    OrderReceived,
    OrderRejected,
    RejectionReason,
)

CODEC = AvroCodec()
T0 = datetime(2026, 11, 25, 4, 30, 15, 123456, tzinfo=UTC)


def received(**overrides: object) -> OrderReceived:
    fields: dict[str, object] = dict(
        event_id="e-1",
        order_id="o-1",
        sequence=1,
        occurred_at=T0,
        recorded_at=T0,
        correlation_id="o-1",
        actor=Actor(kind=ActorKind.CHANNEL, id="webshop"),
        channel="webshop",
        external_id="1001",
        mode=OrderMode.DELIVERY,
        currency="CNY",
        lines=[OrderLine(sku="DUMPLING-12", name="水饺", quantity=2, unit_price=2800)],
        delivery_fee=500,
        total=6100,
        customer=Customer(name="王伟", phone="+8613800000000"),
        address=Address(text="88 Nanjing Rd", latitude=31.2, longitude=121.4),
        placed_at=T0,
    )
    fields.update(overrides)
    return OrderReceived.model_validate(fields)


def test_encoded_event_carries_the_confluent_wire_header() -> None:
    data = CODEC.encode(received())
    magic, schema_id = struct.unpack_from(">bI", data)
    assert magic == 0
    assert schema_id == CODEC.schema_ids.latest("OrderReceived").schema_id


lines = st.lists(
    st.builds(
        OrderLine,
        sku=st.text(min_size=1, max_size=12),
        name=st.text(max_size=20),
        quantity=st.integers(-5, 1000),
        unit_price=st.integers(0, 10**9),
    ),
    max_size=6,
)


@given(
    lines=lines,
    total=st.integers(-(2**62), 2**62),
    note=st.none() | st.text(max_size=40),
    shift=st.integers(-(10**6), 10**6),
)
def test_order_received_round_trips_exactly(
    lines: list[OrderLine], total: int, note: str | None, shift: int
) -> None:
    event = received(
        lines=lines, total=total, notes=note, occurred_at=T0 + timedelta(seconds=shift)
    )
    assert CODEC.decode(CODEC.encode(event)) == event


def test_rejection_and_dead_letter_round_trip() -> None:
    rejected = OrderRejected(
        event_id="e-2",
        order_id="o-1",
        sequence=2,
        occurred_at=T0,
        recorded_at=T0,
        correlation_id="o-1",
        causation_id="e-1",
        actor=Actor(kind=ActorKind.SYSTEM, id="v"),
        channel="webshop",
        external_id="1001",
        reasons=[RejectionReason(code="TOTAL_MISMATCH", field="total", message="off by 1")],
    )
    letter = DeadLetter.of(
        source="webshop", source_ref="f.jsonl:3", reason="not JSON", raw=b"\xff{oops"
    )
    assert CODEC.decode(CODEC.encode(rejected)) == rejected
    assert CODEC.decode(CODEC.encode(letter)) == letter


def test_plain_fastavro_with_only_the_avsc_files_decodes_a_message() -> None:
    data = CODEC.encode(received())
    schema_id = struct.unpack_from(">bI", data)[1]
    registry = json.loads((SCHEMA_DIR / "registry.json").read_text())
    avsc = json.loads((SCHEMA_DIR / registry["schemas"][str(schema_id)]["file"]).read_text())
    record = schemaless_reader(io.BytesIO(data[5:]), parse_schema(avsc), None)
    assert record["event_type"] == "OrderReceived"
    assert record["lines"][0]["name"] == "水饺"
    assert record["total"] == 6100
    assert record["occurred_at"] == T0


@pytest.mark.parametrize(
    ("data", "error", "reason"),
    [
        (b"\x00\x00", CodecError, "too short"),
        (b"\x01\x00\x00\x00\x01abc", CodecError, "magic byte"),
        (b"\x00\x00\x00\x03\xe7abc", UnknownSchemaId, "unknown schema id 999"),
        (b"\x00\x00\x00\x00\x01\xff\xff\xff", CodecError, "corrupt Avro body"),
    ],
)
def test_bad_bytes_raise_a_typed_error_naming_where_they_came_from(
    data: bytes, error: type[Exception], reason: str
) -> None:
    with pytest.raises(error, match=reason) as caught:
        CODEC.decode(data, where="oms.orders.v1/2/41")
    assert caught.value.where == "oms.orders.v1/2/41"  # type: ignore[attr-defined]
    assert "oms.orders.v1/2/41" in str(caught.value)


@pytest.mark.parametrize("model", CONTRACT, ids=lambda m: m.__name__)
def test_committed_avsc_matches_the_pydantic_model(model: type) -> None:
    committed = (SCHEMA_DIR / f"{model.__name__}.avsc").read_text()
    assert committed == render(model), (
        f"schemas/{model.__name__}.avsc is out of date with events.models: regenerate it with "
        "python -c 'from events.avro_schema import write_schemas; write_schemas()'"
    )
