from __future__ import annotations

import gc
import json
import re
import sys
from datetime import UTC, datetime
from typing import Any

import pytest

from connectors import phone
from connectors.base import PayloadRejected
from connectors.intake import payloads
from connectors.phone import CSV_COLUMNS, PhoneConnector, parse_items, sample_payload
from connectors.samples import SampleLine, SampleOrder
from connectors.testing import ConnectorConformance
from events.models import OrderLine, OrderMode, OrderModified, OrderReceived, PaymentStatus
from tests.conftest import FIXTURES

NOW = datetime(2026, 11, 25, 4, 0, tzinfo=UTC)
PHONE = FIXTURES / "phone"


def fixture(name: str) -> bytes:
    return (PHONE / name).read_bytes()


def ticket(**changes: str) -> bytes:
    """The delivery fixture with some fields changed."""
    fields: dict[str, Any] = json.loads(fixture("delivery_cash_on_delivery.json"))
    return json.dumps(fields | changes, ensure_ascii=False).encode()


def parse(raw: bytes) -> OrderReceived | OrderModified:
    return PhoneConnector().parse(raw, received_at=NOW)


class TestPhoneConformance(ConnectorConformance):
    connector = PhoneConnector()
    fixtures = PHONE
    bad_payloads = [
        (ticket(ticket=" "), "ticket"),
        (ticket(store=""), "store"),
        (ticket(phone=""), "phone"),
        (ticket(placed_at="昨天中午"), "placed_at"),
        (ticket(mode="外送"), "mode"),
        (ticket(items="宫保鸡丁饭 两份"), "items"),
        (ticket(total="106.505"), "total"),
        (ticket(delivery_fee="五块"), "delivery_fee"),
        (ticket(discount="-10"), "discount"),
        (ticket(payment="微信"), "payment"),
        (ticket(requested_at="中午"), "requested_at"),
        (ticket(revision="一"), "revision"),
        (b'{"ticket": "1", "total": 12.5}', "store"),
        (b'{"_columns": 3, "_expected": 17}', None),
    ]


def test_cash_on_delivery_ticket_is_mapped_field_by_field() -> None:
    order = parse(fixture("delivery_cash_on_delivery.json"))
    assert isinstance(order, OrderReceived)
    assert (order.channel, order.external_id) == ("phone", "20261125-0007")
    assert order.mode is OrderMode.DELIVERY
    assert order.currency == "CNY"
    assert order.lines == [
        OrderLine(sku="NOODLE-BEEF", name="红烧牛肉面", quantity=2, unit_price=3250,
                  options=["少辣", "面硬一点"], gross=6500, tax=0, prices_include_tax=True),
        OrderLine(sku="猪肉白菜水饺 12只", name="猪肉白菜水饺 12只", quantity=1, unit_price=2800,
                  gross=2800, tax=0, prices_include_tax=True),
        OrderLine(sku="酸辣汤", name="酸辣汤", quantity=1, unit_price=1550, gross=1550, tax=0,
                  prices_include_tax=True),
    ]  # fmt: skip
    assert (order.delivery_fee, order.packaging_fee, order.discount, order.tax) == (
        500,
        300,
        1000,
        0,
    )
    assert order.total == 10650
    assert order.payment_status is PaymentStatus.CASH_ON_DELIVERY
    assert order.customer.model_dump() == {
        "id": None, "name": "张阿姨", "phone": "13764829105", "email": None, "key": None,
        "phone_extension": None,
    }  # fmt: skip
    assert order.address is not None and order.address.text == "上海市静安区常德路800弄12号302室"
    assert order.location_hint == "SH-JINGAN"
    assert order.placed_at == datetime(2026, 11, 25, 3, 18, tzinfo=UTC)
    assert order.requested_at == datetime(2026, 11, 25, 4, 0, tzinfo=UTC)  # "12:00" that day
    assert order.notes == "到楼下打电话，不要按门铃（宝宝在睡觉）"


def test_call_back_revision_modifies_the_same_ticket_at_its_update_time() -> None:
    original = parse(fixture("delivery_cash_on_delivery.json"))
    changed = parse(fixture("delivery_cash_on_delivery_modified.json"))
    assert isinstance(changed, OrderModified)
    assert (changed.order_id, changed.revision) == (original.order_id, 1)
    assert changed.occurred_at == datetime(2026, 11, 25, 3, 26, tzinfo=UTC)
    assert [(line.name, line.quantity) for line in changed.lines] == [
        ("红烧牛肉面", 2),
        ("酸辣汤", 2),
    ]
    assert changed.total == 9400


