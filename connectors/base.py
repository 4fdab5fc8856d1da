"""The connector SDK: a connector names its channel, parses its payload and verifies signatures.

Ids are deterministic: the same channel order always gets the same order id and event id, so a
redelivery is recognised downstream instead of becoming a second order.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any, ClassVar

from events.models import Actor, ActorKind, OrderReceived, deterministic_id

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


class PayloadRejected(ValueError):
    """A channel payload that cannot become an order; `field` names the offending field."""

    def __init__(self, reason: str, *, field: str | None = None) -> None:
        self.reason = reason
        self.field = field
        super().__init__(f"{field}: {reason}" if field else reason)


class Connector(ABC):
    """One sales channel. Subclasses set `name` and implement `parse`; `verify` if signed."""

    name: ClassVar[str]

    @abstractmethod
    def parse(self, raw: bytes, *, received_at: datetime) -> OrderReceived:
        """Turn one raw channel payload into `OrderReceived`, or raise `PayloadRejected`."""

    def verify(self, headers: Mapping[str, str], body: bytes) -> None:
        """Raise `PayloadRejected` if the signature or token is wrong. Default: unsigned."""
        return None

    def order_id(self, external_id: str) -> str:
        return deterministic_id(self.name, "order", external_id)

    def received_event_id(self, external_id: str) -> str:
        return deterministic_id(self.name, "OrderReceived", external_id)

    def actor(self) -> Actor:
        return Actor(kind=ActorKind.CHANNEL, id=self.name)


def minor_units(amount: Any, *, currency: str, field: str) -> int:
    """A decimal amount ("12.34", 12.34) in the currency's minor units, refusing lost precision."""
    exponent = _EXPONENTS.get(currency.upper(), 2)
    try:
        value = Decimal(str(amount))
    except (InvalidOperation, ValueError):
        raise PayloadRejected(f"{amount!r} is not a decimal amount", field=field) from None
    if not value.is_finite():
        raise PayloadRejected(f"{amount!r} is not a finite amount", field=field)
    scaled = value.scaleb(exponent)
    if scaled != scaled.to_integral_value():
        raise PayloadRejected(
            f"{amount!r} has more decimals than {currency} allows ({exponent})", field=field
        )
    return int(scaled)
