"""`oms ship wave LOCATION`: a shipping wave (docs/carriers.md, "Waves and labels"). The
orders ready to ship at a location are read off the order log (with the keys: the recipient's
address goes on the label), each is rate-shopped across the configured carriers
(`streams.rate_shopping`), its label bought with the shipment's reference as the idempotency
key, and the wave's print file written (a packing slip and a 4 × 6 in label per order,
`connectors.carriers.labels`). Then one `ShipmentCreated` per order goes to the order agent as
a command; it checks the order is ready and commits the order's reservations.

Run again after a crash, a wave buys nothing twice: the carriers answer a reference they know
with its first shipment, and each `ShipmentCreated` has an id derived from its reference, so
the order agent takes it once. An order already shipped is no longer ready and is not read.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from connectors.carriers.base import Carrier
from connectors.carriers.labels import SlipLine, WaveItem, WavePrinter
from connectors.outbound import CallFailed, TransientFailure
from events.codec import AvroCodec, CodecError, message_ref
from events.lifecycle import OrderStatus, next_status
from events.models import (
    Actor,
    Event,
    OrderEvent,
    OrderLine,
    OrderMode,
    OrderModified,
    OrderReceived,
    OrderRouted,
    PaymentStatus,
    ShipmentCreated,
    ShippingAlternative,
    deterministic_id,
    utc_now,
)
from events.shipping import Parcel, Party, Quote, Shipment, ShipmentRequest, Temperature
from infra.keystore import private_codec
from infra.publisher import Publisher
from infra.settings import Settings
from oms.tracking_page import shipment_mac, tracking_key
from streams.consolidation import Candidate, consolidate, merged_request, split_cost
from streams.rate_shopping import RateChoice, ShippingRules, choose

log = logging.getLogger(__name__)
T = TypeVar("T")


class ShippingMisconfigured(ValueError):
    """The shipping file is missing or wrong; names the field (exit 78)."""


class ProductShipping(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    weight_g: int = Field(gt=0, description="one unit, packed")
    temperature: Temperature = Temperature.AMBIENT


class ZtoLane(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    origin: str = Field(description="origin province, or * for any")
    destination: str = Field(description="destination province, or * for any")
    first_kg: int = Field(gt=0, description="minor units")
    additional_kg: int = Field(ge=0, description="minor units per further started kg")


class ShippingConfig(BaseModel):
    """OMS_SHIPPING_FILE (JSON): where each location ships from, what products weigh and must
    be kept at, and the rate-shopping rules."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    origins: dict[str, Party] = Field(description="location id → its ship-from address")
    products: dict[str, ProductShipping] = Field(default_factory=dict)
    default_item_g: int = Field(default=500, gt=0, description="a unit of an unlisted SKU")
    box_mm: tuple[int, int, int] = Field(
        default=(300, 200, 150), description="the carton's length, width, height"
    )
    rules: ShippingRules = Field(default_factory=ShippingRules)
    consolidate_within_minutes: int = Field(
        default=60,
        ge=0,
        description="one customer's orders to one address ready within this many minutes of "
        "the first ship as one parcel (streams/consolidation.py); 0: never",
    )
    deliver_within_days: int = Field(
        default=3, ge=1, description="the promise to keep: order placed + this many days"
    )
    tracking_url: str = Field(
        default="http://127.0.0.1:8080/track/{token}",
        description="the customer's tracking page; {token} is the shipment's tracking token",
    )
    zto_rates: list[ZtoLane] = Field(
        default_factory=list, description="ZTO's contract rate card (ZTO publishes no price query)"
    )


