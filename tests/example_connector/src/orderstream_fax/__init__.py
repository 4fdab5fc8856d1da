"""An example third-party connector: fax orders, OCR'd into a small JSON document."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from connectors.base import ChannelEvent, ChannelPayload, Connector, local_time, minor_units
from events.models import Customer, OrderLine, OrderMode, PaymentStatus


class _Line(ChannelPayload):
    item: str
    qty: int
    price: str


class _Fax(ChannelPayload):
    fax_id: str
    received: str
    sender: str
    phone: str
    lines: list[_Line]
    total: str


class FaxConnector(Connector):
    name = "fax"

    def parse(
        self, raw: bytes, *, received_at: datetime, headers: Mapping[str, str] | None = None
    ) -> ChannelEvent:
        fax = self.validate(_Fax, self.load_json(raw))
        return self.order(
            external_id=fax.fax_id,
            placed_at=local_time(fax.received, field="received"),
            received_at=received_at,
            mode=OrderMode.PICKUP,
            currency="CNY",
            lines=[
                OrderLine(
                    sku=line.item,
                    name=line.item,
                    quantity=line.qty,
                    unit_price=minor_units(line.price, currency="CNY", field=f"lines.{i}.price"),
                )
                for i, line in enumerate(fax.lines)
            ],  # fmt: skip
            total=minor_units(fax.total, currency="CNY", field="total"),
            payment_status=PaymentStatus.UNPAID,
            customer=Customer(name=fax.sender, phone=fax.phone),
        )
