"""The connector SDK: a connector names its channel, parses its payload and verifies signatures.

A connector is small: `name`, `parse` (raw bytes → `OrderReceived`, or `OrderModified` for a
channel's revision of an order it sent before) and, for signed channels, `verify`. Everything
else — deterministic ids, the envelope, the lenient base of payload models (`ChannelPayload`),
money and time conversions, turning validation errors into `PayloadRejected` naming the field —
is here; this module is the one import a connector needs (`__all__`). The money helpers live in
`connectors.money`, the exceptions in `connectors.rejections`, the bounds of a payload (depth,
digits, text length) in `connectors.limits`.

Ids are deterministic: the same channel order always gets the same order id, and the same
payload the same event id, so a redelivery is recognised downstream instead of becoming a
second order. On the intake topic an event's `sequence` is 1 for the original order and
`revision + 1` for a modification; the pipeline assigns the order-log sequence.
"""

from __future__ import annotations

import hmac
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from fractions import Fraction
from typing import Annotated, Any, ClassVar, TypeVar
from zoneinfo import ZoneInfo

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import from_json

from connectors.limits import MAX_TEXT_CHARS, check_json
from connectors.money import LONG_MAX, LONG_MIN, decimal_number, decimal_text, minor_units
from connectors.rejections import (
    PayloadRejected,
    SecretMissing,
    SignatureRejected,
    StaleSignature,
)
from events.bounds import LINE_QUANTITY_MAX, LINES_MAX
from events.models import (
    MILLIONTHS,
    Actor,
    ActorKind,
    Address,
    CourierStatusUpdated,
    Customer,
    OrderCancelled,
    OrderLine,
    OrderMode,
    OrderModified,
    OrderReceived,
    PaymentStatus,
    PlatformCiphertext,
    RefundRequestClosed,
    RefundRequested,
    deterministic_id,
)

__all__ = [
    "CHINA",
    "Amount",
    "AwareChannelTime",
    "ChannelTime",
    "ChannelEvent",
    "ChannelPayload",
    "Connector",
    "PlatformUpdate",
    "PayloadRejected",
    "SecretMissing",
    "SignatureRejected",
    "StaleSignature",
    "decimal_number",
    "decimal_text",
    "from_epoch",
    "local_time",
    "minor_units",
    "same_signature",
    "signed_epoch",
    "unit_price_of",
    "exact_quantity",
]

CHINA = ZoneInfo("Asia/Shanghai")
Model = TypeVar("Model", bound=BaseModel)
ChannelEvent = OrderReceived | OrderModified
PlatformUpdate = OrderCancelled | CourierStatusUpdated | RefundRequested | RefundRequestClosed
"""What a platform pushes about an order it sent before (a cancellation, a refund request or its
outcome, its rider's progress): `Connector.parse_update` makes one of these, which goes to the
order agent's command topic, not the intake."""

Amount = Annotated[Decimal, Field(allow_inf_nan=False, gt=-(10**19), lt=10**19)]
"""A decimal amount (or count) as a payload model reads it where a connector adds or multiplies
before `minor_units`: finite and under 10**19 either way, so that sums and products stay far
inside Decimal's range ("9e999999" × 2 raises decimal.Overflow) and what is refused is named."""


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        return moment  # the connector says whether a time without an offset is usable
    try:
        return moment.astimezone(UTC)
    except OverflowError:  # 9999-12-31T23:59:59-14:00 is in the year 10000 in UTC
        raise ValueError("is out of range in UTC") from None


ChannelTime = Annotated[datetime, AfterValidator(_utc)]
"""A time as a payload model reads it: converted to UTC when it has an offset, refused (naming
the field) when that falls outside the years 1 to 9999, where comparing or converting it would
raise OverflowError later. `AwareChannelTime` also refuses a time without an offset."""
AwareChannelTime = Annotated[AwareDatetime, AfterValidator(_utc)]


class ChannelPayload(BaseModel):
    """The base of a connector's payload models: the channel's own shape, read leniently.

    Fields the model does not name are ignored, so a platform adding fields to its payload
    does not break the connector; the fields it does name are validated as declared, a text
    at most `MAX_TEXT_CHARS` long unless its field says otherwise.
    """

    model_config = ConfigDict(extra="ignore", str_max_length=MAX_TEXT_CHARS)


