"""Sample payloads: JSON written as the channels write it, money included."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from connectors.money import decimal_number
from connectors.samples import payload_json

DOCUMENT = {
    "id": "7",
    "name": "酸辣汤",
    "quantity": 2,
    "weight": 1.5,
    "book": False,
    "deliverTime": None,
    "groups": [{"items": [], "note": '少辣, "hot"'}],
    "tags": {},
}


def test_a_document_without_decimals_is_written_as_json_dumps_writes_it() -> None:
    assert payload_json(DOCUMENT) == json.dumps(DOCUMENT, ensure_ascii=False)
    assert payload_json(DOCUMENT, compact=True) == json.dumps(
        DOCUMENT, ensure_ascii=False, separators=(",", ":")
    )


def test_decimal_amounts_are_written_as_json_numbers_exactly() -> None:
    detail = [
        {
            "price": decimal_number(2800, currency="CNY"),
            "box_price": Decimal("0.05"),
            "reduce_fee": decimal_number(-1250, currency="CNY"),
        }
    ]
    text = payload_json(detail, compact=True)
    assert text == '[{"price":28.0,"box_price":0.05,"reduce_fee":-12.5}]'
    assert json.loads(text, parse_float=Decimal) == [
        {"price": Decimal("28.0"), "box_price": Decimal("0.05"), "reduce_fee": Decimal("-12.5")}
    ]


def test_what_json_cannot_carry_is_refused() -> None:
    with pytest.raises(ValueError):
        payload_json({"total": Decimal("NaN")})
    with pytest.raises(TypeError):
        payload_json({1: "a key that is not text"})