@pytest.mark.parametrize(
    ("word", "mode"),
    [
        ("外卖", OrderMode.DELIVERY),
        ("自取", OrderMode.PICKUP),
        ("堂食", OrderMode.DINE_IN),
        ("delivery", OrderMode.DELIVERY),
        ("Pickup", OrderMode.PICKUP),
        ("dine_in", OrderMode.DINE_IN),
    ],
)
def test_mode_is_read_in_english_or_chinese(word: str, mode: OrderMode) -> None:
    order = parse(ticket(mode=word))
    assert isinstance(order, OrderReceived)
    assert order.mode is mode


@pytest.mark.parametrize(
    ("word", "status"),
    [
        ("已付", PaymentStatus.PAID),
        ("货到付款", PaymentStatus.CASH_ON_DELIVERY),
        ("未付", PaymentStatus.UNPAID),
        ("paid", PaymentStatus.PAID),
        ("", PaymentStatus.UNPAID),
    ],
)
def test_payment_is_read_in_english_or_chinese(word: str, status: PaymentStatus) -> None:
    order = parse(ticket(payment=word))
    assert isinstance(order, OrderReceived)
    assert order.payment_status is status


@pytest.mark.parametrize(
    ("text", "lines"),
    [
        ("宫保鸡丁饭 x2 @26.00", [("宫保鸡丁饭", "宫保鸡丁饭", 2, 2600, [])]),
        ("宫保鸡丁饭x2@26", [("宫保鸡丁饭", "宫保鸡丁饭", 2, 2600, [])]),
        ("[RICE-CHICKEN] 宫保鸡丁饭 × 1 @ ¥26.5 (少辣)",
         [("RICE-CHICKEN", "宫保鸡丁饭", 1, 2650, ["少辣"])]),
        ("酸辣汤 X3 @15.50（少辣，不要香菜、多醋）",
         [("酸辣汤", "酸辣汤", 3, 1550, ["少辣", "不要香菜", "多醋"])]),
        ("宫保鸡丁饭 x2 @26.00; 酸辣汤 *1 @15.50 (少辣)；",
         [("宫保鸡丁饭", "宫保鸡丁饭", 2, 2600, []), ("酸辣汤", "酸辣汤", 1, 1550, ["少辣"])]),
        ("猪肉白菜水饺 12只 x1 @28", [("猪肉白菜水饺 12只", "猪肉白菜水饺 12只", 1, 2800, [])]),
        ("XO酱炒饭(大份) x1 @38.00", [("XO酱炒饭(大份)", "XO酱炒饭(大份)", 1, 3800, [])]),
    ],
)  # fmt: skip
def test_items_grammar_reads_what_staff_type(text: str, lines: list[tuple[Any, ...]]) -> None:
    assert [
        (line.sku, line.name, line.quantity, line.unit_price, line.options)
        for line in parse_items(text)
    ] == lines


def test_a_line_costs_its_typed_quantity_times_its_typed_unit_price() -> None:
    """The price after "@" is the unit price, not the line's total: 鲜肉包 x5 @10 is 50.00.
    The ticket's discount is the whole order's, so no line has a discount, tax or total."""
    order = parse(fixture("pickup_paid_by_transfer.json"))
    assert [(li.quantity, li.unit_price, li.gross) for li in order.lines] == [
        (5, 1000, 5000), (2, 1200, 2400),
    ]  # fmt: skip
    assert all((li.discount, li.tax, li.total) == (0, 0, None) for li in order.lines)
    assert sum(li.amount for li in order.lines) + order.packaging_fee == order.total == 7600
    assert order.rounding == 0
    (line,) = parse_items("宫保鸡丁饭 x3 @26.35")
    assert (line.gross, line.unit_price, line.amount) == (7905, 2635, 3 * 2635)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("宫保鸡丁饭 x2 @26.00; 酸辣汤 x1", "item 2 '酸辣汤 x1' has no price"),
        ("宫保鸡丁饭 @26.00", "item 1 '宫保鸡丁饭 @26.00' has no quantity"),
        ("宫保鸡丁饭 x0 @26.00", "item 1 '宫保鸡丁饭 x0 @26.00': quantity must be at least 1"),
        ("宫保鸡丁饭 x2 @26.005", "item 1 '宫保鸡丁饭 x2 @26.005': price has more than 2 decimals"),
        ("宫保鸡丁饭 x2 @二十六", "item 1 '宫保鸡丁饭 x2 @二十六' is not 'name x2 @26.00"),
        ("宫保鸡丁饭 x2 @26 少辣", "item 1 '宫保鸡丁饭 x2 @26 少辣' is not 'name x2 @26.00"),
        (" ; ；", "no items"),
    ],
)
def test_malformed_item_is_rejected_saying_which_and_why(text: str, reason: str) -> None:
    with pytest.raises(PayloadRejected) as caught:
        parse(ticket(items=text))
    assert caught.value.field == "items"
    assert reason in caught.value.reason


