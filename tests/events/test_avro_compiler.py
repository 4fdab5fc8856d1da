"""The compiled codec writes exactly what fastavro writes, and reads it back."""

from __future__ import annotations

import io

import pytest
from fastavro import parse_schema, schemaless_writer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from events.avro_compiler import compile_decoder, compile_encoder
from events.avro_schema import CONTRACT, avro_schema
from events.codec import AvroCodec, CodecError
from events.models import OrderLine
from tests.factories import received, strategy_for


def fastavro_bytes(value: object, schema: dict[str, object], version: int = 1) -> bytes:
    record = value.model_dump()  # type: ignore[attr-defined]
    record["event_type"] = type(value).__name__
    record["schema_version"] = version
    out = io.BytesIO()
    schemaless_writer(out, parse_schema(schema), record)
    return out.getvalue()


@pytest.mark.parametrize("model", CONTRACT, ids=lambda m: m.__name__)
@settings(max_examples=30, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_compiled_bytes_equal_fastavro_bytes(model: type, data: st.DataObject) -> None:
    schema = avro_schema(model)
    value = data.draw(strategy_for(model))
    out = bytearray()
    compile_encoder(schema, model)(value, out, 1)
    assert bytes(out) == fastavro_bytes(value, schema)
    decoded, end = compile_decoder(schema, model)(bytes(out), 0)
    assert decoded == value and end == len(out)


def test_values_past_the_small_varint_table_round_trip() -> None:
    schema = avro_schema(type(received()))
    long_name = "饺" * 10_000  # a 30 kB string: its length needs a 3-byte varint
    order = received(
        total=-(2**63),
        lines=[OrderLine(sku="A", name=long_name, quantity=2**40, unit_price=2**63 - 1)],
    )
    out = bytearray()
    compile_encoder(schema, type(order))(order, out, 1)
    assert bytes(out) == fastavro_bytes(order, schema)
    assert compile_decoder(schema, type(order))(bytes(out), 0)[0] == order


@pytest.mark.parametrize("cut", [6, 20, 60, -1])
def test_truncated_message_is_a_codec_error(cut: int) -> None:
    data = AvroCodec().encode(received())
    with pytest.raises(CodecError, match="corrupt Avro body"):
        AvroCodec().decode(data[:cut], where="t/0/0")


def test_trailing_bytes_are_a_codec_error() -> None:
    data = AvroCodec().encode(received())
    with pytest.raises(CodecError, match="1 bytes left over"):
        AvroCodec().decode(data + b"\x00")
