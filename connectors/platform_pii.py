"""Buyer details as the platforms send them: encrypted, masked, or through a virtual number.

JD, Taobao/Tmall, Douyin (抖店) and Pinduoduo return the receiver's name, phone and street
only as ciphertext, which the merchant decrypts through the platform (and a label is printed
from it through the platform's e-waybill). Clear alongside: province, city, district, and the
platform's own masks for display. A connector hands each detail to `receiver`, which tells
ciphertext from clear text, so that ciphertext is never stored as a name, a phone number or
a street: it goes into `PlatformCiphertext` (sealed on the log like any personal field) and
the clear fields stay empty until a merchant's `Decrypter` opens it.

Virtual numbers (隐私号): a platform may give a relay number and an extension instead of the
buyer's phone (`13012345678_8421`, `13012345678-8421`, `13012345678转8421`). The relay is
shared by many buyers, so it is kept as the phone with the extension beside it: fraud rules
do not count it as one customer's phone (streams/fraud.py).

Formats: see `FORMATS` and docs/connectors.md ("Encrypted buyer details") for the sources.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

from events.models import Address, Customer, PlatformCiphertext

PLATFORMS = ("jd", "tmall", "douyin", "pinduoduo")

# A relay number and the buyer's extension on it: 11 digits, then _, -, 转 or ",", then 1-6
# digits. (A landline with an extension is written with "-" too, but is not 11 digits
# starting with 1.)
_VIRTUAL = re.compile(r"^\s*(\+?86)?\s*(1\d{10})\s*(?:[_\-,，]|转|ext\.?)\s*(\d{1,6})\s*$")


@dataclass(frozen=True)
class Phone:
    number: str
    extension: str | None = None


def split_virtual(phone: str) -> Phone:
    """`13012345678_8421` → the relay number and the extension; anything else as it is."""
    found = _VIRTUAL.match(phone)
    if found is None:
        return Phone(phone.strip())
    return Phone(found.group(2), found.group(3))


def clear_buyer(name: str | None, phone: str | None) -> Customer:
    """A buyer the platform gives in clear, whose phone may be a virtual number: Meituan's
    `recipient_phone` (`13012345678_8421`) and Ele.me's `phoneList` (`13012345678,8421`)."""
    split = split_virtual(phone) if phone and phone.strip() else None
    return Customer(
        name=(name or "").strip() or None,
        phone=split.number if split else None,
        phone_extension=split.extension if split else None,
    )


@dataclass(frozen=True)
class Opened:
    """A receiver as the platform decrypted it."""

    name: str | None = None
    phone: str | None = None
    phone_extension: str | None = None
    street: str | None = None


class DecryptError(RuntimeError):
    """The platform did not decrypt (refused, out of quota, not the merchant's order)."""


class Decrypter(Protocol):
    """A merchant's way to open what a platform encrypted, through the platform's decrypt
    API with the merchant's credentials (connectors/platform_decrypt.py has the clients)."""

    platform: str

    def open(self, external_id: str, cipher: PlatformCiphertext) -> Opened: ...


# ---------------------------------------------------------------- telling ciphertext apart

_B64 = r"[A-Za-z0-9+/=]"
# Delimiter-framed ciphertexts: Pinduoduo and Taobao's security SDK (`~` names and addresses,
# `$` phones, `#` id numbers), Douyin (`$` phones, `#` names and addresses, the data and its
# envelope key joined by `*`). With a search index the string ends in a doubled delimiter.
FORMATS: dict[str, re.Pattern[str]] = {
    "framed-name": re.compile(rf"^~{_B64}+~(?:{_B64}*~)?-?\d+~~?$"),
    "framed-phone": re.compile(rf"^\$(?:{_B64}+\$)?{_B64}+\$-?\d+\$\$?$"),
    "framed-id": re.compile(rf"^#(?:{_B64}+#)?{_B64}+#-?\d+##?$"),
    "douyin-phone": re.compile(rf"^\${_B64}*\${_B64}+\*{_B64}+\$\d+\$\$$"),
    "douyin-text": re.compile(rf"^#{_B64}*#{_B64}+\*{_B64}+#\d+##$"),
}
# JD's TDE ciphertext is one base64 string without delimiters (its SDK reads the key version
# from the decoded header). Taken as such: 24 or more base64 characters with letters and
# digits, no space and nothing a name, phone or street is written with.
_BARE_BASE64 = re.compile(rf"^{_B64}{{24,}}$")
_MASK = re.compile(r"\*{1,}|＊")


