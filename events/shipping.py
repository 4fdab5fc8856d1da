"""Shipping values shared by the carrier adapters (`connectors/carriers/`, which call the
carriers) and the shipping decisions (`streams/rate_shopping.py`): what a shipment asks for,
what a carrier quotes, what it answers and what it reports, in this system's terms (money in
minor units, grams, millimetres, UTC, statuses normalised). docs/carriers.md."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field


class Temperature(StrEnum):
    """What a parcel must be kept at on its way (cold chain for chilled and frozen goods)."""

    AMBIENT = "ambient"
    CHILLED = "chilled"  # 0-8 °C
    FROZEN = "frozen"  # -18 °C or colder


class TrackingStatus(StrEnum):
    """A carrier's status, normalised; `DELIVERED` leads to `OrderDelivered`."""

    CREATED = "created"  # label bought, not picked up yet
    PICKED_UP = "picked_up"
    IN_TRANSIT = "in_transit"
    OUT_FOR_DELIVERY = "out_for_delivery"
    DELIVERED = "delivered"
    EXCEPTION = "exception"
    RETURNED_TO_SENDER = "returned_to_sender"
    CANCELLED = "cancelled"


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Party(_Model):
    """A sender or a recipient. Personal data: opened only to buy the label, never logged."""

    name: str
    phone: str
    country: str = Field(default="CN", description="ISO 3166-1 alpha-2")
    province: str | None = None
    city: str
    district: str | None = None
    street: str
    postal_code: str | None = None
    company: str | None = None
    email: str | None = None


class Parcel(_Model):
    weight_g: int = Field(gt=0)
    length_mm: int | None = Field(default=None, gt=0)
    width_mm: int | None = Field(default=None, gt=0)
    height_mm: int | None = Field(default=None, gt=0)
    description: str = Field(default="goods", description="what is inside, for the waybill")

    @property
    def volume_cm3(self) -> int | None:
        if self.length_mm and self.width_mm and self.height_mm:
            return self.length_mm * self.width_mm * self.height_mm // 1000
        return None


class ShipmentRequest(_Model):
    reference: str = Field(
        description="the idempotency key: derived from order and shipping location; the "
        "carrier's customer order number (orderId, 客户订单号)"
    )
    sender: Party
    recipient: Party
    parcels: list[Parcel] = Field(min_length=1)
    temperature: Temperature = Temperature.AMBIENT
    currency: str = "CNY"
    declared_value: int | None = Field(default=None, description="minor units, for insurance")
    cod_amount: int | None = Field(default=None, description="cash on delivery, minor units")
    ship_at: datetime | None = Field(default=None, description="when it is handed over")

    @property
    def weight_g(self) -> int:
        return sum(parcel.weight_g for parcel in self.parcels)


class Quote(_Model):
    carrier: str
    service: str = Field(description="the carrier's product code, e.g. SF 标快 '2'")
    service_name: str
    price: int = Field(ge=0, description="minor units of `currency`")
    currency: str
    promised_by: datetime | None = Field(default=None, description="delivery promised by")
    temperatures: frozenset[Temperature] = frozenset({Temperature.AMBIENT})
    cash_on_delivery: bool = False


class Label(_Model):
    """A label document: what a printer takes (PDF, or ZPL for thermal printers)."""

    media_type: str = Field(description="application/pdf, or application/zpl")
    content: bytes


class Shipment(_Model):
    carrier: str
    reference: str
    tracking_number: str
    service: str
    carrier_id: str | None = Field(
        default=None, description="the carrier's own id of the shipment, where it has one"
    )
    price: int | None = None
    currency: str | None = None
    label: Label | None = Field(default=None, description="None where it is printed locally")


class TrackingEvent(_Model):
    tracking_number: str
    status: TrackingStatus
    carrier_status: str = Field(description="the carrier's own code or text")
    at: datetime
    description: str | None = None
    place: str | None = None
