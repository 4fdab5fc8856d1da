"""Money at the channel edge: a channel's decimal amount to integer minor units, and back.

Inside OrderStream money is an `int` in the currency's minor units (fen, cents, yen), never a
float. Channels write decimal text ("12.50") or JSON numbers (12.5); `minor_units` turns
either into minor units in decimal arithmetic, never float, and refuses what it cannot carry:
lost precision, non-numbers, and amounts whose minor units do not fit in 64 bits (the
contract's Avro long). The size is judged from the exponent before any digit is expanded, so
"1e999990" is refused in microseconds instead of being built as a million-digit integer.
`decimal_text` and `decimal_number` go the other way, for the payloads the SDK writes (each
channel's `sample_payload`, which the simulator sends).
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from connectors.rejections import PayloadRejected

# ISO-4217 minor-unit exponents that differ from 2 (the rest use 2).
_EXPONENTS = {
    "JPY": 0,
    "KRW": 0,
    "VND": 0,
    "CLP": 0,
    "ISK": 0,
    "BHD": 3,
    "KWD": 3,
    "OMR": 3,
    "JOD": 3,
    "TND": 3,
}
_PLAIN_AMOUNT = re.compile(r"-?(\d{1,15})(?:\.(\d{1,6}))?")
# The contract's integers (amounts, quantities) travel as Avro longs.
LONG_MIN, LONG_MAX = -(2**63), 2**63 - 1
_LONG_DIGITS = 19  # 2**63 has 19 digits: an amount of 20 or more cannot fit
_SHOWN = 40  # characters of a refused amount quoted in the reason


def minor_units(amount: str | int | float | Decimal, *, currency: str, field: str) -> int:
    """A decimal amount ("12.34", "-3", 12.34, Decimal("12.34")) in the currency's minor units
    (1234 for CNY). Raises `PayloadRejected` naming `field` for text that is not a plain
    decimal amount, infinities and NaN, more decimals than the currency has, and amounts whose
    minor units do not fit in 64 bits."""
    exponent = minor_unit_exponent(currency)
    if isinstance(amount, str):
        # Menus and catalogues repeat their prices: remember recent conversions.
        key = (amount, exponent)
        cached = _AMOUNTS.get(key)
        if cached is None:
            cached = _AMOUNTS[key] = _convert(amount, exponent, currency, field)
            if len(_AMOUNTS) > 4096:
                _AMOUNTS.clear()
        return cached
    return _convert(amount, exponent, currency, field)


def decimal_text(minor: int, *, currency: str) -> str:
    """Minor units as decimal text with all of the currency's decimals: 1250 → "12.50",
    -50 → "-0.50", 1200 JPY → "1200". How Shopify, WooCommerce, Tmall and JD write money."""
    exponent = minor_unit_exponent(currency)
    if exponent == 0:
        return str(minor)
    whole, fraction = divmod(abs(minor), 10**exponent)
    return f"{'-' if minor < 0 else ''}{whole}.{fraction:0{exponent}d}"


def decimal_number(minor: int, *, currency: str) -> Decimal:
    """Minor units as the exact decimal a JSON number of the channel reads as, trailing zeros
    dropped but one decimal kept: 2800 → 28.0, 1550 → 15.5, 1234 → 12.34. Meituan and Ele.me
    write yuan like this (their Java doubles printed); a `Decimal`, so no float on the way."""
    text = decimal_text(minor, currency=currency)
    if "." in text:
        text = text.rstrip("0")
        text += "0" if text.endswith(".") else ""
    return Decimal(text)


def minor_unit_exponent(currency: str) -> int:
    """How many decimals the currency's minor unit has: 2 for CNY, 0 for JPY, 3 for KWD."""
    if currency.isupper():
        return _EXPONENTS.get(currency, 2)
    return _EXPONENTS.get(currency.upper(), 2)


_AMOUNTS: dict[tuple[str, int], int] = {}


def _convert(amount: str | int | float | Decimal, exponent: int, currency: str, field: str) -> int:
    if isinstance(amount, str) and (match := _PLAIN_AMOUNT.fullmatch(amount)):
        # The common case without Decimal: "128", "128.5", "128.50", "-3.00" (at most 15
        # digits before the point and 3 decimals after it always fit in 64 bits).
        whole, fraction = match.group(1), match.group(2) or ""
        if len(fraction) <= exponent:
            units = int(whole + fraction.ljust(exponent, "0"))
            return -units if amount.startswith("-") else units
    if isinstance(amount, int) and not isinstance(amount, bool):
        if abs(amount) >= 10**_LONG_DIGITS:  # compared, never printed: it may have 10**6 digits
            raise PayloadRejected(_too_large(amount), field=field)
        value = Decimal(amount)
    elif isinstance(amount, Decimal):
        value = amount
    else:
        try:
            value = Decimal(str(amount))
        except (InvalidOperation, ValueError):
            raise PayloadRejected(
                f"{_shown(amount)} is not a decimal amount", field=field
            ) from None
    if not value.is_finite():
        raise PayloadRejected(f"{_shown(amount)} is not a finite amount", field=field)
    if not value:
        return 0
    # The size first, from the exponent alone: "1e999990" must not become a million digits.
    if value.adjusted() + exponent >= _LONG_DIGITS:
        raise PayloadRejected(_too_large(amount), field=field)
    negative, digits, power = value.as_tuple()
    assert isinstance(power, int)  # finite
    shift = power + exponent  # the power of ten of the last digit, in minor units
    if shift < 0:
        if any(digits[shift:]):
            raise PayloadRejected(
                f"{_shown(amount)} has more decimals than {currency} allows ({exponent})",
                field=field,
            )
        digits = digits[:shift]
    units = int("".join(map(str, digits)) or "0") * 10 ** max(shift, 0)
    units = -units if negative else units
    if not LONG_MIN <= units <= LONG_MAX:
        raise PayloadRejected(_too_large(amount), field=field)
    return units


def _too_large(amount: object) -> str:
    return f"{_shown(amount)} is too large: its minor units do not fit in 64 bits"


def _shown(amount: object) -> str:
    """The amount as quoted in a rejection, cut short if a channel sent something huge."""
    if isinstance(amount, int) and amount.bit_length() > 128:
        return f"an integer of {amount.bit_length()} bits"  # repr would spell out every digit
    text = repr(amount)
    return text if len(text) <= _SHOWN else f"{text[: _SHOWN - 1]}… ({len(text)} characters)"
