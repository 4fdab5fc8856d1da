from __future__ import annotations

from datetime import UTC, datetime

import pytest

from events.models import (
    Address,
    Customer,
    OrderAccepted,
    OrderLine,
    OrderMode,
    OrderRejected,
    PlatformCiphertext,
)
from streams.validation import decide, rejection_reasons
from tests.factories import received

NOW = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)


def test_consistent_order_is_accepted_after_itself_in_the_log() -> None:
    order = received()
    out = decide(order, now=NOW)
    assert out[0] == order
    verdict = out[1]
    assert isinstance(verdict, OrderAccepted)
    assert (verdict.sequence, verdict.causation_id, verdict.total) == (2, order.event_id, 6100)


def test_verdict_id_is_deterministic_so_reprocessing_is_recognised() -> None:
    order = received()
    assert decide(order, now=NOW)[1].event_id == decide(order, now=datetime.now(UTC))[1].event_id


@pytest.mark.parametrize(
    ("overrides", "code", "field"),
    [
        ({"total": 6000}, "TOTAL_MISMATCH", "total"),
        ({"currency": "XYZ"}, "UNKNOWN_CURRENCY", "currency"),
        (
            {"lines": [OrderLine(sku="A", name="a", quantity=0, unit_price=100)], "total": 500},
            "NON_POSITIVE_QUANTITY",
            "lines.0.quantity",
        ),
        ({"lines": [], "total": 500}, "NO_LINES", "lines"),
        ({"address": None}, "MISSING_ADDRESS", "address"),
        ({"address": Address(text="  ")}, "MISSING_ADDRESS", "address"),
        ({"customer": Customer(name="x")}, "MISSING_PHONE", "customer.phone"),
        (
            {"mode": OrderMode.SHIP, "customer": Customer(phone="1")},
            "MISSING_NAME",
            "customer.name",
        ),
        ({"discount": -1, "total": 6101}, "NEGATIVE_AMOUNT", "discount"),
        (
            {
                "lines": [OrderLine(sku="A", name="a", quantity=1, unit_price=100, unit="stone")],
                "total": 100,
            },
            "UNKNOWN_UNIT",
            "lines.0.unit",
        ),
        (
            {
                "lines": [
                    OrderLine(
                        sku="A",
                        name="a",
                        quantity=1,
                        unit_price=100,
                        unit="lb",
                        quantity_millionths=1_500_000,
                    )
                ],
                "total": 150,
            },
            "MEASURE_MISMATCH",
            "lines.0.quantity_millionths",
        ),
        (
            {
                "lines": [
                    OrderLine(
                        sku="A",
                        name="a",
                        quantity=1,
                        unit_price=100,
                        unit="kg",
                        quantity_millionths=0,
                    )
                ],
                "total": 0,
            },
            "MEASURE_MISMATCH",
            "lines.0.quantity_millionths",
        ),
    ],
)
def test_each_defect_is_rejected_with_its_reason_code(
    overrides: dict[str, object], code: str, field: str
) -> None:
    order = received(**overrides)
    verdict = decide(order, now=NOW)[1]
    assert isinstance(verdict, OrderRejected)
    assert (code, field) in {(r.code, r.field) for r in verdict.reasons}


@pytest.mark.parametrize(
    ("mode", "payment", "accepted"),
    [
        (OrderMode.DELIVERY, "unpaid", False),
        (OrderMode.SHIP, "pending", False),
        (OrderMode.DELIVERY, "cash_on_delivery", True),
        (OrderMode.SHIP, "paid", True),
        (OrderMode.PICKUP, "unpaid", True),
        (OrderMode.DINE_IN, "pending", True),
    ],
)
def test_goods_leave_only_paid_or_cash_on_delivery(
    mode: OrderMode, payment: str, accepted: bool
) -> None:
    codes = {r.code for r in rejection_reasons(received(mode=mode, payment_status=payment))}
    assert ("PAYMENT_NOT_ACCEPTED" not in codes) == accepted


def test_dine_in_order_needs_neither_address_nor_phone() -> None:
    order = received(mode=OrderMode.DINE_IN, address=None, customer=Customer())
    assert rejection_reasons(order) == []


def test_details_the_platform_encrypted_count_as_given_and_a_mask_alone_does_not() -> None:
    """A JD or Taobao order names its receiver only as ciphertext: held, not missing. The
    platform's masks are for display: without a ciphertext they are not the details."""
    cipher = PlatformCiphertext(
        platform="jd", name="~cipher-name~", phone="~cipher-phone~", address="~cipher-addr~"
    )
    encrypted = received(
        mode=OrderMode.SHIP,
        customer=Customer(),
        address=Address(text="", province="北京", city="北京市", district="朝阳区"),
        platform_ciphertext=cipher,
    )
    assert rejection_reasons(encrypted) == []
    masked_only = encrypted.model_copy(
        update={
            "platform_ciphertext": PlatformCiphertext(
                platform="jd", name_mask="张**", phone_mask="138****5678", address_mask="北京***"
            )
        }
    )
    codes = {reason.code for reason in rejection_reasons(masked_only)}
    assert codes == {"MISSING_ADDRESS", "MISSING_NAME"}
    delivered = encrypted.model_copy(update={"mode": OrderMode.DELIVERY})
    assert rejection_reasons(delivered) == []
    delivered_masked = masked_only.model_copy(update={"mode": OrderMode.DELIVERY})
    codes = {reason.code for reason in rejection_reasons(delivered_masked)}
    assert codes == {"MISSING_ADDRESS", "MISSING_NAME", "MISSING_PHONE"}


def test_a_measured_line_is_accepted_and_costs_its_exact_measure() -> None:
    """1.5 lb at 999 a pound without a stated amount costs 1498.5, half to even: 1498."""
    line = OrderLine(
        sku="BEANS", name="beans", quantity=2, unit_price=999, unit="lb",
        quantity_millionths=1_500_000,
    )  # fmt: skip
    assert line.amount == 1498
    order = received(lines=[line], total=1498 + 500, delivery_fee=500)
    assert rejection_reasons(order) == []
    assert not isinstance(decide(order, now=NOW)[1], OrderRejected)


def test_a_line_in_another_unit_than_its_product_is_stocked_in_is_rejected() -> None:
    from events.models import Product
    from streams.catalogue import Catalogue

    catalogue = Catalogue(products={"TEA": Product(sku="TEA", name="tea", unit="kg")})
    grams = OrderLine(sku="TEA", name="tea", quantity=250, unit_price=10, unit="g")
    kilos = OrderLine(sku="TEA", name="tea", quantity=1, unit_price=4000, unit="kg",
                      quantity_millionths=250_000)  # fmt: skip
    wrong = received(lines=[grams], total=3000, delivery_fee=500)
    right = received(lines=[kilos], total=1500, delivery_fee=500)
    assert [(r.code, r.field) for r in rejection_reasons(wrong, catalogue)] == [
        ("UNIT_MISMATCH", "lines.0.unit")
    ]
    assert rejection_reasons(right, catalogue) == []


def test_a_tip_is_part_of_the_total_and_never_negative() -> None:
    tipped = received(tip=800, total=6100 + 800)  # lines 5600 + delivery 500 + tip 8.00
    assert rejection_reasons(tipped) == []
    forgotten = rejection_reasons(received(tip=800))
    message = "lines + fees + tax + tip - discount = 6900, but total is 6100"
    assert [(r.code, r.message) for r in forgotten] == [("TOTAL_MISMATCH", message)]
    negative = {r.code for r in rejection_reasons(received(tip=-100, total=6000))}
    assert negative == {"NEGATIVE_AMOUNT"}
