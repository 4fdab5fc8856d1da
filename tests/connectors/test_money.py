"""Money at the channel edge: amounts to integer minor units and back, exactly."""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connectors.base import PayloadRejected
from connectors.money import (
    LONG_MAX,
    LONG_MIN,
    decimal_number,
    decimal_text,
    minor_unit_exponent,
    minor_units,
)


@pytest.mark.parametrize(
    ("amount", "currency", "minor"),
    [
        ("12.5", "CNY", 1250),
        ("12.50", "CNY", 1250),
        ("0.10", "CNY", 10),
        ("0.1", "CNY", 10),
        ("128", "CNY", 12800),
        ("-3.00", "CNY", -300),
        ("-0.50", "CNY", -50),
        ("0", "CNY", 0),
        ("-0.00", "CNY", 0),
        ("12.5000000", "CNY", 1250),  # zeros past the currency's decimals lose nothing
        ("1200", "JPY", 1200),
        ("1.000", "JPY", 1),
        ("1.005", "KWD", 1005),
        ("12.34", "usd", 1234),  # the currency code in any case
        ("1E+2", "CNY", 10000),
        (12.5, "CNY", 1250),
        (Decimal("12.50"), "CNY", 1250),
        (5, "CNY", 500),
        (5, "JPY", 5),
    ],
)
def test_an_amount_becomes_exact_minor_units(amount: Any, currency: str, minor: int) -> None:
    assert minor_units(amount, currency=currency, field="total") == minor


def test_the_same_text_is_read_with_each_currencys_exponent() -> None:
    # recent conversions are remembered; the exponent is part of what is remembered
    assert minor_units("12", currency="CNY", field="f") == 1200
    assert minor_units("12", currency="JPY", field="f") == 12
    assert minor_units("12", currency="KWD", field="f") == 12000


@pytest.mark.parametrize(
    ("amount", "currency", "reason"),
    [
        ("12.345", "CNY", "'12.345' has more decimals than CNY allows (2)"),
        ("1.5", "JPY", "'1.5' has more decimals than JPY allows (0)"),
        ("-0.001", "CNY", "'-0.001' has more decimals than CNY allows (2)"),
        # past Decimal's 28 digits of precision: still refused, not rounded to 0.10
        ("0.1000000000000000000000000000001", "CNY", "has more decimals than CNY allows (2)"),
        ("1e-999990", "CNY", "'1e-999990' has more decimals than CNY allows (2)"),
    ],
)
def test_more_decimals_than_the_currency_has_are_refused_naming_the_field(
    amount: str, currency: str, reason: str
) -> None:
    with pytest.raises(PayloadRejected) as rejected:
        minor_units(amount, currency=currency, field="line_items.0.price")
    assert rejected.value.field == "line_items.0.price"
    assert reason in rejected.value.reason


@pytest.mark.parametrize(
    ("amount", "reason"),
    [
        ("1,234.50", "'1,234.50' is not a decimal amount"),  # no channel sends separators
        ("12 yuan", "'12 yuan' is not a decimal amount"),
        ("¥12", "'¥12' is not a decimal amount"),
        ("", "'' is not a decimal amount"),
        (None, "None is not a decimal amount"),
        (True, "True is not a decimal amount"),
        ("NaN", "'NaN' is not a finite amount"),
        ("-Infinity", "'-Infinity' is not a finite amount"),
        (float("inf"), "inf is not a finite amount"),
        (Decimal("sNaN"), "Decimal('sNaN') is not a finite amount"),
    ],
)
def test_what_is_not_a_decimal_amount_is_refused_with_a_reason(amount: Any, reason: str) -> None:
    with pytest.raises(PayloadRejected) as rejected:
        minor_units(amount, currency="CNY", field="total")
    assert (rejected.value.field, rejected.value.reason) == ("total", reason)


def test_amounts_at_the_edges_of_64_bits_are_kept_and_past_them_refused() -> None:
    assert minor_units("92233720368547758.07", currency="CNY", field="f") == LONG_MAX
    assert minor_units("-92233720368547758.08", currency="CNY", field="f") == LONG_MIN
    assert minor_units(str(LONG_MAX), currency="JPY", field="f") == LONG_MAX
    past: list[tuple[str | int, str]] = [
        ("92233720368547758.08", "CNY"),
        ("-92233720368547758.09", "CNY"),
        (str(LONG_MAX + 1), "JPY"),
        ("10000000000000000000", "JPY"),
        (LONG_MAX + 1, "JPY"),
    ]
    for amount, currency in past:
        with pytest.raises(PayloadRejected) as rejected:
            minor_units(amount, currency=currency, field="total")
        assert rejected.value.field == "total"
        assert "do not fit in 64 bits" in rejected.value.reason


