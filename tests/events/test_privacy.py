"""Personal data sealed per customer on the log (events/privacy.py), without Kafka: the keys
live in memory here (infra/keystore.py `MemoryKeys`); tests/infra/test_keystore.py has the
Kafka key store."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from events.avro_schema import avro_schema
from events.codec import AvroCodec
from events.models import Address, Customer, OrderModified, OrderReceived, PlatformCiphertext
from events.privacy import (
    PrivateCodec,
    _replaced,
    customer_identity,
    customer_key,
    for_analysts,
    mask_email,
    mask_name,
    mask_phone,
    personal_paths,
    scrubbed,
    seal,
    unseal,
)
from infra.keystore import MemoryKeys
from tests.factories import T0, received
from tests.fuzzing import fuzz_settings

PERSONAL = dict(
    customer=Customer(id="u-42", name="王伟", phone="+8613812345678", email="wang.wei@example.com"),
    address=Address(text="上海市静安区南京西路 1266 号", city="上海", postal_code="200040",
                    latitude=31.2291, longitude=121.4541),
    device_id="device-7f3a9c", notes="门口放着, 别按门铃",
)  # fmt: skip
CLEAR_TEXTS = [
    "王伟", "+8613812345678", "13812345678", "wang.wei@example.com", "u-42", "南京西路",
    "200040", "device-7f3a9c", "别按门铃",
]  # fmt: skip


def an_order(**overrides: object) -> OrderReceived:
    return received(**{**PERSONAL, **overrides})


def modified(**overrides: object) -> OrderModified:
    fields: dict[str, object] = dict(
        event_id="e-2", order_id="o-1", sequence=3, occurred_at=T0, recorded_at=T0,
        correlation_id="o-1", actor=received().actor, channel="webshop", external_id="1001",
        revision=2, lines=received().lines, total=6100, address=PERSONAL["address"],
        notes="改成送到前台",
    )  # fmt: skip
    fields.update(overrides)
    return OrderModified.model_validate(fields)


def test_the_contract_marks_the_personal_fields_and_only_those() -> None:
    paths = {".".join(path) for path in personal_paths(OrderReceived)}
    assert paths == {
        "customer.id", "customer.name", "customer.phone", "customer.email", "address.text",
        "address.postal_code", "address.latitude", "address.longitude", "device_id", "notes",
        "customer.phone_extension", "platform_ciphertext.name", "platform_ciphertext.phone",
        "platform_ciphertext.address", "platform_ciphertext.open_id",
    }  # fmt: skip
    schema = json.dumps(avro_schema(OrderReceived))
    assert schema.count('"pii": true') == len(paths)
    assert "customer.key" not in paths and "address.city" not in paths
    assert "address.district" not in paths and "platform_ciphertext.name_mask" not in paths


def test_sealed_bytes_hold_no_personal_text_and_open_with_the_key() -> None:
    keys = MemoryKeys()
    codec, plain = PrivateCodec(keys), AvroCodec()
    order = an_order()
    data = codec.encode(order)
    for text in CLEAR_TEXTS:
        assert text.encode() not in data, text
    # A reader without keys: the personal fields are empty, the rest intact.
    seen = plain.decode(data)
    assert isinstance(seen, OrderReceived)
    assert seen.customer.name is None and seen.customer.phone is None
    assert seen.address is not None and seen.address.text == "" and seen.address.latitude is None
    assert seen.address.city == "上海" and seen.total == order.total and seen.lines == order.lines
    assert seen.sealed is not None and seen.sealed.startswith("pii1:")
    # A reader with keys: everything back, and the customer's key set.
    opened = codec.decode(data)
    expected_key = customer_key("webshop:u-42", keys.pepper)
    assert opened == order.model_copy(
        update={"customer": order.customer.model_copy(update={"key": expected_key})}
    )


def test_one_customer_has_one_key_across_orders_and_the_key_depends_on_the_pepper() -> None:
    keys = MemoryKeys()
    first = seal(an_order(), keys)
    second = seal(an_order(event_id="e-9", order_id="o-9", external_id="9"), keys)
    assert isinstance(first, OrderReceived) and isinstance(second, OrderReceived)
    assert first.customer.key == second.customer.key
    assert first.customer.key != customer_key("webshop:u-42", b"another pepper")
    assert len(keys.keys) == 1  # one subject, one data key
    # Without a channel customer id, the phone (normalised) names the customer.
    by_phone = Customer(phone="+86 138 1234 5678")
    assert customer_identity(by_phone, "meituan") == "+8613812345678"


def test_after_forgetting_the_customer_nothing_opens_and_re_encoding_keeps_it_sealed() -> None:
    keys = MemoryKeys()
    codec = PrivateCodec(keys)
    data = codec.encode(an_order())
    subject = customer_key("webshop:u-42", keys.pepper)
    assert keys.forget([subject]) == 1
    after = codec.decode(data)
    assert isinstance(after, OrderReceived)
    assert after.customer.phone is None and after.address is not None and after.address.text == ""
    assert after.sealed is not None  # still sealed: nobody can open it now
    assert after.total == 6100 and after.lines == an_order().lines  # the order stays whole
    again = codec.encode(after)
    assert again == data  # passed on as it is, never "re-sealed" empty
    assert keys.forgotten() == [subject]


def test_a_tampered_or_moved_ciphertext_does_not_open() -> None:
    keys = MemoryKeys()
    sealed = seal(an_order(), keys)
    assert isinstance(sealed, OrderReceived) and sealed.sealed is not None
    # The same ciphertext on another event: the associated data (event id) no longer matches.
    moved = sealed.model_copy(update={"event_id": "e-other"})
    with pytest.raises(ValueError, match="does not open"):
        unseal(moved, keys)
    # Through the codec a tampered seal decodes as sealed (as if erased), never in clear.
    flipped = sealed.sealed[:-3] + ("A" if sealed.sealed[-3] != "A" else "B") + sealed.sealed[-2:]
    tampered = PrivateCodec(keys).decode(
        AvroCodec().encode(sealed.model_copy(update={"sealed": flipped}))
    )
    assert isinstance(tampered, OrderReceived) and tampered.customer.name is None


def test_a_revision_without_its_customer_is_sealed_under_its_order() -> None:
    keys = MemoryKeys()
    revision = seal(modified(), keys)
    assert isinstance(revision, OrderModified) and revision.sealed is not None
    assert ":order:o-1:" in revision.sealed and revision.notes is None
    with_customer = seal(modified(customer=PERSONAL["customer"]), keys)
    assert isinstance(with_customer, OrderModified) and with_customer.sealed is not None
    assert f":{customer_key('webshop:u-42', keys.pepper)}:" in with_customer.sealed
    assert unseal(revision, keys) == modified()


def test_analysts_see_masked_values_and_nothing_after_erasure() -> None:
    keys = MemoryKeys()
    sealed = seal(an_order(), keys)
    view = for_analysts(sealed, keys)
    assert isinstance(view, OrderReceived) and view.sealed is None
    assert view.customer == Customer(
        name="王*", phone="138****5678", email="w***@example.com",
        key=customer_key("webshop:u-42", keys.pepper),
    )  # fmt: skip
    assert view.address == Address(text="", city="上海")
    assert view.device_id is None and view.notes is None
    keys.forget([customer_key("webshop:u-42", keys.pepper)])
    erased = for_analysts(sealed, keys)
    assert isinstance(erased, OrderReceived)
    assert erased.customer == Customer(key=customer_key("webshop:u-42", keys.pepper))
    assert erased.total == 6100 and erased.lines == sealed.lines
    # Events written before sealing existed are masked the same way, key computed.
    assert for_analysts(an_order(), keys).customer == view.customer


def test_masks() -> None:
    assert mask_name("王伟") == "王*" and mask_name("Jane Doe") == "J*"
    assert mask_phone("13812345678") == "138****5678" and mask_phone("12345") == "****"
    assert mask_phone("+86 138 1234 5678") == "138****5678"
    assert mask_email("jane@example.com") == "j***@example.com" and mask_email("x") == "***"


@pytest.mark.fuzz
@fuzz_settings(100)
@given(
    name=st.text(min_size=4, max_size=20).filter(str.strip),
    phone=st.text(alphabet="0123456789", min_size=8, max_size=15),
    street=st.text(min_size=6, max_size=60).filter(str.strip),
    notes=st.text(min_size=6, max_size=200).filter(str.strip),
)
def test_any_personal_text_is_absent_from_the_sealed_bytes_and_comes_back_exactly(
    name: str, phone: str, street: str, notes: str
) -> None:
    keys = MemoryKeys()
    codec = PrivateCodec(keys)
    order = received(
        customer=Customer(name=name, phone=phone), address=Address(text=street), notes=notes
    )
    data = codec.encode(order)
    for text in (name, phone, street, notes):
        assert text.encode() not in data
    opened = codec.decode(data)
    assert isinstance(opened, OrderReceived)
    assert (opened.customer.name, opened.customer.phone) == (name, phone)
    assert opened.address is not None and opened.address.text == street
    assert opened.notes == notes


@pytest.mark.parametrize(
    "update",
    [{"notes": ""}, {"sealed": "pii1:k:s:x", "notes": None}, {"address": None}, {}],
)
def test_the_fast_copy_is_model_copy(update: dict[str, object]) -> None:
    """`_replaced` skips pydantic's bookkeeping: it must still give what `model_copy` gives,
    fields set included, and a model pydantic compares, dumps and copies as its own."""
    order = an_order()
    fast, slow = _replaced(order, update), order.model_copy(update=update)
    assert fast == slow and fast.model_dump() == slow.model_dump()
    assert fast.model_fields_set == slow.model_fields_set
    assert fast.model_copy(update={"total": 1}) == slow.model_copy(update={"total": 1})
    assert AvroCodec().encode(fast) == AvroCodec().encode(slow)
    assert order.notes == PERSONAL["notes"]  # the original is untouched


def test_a_platform_encrypted_buyer_is_sealed_and_analysts_see_the_platform_s_masks() -> None:
    cipher = PlatformCiphertext(
        platform="jd", name="~AgAAAAname~", phone="~AgAAAAphone~", address="~AgAAAAaddr~",
        name_mask="张**", phone_mask="138****5678", address_mask="北京市朝阳区***",
    )  # fmt: skip
    order = received(
        customer=Customer(id="jd_pin_1"),
        address=Address(text="", province="北京", city="北京市", district="朝阳区"),
        platform_ciphertext=cipher,
    )
    keys = MemoryKeys()
    data = PrivateCodec(keys).encode(order)
    assert b"AgAAAA" not in data and "朝阳区".encode() in data  # the district stays clear
    shown = for_analysts(PrivateCodec(keys).decode(data), keys)
    assert isinstance(shown, OrderReceived) and shown.platform_ciphertext is not None
    assert (shown.customer.name, shown.customer.phone) == ("张**", "138****5678")
    assert shown.platform_ciphertext.name is None and shown.platform_ciphertext.address is None
    assert "AgAAAA" not in shown.model_dump_json()
    opened = PrivateCodec(keys).decode(data)
    assert isinstance(opened, OrderReceived) and opened.platform_ciphertext == cipher


def test_random_bytes_never_repeat_across_threads_or_a_fork() -> None:
    import os
    import threading

    from events.privacy import random_bytes

    taken: list[bytes] = []

    def take() -> None:
        taken.extend(random_bytes(12) for _ in range(3000))  # several 4 KiB refills

    threads = [threading.Thread(target=take) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(taken) == 12_000 and {len(b) for b in taken} == {12}
    assert len(set(taken)) == len(taken)
    assert len(random_bytes(10_000)) == 10_000  # more than a chunk at once
    # A forked child must not hand out what its parent would hand out next.
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child
        os.write(write, random_bytes(32))
        os._exit(0)
    os.waitpid(child, 0)
    assert os.read(read, 32) != random_bytes(32)


def test_an_opened_order_kept_in_memory_makes_no_new_key_once_scrubbed() -> None:
    """A process holding an opened order when its customer is forgotten: encoding it as it
    is seals its values under a new key (the forgotten data back on the log); scrubbed, it
    is what a reader without the key sees and seals nothing."""
    keys = MemoryKeys()
    codec = PrivateCodec(keys)
    opened = codec.decode(codec.encode(an_order()))
    assert isinstance(opened, OrderReceived) and opened.customer.phone == "+8613812345678"
    subject = customer_key("webshop:u-42", keys.pepper)
    keys.forget([subject])

    resealed = codec.encode(opened)  # what the worker's next spill row or snapshot did
    assert subject in keys.keys  # a new key: the forgotten phone is readable again
    assert codec.decode(resealed).customer.phone == "+8613812345678"  # type: ignore[union-attr]
    keys.forget([subject])

    clean = scrubbed(opened)
    assert clean.customer.key == subject and clean.total == opened.total
    assert clean.lines == opened.lines and clean.address is not None
    assert clean.address.city == "上海"  # not personal: kept
    written = codec.encode(clean)
    assert subject not in keys.keys  # no key made
    for text in CLEAR_TEXTS:
        assert text.encode() not in written, text
    seen = codec.decode(written)
    assert isinstance(seen, OrderReceived) and seen.customer.key == subject
    assert seen.customer.phone is None and seen.customer.name is None and seen.notes is None


def test_a_scrubbed_revision_is_what_a_reader_without_the_key_sees() -> None:
    keys = MemoryKeys()
    codec = PrivateCodec(keys)
    sealed = codec.encode(modified(customer=PERSONAL["customer"]))
    opened = codec.decode(sealed)  # as the worker holds it
    assert isinstance(opened, OrderModified) and opened.notes == "改成送到前台"
    keys.forget(list(keys.keys))
    blind = AvroCodec().decode(sealed)
    assert isinstance(blind, OrderModified) and blind.sealed is not None
    clean = scrubbed(opened)
    assert clean.model_copy(update={"sealed": blind.sealed}) == blind
    assert scrubbed(clean) is clean  # nothing left to empty: the same object
