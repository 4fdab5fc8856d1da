"""Telling a platform's ciphertext and masks from clear buyer details (connectors/platform_pii).

The ciphertexts are verbatim from the platforms' published examples and public SDKs (sources
in docs/connectors.md, "Encrypted buyer details")."""

from __future__ import annotations

import pytest

from connectors.platform_pii import (
    Phone,
    ciphertext_format,
    is_mask,
    receiver,
    split_virtual,
)

PDD_NAME = "~AgAAAAKj5K0FdThr3gCXEjX7VukfDJ4VXsxKOdZIGJk=~e3T2WeW7~0~~"
PDD_PHONE = "$Y/YKpKSij9Re$AgAAAAKj5K0GdThr3gD91OwqU75VBWn0HBgJhtknQj0=$0$$"
PDD_SHORT = "~AgAAAAQ8QMcFToQakAAp/+XZ8M5rYUVluWGC7ppm308=~0~"
DOUYIN_PHONE = (
    "$c0qBj0QrZm9qae50eoBTInPj8PWvCjUyafxWt5cELI0=$pExhpmm6cJ5VuSkvduc3QrdA4THYUZjuoENdITyvk"
    "WbRm44PiY8HsHWEXzxQ77kBM7xzNMxoLzfIUnxxxJ/P6uautZu7FjzmjUAkXvbFWlM+*CgkIARCtHCABKAESPgo8"
    "2qRAg0QjFELjtKxb8xUtm1YUGo6/9spO0OEG2j7RCutuqWHOYJpEdvPZIqsirv5F4byTrHMVDwn+9Bz4GgA=$1$$"
)
DOUYIN_ADDRESS = (
    "#LQxQ1h25RqUU+Ky6l38q#cDg8g12q0pW1TUzB0EUVbIaopLg8bByepKNpQ76asViKWLpzUk9850qcOVEpc18j97V"
    "mKIoYasgUtGCA9/Iep+EJjtRsCJJ1uomB5b7yu47qhJta89UscQ==*CgwIARCtHBiqICABKAESPgo8vVWSGzmdh4t"
    "EjVQ9PeGiOhWGHTfIH2xffyc9tV0I8vPQxfwKylgr/W+gvRQ8CG5msZAI7NoOWODGFtCvGgA=#1##"
)
TAOBAO_NICK = "~YjW+T6rCmKcc0tGqzWIDaQ==~-113~"
TAOBAO_PHONE = "$8SPcn5YcviStk1oP01BhNg==$1ejKajhsndi0370DKbiU/w==$1$$"
YOUZAN = "$eTS8t8hAECdXKgNtV6DIfw==$1$"
JD_TDE = "AgAAAAAAAAABAAAAJdpjD2Zt6X4SXwQ3vUuJ2n1iIzqaR0JL8y0qG1VJ4Qk="


@pytest.mark.parametrize(
    "text",
    [PDD_NAME, PDD_PHONE, PDD_SHORT, DOUYIN_PHONE, DOUYIN_ADDRESS, TAOBAO_NICK, TAOBAO_PHONE,
     YOUZAN, JD_TDE],
)  # fmt: skip
def test_published_ciphertexts_are_recognised(text: str) -> None:
    assert ciphertext_format(text) is not None


@pytest.mark.parametrize(
    "text",
    ["张三", "Jane Doe", "13812345678", "+86 138-1234-5678", "上海市静安区南京西路1266号",
     "Flat 5, 221B Baker Street", "13012345678-8421", "林*坤", "1*********5", "O'Brien",
     "ABCDEFGHIJKLMNOPQRSTUVWXYZ", "customer@example.com", "~", "$$", ""],
)  # fmt: skip
def test_clear_details_and_masks_are_not_taken_for_ciphertext(text: str) -> None:
    assert ciphertext_format(text) is None


def test_masks_are_stars_standing_for_what_is_hidden() -> None:
    assert all(is_mask(m) for m in ("林*坤", "1*********5", "张**", "王厝宫路*号", "*******1234"))
    assert not any(is_mask(m) for m in ("张三", "13812345678", "", None))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("18400913965-7576", Phone("18400913965", "7576")),  # Douyin's decrypted virtual number
        ("18877771111-123", Phone("18877771111", "123")),  # Taobao's
        ("13012345678_8421", Phone("13012345678", "8421")),
        ("13012345678转8421", Phone("13012345678", "8421")),
        ("+86 13012345678-8421", Phone("13012345678", "8421")),
        ("13812345678", Phone("13812345678")),
        ("010-12345678", Phone("010-12345678")),  # a landline, not a relay
        ("0571-88888888-123", Phone("0571-88888888-123")),
    ],
)
def test_virtual_numbers_are_split_into_relay_and_extension(text: str, expected: Phone) -> None:
    assert split_virtual(text) == expected


def test_a_receiver_in_ciphertext_keeps_its_region_and_holds_no_ciphertext_as_clear() -> None:
    found = receiver(
        "pinduoduo", customer_id=None, name=PDD_NAME, phone=PDD_PHONE, street=PDD_SHORT,
        province="广东省", city="潮州市", district="潮安区",
        name_mask="林*坤", phone_mask="1*********5", street_mask="王厝宫路*号",
    )  # fmt: skip
    assert found.customer.name is None and found.customer.phone is None
    assert found.address is not None and found.address.text == ""
    assert (found.address.province, found.address.city, found.address.district) == (
        "广东省", "潮州市", "潮安区"
    )  # fmt: skip
    cipher = found.ciphertext
    assert cipher is not None and cipher.platform == "pinduoduo"
    assert (cipher.name, cipher.phone, cipher.address) == (PDD_NAME, PDD_PHONE, PDD_SHORT)
    assert (cipher.name_mask, cipher.phone_mask) == ("林*坤", "1*********5")


def test_a_masked_receiver_with_an_open_id_keeps_the_masks_apart() -> None:
    found = receiver(
        "tmall", customer_id="buyer-open-uid", name="张**", phone="*******1234",
        street="淘宝城***号", province="浙江省", city="杭州市", district="西湖区",
        open_id="1Ao3e6qKcbXHYbR4ZPvTGibtBhSiOcnh",
    )  # fmt: skip
    assert found.customer.name is None and found.customer.phone is None
    assert found.ciphertext is not None and found.ciphertext.open_id
    assert found.ciphertext.name_mask == "张**" and found.ciphertext.address_mask == "淘宝城***号"
    assert found.address is not None and found.address.district == "西湖区"


def test_a_clear_receiver_stays_clear_and_a_virtual_number_is_split() -> None:
    found = receiver(
        "tmall", customer_id="b1", name="张三", phone="18877771111-123", street="淘宝城911号",
        province="浙江省", city="杭州市", district="西湖区",
    )  # fmt: skip
    assert found.ciphertext is None
    assert (found.customer.name, found.customer.phone, found.customer.phone_extension) == (
        "张三", "18877771111", "123"
    )  # fmt: skip
    assert found.address is not None and found.address.text == "浙江省 杭州市 西湖区 淘宝城911号"
