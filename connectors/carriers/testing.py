"""Conformance kit for carrier authors: subclass, point it at a fake of your carrier's server
(one that checks signatures and required fields as the real one does), run pytest.

    from connectors.carriers.testing import CarrierConformance

    class TestMyCarrier(CarrierConformance):
        @pytest.fixture
        def carrier(self, fake_server) -> MyCarrier:
            return MyCarrier(key="k", secret="s", api_url=fake_server.url)

        @pytest.fixture
        def wrong_secret(self, fake_server) -> MyCarrier:
            return MyCarrier(key="k", secret="wrong", api_url=fake_server.url)

        @pytest.fixture
        def push(self, fake_server) -> tuple[bytes, dict[str, str]]:
            return fake_server.signed_push(...)  # a status push as the carrier signs it

What the kit checks is what the rest of the system relies on (docs/carriers.md): quotes in
integer minor units naming the carrier and its service; no quote for a temperature the carrier
cannot keep; one shipment per reference however often `create` is asked; tracking events
normalised to `TrackingStatus`, in time order; a push whose signature is wrong refused; our
own wrong credentials told apart (`CarrierMisconfigured`) from a refused request.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from connectors.carriers.base import (
    Carrier,
    CarrierMisconfigured,
    Parcel,
    Party,
    PushRefused,
    Shipment,
    ShipmentRequest,
    Temperature,
    TrackingEvent,
    TrackingStatus,
)

SENDER = Party(
    name="杭州仓",
    phone="057188888888",
    province="浙江省",
    city="杭州市",
    district="余杭区",
    street="文一西路 969 号",
    postal_code="311121",
)
RECIPIENT = Party(
    name="张三",
    phone="13800000000",
    province="广东省",
    city="深圳市",
    district="南山区",
    street="科技园南区 1 栋",
    postal_code="518057",
)


def shipment_request(reference: str = "o-1001@W01", **changes: object) -> ShipmentRequest:
    """A domestic (CN) parcel of 1.2 kg; `changes` override any field."""
    fields: dict[str, object] = {
        "reference": reference,
        "sender": SENDER,
        "recipient": RECIPIENT,
        "parcels": [Parcel(weight_g=1200, length_mm=300, width_mm=200, height_mm=100)],
        "declared_value": 19900,
        "ship_at": datetime(2026, 12, 7, 9, 0, tzinfo=UTC),
    }
    return ShipmentRequest.model_validate(fields | changes)


class CarrierConformance:
    """Fixtures to provide: `carrier`, `wrong_secret` (the same carrier with a wrong secret)
    and `push` (a status push for a shipment this carrier made, signed as the carrier signs
    it: body and headers). Override `request` for a carrier that does not ship within China."""

    @pytest.fixture
    def request_(self) -> ShipmentRequest:
        return shipment_request()

    def test_quotes_name_the_carrier_and_a_service_in_minor_units(
        self, carrier: Carrier, request_: ShipmentRequest
    ) -> None:
        quotes = carrier.quote(request_)
        assert quotes, "no quote for an ordinary parcel"
        for quote in quotes:
            assert quote.carrier == carrier.name
            assert quote.service and quote.service_name
            assert isinstance(quote.price, int) and quote.price > 0
            assert len(quote.currency) == 3
            assert request_.temperature in quote.temperatures
        assert len({q.service for q in quotes}) == len(quotes)

    def test_no_quote_for_a_temperature_the_carrier_cannot_keep(
        self, carrier: Carrier, request_: ShipmentRequest
    ) -> None:
        for temperature in Temperature:
            quotes = carrier.quote(request_.model_copy(update={"temperature": temperature}))
            if temperature not in carrier.temperatures:
                assert quotes == []
            else:
                assert all(temperature in q.temperatures for q in quotes)

    def test_one_shipment_per_reference_however_often_it_is_asked(
        self, carrier: Carrier, request_: ShipmentRequest
    ) -> None:
        service = carrier.quote(request_)[0].service
        first = carrier.create(request_, service)
        assert first.carrier == carrier.name and first.reference == request_.reference
        assert first.tracking_number
        again = carrier.create(request_, service)
        assert again.tracking_number == first.tracking_number
        other = carrier.create(request_.model_copy(update={"reference": "o-1002@W01"}), service)
        assert other.tracking_number != first.tracking_number

    def test_tracking_is_normalised_and_in_time_order(
        self, carrier: Carrier, request_: ShipmentRequest
    ) -> None:
        shipment = carrier.create(request_, carrier.quote(request_)[0].service)
        events = carrier.track(shipment)
        assert all(isinstance(e, TrackingEvent) for e in events)
        assert all(e.tracking_number == shipment.tracking_number for e in events)
        assert all(isinstance(e.status, TrackingStatus) and e.carrier_status for e in events)
        assert [e.at for e in events] == sorted(e.at for e in events)

    def test_a_shipment_can_be_cancelled(self, carrier: Carrier, request_: ShipmentRequest) -> None:
        shipment = carrier.create(request_, carrier.quote(request_)[0].service)
        carrier.cancel(shipment)

    def test_a_signed_push_is_read_and_a_tampered_one_refused(
        self, carrier: Carrier, push: tuple[bytes, dict[str, str]]
    ) -> None:
        body, headers = push
        events = carrier.parse_push(body, headers)
        assert events and all(isinstance(e.status, TrackingStatus) for e in events)
        tampered = body.replace(b"1", b"2", 1) if b"1" in body else body + b" "
        with pytest.raises(PushRefused):
            carrier.parse_push(tampered, headers)

    def test_our_wrong_secret_is_told_apart_from_a_refused_request(
        self, wrong_secret: Carrier, request_: ShipmentRequest
    ) -> None:
        with pytest.raises(CarrierMisconfigured):
            wrong_secret.quote(request_)


__all__ = ["RECIPIENT", "SENDER", "CarrierConformance", "Shipment", "shipment_request"]