def carriers_from_settings(settings: Settings, config: ShippingConfig) -> dict[str, Carrier]:
    """The carriers OMS_CARRIERS names, each with its settings; `ShippingMisconfigured`
    names the setting that is missing (fail closed: a carrier is never half set up). A name
    that is not one of the four built in is looked up among the installed plug-ins, which
    take their settings from the environment themselves."""
    from connectors.carriers.easypost import EasyPost
    from connectors.carriers.jd_logistics import JdLogistics
    from connectors.carriers.registry import registered
    from connectors.carriers.sf_express import SfExpress
    from connectors.carriers.zto import Zto, ZtoRate

    def needed(name: str, value: Any) -> Any:
        if value is None or (isinstance(value, str) and not value.strip()):
            raise ShippingMisconfigured(f"set {name}")
        return value

    built: dict[str, Carrier] = {}
    for name in settings.carriers:
        if name == "sf":
            built[name] = SfExpress(
                partner_id=needed("OMS_SF_PARTNER_ID", settings.sf_partner_id),
                check_word=needed("OMS_SF_CHECK_WORD", settings.sf_check_word),
                monthly_card=settings.sf_monthly_card,
                api_url=settings.sf_api_url,
            )
        elif name == "zto":
            if not config.zto_rates:
                raise ShippingMisconfigured("zto_rates: ZTO is named but has no rate card")
            built[name] = Zto(
                app_key=needed("OMS_ZTO_APP_KEY", settings.zto_app_key),
                app_secret=needed("OMS_ZTO_APP_SECRET", settings.zto_app_secret),
                account_id=needed("OMS_ZTO_ACCOUNT_ID", settings.zto_account_id),
                account_password=needed("OMS_ZTO_ACCOUNT_PASSWORD", settings.zto_account_password),
                rates={
                    (lane.origin, lane.destination): ZtoRate(lane.first_kg, lane.additional_kg)
                    for lane in config.zto_rates
                },
                api_url=settings.zto_api_url,
            )
        elif name == "jdl":
            built[name] = JdLogistics(
                app_key=needed("OMS_JDL_APP_KEY", settings.jdl_app_key),
                app_secret=needed("OMS_JDL_APP_SECRET", settings.jdl_app_secret),
                access_token=needed("OMS_JDL_ACCESS_TOKEN", settings.jdl_access_token),
                customer_code=needed("OMS_JDL_CUSTOMER_CODE", settings.jdl_customer_code),
                api_url=settings.jdl_api_url,
            )
        elif name == "easypost":
            built[name] = EasyPost(
                api_key=needed("OMS_EASYPOST_API_KEY", settings.easypost_api_key),
                webhook_secret=settings.easypost_webhook_secret,
                api_url=settings.easypost_api_url,
            )
        else:
            plugin = next((r for r in registered() if r.name == name), None)
            if plugin is None or plugin.carrier is None:
                why = plugin.error if plugin else "no such carrier is installed"
                raise ShippingMisconfigured(f"OMS_CARRIERS: {name}: {why}")
            built[name] = plugin.carrier()
    if not built:
        raise ShippingMisconfigured("OMS_CARRIERS names no carrier")
    return built


def load_config(path: Path | None) -> ShippingConfig:
    if path is None:
        raise ShippingMisconfigured("OMS_SHIPPING_FILE is not set")
    try:
        return ShippingConfig.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except OSError as exc:
        raise ShippingMisconfigured(f"{path}: cannot be read ({exc.strerror})") from exc
    except ValueError as exc:
        if isinstance(exc, ValidationError):
            wrong = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                for e in exc.errors(include_input=False, include_url=False)
            )
            raise ShippingMisconfigured(f"{path}: {wrong}") from exc
        raise ShippingMisconfigured(f"{path}: not JSON ({exc})") from exc


# ---------------------------------------------------------------- the orders ready to ship


