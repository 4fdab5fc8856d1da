"""A return label bought through the carrier SDK (oms/returns.py `buy_label`), against a fake
carrier: the customer sends, the return location receives, keyed by `return_id@location`."""

from __future__ import annotations

from events.models import ReturnApproved, ReturnLine
from events.shipping import Party, Quote, Shipment, ShipmentRequest, Temperature
from oms.returns import buy_label, view_of
from oms.shipping import ShippingConfig
from tests.factories import T0
from tests.streams.test_returns import requested, then


class FakeCarrier:
    """A fake carrier (unit test only): quotes one service, remembers what it sold."""

    name = "fake"
    temperatures = frozenset({Temperature.AMBIENT})
    cash_on_delivery = False
    push_received = b""

    def __init__(self) -> None:
        self.sold: list[ShipmentRequest] = []

    def quote(self, request: ShipmentRequest) -> list[Quote]:
        return [Quote(carrier="fake", service="std", service_name="Standard", price=1200,
                      currency="CNY")]  # fmt: skip

    def create(self, request: ShipmentRequest, service: str) -> Shipment:
        self.sold.append(request)
        return Shipment(carrier="fake", reference=request.reference, tracking_number="T1",
                        service=service, price=1200, currency="CNY")  # fmt: skip


def test_a_return_label_reverses_the_parties_and_is_keyed_by_return_and_location() -> None:
    warehouse = Party(name="退货仓", phone="021-1", city="上海市", street="仓库路 1 号")
    events = [*requested(ReturnLine(sku="MUG", quantity=1)),
              then(ReturnApproved, 4, return_id="R1", return_location="WH-2")]  # fmt: skip
    carrier = FakeCarrier()
    config = ShippingConfig(origins={"WH-2": warehouse})
    label = buy_label(view_of(events), "o-1", "R1", carriers={"fake": carrier}, config=config,
                      by="desk", now=T0)  # fmt: skip
    sold = carrier.sold[0]
    assert sold.recipient == warehouse and sold.sender.street == "88 Nanjing Rd"
    assert sold.reference == "R1@WH-2" and sold.cod_amount is None
    assert (label.reference, label.tracking_number, label.return_location, label.cost) == (
        "R1@WH-2", "T1", "WH-2", 1200)  # fmt: skip
