"""The edge's bounds (connectors/limits.py) and the SDK pieces that apply them."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from connectors.base import (
    Amount,
    AwareChannelTime,
    ChannelPayload,
    ChannelTime,
    Connector,
    PayloadRejected,
    from_epoch,
    same_signature,
)
from connectors.limits import (
    MAX_BODY_BYTES,
    MAX_DEPTH,
    MAX_DIGITS,
    MAX_REASON_CHARS,
    MAX_TEXT_CHARS,
    check_json,
    check_times,
    dead_letter,
)
from connectors.webshop import WebshopConnector
from events.codec import AvroCodec
from infra.kafka import MAX_MESSAGE_BYTES
from infra.settings import Settings
from tests.conftest import FIXTURES
from tests.connectors.conftest import RECORD_FRAMING

NOW = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)
WINDOW = (timedelta(days=30), timedelta(days=1))


def nested(depth: int) -> bytes:
    return b'{"a":' * (depth - 1) + b"[1]" + b"}" * (depth - 1)


def test_json_as_deep_as_the_limit_is_read_and_one_level_more_is_refused() -> None:
    check_json(nested(MAX_DEPTH))
    with pytest.raises(PayloadRejected, match=f"nested more than {MAX_DEPTH} deep"):
        check_json(nested(MAX_DEPTH + 1))


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 1_000, 500_000])
def test_deep_json_is_refused_before_the_parser_recurses(depth: int) -> None:
    for raw in (b"[" * depth + b"]" * depth, b"[" * depth):  # closed or not
        with pytest.raises(PayloadRejected, match="nested"):
            Connector.load_json(raw)


def test_brackets_and_digits_inside_strings_are_text() -> None:
    text = "[" * 5000 + "9" * 5000 + '\\"{'
    check_json(json.dumps({"note": text, "deep": [[[1]]]}).encode())


@pytest.mark.parametrize(
    "number", ["1" * (MAX_DIGITS + 1), "-" + "9" * 4301, "1" * 5000, "0." + "0" * 60 + "1"]
)
def test_a_number_of_more_digits_than_any_amount_has_is_refused_unconverted(number: str) -> None:
    with pytest.raises(PayloadRejected, match=f"at most {MAX_DIGITS} are read"):
        Connector.load_json(f'{{"total": {number}}}'.encode())
    check_json(f'{{"total": {"1" * MAX_DIGITS}, "price": 3.3333333333333335}}'.encode())


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "raw",
    [
        b'"' + b'\\"' * 500_000,  # an unterminated string of escaped quotes
        b'["' * 300_000,
        b"[" * 1_000_000,
        b'{"a":"\\\\"' * 100_000,
        b"1" * 1_000_000,
    ],
)
def test_the_scan_of_a_mebibyte_is_linear_whatever_it_holds(raw: bytes) -> None:
    """A backtracking scan would take hours on these (each is quadratic for a naive string
    pattern); the linear one takes milliseconds, far inside the timeout."""
    with pytest.raises(PayloadRejected):
        Connector.load_json(raw)


@pytest.mark.parametrize(
    "raw", [b'{"a": "\\ud800"}', b'{"a": "\\udc00x"}', b"\xff", b'"\xed\xa0\x80"']
)
def test_text_that_is_not_unicode_is_refused_when_read(raw: bytes) -> None:
    """A lone surrogate would pass `json.loads` and fail only when the event is encoded."""
    with pytest.raises(PayloadRejected, match="not JSON"):
        Connector.load_json(raw)


class _Note(ChannelPayload):
    note: str = ""


def test_a_text_field_over_its_cap_is_refused_naming_the_field() -> None:
    Connector.validate(_Note, {"note": "x" * MAX_TEXT_CHARS})
    with pytest.raises(PayloadRejected) as caught:
        Connector.validate(_Note, {"note": "宫" * (MAX_TEXT_CHARS + 1)})
    assert caught.value.field == "note"


def test_a_text_over_its_cap_in_a_real_payload_is_refused_naming_it() -> None:
    document = json.loads((FIXTURES / "webshop" / "ship_order.json").read_bytes())
    document["note"] = "请放前台" * 300
    with pytest.raises(PayloadRejected) as caught:
        WebshopConnector().parse(json.dumps(document).encode(), received_at=NOW)
    assert caught.value.field == "note"


class _Money(ChannelPayload):
    total: Amount = Decimal(0)


@pytest.mark.parametrize("amount", ["9e999999", "-9E+999999", "1e19", "NaN", "Infinity", 1e300])
def test_an_amount_too_large_to_add_up_is_refused_naming_its_field(amount: object) -> None:
    """Decimal arithmetic on "9e999999" raises decimal.Overflow; such an amount is refused
    when the payload is read, not when the connector adds it up."""
    with pytest.raises(PayloadRejected) as caught:
        Connector.validate(_Money, {"total": amount})
    assert caught.value.field == "total"
    assert Connector.validate(_Money, {"total": "-99999999999999999.99"}).total < 0


class _Times(ChannelPayload):
    at: ChannelTime
    aware: AwareChannelTime | None = None


@pytest.mark.parametrize(
    ("document", "field"),
    [
        ({"at": "9999-12-31T23:59:59-14:00"}, "at"),
        ({"at": "0001-01-01T00:00:00+14:00"}, "at"),
        ({"at": "2026-11-25T12:00:00", "aware": "9999-12-31T23:00:00-02:00"}, "aware"),
        ({"at": "2026-11-25T12:00:00", "aware": "2026-11-25T12:00:00"}, "aware"),
    ],
)
def test_a_time_that_has_no_utc_equivalent_is_refused_naming_it(
    document: dict[str, str], field: str
) -> None:
    with pytest.raises(PayloadRejected) as caught:
        Connector.validate(_Times, document)
    assert caught.value.field == field


def test_a_channel_time_with_an_offset_is_read_in_utc() -> None:
    times = Connector.validate(_Times, {"at": "2026-11-25T12:00:00+08:00"})
    assert times.at == NOW - timedelta(hours=4) and times.at.tzinfo is UTC


@pytest.mark.parametrize("seconds", [10**400, -(10**400), "1" + "0" * 400, float("inf"), "nan"])
def test_an_epoch_beyond_any_date_is_refused_naming_the_field(seconds: object) -> None:
    with pytest.raises(PayloadRejected) as caught:
        from_epoch(seconds, field="ctime")  # type: ignore[arg-type]
    assert caught.value.field == "ctime"


@pytest.mark.parametrize(
    "given", ["签名", "\udcff\udcfe", "\ud800", "ABC\x00", None, 12, ["a"], "a" * 10_000]
)
def test_a_signature_that_is_not_ascii_or_not_text_is_a_mismatch(given: object) -> None:
    assert not same_signature("9F86D081884C7D65", given)
    assert same_signature("9F86D081884C7D65", "9F86D081884C7D65")


# ---- times near receipt


def _event(**times: datetime) -> object:
    document = json.loads((FIXTURES / "webshop" / "ship_order.json").read_bytes())
    event = WebshopConnector().parse(json.dumps(document).encode(), received_at=NOW)
    return event.model_copy(update=times)


@pytest.mark.parametrize(
    ("times", "field"),
    [
        ({"placed_at": NOW - timedelta(days=31)}, "placed_at"),
        ({"placed_at": NOW + timedelta(hours=25)}, "placed_at"),
        ({"placed_at": datetime(9999, 12, 31, tzinfo=UTC)}, "placed_at"),
        ({"placed_at": datetime(1, 1, 1, tzinfo=UTC)}, "placed_at"),
        ({"occurred_at": NOW + timedelta(days=2)}, "occurred_at"),
        ({"requested_at": NOW + timedelta(days=31)}, "requested_at"),
        ({"requested_at": NOW - timedelta(days=31)}, "requested_at"),
    ],
)
def test_a_time_outside_the_window_around_receipt_is_refused_naming_it(
    times: dict[str, datetime], field: str
) -> None:
    with pytest.raises(PayloadRejected) as caught:
        check_times(_event(**times), received_at=NOW, window=WINDOW)  # type: ignore[arg-type]
    assert caught.value.field == field
    assert "OMS_INTAKE_WINDOW" in caught.value.reason


@pytest.mark.parametrize(
    "times",
    [
        {"placed_at": NOW - timedelta(days=29), "occurred_at": NOW - timedelta(days=29)},
        {"placed_at": NOW + timedelta(hours=23), "occurred_at": NOW + timedelta(hours=23)},
        {"requested_at": NOW + timedelta(days=29)},  # a booking, weeks ahead
    ],
)
def test_a_time_inside_the_window_passes(times: dict[str, datetime]) -> None:
    check_times(_event(**times), received_at=NOW, window=WINDOW)  # type: ignore[arg-type]


def test_the_window_is_a_setting_generous_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().intake_window == (timedelta(days=30), timedelta(days=1))
    monkeypatch.setenv("OMS_INTAKE_WINDOW", '["P2D", "PT15M"]')
    assert Settings().intake_window == (timedelta(days=2), timedelta(minutes=15))


# ---- dead letters that always fit


def _on_the_topic(letter: object) -> int:
    """The bytes librdkafka counts against `message.max.bytes` for this dead letter."""
    encoded = AvroCodec().encode(letter)  # type: ignore[arg-type]
    return len(letter.source_ref.encode()) + len(encoded) + RECORD_FRAMING  # type: ignore[attr-defined]


def test_the_largest_refused_body_fits_on_the_dead_letter_topic_with_the_longest_reason() -> None:
    letter = dead_letter(
        source="woocommerce",
        source_ref="webhook:" + "😀" * 5_000,  # a request id as long as a header may be
        reason="🍜" * 50_000,
        raw=b"\xff" * MAX_BODY_BYTES,
    )
    assert letter.raw == b"\xff" * MAX_BODY_BYTES
    assert len(letter.reason) <= MAX_REASON_CHARS
    assert _on_the_topic(letter) <= MAX_MESSAGE_BYTES


@pytest.mark.parametrize("size", [MAX_BODY_BYTES + 1, 1_000_000, 1_048_576, 5 << 20])
def test_a_body_over_the_limit_is_kept_cut_with_its_size_and_digest(size: int) -> None:
    body = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    letter = dead_letter(source="webshop", source_ref="webhook:r-1", reason="too big", raw=body)
    assert letter.raw == body[:MAX_BODY_BYTES]
    assert f"body of {size:,} bytes" in letter.reason
    assert hashlib.sha256(body).hexdigest() in letter.reason
    assert letter.reason.startswith("too big")
    assert _on_the_topic(letter) <= MAX_MESSAGE_BYTES


def test_a_long_reason_is_cut_but_never_loses_the_size_and_digest() -> None:
    body = b"{" * (MAX_BODY_BYTES + 10)
    letter = dead_letter(source="jd", source_ref="r", reason="y" * 10_000, raw=body)
    assert len(letter.reason) <= MAX_REASON_CHARS
    assert hashlib.sha256(body).hexdigest() in letter.reason


def test_a_caller_that_kept_only_the_head_gives_the_size_and_digest_of_all() -> None:
    letter = dead_letter(
        source="jd", source_ref="r", reason="big", raw=b"head", size=9_000_000, sha256="ab" * 32
    )
    assert (letter.raw, "9,000,000 bytes" in letter.reason) == (b"head", True)
    assert "ab" * 32 in letter.reason


def test_a_body_within_the_limit_is_kept_whole_and_the_reason_as_given() -> None:
    letter = dead_letter(source="jd", source_ref="r", reason="not JSON", raw=b"{")
    assert (letter.raw, letter.reason) == (b"{", "not JSON")


def test_the_body_limit_leaves_room_below_the_brokers_message_size() -> None:
    assert MAX_BODY_BYTES < MAX_MESSAGE_BYTES - 8 * MAX_REASON_CHARS
