"""Rate shopping, the decision (docs/carriers.md, "Rate shopping"): of the quotes the carriers
gave for a shipment, which to buy, and why each other one lost. Pure: the quotes, the rules
and the deadline are passed in; `oms/shipping.py` asks the carriers.

The rules say what a carrier or service may carry at all (weight, volume, destinations,
temperature class, cash on delivery) and what to optimise: the cheapest quote that promises
delivery by the order's deadline (default), the cheapest, or the fastest. A quote that may not
carry the shipment is excluded with the rule it broke; of the rest, the one chosen is first by
the objective, and each other is recorded with what it lost on (price, promise), so the event
shows the alternatives it beat.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from events.shipping import Quote, ShipmentRequest, Temperature

NO_PROMISE = datetime.max.replace(tzinfo=UTC)  # a quote that promises no date: last


class Objective(StrEnum):
    CHEAPEST_ON_TIME = "cheapest_on_time"  # cheapest promising delivery by the deadline
    CHEAPEST = "cheapest"
    FASTEST = "fastest"


class CarrierRule(BaseModel):
    """What one carrier (or one of its services, `carrier:service`) may carry."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    enabled: bool = True
    max_weight_g: int | None = Field(default=None, gt=0)
    max_volume_cm3: int | None = Field(default=None, gt=0)
    countries: frozenset[str] | None = Field(
        default=None, description="ISO 3166-1 alpha-2 it delivers to; unset: any"
    )
    provinces: frozenset[str] | None = Field(
        default=None, description="within China, the provinces it delivers to; unset: any"
    )
    temperatures: frozenset[Temperature] | None = Field(
        default=None, description="narrower than the carrier's own, e.g. no frozen in summer"
    )
    cash_on_delivery: bool | None = Field(default=None, description="False: never for COD")
    surcharge: int = Field(default=0, ge=0, description="minor units added to its price")


class ShippingRules(BaseModel):
    """OMS_SHIPPING_RULES_FILE (JSON): the objective and a rule per carrier or service."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    objective: Objective = Objective.CHEAPEST_ON_TIME
    carriers: dict[str, CarrierRule] = Field(
        default_factory=dict, description="carrier name, or carrier:service → its rule"
    )

    def rule_for(self, quote: Quote) -> list[CarrierRule]:
        """The carrier's rule and its service's, the service's last (it may narrow more)."""
        found = [
            self.carriers.get(quote.carrier),
            self.carriers.get(f"{quote.carrier}:{quote.service}"),
        ]
        return [rule for rule in found if rule is not None]


class Lost(StrEnum):
    DISABLED = "disabled"
    TEMPERATURE = "temperature"
    CASH_ON_DELIVERY = "cash_on_delivery"
    WEIGHT = "weight"
    VOLUME = "volume"
    DESTINATION = "destination"
    LATE = "late"  # promises delivery after the deadline (another one does not)
    PRICE = "price"  # dearer than the one chosen
    SPEED = "speed"  # promises later than the one chosen


@dataclass(frozen=True)
class Alternative:
    quote: Quote
    price: int  # with the rule's surcharge
    lost: Lost
    detail: str


@dataclass(frozen=True)
class RateChoice:
    chosen: Quote | None  # None: nothing may carry it (every alternative says why)
    price: int | None
    alternatives: list[Alternative]


def excluded(
    quote: Quote, request: ShipmentRequest, rules: ShippingRules
) -> tuple[Lost, str] | None:
    """Why `quote` may not carry `request`, or None."""
    if request.temperature not in quote.temperatures:
        return Lost.TEMPERATURE, f"cannot keep {request.temperature.value}"
    if request.cod_amount and not quote.cash_on_delivery:
        return Lost.CASH_ON_DELIVERY, "no cash on delivery"
    volume = sum(parcel.volume_cm3 or 0 for parcel in request.parcels)
    recipient = request.recipient
    for rule in rules.rule_for(quote):
        if not rule.enabled:
            return Lost.DISABLED, "disabled by the rules"
        if rule.temperatures is not None and request.temperature not in rule.temperatures:
            return Lost.TEMPERATURE, f"not for {request.temperature.value} by the rules"
        if request.cod_amount and rule.cash_on_delivery is False:
            return Lost.CASH_ON_DELIVERY, "not for cash on delivery by the rules"
        if rule.max_weight_g is not None and request.weight_g > rule.max_weight_g:
            return Lost.WEIGHT, f"{request.weight_g} g over {rule.max_weight_g} g"
        if rule.max_volume_cm3 is not None and volume > rule.max_volume_cm3:
            return Lost.VOLUME, f"{volume} cm³ over {rule.max_volume_cm3} cm³"
        if rule.countries is not None and recipient.country not in rule.countries:
            return Lost.DESTINATION, f"does not deliver to {recipient.country}"
        if (
            rule.provinces is not None
            and recipient.country == "CN"
            and recipient.province not in rule.provinces
        ):
            return Lost.DESTINATION, f"does not deliver to {recipient.province}"
    return None


def priced(quote: Quote, rules: ShippingRules) -> int:
    return quote.price + sum(rule.surcharge for rule in rules.rule_for(quote))


def choose(
    request: ShipmentRequest,
    quotes: list[Quote],
    rules: ShippingRules,
    *,
    deliver_by: datetime | None,
) -> RateChoice:
    """The quote to buy for `request`, and every other with what it lost on."""
    alternatives: list[Alternative] = []
    eligible: list[tuple[Quote, int]] = []
    for quote in quotes:
        why = excluded(quote, request, rules)
        if why is None:
            eligible.append((quote, priced(quote, rules)))
        else:
            alternatives.append(Alternative(quote, priced(quote, rules), *why))
    if not eligible:
        return RateChoice(chosen=None, price=None, alternatives=alternatives)

    def promise(entry: tuple[Quote, int]) -> datetime:
        return entry[0].promised_by or NO_PROMISE

    def in_time(entry: tuple[Quote, int]) -> bool:
        return deliver_by is None or promise(entry) <= deliver_by

    pool = eligible
    if rules.objective is Objective.CHEAPEST_ON_TIME:
        on_time = [entry for entry in eligible if in_time(entry)]
        if on_time:  # none on time: the cheapest of all, late as it will be
            for quote, price in eligible:
                if (quote, price) not in on_time:
                    when = quote.promised_by.isoformat() if quote.promised_by else "no promise"
                    alternatives.append(Alternative(quote, price, Lost.LATE, when))
            pool = on_time
    if rules.objective is Objective.FASTEST:
        ranked = sorted(pool, key=lambda entry: (promise(entry), entry[1], entry[0].service))
    else:
        ranked = sorted(pool, key=lambda entry: (entry[1], promise(entry), entry[0].service))
    (chosen, price), rest = ranked[0], ranked[1:]
    for quote, other_price in rest:
        if rules.objective is Objective.FASTEST and promise((quote, other_price)) > promise(
            (chosen, price)
        ):
            alternatives.append(Alternative(quote, other_price, Lost.SPEED, "promises later"))
        else:
            more = other_price - price
            alternatives.append(Alternative(quote, other_price, Lost.PRICE, f"{more} dearer"))
    return RateChoice(chosen=chosen, price=price, alternatives=alternatives)