def test_csv_rows_parse_like_the_json_fixtures() -> None:
    rows = list(payloads(PHONE / "tickets.csv"))
    assert len(rows) == 4
    from_csv = {
        (event.external_id, event.event_type): event for event in (parse(row.body) for row in rows)
    }
    for name in ("delivery_cash_on_delivery.json", "delivery_cash_on_delivery_modified.json",
                 "pickup_paid_by_transfer.json", "dine_in_reservation.json"):  # fmt: skip
        event = parse(fixture(name))
        assert from_csv[(event.external_id, event.event_type)] == event, name


def test_csv_header_is_the_column_constant() -> None:
    header = (PHONE / "tickets.csv").read_text(encoding="utf-8").splitlines()[0]
    assert tuple(header.split(",")) == CSV_COLUMNS


def test_csv_row_of_the_wrong_width_is_rejected_with_the_counts() -> None:
    with pytest.raises(PayloadRejected, match="row has 3 cells, the header 17"):
        parse(b'{"_columns": 3, "_expected": 17}')


def test_phone_orders_are_unsigned() -> None:
    assert PhoneConnector.signed is False
    PhoneConnector().verify({}, fixture("dine_in_reservation.json"))


SAMPLES = [
    SampleOrder(
        external_id="20261125-0021", store="SH-XUJIAHUI",
        placed_at=datetime(2026, 11, 25, 3, 45, tzinfo=UTC), mode=OrderMode.DELIVERY,
        lines=[SampleLine("RICE-CHICKEN", "宫保鸡丁饭", 2, 2600),
               SampleLine("SOUP-HOTSOUR", "酸辣汤", 1, 1550)],
        customer_name="王先生", customer_phone="13812345678", delivery_fee=500, packaging_fee=200,
        discount=300, address_text="上海市徐汇区漕溪北路88号1702室", notes="少放辣",
    ),
    SampleOrder(
        external_id="20261125-0022", store="SH-JINGAN",
        placed_at=datetime(2026, 11, 25, 16, 5, tzinfo=UTC), mode=OrderMode.PICKUP,
        lines=[SampleLine("DUMPLING-12", "猪肉白菜水饺 12只", 1, 2800)],
        customer_name="李", customer_phone="13900001111",
    ),
    SampleOrder(
        external_id="20261125-0023", store="SH-LUJIAZUI",
        placed_at=datetime(2026, 11, 25, 2, 0, tzinfo=UTC), mode=OrderMode.DINE_IN,
        lines=[SampleLine("NOODLE-BEEF", "红烧牛肉面", 4, 3250)],
        customer_name="赵女士", customer_phone="13700002222", notes="订座4人",
    ),
]  # fmt: skip


@pytest.mark.parametrize("revision", [0, 1])
@pytest.mark.parametrize("sample", SAMPLES, ids=lambda s: s.mode.value)
def test_sample_payload_parses_back_to_the_same_order(sample: SampleOrder, revision: int) -> None:
    body, headers = sample_payload(sample, revision=revision)
    assert headers == {}
    assert set(json.loads(body)) == set(CSV_COLUMNS)
    event = PhoneConnector().parse(body, received_at=NOW)
    assert event.external_id == sample.external_id
    assert [(line.sku, line.name, line.quantity, line.unit_price) for line in event.lines] == [
        (line.sku, line.name, line.quantity, line.unit_price) for line in sample.lines
    ]
    assert (event.delivery_fee, event.packaging_fee, event.discount, event.total) == (
        sample.delivery_fee, sample.packaging_fee, sample.discount, sample.total,
    )  # fmt: skip
    assert event.notes == sample.notes
    assert (event.address.text if event.address else None) == sample.address_text
    if revision:
        assert isinstance(event, OrderModified)
        assert event.order_id == PhoneConnector().order_id(sample.external_id)
        return
    assert isinstance(event, OrderReceived)
    assert (event.mode, event.location_hint, event.placed_at) == (
        sample.mode, sample.store, sample.placed_at,
    )  # fmt: skip
    assert (event.customer.name, event.customer.phone) == (
        sample.customer_name, sample.customer_phone,
    )  # fmt: skip