@pytest.mark.parametrize(
    "amount",
    [
        "1e999990",
        "-1e999990",
        "1E+999999999",
        Decimal("1e999990"),
        "9" * 200_000,
        "1" + "0" * 200_000 + ".5",
        10**200_000,
        1e300,
    ],
    ids=[
        "1e999990",
        "-1e999990",
        "1E+999999999",
        "Decimal",
        "200k digits",
        "200k digits.5",
        "int 10**200000",
        "1e300",
    ],
)
def test_a_huge_amount_is_refused_at_once_without_building_its_digits(amount: Any) -> None:
    started = time.perf_counter()
    with pytest.raises(PayloadRejected) as rejected:
        minor_units(amount, currency="CNY", field="total")
    elapsed = time.perf_counter() - started
    # Building 10**999992 as an int took 26 s; judging the size from the exponent takes
    # microseconds (the bound leaves room for a busy machine).
    assert elapsed < 0.1, f"took {elapsed:.3f} s"
    assert rejected.value.field == "total"
    assert "do not fit in 64 bits" in rejected.value.reason
    assert len(rejected.value.reason) < 120, "the reason quotes a huge amount only in part"


def test_a_zero_with_a_huge_exponent_is_zero_at_once() -> None:
    started = time.perf_counter()
    assert minor_units("0E+999999", currency="CNY", field="f") == 0
    assert minor_units("-0E-999999", currency="CNY", field="f") == 0
    assert time.perf_counter() - started < 0.1


@pytest.mark.parametrize(
    ("minor", "currency", "text"),
    [
        (1250, "CNY", "12.50"),
        (0, "CNY", "0.00"),
        (5, "CNY", "0.05"),
        (-50, "CNY", "-0.50"),
        (-1250, "CNY", "-12.50"),
        (1200, "JPY", "1200"),
        (-1200, "JPY", "-1200"),
        (1005, "KWD", "1.005"),
        (1250, "usd", "12.50"),
        (LONG_MAX, "CNY", "92233720368547758.07"),
    ],
)
def test_minor_units_are_written_with_all_the_currencys_decimals(
    minor: int, currency: str, text: str
) -> None:
    assert decimal_text(minor, currency=currency) == text


@pytest.mark.parametrize(
    ("minor", "currency", "number"),
    [
        (2800, "CNY", "28.0"),
        (1550, "CNY", "15.5"),
        (1234, "CNY", "12.34"),
        (5, "CNY", "0.05"),
        (0, "CNY", "0.0"),
        (-300, "CNY", "-3.0"),
        (1200, "JPY", "1200"),
        (1500, "KWD", "1.5"),
    ],
)
def test_a_decimal_number_drops_trailing_zeros_but_keeps_one_decimal(
    minor: int, currency: str, number: str
) -> None:
    value = decimal_number(minor, currency=currency)
    assert isinstance(value, Decimal)
    assert str(value) == number


@given(st.integers(LONG_MIN, LONG_MAX), st.sampled_from(["CNY", "JPY", "KWD", "USD"]))
def test_written_amounts_read_back_to_the_same_minor_units(minor: int, currency: str) -> None:
    assert (
        minor_units(decimal_text(minor, currency=currency), currency=currency, field="f") == minor
    )
    number = decimal_number(minor, currency=currency)
    assert minor_units(number, currency=currency, field="f") == minor
    assert minor_units(str(number), currency=currency, field="f") == minor


@given(st.integers(-(10**15), 10**15))
def test_a_decimal_number_reads_as_the_float_a_channel_would_print(fen: int) -> None:
    # Meituan and Ele.me print yuan as a double prints: the sample payloads used `fen / 100`
    # and write the same text without the float.
    assert str(decimal_number(fen, currency="CNY")) == repr(fen / 100)


def test_currencies_have_their_iso_4217_exponent() -> None:
    exponents = {c: minor_unit_exponent(c) for c in ("CNY", "USD", "JPY", "krw", "KWD", "BHD")}
    assert exponents == {"CNY": 2, "USD": 2, "JPY": 0, "krw": 0, "KWD": 3, "BHD": 3}
