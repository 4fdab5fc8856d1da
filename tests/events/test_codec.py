from __future__ import annotations

import io
import json
import struct
from datetime import timedelta
from pathlib import Path

import pytest
from fastavro import parse_schema, schemaless_reader, schemaless_writer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from events.avro_schema import CONTRACT, SCHEMA_DIR
from events.codec import AvroCodec, CodecError, LocalSchemaIds, UnknownSchemaId
from events.models import (
    Actor,
    ActorKind,
    DeadLetter,
    OrderAccepted,
    OrderLine,
    OrderRejected,
    RejectionReason,
)
from tests.factories import T0, received, strategy_for

CODEC = AvroCodec()


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


@pytest.mark.parametrize("native", [True, False], ids=["native", "python"])
@pytest.mark.parametrize(
    ("update", "reason"),
    [
        ({"total": -(2**63) - 1}, f"total: {-(2**63) - 1} does not fit in 64 bits"),
        (
            {"lines": [OrderLine(sku="A", name="a", quantity=1, unit_price=1),
                       OrderLine(sku="B", name="b", quantity=2**70, unit_price=1)]},
            f"lines[1].quantity: {2**70} does not fit in 64 bits",
        ),
        ({"notes": "ok \ud800"}, "notes: not UTF-8 text (surrogates not allowed at 3)"),
    ],
)  # fmt: skip
def test_an_event_avro_cannot_carry_is_refused_naming_the_field(
    update: dict[str, object], reason: str, native: bool
) -> None:
    # model_copy skips validation, as an event built without the connector SDK's checks may
    event = received().model_copy(update=update)
    with pytest.raises(CodecError) as caught:
        AvroCodec(native=native).encode(event)
    assert str(caught.value) == f"cannot encode OrderReceived: {reason}"


@pytest.mark.parametrize("model", CONTRACT, ids=lambda m: m.__name__)
@settings(max_examples=25, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_contract_model_round_trips(model: type, data: st.DataObject) -> None:
    value = data.draw(strategy_for(model))
    assert CODEC.decode(CODEC.encode(value)) == value


def test_every_contract_model_has_a_registered_schema() -> None:
    for model in CONTRACT:
        registered = CODEC.schema_ids.latest(model.__name__)
        assert registered.name == model.__name__


def test_message_written_with_an_older_schema_version_is_read_with_the_current(
    tmp_path: Path,
) -> None:
    old_schema = json.loads((SCHEMA_DIR / "OrderAccepted.avsc").read_text())
    old_schema["fields"] = [f for f in old_schema["fields"] if f["name"] != "currency"]
    new_schema = json.loads((SCHEMA_DIR / "OrderAccepted.avsc").read_text())
    currency = next(f for f in new_schema["fields"] if f["name"] == "currency")
    currency["default"] = "CNY"
    (tmp_path / "history" / "OrderAccepted").mkdir(parents=True)
    for version, schema in ((1, old_schema), (2, new_schema)):
        path = tmp_path / "history" / "OrderAccepted" / f"v{version}.avsc"
        path.write_text(json.dumps(schema))
    (tmp_path / "registry.json").write_text(json.dumps({"schemas": {
        "7": {"name": "OrderAccepted", "version": 1, "file": "history/OrderAccepted/v1.avsc"},
        "8": {"name": "OrderAccepted", "version": 2, "file": "history/OrderAccepted/v2.avsc"},
    }}))  # fmt: skip
    codec = AvroCodec(LocalSchemaIds(tmp_path))
    record = {"event_type": "OrderAccepted", "schema_version": 1, "event_id": "e", "sequence": 2,
              "occurred_at": T0, "recorded_at": T0, "correlation_id": "c", "causation_id": None,
              "actor": {"kind": "system", "id": "v"}, "order_id": "o", "channel": "webshop",
              "external_id": "1", "total": 100}  # fmt: skip
    body = io.BytesIO()
    body.write(struct.pack(">bI", 0, 7))
    schemaless_writer(body, parse_schema(old_schema), record)
    event = codec.decode(body.getvalue())
    assert isinstance(event, OrderAccepted)
    assert (event.total, event.currency) == (100, "CNY")
