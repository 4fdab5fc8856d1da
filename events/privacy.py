"""Personal data on the log: sealed per customer, so deleting a key erases them (crypto-shredding).

The contract marks personal fields with the Avro field property `"pii": true` (a customer's
id, name, phone and e-mail; the address text, postal code and coordinates; the device id and
free-text notes). On the log those fields are empty and `sealed` holds them, encrypted with
AES-256-GCM under the customer's own data key:

    pii1:<key id>:<subject>:<base64url(nonce ‖ ciphertext)>

The subject is the customer's pseudonymous key, `Customer.key`: a keyed hash of who the
customer is (the channel's customer id, else the phone number), so the same person has one
key across orders and no reader can turn it back into a phone number. An event that names no
customer (a revision on the intake topic) is sealed under its order (`order:<order id>`);
forgetting the customer forgets the keys of their orders too. The associated data binds the
ciphertext to its event id, subject and key id.

`PrivateCodec` is the codec of readers and writers with keys: it seals on the way out and
opens on the way in. Without the key (never had it, or the customer was forgotten) an event
decodes with its personal fields empty and `sealed` left as it is, and re-encoding it keeps
it so. `for_analysts` is what ClickHouse gets: opened, then masked (`张*`, `138****5678`),
never the clear values.

Keys come from a `DataKeys` store (infra/keystore.py keeps them on a compacted topic, wrapped
under a master key; a KMS can implement the same interface).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import threading
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Any, Protocol, TypeVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import BaseModel

from events.avro_schema import avro_schema
from events.codec import NATIVE, AvroCodec, SchemaIds
from events.models import (
    Customer,
    DeadLetter,
    Event,
    OrderAmendmentRequested,
    OrderModified,
    OrderReceived,
)

PREFIX = "pii1"
# (An amendment request is a revision held for the store: an `OrderModified` itself.)
SEALABLE: tuple[type[Event], ...] = (OrderReceived, OrderModified, OrderAmendmentRequested)
Path = tuple[str, ...]


class _RandomBytes:
    """Bytes from the operating system's CSPRNG, read 4 KiB at a time. `os.urandom` lets go of
    the GIL for its system call, and getting it back behind a busy thread (the worker's views,
    a key store's follower) cost ~20 µs a call, more than the encryption it served. Thread-safe,
    and dropped in a forked child, so no two callers ever get the same bytes."""

    CHUNK = 4096

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buffer, self._at = b"", 0
        os.register_at_fork(after_in_child=self._drop)

    def _drop(self) -> None:
        self._lock = threading.Lock()
        self._buffer, self._at = b"", 0

    def __call__(self, size: int) -> bytes:
        with self._lock:
            if self._at + size > len(self._buffer):
                self._buffer, self._at = os.urandom(max(self.CHUNK, size)), 0
            start = self._at
            self._at += size
            return self._buffer[start : self._at]


random_bytes = _RandomBytes()
"""`random_bytes(n)`: n bytes for nonces, key ids and data keys (see `_RandomBytes`)."""


class DataKeys(Protocol):
    """Per-subject AES-256 data keys. `current` creates one when the subject has none (and
    stores it durably before returning it); `find` is None for a key that never existed or
    was forgotten; `pepper` keys the hash that names customers; `forgotten` tells a reader
    (the projector) whom to erase from what it derived."""

    pepper: bytes

    def current(self, subject: str) -> tuple[str, bytes]: ...

    def find(self, subject: str, key_id: str) -> bytes | None: ...

    def forgotten(self) -> list[str]:
        """Subjects whose keys were all forgotten since the last call (anywhere), after
        catching up with the store if that is due."""
        ...


class SealError(ValueError):
    """A `sealed` value that is not ours, or a ciphertext its key does not open (tampered)."""


@cache
def personal_paths(model: type[BaseModel]) -> tuple[Path, ...]:
    """The fields the Avro contract marks `"pii": true` in `model`, as paths into the event."""
    return tuple(_marked(avro_schema(model)))


def _marked(record: dict[str, Any], prefix: Path = ()) -> Iterator[Path]:
    for field in record["fields"]:
        path = (*prefix, field["name"])
        if field.get("pii"):
            yield path
        kinds = field["type"] if isinstance(field["type"], list) else [field["type"]]
        for kind in kinds:
            if isinstance(kind, dict) and kind.get("type") == "record":
                yield from _marked(kind, path)


@lru_cache(maxsize=1 << 16)
def normalise_phone(phone: str) -> str:
    """Digits with a leading "+" kept: "+86 138-0000-0000" and "+8613800000000" are one phone.

    NFKC first, so full-width digits typed on a Chinese keyboard count as digits."""
    text = unicodedata.normalize("NFKC", phone).strip()
    digits = "".join(ch for ch in text if "0" <= ch <= "9")
    return f"+{digits}" if digits and text.startswith("+") else digits


def customer_identity(customer: Customer | None, channel: str) -> str | None:
    """Who the customer is: `channel:customer id` when the channel names its customer (ids are
    unique only within a channel), else the normalised phone (with its extension, for a
    virtual number), else None."""
    if customer is None:
        return None
    return _identity(channel, customer.id, customer.phone, customer.phone_extension)


def _identity(
    channel: str, id_: str | None, phone: str | None, extension: str | None
) -> str | None:
    if id_:
        return f"{channel}:{id_}"
    if phone:
        normal = normalise_phone(phone)
        if normal and extension:  # a relay many buyers share: this buyer on it
            return f"{normal}_{extension}"
        return normal or None
    return None


@lru_cache(maxsize=4096)  # a file import names each customer twice: keys made, then sealed
def customer_key(identity: str, pepper: bytes) -> str:
    """The pseudonymous key of a customer identity: "c" and 24 hex digits of HMAC-SHA256."""
    return "c" + hmac.new(pepper, identity.encode(), hashlib.sha256).hexdigest()[:24]


def order_subject(order_id: str) -> str:
    """The subject of an event that names no customer."""
    return f"order:{order_id}"


def subject_of(event: OrderReceived | OrderModified, pepper: bytes) -> str:
    customer = event.customer
    if customer is not None and customer.key:
        return customer.key
    identity = customer_identity(customer, event.channel)
    return customer_key(identity, pepper) if identity else order_subject(event.order_id)


def parse_sealed(sealed: str) -> tuple[str, str, bytes]:
    """(key id, subject, nonce ‖ ciphertext) of a `sealed` value."""
    try:
        prefix, key_id, rest = sealed.split(":", 2)
        subject, blob = rest.rsplit(":", 1)
        data = base64.urlsafe_b64decode(blob + "=" * (-len(blob) % 4))
    except ValueError as exc:
        raise SealError(f"not a sealed value: {exc}") from None
    if prefix != PREFIX or len(data) < 12 + 16:
        raise SealError(f"not a {PREFIX} sealed value")
    return key_id, subject, data


def seal(event: Event, keys: DataKeys) -> Event:
    """The event with its personal fields encrypted into `sealed` and emptied; the customer's
    key set. Events without personal fields, and events already sealed, are left as they are."""
    if not isinstance(event, OrderReceived | OrderModified) or event.sealed is not None:
        return event
    values: dict[str, Any] = {}
    changes: dict[Path, Any] = {}
    for field in _plan(type(event)):
        if value := _get(event, field.path):
            values[field.name] = value
            changes[field.path] = field.blank
    subject = subject_of(event, keys.pepper)
    if event.customer is not None and not subject.startswith("order:"):
        changes[("customer", "key")] = subject
    if values:
        key_id, key = keys.current(subject)
        nonce = random_bytes(12)
        plain = _COMPACT_JSON.encode(values).encode()
        secret = aes_gcm(key).encrypt(nonce, plain, _associated(event.event_id, subject, key_id))
        blob = base64.urlsafe_b64encode(nonce + secret).decode().rstrip("=")
        changes[("sealed",)] = f"{PREFIX}:{key_id}:{subject}:{blob}"
    return _with(event, changes)


def unseal(event: Event, keys: DataKeys) -> Event:
    """The event with its personal fields back and `sealed` cleared, when the key is there;
    else the event as it is (personal fields empty: erased, or not ours to read)."""
    if not isinstance(event, OrderReceived | OrderModified) or event.sealed is None:
        return event
    values = _opened(event, keys)
    if values is None:
        return event
    paths = _paths_by_name(type(event))
    return _with(event, {("sealed",): None} | {paths[name]: v for name, v in values.items()})


def _opened(event: OrderReceived | OrderModified, keys: DataKeys) -> dict[str, Any] | None:
    """The sealed values by dotted name; None without the key; SealError if tampered."""
    assert event.sealed is not None
    key_id, subject, data = parse_sealed(event.sealed)
    values = _open(keys, key_id, subject, data, event.event_id)
    if values is None:
        return None
    names = _paths_by_name(type(event))  # (a field a later version added is not this one's)
    return {name: value for name, value in values.items() if name in names}


def _open(
    keys: DataKeys, key_id: str, subject: str, data: bytes, event_id: str
) -> dict[str, Any] | None:
    key = keys.find(subject, key_id)
    if key is None:
        return None
    try:
        plain = aes_gcm(key).decrypt(data[:12], data[12:], _associated(event_id, subject, key_id))
    except InvalidTag:
        raise SealError(f"the personal data of {event_id} does not open with its key") from None
    values: dict[str, Any] = json.loads(plain)
    return values


P = TypeVar("P", bound=OrderReceived | OrderModified)


def scrubbed(event: P) -> P:
    """The event as a reader without its key sees it: every personal field emptied (the
    customer's pseudonymous key and `sealed` kept). What a process holding an opened event
    keeps of it once its customer is forgotten: encoding it again seals nothing, so no new
    data key brings the forgotten values back onto the log."""
    model: type[BaseModel] = type(event)
    changes = {f.path: f.blank for f in _plan(model) if _get(event, f.path)}
    return _with(event, changes) if changes else event  # type: ignore[return-value]


def erased(event: Event) -> bool:
    """Whether the event still holds sealed personal data its reader could not open."""
    return isinstance(event, OrderReceived | OrderModified) and event.sealed is not None


# ---------------------------------------------------------------- what analysts see


def for_analysts(event: Event, keys: DataKeys) -> Event:
    """What ClickHouse stores: opened if the key is there, then masked; the customer's key set
    (computed for events written before sealing) and `sealed` dropped. A name or phone held
    only as the platform's ciphertext shows as the platform's mask (张**, 138****5678); the
    ciphertexts themselves are emptied like any other personal field."""
    if not isinstance(event, OrderReceived | OrderModified):
        return event
    customer, cipher = event.customer, event.platform_ciphertext
    shown = analysts_customer(
        keys,
        sealed=event.sealed,
        event_id=event.event_id,
        channel=event.channel,
        order_id=event.order_id,
        customer=None
        if customer is None
        else (
            customer.key,
            customer.id,
            customer.name,
            customer.phone,
            customer.email,
            customer.phone_extension,
        ),
        platform_masks=None if cipher is None else (cipher.name_mask, cipher.phone_mask),
    )
    changes: dict[Path, Any] = {field.path: field.blank for field in _plan(type(event))}
    changes[("sealed",)] = None
    if customer is not None:
        key, name, phone, email = shown
        changes |= {
            ("customer", "key"): key,
            ("customer", "name"): name,
            ("customer", "phone"): phone,
            ("customer", "email"): email,
        }
    return _with(event, changes)


def masked_fields(model: type[BaseModel]) -> list[tuple[Path, bool]]:
    """The fields `for_analysts` empties in a `model` event, each with whether it is emptied
    to "" (else to None); none for a model it leaves as it is."""
    if not issubclass(model, OrderReceived | OrderModified):
        return []
    return [(field.path, field.blank == "") for field in _plan(model)]


CustomerFields = tuple[str | None, str | None, str | None, str | None, str | None, str | None]
"""A customer's (key, id, name, phone, email, phone_extension) as they stand in an event."""


def analysts_customer(
    keys: DataKeys,
    *,
    sealed: str | None,
    event_id: str,
    channel: str,
    order_id: str,
    customer: CustomerFields | None,
    platform_masks: tuple[str | None, str | None] | None,
) -> tuple[str | None, str | None, str | None, str | None]:
    """What analysts see of an order event's customer: (pseudonymous key, masked name, masked
    phone, masked e-mail); every other personal field is emptied. Opened from `sealed` when
    the key is there (a tampered seal stays shut, as if erased). SealError when `sealed` is
    not a sealed value at all. `for_analysts` and the native projector's decoder
    (`AnalystView.native`) both ask this, so both folds store the same."""
    values: dict[str, Any] | None = None
    if sealed is not None:
        key_id, subject, data = parse_sealed(sealed)
        try:
            values = _open(keys, key_id, subject, data, event_id)
        except SealError:
            values = None  # tampered: it stays shut, as if erased
    else:
        key, id_, _, phone, _, extension = customer or (None,) * 6
        identity = _identity(channel, id_, phone, extension) if customer is not None else None
        subject = key or (customer_key(identity, keys.pepper) if identity else "")
        subject = subject or order_subject(order_id)
    if customer is None:
        return None, None, None, None
    name, phone, email = (
        (values.get("customer.name"), values.get("customer.phone"), values.get("customer.email"))
        if values is not None
        else customer[2:5]
    )
    shown_name = mask_name(str(name)) if name not in (None, "") else None
    shown_phone = mask_phone(str(phone)) if phone not in (None, "") else None
    shown_email = mask_email(str(email)) if email not in (None, "") else None
    if platform_masks is not None:  # the platform's own masks, where nothing else shows
        name_mask, phone_mask = platform_masks
        if name_mask and not shown_name:
            shown_name = name_mask
        if phone_mask and not shown_phone:
            shown_phone = phone_mask
    return (None if subject.startswith("order:") else subject), shown_name, shown_phone, shown_email


def mask_name(name: str) -> str:
    """The first character and a star: 张三 → 张*, Jane Doe → J*."""
    return f"{name[0]}*" if name else ""


def mask_phone(phone: str) -> str:
    """The first three and last four digits: 13812345678 → 138****5678; short numbers → ****."""
    digits = normalise_phone(phone).lstrip("+")
    if len(digits) == 13 and digits.startswith("86"):  # +86 and a mainland mobile number
        digits = digits[2:]
    return f"{digits[:3]}****{digits[-4:]}" if len(digits) >= 8 else "****"


def mask_email(email: str) -> str:
    """The first character and the domain: jane@example.com → j***@example.com."""
    local, at, domain = email.partition("@")
    return f"{local[:1]}***@{domain}" if at else "***"


# ---------------------------------------------------------------- the codec


class PrivateCodec(AvroCodec):
    """The codec of a reader and writer with keys: personal fields sealed on encode, opened on
    decode. A reader without the codec (or without the key) sees them empty and `sealed`."""

    def __init__(
        self, keys: DataKeys, schema_ids: SchemaIds | None = None, *, native: bool = NATIVE
    ) -> None:
        super().__init__(schema_ids, native=native)
        self.keys = keys

    def prepare(self, events: Iterable[Event]) -> None:
        """Makes sure the customers of `events` have data keys, in one go where the key store
        can (KafkaKeys stores many new keys with one round trip), before they are encoded."""
        prepare = getattr(self.keys, "prepare", None)
        if prepare is None:
            return
        subjects = {
            subject_of(event, self.keys.pepper)
            for event in events
            if isinstance(event, OrderReceived | OrderModified) and event.sealed is None
        }
        if subjects:
            prepare(subjects)

    def encode(self, value: Event | DeadLetter) -> bytes:
        if isinstance(value, OrderReceived | OrderModified):
            value = seal(value, self.keys)
        return super().encode(value)

    def decode(self, data: bytes, *, where: str = "") -> Event | DeadLetter:
        event = super().decode(data, where=where)
        if isinstance(event, OrderReceived | OrderModified) and event.sealed is not None:
            try:
                return unseal(event, self.keys)
            except SealError:
                return event  # tampered or foreign: it stays sealed, as if erased
        return event


# ---------------------------------------------------------------- paths into models


def _associated(event_id: str, subject: str, key_id: str) -> bytes:
    return f"{PREFIX}|{event_id}|{subject}|{key_id}".encode()


@dataclass(frozen=True)
class _Field:
    """A personal field: its path into the event, its dotted name in `sealed`, its blank."""

    path: Path
    name: str
    blank: Any


@cache
def _plan(model: type[BaseModel]) -> tuple[_Field, ...]:
    return tuple(
        _Field(path, ".".join(path), _blank(model, path)) for path in personal_paths(model)
    )


@cache
def _paths_by_name(model: type[BaseModel]) -> dict[str, Path]:
    return {field.name: field.path for field in _plan(model)}


# json.dumps with arguments makes an encoder per call; sealing keeps one.
_COMPACT_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


@lru_cache(maxsize=4096)
def aes_gcm(key: bytes) -> AESGCM:
    """The AES-GCM cipher of `key`, kept: making one costs as much as sealing a small value."""
    return AESGCM(key)


def _get(model: BaseModel | None, path: Path) -> Any:
    for name in path:
        if model is None:
            return None
        model = getattr(model, name)
    return model


def _blank(model: type[BaseModel], path: Path) -> Any:
    """What an emptied field holds: "" where the contract requires a value, else None."""
    for name in path[:-1]:
        annotation: Any = model.model_fields[name].annotation
        model = next(
            a for a in getattr(annotation, "__args__", (annotation,)) if a is not type(None)
        )
    return "" if model.model_fields[path[-1]].is_required() else None


def _with(event: Event, values: dict[Path, Any]) -> Event:
    """`event` with the fields at `values`' paths replaced (missing parents are left missing)."""
    nested: dict[str, dict[str, Any]] = {}
    top: dict[str, Any] = {}
    for path, value in values.items():
        if len(path) == 1:
            top[path[0]] = value
        else:
            nested.setdefault(path[0], {})[path[1]] = value
    for name, fields in nested.items():
        parent = getattr(event, name)
        if parent is not None:
            top[name] = _replaced(parent, fields)
    return _replaced(event, top) if top else event


M = TypeVar("M", bound=BaseModel)


def _replaced(model: M, update: dict[str, Any]) -> M:
    """`model.model_copy(update=update)` for the contract's models (no extra fields, no private
    attributes): a third of its cost, which sealing pays three times an order. A test holds it
    equal to `model_copy`."""
    new = object.__new__(type(model))
    object.__setattr__(new, "__dict__", {**model.__dict__, **update})
    fields_set = model.__pydantic_fields_set__
    if not fields_set.issuperset(update):  # (frozen models never change the set they share)
        fields_set = fields_set.union(update)
    object.__setattr__(new, "__pydantic_fields_set__", fields_set)
    object.__setattr__(new, "__pydantic_extra__", None)
    object.__setattr__(new, "__pydantic_private__", None)
    return new