def ciphertext_format(text: str | None) -> str | None:
    """Which ciphertext layout `text` is in (a `FORMATS` key, or "base64"), else None."""
    if not text:
        return None
    value = text.strip()
    for name, pattern in FORMATS.items():
        if pattern.match(value):
            return name
    if (
        _BARE_BASE64.match(value)
        and any(c.isdigit() for c in value)
        and any(c.isalpha() for c in value)
        and any(c in "+/=" or c.isupper() for c in value)
    ):
        return "base64"
    return None


def is_mask(text: str | None) -> bool:
    """A platform's display mask (张**, 138****5678, *******1234): stars standing for what is
    hidden."""
    return bool(text) and _MASK.search(text or "") is not None


@dataclass(frozen=True)
class Receiver:
    """A buyer's details as a connector passes them on: clear text where the platform gave
    clear text, the rest in `ciphertext`."""

    customer: Customer
    address: Address | None
    ciphertext: PlatformCiphertext | None


def receiver(
    platform: str,
    *,
    customer_id: str | None,
    name: str | None,
    phone: str | None,
    street: str | None,
    province: str | None = None,
    city: str | None = None,
    district: str | None = None,
    town: str | None = None,
    postal_code: str | None = None,
    open_id: str | None = None,
    name_mask: str | None = None,
    phone_mask: str | None = None,
    street_mask: str | None = None,
    virtual_phone: bool | None = None,
    street_names_region: bool = False,
) -> Receiver:
    """Sort a platform's receiver fields into clear details and what the platform encrypted
    or masked. A value that is ciphertext goes to the ciphertext, one that is a mask to the
    masks; neither is ever taken for the clear value. The clear parts of the address
    (province, city, district, town) are kept as the platform sent them; a clear street is
    put after them unless it names them itself (`street_names_region`, as JD's fullAddress)."""
    cipher: dict[str, str | None] = {"name": None, "phone": None, "address": None}
    masks = {"name": name_mask, "phone": phone_mask, "address": street_mask}
    clear: dict[str, str | None] = {}
    for field, value in (("name", name), ("phone", phone), ("address", street)):
        text = (value or "").strip() or None
        if text is not None and ciphertext_format(text):
            cipher[field], text = text, None
        elif text is not None and is_mask(text):
            masks[field] = masks[field] or text
            text = None
        clear[field] = text
    extension = None
    if clear["phone"]:
        split = split_virtual(clear["phone"])
        if split.extension is not None or virtual_phone:
            clear["phone"], extension = split.number, split.extension
    held = any(cipher.values()) or open_id or any(masks.values())
    ciphertext = (
        PlatformCiphertext(
            platform=platform,
            name=cipher["name"],
            phone=cipher["phone"],
            address=cipher["address"],
            open_id=open_id or None,
            name_mask=masks["name"],
            phone_mask=masks["phone"],
            address_mask=masks["address"],
        )
        if held
        else None
    )
    place = [p for p in (province, city, district, town) if p]
    has_place = bool(place) or clear["address"] or (ciphertext and ciphertext.address)
    address = (
        Address(
            # The street in clear, after its region as the platform names it; empty where the
            # platform encrypted it (the ciphertext holds it).
            text=(clear["address"] if street_names_region else " ".join([*place, clear["address"]]))
            if clear["address"]
            else "",
            province=province or None,
            city=city or district or None,  # a county-level city (省直辖县) is its district
            district=district or None,
            postal_code=postal_code or None,
        )
        if has_place or open_id
        else None
    )
    customer = Customer(
        id=customer_id or None,
        name=clear["name"],
        phone=clear["phone"],
        phone_extension=extension,
    )
    return Receiver(customer=customer, address=address, ciphertext=ciphertext)
