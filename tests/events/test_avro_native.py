"""The native (Rust) codec writes and reads exactly what the compiled-Python codec does."""

from __future__ import annotations

import shutil

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from events.avro_schema import CONTRACT
from events.codec import NATIVE, AvroCodec, CodecError
from tests.factories import received, strategy_for

needs_native = pytest.mark.skipif(
    not NATIVE and shutil.which("cargo") is None,
    reason="no Rust toolchain on this machine: the pure-Python codec is in use",
)


def test_native_codec_is_built_wherever_cargo_is() -> None:
    if shutil.which("cargo") is not None:
        assert NATIVE, "cargo is installed but orderstream_avro is not: run `make` again"
        assert AvroCodec().native


@needs_native
@pytest.mark.parametrize("model", CONTRACT, ids=lambda m: m.__name__)
@settings(max_examples=30, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_native_and_python_codecs_agree(model: type, data: st.DataObject) -> None:
    native, python = AvroCodec(native=True), AvroCodec(native=False)
    value = data.draw(strategy_for(model))
    encoded = native.encode(value)
    assert encoded == python.encode(value)
    assert native.decode(encoded) == value == python.decode(encoded)


@pytest.mark.parametrize("native", [True, False], ids=["native", "python"])
@pytest.mark.parametrize("cut", [6, 20, 60, -1])
def test_truncated_message_is_a_codec_error_in_both(native: bool, cut: int) -> None:
    codec = AvroCodec(native=native)
    with pytest.raises(CodecError, match="corrupt Avro body"):
        codec.decode(codec.encode(received())[:cut], where="t/0/0")


@pytest.mark.parametrize("native", [True, False], ids=["native", "python"])
def test_a_value_that_does_not_fit_the_schema_is_a_codec_error(native: bool) -> None:
    too_big = received(total=2**64)
    with pytest.raises(CodecError, match="cannot encode OrderReceived"):
        AvroCodec(native=native).encode(too_big)