class Connector(ABC):
    """One sales channel. Subclasses set `name` and implement `parse`; `verify` if signed.

    `delivery` says how its orders arrive, and so whether `POST /webhooks/{name}` serves it:
    "webhook" (the platform pushes signed messages: served, its secret required), "polled" (we
    fetch them from the platform's API: not served, 404) or "staff" (typed in by staff: served
    to a staff login only, `connectors.webhooks.STAFF_ONLY_CHANNELS`). `kept_headers` are the
    headers `verify` and `parse` read: a webhook's dead letter keeps them (and no others), so
    that a replay verifies again.
    """

    name: ClassVar[str]
    signed: ClassVar[bool] = False
    delivery: ClassVar[str] = "webhook"
    kept_headers: ClassVar[tuple[str, ...]] = ()

    def __init__(self, *, secret: str | None = None) -> None:
        # The channel's signing secret or key; OMS_<NAME>_SECRET when not given. Without one
        # (or with an empty one) a signed channel's `verify` refuses everything: fail closed.
        self.secret = secret if secret is not None else os.environ.get(self.secret_variable())

    @classmethod
    def secret_variable(cls) -> str:
        return f"OMS_{cls.name.upper()}_SECRET"

    def missing_settings(self) -> list[str]:
        """The environment variables a signed channel needs and does not have (for `oms api`'s
        start check); a connector needing more than its secret adds them."""
        return [self.secret_variable()] if self.signed and not (self.secret or "").strip() else []

    def require_secret(self) -> str:
        """The secret, or `SecretMissing`: an unset or empty secret verifies nothing (an HMAC
        keyed with nothing is a checksum anyone can compute); blanks alone are empty."""
        secret = self.secret or ""
        if not secret.strip():
            raise SecretMissing(
                f"{self.secret_variable()} is not set: every {self.name} message is refused "
                "until it is"
            )
        return secret

    def signed_at(self, headers: Mapping[str, str], body: bytes) -> datetime | None:
        """The time the platform's signature covers, for channels whose signature covers one
        (read after `verify` passed); None for those whose signature covers no time."""
        return None

    @abstractmethod
    def parse(
        self, raw: bytes, *, received_at: datetime, headers: Mapping[str, str] | None = None
    ) -> ChannelEvent:
        """Turn one raw channel payload into an event, or raise `PayloadRejected`."""

    def verify(self, headers: Mapping[str, str], body: bytes) -> None:
        """Raise `SignatureRejected` if the signature or token is wrong. Default: unsigned."""
        return None

    # ---- a platform's other pushes (inbound sync): optional

    updates: ClassVar[tuple[str, ...]] = ()
    """The kinds of push, besides orders, that the platform sends each to its own callback URL,
    served at `POST /webhooks/{name}/{kind}` (Meituan: cancel, refund, logistics). A platform that
    pushes everything to one URL (Ele.me) lists none and answers at `/webhooks/{name}`."""

    def parse_update(
        self,
        raw: bytes,
        *,
        kind: str | None,
        received_at: datetime,
        headers: Mapping[str, str] | None = None,
    ) -> PlatformUpdate | None:
        """A push about an order sent before, as its event (`PlatformUpdate`), or
        `PayloadRejected`; `kind` is the route's (None: the channel's own URL). None: not an
        update, so `parse` reads it as an order (at the channel's own URL only). Default: none."""
        return None

    def verify_update(self, kind: str, headers: Mapping[str, str], body: bytes) -> None:
        """`verify` for a push to `/webhooks/{name}/{kind}` (a platform whose signature covers
        the URL signs each callback with its own); by default as `verify`."""
        self.verify(headers, body)

    def update_event(
        self,
        event_type: type[PlatformUpdate],
        *,
        external_id: str,
        identity: Sequence[str],
        occurred_at: datetime,
        received_at: datetime,
        **fields: Any,
    ) -> PlatformUpdate:
        """A platform update about the order `external_id`, with the platform as actor. Its id
        is derived from `identity` (what makes this push this one: the status and its time, the
        refund request and its step), so the same push again is the same event, taken once."""
        order_id = self.order_id(external_id)
        event_id = deterministic_id(self.name, event_type.__name__, external_id, *identity)
        return event_type(
            event_id=event_id,
            sequence=1,  # the order agent sequences it into the order's history
            occurred_at=occurred_at,
            recorded_at=received_at,
            correlation_id=order_id,
            actor=self.actor(),
            order_id=order_id,
            channel=self.name,
            external_id=external_id,
            **fields,
        )

    # ---- ids and the envelope

    def order_id(self, external_id: str) -> str:
        return deterministic_id(self.name, "order", external_id)

    def received_event_id(self, external_id: str) -> str:
        return deterministic_id(self.name, "OrderReceived", external_id)

    def modified_event_id(self, external_id: str, revision: int) -> str:
        return deterministic_id(self.name, "OrderModified", external_id, str(revision))

    def actor(self) -> Actor:
        return Actor(kind=ActorKind.CHANNEL, id=self.name)

    def order(
        self,
        *,
        external_id: str,
        placed_at: datetime,
        received_at: datetime,
        mode: OrderMode,
        currency: str,
        lines: Sequence[OrderLine],
        total: int,
        payment_status: PaymentStatus,
        customer: Customer,
        revision: int = 0,
        delivery_fee: int = 0,
        packaging_fee: int = 0,
        discount: int = 0,
        tax: int = 0,
        address: Address | None = None,
        location_hint: str | None = None,
        device_id: str | None = None,
        requested_at: datetime | None = None,
        notes: str | None = None,
        occurred_at: datetime | None = None,
        platform_ciphertext: PlatformCiphertext | None = None,
        table: str | None = None,
        covers: int | None = None,
        tip: int = 0,
        rounding_tolerance: int = 0,
    ) -> ChannelEvent:
        """The event for a normalised channel order: `OrderReceived`, or `OrderModified` when
        `revision` > 0 (the channel's revision number or update time, increasing).

        The parts (lines' amounts, fees, tax, less the discount) should come to `total`; a
        channel that rounds where the parts do not show it (tax per line, a unit price of many
        decimals) gives the `rounding_tolerance` its documented rule allows, in minor units,
        and a difference within it is carried as the order's `rounding`. A larger one is
        left for validation to reject (TOTAL_MISMATCH)."""
        if placed_at.tzinfo is None:
            raise PayloadRejected("time has no timezone", field="placed_at")
        _fit_longs(
            lines,
            total=total,
            delivery_fee=delivery_fee,
            packaging_fee=packaging_fee,
            discount=discount,
            tax=tax,
            tip=tip,
            revision=revision,
        )
        difference = total - (
            sum(line.amount for line in lines) + delivery_fee + packaging_fee + tax + tip - discount
        )
        rounding = difference if abs(difference) <= rounding_tolerance else 0
        order_id = self.order_id(external_id)
        envelope: dict[str, Any] = {
            "order_id": order_id,
            "occurred_at": occurred_at or placed_at,
            "recorded_at": received_at,
            "correlation_id": order_id,
            "actor": self.actor(),
            "channel": self.name,
            "external_id": external_id,
            "lines": list(lines),
            "delivery_fee": delivery_fee,
            "packaging_fee": packaging_fee,
            "discount": discount,
            "tax": tax,
            "total": total,
            "address": address,
            "requested_at": requested_at,
            "notes": notes,
            "platform_ciphertext": platform_ciphertext,
            "table": table,
            "covers": covers,
            "tip": tip,
            "rounding": rounding,
        }
        order_fields: dict[str, Any] = {
            "mode": mode,
            "currency": currency,
            "payment_status": payment_status,
            "customer": customer,
            "location_hint": location_hint,
            "device_id": device_id,
            "placed_at": placed_at,
        }
        if revision > 0:
            return OrderModified(
                event_id=self.modified_event_id(external_id, revision),
                sequence=revision + 1,
                revision=revision,
                **envelope,
                **order_fields,
            )
        return OrderReceived(
            event_id=self.received_event_id(external_id), sequence=1, **envelope, **order_fields
        )

    # ---- helpers for parse

    @staticmethod
    def load_json(raw: bytes) -> Any:
        """`raw` JSON as Python values, bounded (`connectors.limits.check_json`). Parsed in
        pydantic's core, as `validate_json` parses: text that is not UTF-8 or holds a lone
        surrogate escape ("\\ud800") is refused here, not when the event cannot be encoded."""
        check_json(raw)
        try:
            return from_json(raw)
        except ValueError as exc:
            raise PayloadRejected(f"not JSON: {exc}") from None

    @staticmethod
    def validate_json(model: type[Model], raw: bytes) -> Model:
        """`raw` JSON straight into the channel's payload model (parsed in pydantic's core)."""
        check_json(raw)
        try:
            return model.model_validate_json(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            if first["type"] == "json_invalid" and not first["loc"]:
                raise PayloadRejected(f"not JSON: {first['msg']}") from None
            location = ".".join(str(part) for part in first["loc"]) or None
            raise PayloadRejected(first["msg"], field=location) from None

    @staticmethod
    def validate(model: type[Model], document: Any) -> Model:
        """`document` as the channel's payload model; the first error names its field."""
        try:
            return model.model_validate(document)
        except ValidationError as exc:
            first = exc.errors()[0]
            location = ".".join(str(part) for part in first["loc"]) or None
            raise PayloadRejected(first["msg"], field=location) from None


def unit_price_of(gross: int, quantity: int | Fraction) -> int:
    """The unit price a line's amount implies: gross ÷ quantity, rounded half to even (2101
    for 2 → 1050; 1499 for 1.5 lb → 999). Informational: the line's amount is `gross`, never
    this times quantity."""
    return round(Fraction(gross) / quantity) if quantity else gross


_QUANTITY_TEXT = re.compile(r"\d{1,15}(?:\.\d{1,15})?")


def exact_quantity(text: str | int, *, field: str) -> tuple[int, int | None]:
    """A channel's quantity, a whole number or a decimal string ("1.5", "0.25000"), as the
    contract carries it: (the quantity rounded up to whole units, the exact measure in
    millionths of its unit, or None when it is whole). A quantity finer than a millionth,
    negative, or not a plain decimal is refused, naming `field`."""
    if isinstance(text, int) and not isinstance(text, bool):
        return text, None
    if not isinstance(text, str) or _QUANTITY_TEXT.fullmatch(text.strip()) is None:
        raise PayloadRejected(f"quantity {text!r} is not a plain decimal number", field=field)
    exact = Fraction(text.strip())
    millionths = exact * MILLIONTHS
    if millionths.denominator != 1:
        raise PayloadRejected(f"quantity {text} is finer than a millionth of its unit", field=field)
    if exact.denominator == 1:
        return int(exact), None
    return -(-millionths.numerator // MILLIONTHS), millionths.numerator


def _fit_longs(lines: Sequence[OrderLine], **numbers: int) -> None:
    """Refuse an order whose quantities, prices or amounts do not fit in 64 bits, or whose lines
    are more, or quantities larger, than the read models store (`events.bounds`).

    The contract's integers travel as Avro longs: a channel's number outside 64 bits cannot be
    sent on, so the payload is refused here, naming the field, instead of failing to encode.
    """
    if len(lines) > LINES_MAX:
        raise PayloadRejected(f"{len(lines)} lines: at most {LINES_MAX}", field="lines")
    for n, line in enumerate(lines):
        amounts = (line.unit_price, line.gross or 0, line.discount, line.tax, line.total or 0)
        if -LINE_QUANTITY_MAX <= line.quantity <= LINE_QUANTITY_MAX and (
            min(amounts) >= LONG_MIN and max(amounts) <= LONG_MAX
        ):
            continue  # (LINE_QUANTITY_MAX is well inside 64 bits)
        for name in ("quantity", "unit_price", "gross", "discount", "tax", "total"):
            value = getattr(line, name) or 0
            if not LONG_MIN <= value <= LONG_MAX:
                raise PayloadRejected(
                    f"{value} does not fit in 64 bits", field=f"lines[{n}].{name}"
                )
        if abs(line.quantity) > LINE_QUANTITY_MAX:
            raise PayloadRejected(
                f"{line.quantity} is more than {LINE_QUANTITY_MAX:,}", field=f"lines[{n}].quantity"
            )
    for name, value in numbers.items():
        # the revision also becomes the event's sequence, one above it
        if not LONG_MIN <= value <= (LONG_MAX - 1 if name == "revision" else LONG_MAX):
            raise PayloadRejected(f"{value} does not fit in 64 bits", field=name)


def from_epoch(seconds: int | float | str, *, field: str) -> datetime:
    """Unix seconds (or milliseconds, when the number is that large) as UTC."""
    try:
        value = float(seconds)
    except (TypeError, ValueError, OverflowError):  # OverflowError: 10**400
        raise PayloadRejected(f"{seconds!r} is not a Unix time", field=field) from None
    if value > 1e11:  # milliseconds
        value /= 1000
    try:
        return datetime.fromtimestamp(value, UTC)
    except (OverflowError, OSError, ValueError):
        raise PayloadRejected(f"{seconds!r} is out of range", field=field) from None


def signed_epoch(value: object, *, field: str = "timestamp") -> datetime:
    """A signed Unix time (seconds, or milliseconds when that large) as UTC; a message whose
    signature should cover one and does not is refused as unsigned."""
    text = str(value) if isinstance(value, int | str) and not isinstance(value, bool) else ""
    if not (text.isascii() and text.isdigit()):
        raise SignatureRejected("no signed time", field=field)
    try:
        return from_epoch(text, field=field)
    except PayloadRejected as rejected:
        raise SignatureRejected(rejected.reason, field=field) from None


def same_signature(expected: str, given: object) -> bool:
    """Whether a signature a channel sent (`given`: a header, a payload field, anything) is
    `expected`, compared in constant time as bytes. A non-ASCII signature, or a header whose
    bytes are not UTF-8 (aiohttp hands them over as surrogates), is a mismatch, not an error."""
    text = given if isinstance(given, str) else ""
    return hmac.compare_digest(expected.encode(), text.encode("utf-8", "surrogatepass"))


def local_time(text: str, *, field: str, zone: ZoneInfo = CHINA) -> datetime:
    """A platform's local 'YYYY-MM-DD HH:MM:SS' (Beijing time by default) as UTC; an ISO time
    with an offset is taken as it is."""
    try:
        parsed = datetime.fromisoformat(text.strip().replace("/", "-"))
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=zone)
        return parsed.astimezone(UTC)
    except (ValueError, AttributeError, OverflowError):
        raise PayloadRejected(f"{text!r} is not a usable date and time", field=field) from None