# ---- reading items is linear in their length (issue 16: the old regex took an hour on 1 MiB)

# Shapes the backtracking item regex was quadratic or worse on: 32 KB of "[x1 @1 (" took it
# 1 s, twice as much 5 s.
HOSTILE_ITEMS = ["[x1 @1 (", "x1@1(", "宫保 x1 @", "x1 ", "a", "(", ")", "@", "1", "[", "x1 @1.5 "]


def python_steps(text: str) -> int:
    """How many lines of Python run to read `text` as items (refused or not)."""
    steps = 0

    def count(frame: Any, event: str, arg: Any) -> Any:
        nonlocal steps
        steps += event == "line"
        return count

    gc.collect()
    gc.disable()  # no finaliser of another test's objects runs, and is counted, meanwhile
    sys.settrace(count)
    try:
        parse_items(text)
    except PayloadRejected:
        pass
    finally:
        sys.settrace(None)
        gc.enable()
    return steps


class Recorded:
    """A compiled pattern that remembers the longest text it was applied to."""

    def __init__(self, pattern: re.Pattern[str]) -> None:
        self.pattern, self.longest = pattern, 0

    def match(self, text: str) -> re.Match[str] | None:
        self.longest = max(self.longest, len(text))
        return self.pattern.match(text)

    def fullmatch(self, text: str) -> re.Match[str] | None:
        self.longest = max(self.longest, len(text))
        return self.pattern.fullmatch(text)


@pytest.mark.parametrize("unit", HOSTILE_ITEMS)
def test_one_item_takes_the_same_python_steps_whatever_its_length(
    unit: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The work per item is a fixed number of string-method passes (linear in C, whatever the
    text), and its patterns only ever see a number's few characters, where backtracking has
    nothing to be quadratic in: no step depends on the length."""
    patterns = [Recorded(phone._DIGITS), Recorded(phone._PRICE)]
    monkeypatch.setattr(phone, "_DIGITS", patterns[0])
    monkeypatch.setattr(phone, "_PRICE", patterns[1])
    python_steps(unit)  # the amount cache warm, so each count is of the same work
    assert python_steps(unit * 2_000) == python_steps(unit * 200_000)
    assert max(pattern.longest for pattern in patterns) <= phone._NUMBER_CHARS + 1


@pytest.mark.parametrize("item", ["宫保鸡丁饭 x2 @26.00 (少辣)", "[A] a x1 @1", "x1@"])
def test_many_items_take_python_steps_in_proportion_to_their_number(item: str) -> None:
    python_steps(item)  # the amount cache warm, so each count is of the same work
    hundred, two_hundred, three_hundred = (
        python_steps(";".join([item] * n)) for n in (100, 200, 300)
    )
    assert three_hundred - two_hundred == two_hundred - hundred


@pytest.mark.timeout(60)
@pytest.mark.parametrize("unit", HOSTILE_ITEMS)
def test_a_mebibyte_of_hostile_items_is_read_within_a_minute(unit: str) -> None:
    """The backstop of the structural tests above: the old regex needed hours for this."""
    text = unit * ((1 << 20) // len(unit.encode()) + 1)
    with pytest.raises(PayloadRejected):
        parse_items(text)


def test_items_longer_than_their_cap_or_a_dish_longer_than_a_text_are_refused() -> None:
    for items in ("宫保鸡丁饭 x1 @26; " * 8000, "宫" * 1001 + " x1 @26"):
        with pytest.raises(PayloadRejected) as caught:
            parse(ticket(items=items))
        assert caught.value.field == "items"
    assert len(parse(ticket(items="宫保鸡丁饭 x1 @26; " * 3000)).lines) == 3000


@pytest.mark.parametrize("revision", ["²", "١", "1.0", "-1", "9" * 40])
def test_a_revision_that_is_not_ascii_digits_within_64_bits_is_refused(revision: str) -> None:
    with pytest.raises(PayloadRejected) as caught:
        parse(ticket(revision=revision))
    assert caught.value.field == "revision"