@dataclass
class ReadyOrder:
    received: OrderReceived  # personal data opened
    placed: OrderReceived | OrderModified  # the order as last stated
    location: str  # where it ships from (in a wave: the wave's location)
    status: OrderStatus
    ready_at: datetime
    groups: dict[str, dict[str, int]] = field(default_factory=dict)  # split: location → sku → qty
    shipped_from: set[str] = field(default_factory=set)

    def lines_here(self) -> list[OrderLine]:
        """The lines that leave from `location`: a split order's part there, else all."""
        part = self.groups.get(self.location)
        if not part:
            return list(self.placed.lines)
        here = []
        for line in self.placed.lines:
            quantity = part.get(line.sku, 0)
            if quantity:
                here.append(line.model_copy(update={"quantity": min(quantity, line.quantity)}))
        return here


def the_order_log(settings: Settings) -> Iterator[Event]:
    """The order log to its end as of now, every partition at once (in order within each),
    opened with the keys; what cannot be decoded is passed over (the agent dead-letters it)."""
    from confluent_kafka import Consumer, TopicPartition

    from infra.kafka import consumer_config

    codec = private_codec(settings)
    topic = settings.topics.orders
    consumer = Consumer(
        consumer_config(
            settings.kafka_bootstrap,
            group_id=f"{settings.consumer_group}-ship-reader",
            **{"enable.partition.eof": True, "fetch.max.bytes": 52428800},
        )
    )
    try:
        ends: dict[int, int] = {}
        starts = []
        for partition in consumer.list_topics(topic, timeout=30).topics[topic].partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=30)
            if high > low:
                ends[partition] = high
                starts.append(TopicPartition(topic, partition, low))
        consumer.assign(starts)
        while ends:
            for message in consumer.consume(2000, timeout=0.2):
                if message.error() is not None:
                    continue
                partition, offset = message.partition() or 0, message.offset() or 0
                if offset >= ends.get(partition, 0) - 1:
                    ends.pop(partition, None)
                try:
                    event = codec.decode(
                        message.value() or b"", where=message_ref(topic, partition, offset)
                    )
                except CodecError:
                    continue
                if isinstance(event, Event):
                    yield event
    finally:
        consumer.close()


def ready_to_ship(settings: Settings, location: str) -> list[ReadyOrder]:
    """The orders at `location` that are ready and go by carrier (mode ship), oldest first."""
    orders: dict[str, ReadyOrder] = {}
    for event in the_order_log(settings):
        if not isinstance(event, OrderEvent):
            continue
        known = orders.get(event.order_id)
        if isinstance(event, OrderReceived) and known is None:
            status = next_status(None, OrderReceived)
            known = ReadyOrder(event, event, "", status, event.occurred_at)
            orders[event.order_id] = known
            continue
        if isinstance(event, OrderReceived | OrderModified) and known is not None:
            known.placed = event
        if known is None:
            continue
        known.status = next_status(known.status, type(event))
        there = getattr(event, "location", None)
        if isinstance(there, str) and there:
            known.location = there
        if isinstance(event, OrderRouted):
            known.groups = {
                group.location: {line.sku: line.quantity for line in group.lines}
                for group in event.groups
            }
        if isinstance(event, ShipmentCreated):
            known.shipped_from.add(event.location or known.location)
        if known.status is OrderStatus.READY:
            known.ready_at = event.occurred_at
    # A split order leaves from each of its locations: ready (or shipped from another of them
    # already) and not yet shipped from this one.
    ready = []
    for order in orders.values():
        here = location in order.groups if len(order.groups) > 1 else order.location == location
        if (
            here
            and location not in order.shipped_from
            and order.received.mode is OrderMode.SHIP
            and (
                order.status is OrderStatus.READY
                or (order.status is OrderStatus.SHIPPED and len(order.groups) > 1)
            )
        ):
            order.location = location
            ready.append(order)
    return sorted(ready, key=lambda order: order.ready_at)


# ---------------------------------------------------------------- one order's shipment


def shipment_reference(order_id: str, location: str) -> str:
    """The shipment's idempotency key: one shipment per order and location it leaves from
    (a split order ships once per location)."""
    return f"{order_id}@{location}"


