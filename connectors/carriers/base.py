"""The carrier SDK: what every carrier adapter offers, in the terms of this system (issue 13,
docs/carriers.md). A carrier is found through the entry-point group `orderstream.carriers`
(`connectors.carriers.registry`), as a channel is through `orderstream.connectors`, so one
can live in its own package; `connectors.carriers.testing.CarrierConformance` is the kit its
author runs against a fake of the carrier's server.

Four operations, each one signed request in the carrier's published format:
- `quote(request)`: what shipping the parcels would cost, by which service, promised when;
- `create(request, service)`: a shipment bought: its tracking number and label. The request's
  `reference` is the idempotency key (derived from the order and the shipping location): a
  carrier asked twice with one reference answers with the first shipment, never a second one;
- `cancel(shipment)`: the shipment called off before pick-up;
- `track(shipment)`: what the carrier knows of its way (polling), and `parse_push(body,
  headers)` for what it pushes to us (its signature checked first: `PushRefused`).

The values (`events/shipping.py`, shared with the decisions in `streams/`): money is an
integer in minor units plus the currency, as everywhere. Weights are grams and
lengths millimetres. Statuses are the carrier's own text plus one of `TrackingStatus`.
Failures are `connectors.outbound` ones: `TransientFailure` (network, 5xx, throttled: try
again), `PermanentFailure` (the request is refused), `CarrierMisconfigured` (our credentials:
nothing would work), `Unsupported` (the carrier publishes no such call).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar, Protocol, runtime_checkable

from connectors.outbound import PermanentFailure
from events.shipping import (
    Label,
    Parcel,
    Party,
    Quote,
    Shipment,
    ShipmentRequest,
    Temperature,
    TrackingEvent,
    TrackingStatus,
)

__all__ = [
    "Carrier",
    "CarrierMisconfigured",
    "Label",
    "Parcel",
    "Party",
    "PushRefused",
    "Quote",
    "Shipment",
    "ShipmentRequest",
    "Temperature",
    "TrackingEvent",
    "TrackingStatus",
]


class CarrierMisconfigured(PermanentFailure):
    """The carrier refuses our credentials or account: no request of ours would work."""


class PushRefused(ValueError):
    """A push that is not the carrier's (its signature does not verify) or cannot be read."""


@runtime_checkable
class Carrier(Protocol):
    """One carrier's client (credentials and endpoint given to its constructor)."""

    name: ClassVar[str]
    temperatures: ClassVar[frozenset[Temperature]]
    cash_on_delivery: ClassVar[bool]
    push_received: ClassVar[bytes]  # the answer the carrier expects to an accepted push

    def quote(self, request: ShipmentRequest) -> list[Quote]: ...

    def create(self, request: ShipmentRequest, service: str) -> Shipment: ...

    def cancel(self, shipment: Shipment) -> None: ...

    def track(self, shipment: Shipment) -> list[TrackingEvent]: ...

    def parse_push(self, body: bytes, headers: Mapping[str, str]) -> list[TrackingEvent]: ...