def shipment_request(order: ReadyOrder, config: ShippingConfig) -> ShipmentRequest:
    """What the carriers are asked to carry; `ShippingMisconfigured` when the location has no
    ship-from address, ValueError when the order has no address to ship to."""
    placed, received = order.placed, order.received
    sender = config.origins.get(order.location)
    if sender is None:
        raise ShippingMisconfigured(f"origins.{order.location}: no ship-from address")
    address = placed.address or received.address
    customer = placed.customer or received.customer
    if address is None or not address.text:
        raise ValueError("the order has no address to ship to")
    recipient = Party(
        name=customer.name or "-",
        phone=customer.phone or "-",
        country=address.country or "CN",
        province=address.province,
        city=address.city or "-",
        district=address.district,
        street=address.text,
        postal_code=address.postal_code,
        email=customer.email,
    )
    weight, coldest = 0, Temperature.AMBIENT
    order_of = list(Temperature)
    lines = order.lines_here()
    for line in lines:
        product = config.products.get(line.sku)
        weight += line.quantity * (product.weight_g if product else config.default_item_g)
        if product and order_of.index(product.temperature) > order_of.index(coldest):
            coldest = product.temperature
    length, width, height = config.box_mm
    paying = placed.payment_status or received.payment_status
    cash_on_delivery = paying is PaymentStatus.CASH_ON_DELIVERY
    return ShipmentRequest(
        reference=shipment_reference(placed.order_id, order.location),
        sender=sender,
        recipient=recipient,
        parcels=[
            Parcel(
                weight_g=max(weight, 1),
                length_mm=length,
                width_mm=width,
                height_mm=height,
                description=lines[0].name[:40] if lines else "goods",
            )
        ],
        temperature=coldest,
        currency=placed.currency or received.currency,
        declared_value=placed.total,
        cod_amount=placed.total if cash_on_delivery else None,
    )


# A quote is a question, and a label is bought once per reference however often it is asked
# (the carriers' conformance suite holds each client to that), so a transient failure (a reset
# connection, a 5xx, a rate limit) is asked again after these pauses before it counts.
RETRY_PAUSES_S = (0.2, 1.0)


def asking_again(
    what: str,
    ask: Callable[[], T],
    *,
    pauses_s: Sequence[float] = RETRY_PAUSES_S,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """`ask()`, asked again after each of `pauses_s` while it fails transiently; the last
    `TransientFailure` says how often it was asked. A permanent failure is raised at once."""
    for pause in pauses_s:
        try:
            return ask()
        except TransientFailure as exc:
            log.info("%s failed (%s); asking again in %.1f s", what, exc, pause)
            sleep(pause)
    try:
        return ask()
    except TransientFailure as exc:
        raise TransientFailure(f"{exc} (asked {len(pauses_s) + 1} times)") from exc


def quotes_for(
    request: ShipmentRequest,
    carriers: Mapping[str, Carrier],
    *,
    pauses_s: Sequence[float] = RETRY_PAUSES_S,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[list[Quote], dict[str, str]]:
    """Every carrier's quotes; a carrier that fails is left out with why (the others go on).
    A transient failure is asked again (`asking_again`); a permanent one is not."""
    found: list[Quote] = []
    failed: dict[str, str] = {}
    for name, carrier in carriers.items():
        try:
            found += asking_again(
                f"carrier {name}: a quote",
                lambda carrier=carrier: carrier.quote(request),  # type: ignore[misc]
                pauses_s=pauses_s,
                sleep=sleep,
            )
        except CallFailed as exc:
            failed[name] = str(exc)
    return found, failed


def what(request: ShipmentRequest) -> str:
    """What was asked for, in a word or three (for the reason a wave did not ship it)."""
    asked = [f"{request.weight_g} g", request.temperature.value]
    if request.cod_amount:
        asked.append("cash on delivery")
    return f"{', '.join(asked)} to {request.recipient.country}"


def alternatives_of(choice: RateChoice) -> list[ShippingAlternative]:
    return [
        ShippingAlternative(
            carrier=a.quote.carrier,
            service=a.quote.service,
            price=a.price,
            currency=a.quote.currency,
            promised_by=a.quote.promised_by,
            lost=a.lost.value,
            detail=a.detail,
        )
        for a in choice.alternatives
    ]


# ---------------------------------------------------------------- the wave


@dataclass
class Shipped:
    order: ReadyOrder  # the first of the parcel's orders (whose reference it has)
    request: ShipmentRequest
    choice: RateChoice
    shipment: Shipment
    together: list[tuple[ReadyOrder, ShipmentRequest]] = field(default_factory=list)

    @property
    def orders(self) -> list[ReadyOrder]:
        """Every order in the parcel (consolidated), the first first."""
        return [order for order, _ in self.together] or [self.order]


@dataclass
class WaveReport:
    wave: str
    location: str
    pdf: Path | None = None
    shipped: list[Shipped] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # order id → why not shipped
    carriers_failed: dict[str, str] = field(default_factory=dict)


def run_wave(
    settings: Settings,
    location: str,
    *,
    carriers: Mapping[str, Carrier],
    config: ShippingConfig,
    by: Actor,
    out_dir: Path,
    limit: int | None = None,
    clock: Callable[[], datetime] = utc_now,
) -> WaveReport:
    """Buy the labels of the orders ready at `location`, write the print file, tell the
    order agent. Returns what was shipped and what was not, with why."""
    now = clock()
    tracking = tracking_key(settings)  # before any label is bought: no key, no wave
    report = WaveReport(wave=f"{location}-{now:%Y%m%dT%H%M%S}", location=location)
    ready = ready_to_ship(settings, location)[:limit]
    candidates: list[Candidate] = []
    asked: dict[str, tuple[ReadyOrder, ShipmentRequest]] = {}
    for order in ready:
        try:
            request = shipment_request(order, config)
        except ValueError as exc:  # (ShippingMisconfigured included)
            report.skipped[order.placed.order_id] = str(exc)
            continue
        candidates.append(Candidate(order.placed.order_id, request, order.ready_at))
        asked[order.placed.order_id] = (order, request)
    parcels = consolidate(candidates, within=timedelta(minutes=config.consolidate_within_minutes))

    def one(parcel: list[Candidate]) -> Shipped | str:
        order = asked[parcel[0].order_id][0]
        request = merged_request(parcel)
        together = [asked[c.order_id] for c in parcel] if len(parcel) > 1 else []
        quotes, failed = quotes_for(request, carriers)
        report.carriers_failed.update(failed)
        deadline = order.received.placed_at + timedelta(days=config.deliver_within_days)
        choice = choose(request, quotes, config.rules, deliver_by=deadline)
        if choice.chosen is None:
            why = (
                "; ".join(
                    f"{a.quote.carrier}:{a.quote.service} {a.lost.value}"
                    for a in choice.alternatives
                )
                or f"no carrier quoted for {what(request)}"
            )
            return f"nothing may carry it: {why}"
        try:
            chosen = choice.chosen
            shipment = asking_again(
                f"carrier {chosen.carrier}: the label of {request.reference}",
                lambda: carriers[chosen.carrier].create(request, chosen.service),
            )
        except CallFailed as exc:
            return f"{choice.chosen.carrier} did not sell the label: {exc}"
        return Shipped(order, request, choice, shipment, together)

    # Each parcel is printed as soon as its label is bought (in the order the orders were
    # ready), while the pool buys the next ones.
    printer = WavePrinter(wave=report.wave, location=location)
    with ThreadPoolExecutor(max_workers=16, thread_name_prefix="wave") as pool:
        for parcel, outcome in zip(parcels, pool.map(one, parcels), strict=True):
            if isinstance(outcome, str):
                for candidate in parcel:
                    report.skipped[candidate.order_id] = outcome
            else:
                report.shipped.append(outcome)
                printer.add(_item(outcome, config, tracking))
    if not report.shipped:
        return report

    out_dir.mkdir(parents=True, exist_ok=True)
    report.pdf = out_dir / f"wave-{report.wave}.pdf"
    report.pdf.write_bytes(printer.finish())

    # (ShipmentCreated carries no personal data: the plain codec, no key store to read.)
    publisher = Publisher(settings, codec=AvroCodec.for_registry(settings.schema_registry_url))
    for page, shipped in enumerate(report.shipped):
        for command in shipment_created(
            shipped, wave=report.wave, label_ref=f"{report.pdf}#label={page + 1}", by=by, now=now
        ):
            publisher.publish(settings.topics.order_commands, command)
    publisher.flush(30)
    return report


def tracking_token(shipment: Shipment, *, order_id: str, key: bytes) -> str:
    """The customer's tracking page token (`GET /track/{token}`, oms/tracking_page.py): the
    order id, so the page finds the order, and a MAC of the shipment under `key`
    (`tracking_page.tracking_key`), so it cannot be guessed; stable per shipment."""
    mac = shipment_mac(
        key, order_id=order_id, carrier=shipment.carrier, tracking_number=shipment.tracking_number
    )
    return f"{order_id}.{mac}"


def _item(shipped: Shipped, config: ShippingConfig, tracking: bytes) -> WaveItem:
    placed, shipment = shipped.order.placed, shipped.shipment
    token = tracking_token(shipment, order_id=placed.order_id, key=tracking)
    orders = shipped.orders
    return WaveItem(
        order_ref=", ".join(f"{o.placed.channel} {o.placed.external_id}" for o in orders),
        reference=shipment.reference,
        carrier=shipment.carrier,
        service=shipment.service,
        tracking_number=shipment.tracking_number,
        tracking_url=config.tracking_url.format(token=token),
        sender=shipped.request.sender,
        recipient=shipped.request.recipient,
        lines=[
            SlipLine(line.sku, line.name, line.quantity)
            for order in orders
            for line in order.lines_here()
        ],
        weight_g=shipped.request.weight_g,
        temperature=shipped.request.temperature,
    )


def shipment_created(
    shipped: Shipped, *, wave: str, label_ref: str, by: Actor, now: datetime
) -> list[ShipmentCreated]:
    """The order agent's commands, one per order in the parcel (each naming them all, its
    share of the cost by weight); ids derived from the shipment's reference and the order, so
    a wave run again after a crash sends the same ones."""
    shipment, chosen = shipped.shipment, shipped.choice.chosen
    assert chosen is not None
    cost = shipment.price if shipment.price is not None else shipped.choice.price
    together = shipped.together or [(shipped.order, shipped.request)]
    shares: list[int | None] = (
        list(split_cost(cost, [request.weight_g for _, request in together]))
        if cost is not None
        else [None] * len(together)
    )
    everyone = [order.placed.order_id for order, _ in together] if len(together) > 1 else []
    commands = []
    for (order, _), share in zip(together, shares, strict=True):
        placed = order.placed
        commands.append(
            ShipmentCreated(
                event_id=deterministic_id("shipment-created", shipment.reference, placed.order_id),
                order_id=placed.order_id,
                sequence=1,
                occurred_at=now,
                recorded_at=now,
                correlation_id=placed.correlation_id,
                causation_id=placed.event_id,
                actor=by,
                channel=placed.channel,
                external_id=placed.external_id,
                shipment_id=f"{shipment.carrier}:{shipment.tracking_number}",
                carrier=shipment.carrier,
                service=shipment.service,
                tracking_number=shipment.tracking_number,
                label_ref=label_ref,
                cost=share,
                cost_currency=shipment.currency or chosen.currency,
                location=order.location,
                temperature=shipped.request.temperature.value,
                promised_by=chosen.promised_by,
                wave=wave,
                orders=everyone,
                alternatives=alternatives_of(shipped.choice),
            )
        )
    return commands
