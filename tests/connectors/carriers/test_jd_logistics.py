"""JD Logistics (京东物流, LOP ECAP) against a fake of its open platform (fake_jdl.py): the
conformance kit, then JD's format — the sign, the query sent, states, idempotent create, and
failures told apart."""

from __future__ import annotations

import hashlib
import json
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import SecretStr

from connectors.carriers.base import (
    CarrierMisconfigured,
    PushRefused,
    Temperature,
    TrackingStatus,
)
from connectors.carriers.jd_logistics import (
    JdLogistics,
    JdRefused,
    lop_sign,
    push_sign,
    tracking_status,
)
from connectors.carriers.testing import CarrierConformance, shipment_request
from connectors.outbound import PermanentFailure, TransientFailure, urllib_transport
from tests.connectors.carriers.fake_jdl import (
    ACCESS_TOKEN,
    APP_KEY,
    APP_SECRET,
    CUSTOMER_CODE,
    FakeJdl,
    fake_jdl,
)


@pytest.fixture
def fake() -> Iterator[FakeJdl]:
    with fake_jdl() as server:
        yield server


def jdl(fake: FakeJdl, **changes: object) -> JdLogistics:
    arguments: dict[str, object] = {
        "app_key": APP_KEY,
        "app_secret": SecretStr(APP_SECRET),
        "access_token": SecretStr(ACCESS_TOKEN),
        "customer_code": CUSTOMER_CODE,
        "api_url": fake.url,
    }
    return JdLogistics(**(arguments | changes))  # type: ignore[arg-type]


class TestJdLogisticsConformance(CarrierConformance):
    @pytest.fixture
    def carrier(self, fake: FakeJdl) -> JdLogistics:
        return jdl(fake)

    @pytest.fixture
    def wrong_secret(self, fake: FakeJdl) -> JdLogistics:
        return jdl(fake, app_secret=SecretStr("not-the-secret"))

    @pytest.fixture
    def push(self, fake: FakeJdl, carrier: JdLogistics) -> tuple[bytes, dict[str, str]]:
        request = shipment_request()
        carrier.create(request, "ed-m-0001")
        return fake.signed_push(category=510)


# ---------------------------------------------------------------- the sign


def test_sign_is_md5_of_secret_wrapped_system_parameters_in_name_order() -> None:
    content = (
        "s3cr3t"
        "access_token" "tok"
        "app_key" "key"
        "method" "/ecap/v1/orders/precheck"
        "param_json" '[{"orderOrigin":1}]'
        "timestamp" "2025-05-20 10:24:51"
        "v" "2.0"
        "s3cr3t"
    )  # fmt: skip
    sign = lop_sign(
        app_secret="s3cr3t",
        access_token="tok",
        app_key="key",
        method="/ecap/v1/orders/precheck",
        param_json='[{"orderOrigin":1}]',
        timestamp="2025-05-20 10:24:51",
    )
    assert sign == hashlib.md5(content.encode()).hexdigest()
    assert sign == "403fb1dffab8906743120bac890399c4"  # computed once, outside the adapter


def test_push_sign_leaves_out_token_and_path() -> None:
    sign = push_sign(
        app_secret="s3cr3t",
        app_key="key",
        body='{"waybillCode":"JDV1"}',
        timestamp="2025-05-20 10:24:51",
    )
    assert sign == "047aac1f6f7e4711531f0429cb3e5daf"


# ---------------------------------------------------------------- what is sent


def test_a_call_sends_jds_system_parameters_and_the_body_as_a_one_element_array(
    fake: FakeJdl,
) -> None:
    sent: list[urllib.request.Request] = []

    def recording(request: urllib.request.Request) -> tuple[int, bytes]:
        sent.append(request)
        return urllib_transport(request)

    now = datetime(2026, 12, 7, 1, 2, 3, tzinfo=UTC)
    carrier = jdl(fake, transport=recording, clock=lambda: now)
    with pytest.raises(CarrierMisconfigured):  # the fake refuses a timestamp from 2026
        carrier.quote(shipment_request())
    request = sent[0]
    url = urllib.parse.urlsplit(request.full_url)
    query = dict(urllib.parse.parse_qsl(url.query))
    assert url.path == "/ecap/v1/orders/precheck"
    assert request.get_method() == "POST"
    assert set(query) == {
        "LOP-DN",
        "app_key",
        "access_token",
        "timestamp",
        "v",
        "sign",
        "algorithm",
    }
    assert query["LOP-DN"] == "ECAP" and query["v"] == "2.0" and query["algorithm"] == "md5-salt"
    assert query["app_key"] == APP_KEY and query["access_token"] == ACCESS_TOKEN
    assert query["timestamp"] == "2026-12-07 09:02:03"  # GMT+8
    assert request.get_header("Lop-tz") == "8"
    body = request.data.decode()  # type: ignore[union-attr]
    assert query["sign"] == lop_sign(
        app_secret=APP_SECRET,
        access_token=ACCESS_TOKEN,
        app_key=APP_KEY,
        method="/ecap/v1/orders/precheck",
        param_json=body,
        timestamp="2026-12-07 09:02:03",
    )
    [precheck] = json.loads(body)
    assert precheck["orderOrigin"] == 1 and precheck["customerCode"] == CUSTOMER_CODE
    assert precheck["productsReq"] == {"productCode": "ed-m-0001"}
    assert precheck["cargoes"] == [
        {"name": "goods", "quantity": 1, "weight": 1.2, "volume": 6000,
         "length": 30, "width": 20, "hight": 10}
    ]  # fmt: skip
    assert precheck["receiverContact"]["fullAddress"] == "广东省深圳市南山区科技园南区 1 栋"
    assert fake.rejected == ["gateway 106: Timestamp out of range"]


def test_create_sends_our_reference_as_order_id_with_cod_and_insurance_in_yuan(
    fake: FakeJdl,
) -> None:
    request = shipment_request(reference="o-7@W01", cod_amount=12345, declared_value=19900)
    shipment = jdl(fake).create(request, "ed-m-0002")
    order = fake.orders["o-7@W01"]["request"]
    assert order["orderId"] == "o-7@W01" and order["settleType"] == 3
    assert order["productsReq"] == {"productCode": "ed-m-0002"}
    assert order["addedProducts"] == [
        {"productCode": "ed-a-0009", "productAttrs": {"shouldPayMoney": "123.45"}},
        {"productCode": "ed-a-0002", "productAttrs": {"guaranteeMoney": "199.00"}},
    ]
    assert order["pickupStartTime"] == 1796634000000  # 2026-12-07 09:00 UTC, in ms
    assert shipment.tracking_number == fake.orders["o-7@W01"]["waybillCode"]
    assert shipment.carrier_id == fake.orders["o-7@W01"]["orderCode"]
    assert shipment.price == 1250 and shipment.currency == "CNY"
    assert shipment.label is None


# ---------------------------------------------------------------- answers read


def test_quotes_are_jds_yuan_in_fen_per_product(fake: FakeJdl) -> None:
    quotes = {q.service: q for q in jdl(fake).quote(shipment_request())}
    assert set(quotes) == {"ed-m-0001", "ed-m-0002"}
    # 1.2 kg: first kg + one more, plus the fake's 0.505 yuan (half a fen rounds up).
    assert quotes["ed-m-0001"].price == 1451 and quotes["ed-m-0001"].service_name == "京东标快"
    assert quotes["ed-m-0002"].price == 2951 and quotes["ed-m-0002"].service_name == "京东特快"
    assert all(q.currency == "CNY" and q.cash_on_delivery for q in quotes.values())
    promised = quotes["ed-m-0002"].promised_by
    assert promised is not None and promised - datetime.now(UTC) < timedelta(days=1, minutes=1)


def test_cold_chain_is_neither_quoted_nor_created(fake: FakeJdl) -> None:
    carrier = jdl(fake)
    frozen = shipment_request(temperature=Temperature.FROZEN)
    assert carrier.quote(frozen) == []
    with pytest.raises(PermanentFailure):
        carrier.create(frozen, "ed-m-0001")
    assert fake.calls == []


def test_tracking_reads_jds_nodes_in_time_order_without_phone_numbers(fake: FakeJdl) -> None:
    carrier = jdl(fake)
    shipment = carrier.create(shipment_request(), "ed-m-0001")
    events = carrier.track(shipment)
    assert [e.status for e in events] == [
        TrackingStatus.CREATED,
        TrackingStatus.PICKED_UP,
        TrackingStatus.IN_TRANSIT,
        TrackingStatus.OUT_FOR_DELIVERY,
        TrackingStatus.DELIVERED,
    ]
    assert events[0].carrier_status == "390 揽收中" and events[0].place == "石景山营业部"
    assert all("13818888888" not in (e.description or "") for e in events)
    assert events[-1].at.utcoffset() == timedelta(hours=8)


@pytest.mark.parametrize(
    ("category", "name", "title", "status"),
    [
        (390, "揽收中", "揽收任务分配", TrackingStatus.CREATED),
        (420, "已揽收", "揽收", TrackingStatus.PICKED_UP),
        (430, "运输中", "封车", TrackingStatus.IN_TRANSIT),
        ("430", "运输中", "分拣验收", TrackingStatus.IN_TRANSIT),
        (440, "派送中", "派件", TrackingStatus.OUT_FOR_DELIVERY),
        (510, "妥投", "妥投", TrackingStatus.DELIVERED),
        (None, "拒收", "客户拒收", TrackingStatus.RETURNED_TO_SENDER),
        (530, "退回", "退货入库", TrackingStatus.RETURNED_TO_SENDER),
        (440, "派送中", "配送异常", TrackingStatus.EXCEPTION),
        (None, "已取消", "订单取消", TrackingStatus.CANCELLED),
        (None, "", "已签收", TrackingStatus.DELIVERED),
        (None, "", "站点收货", TrackingStatus.IN_TRANSIT),
    ],
)
def test_jd_categories_and_words_map_to_tracking_status(
    category: object, name: str, title: str, status: TrackingStatus
) -> None:
    assert tracking_status(category=category, category_name=name, title=title) is status


# ---------------------------------------------------------------- one shipment per reference


def test_a_repeated_reference_is_answered_with_the_first_waybill(fake: FakeJdl) -> None:
    carrier = jdl(fake)
    first = carrier.create(shipment_request(), "ed-m-0001")
    again = carrier.create(shipment_request(), "ed-m-0001")
    assert again.tracking_number == first.tracking_number and len(fake.orders) == 1
    assert [c["path"] for c in fake.calls] == ["/ecap/v1/orders/create"] * 2


def test_a_repeated_reference_without_its_waybill_is_looked_up(fake: FakeJdl) -> None:
    carrier = jdl(fake)
    first = carrier.create(shipment_request(), "ed-m-0001")
    fake.repeat_without_waybill = True
    again = carrier.create(shipment_request(), "ed-m-0001")
    assert again.tracking_number == first.tracking_number
    assert fake.calls[-1]["path"] == "/ecap/v1/orders/query"
    assert json.loads(fake.calls[-1]["body"])[0]["customerOrderId"] == "o-1001@W01"


# ---------------------------------------------------------------- failures told apart


def test_a_wrong_token_or_key_is_ours(fake: FakeJdl) -> None:
    for changes in ({"access_token": SecretStr("expired")}, {"app_key": "other"}):
        with pytest.raises(CarrierMisconfigured):
            jdl(fake, **changes).quote(shipment_request())
    assert [r.split(":")[0] for r in fake.rejected] == ["gateway 103", "gateway 102"]


def test_a_customer_code_jd_does_not_know_is_ours(fake: FakeJdl) -> None:
    with pytest.raises(CarrierMisconfigured, match="客户编码"):
        jdl(fake, customer_code="010K0000000").quote(shipment_request())


@pytest.mark.parametrize("failure", ["http-503", "gateway-limit", "api-system"])
def test_throttling_and_system_errors_are_worth_another_try(fake: FakeJdl, failure: str) -> None:
    carrier = jdl(fake)
    shipment = carrier.create(shipment_request(), "ed-m-0001")
    fake.fail_next.append(failure)
    with pytest.raises(TransientFailure):
        carrier.track(shipment)
    assert carrier.track(shipment)  # the next try goes through


def test_a_refused_request_is_permanent_with_jds_code_and_no_phone_number(fake: FakeJdl) -> None:
    carrier = jdl(fake)
    shipment = carrier.create(shipment_request(), "ed-m-0001")
    with pytest.raises(JdRefused) as refused:
        carrier.cancel(shipment.model_copy(update={"tracking_number": "JDV000000000000"}))
    assert not isinstance(refused.value, CarrierMisconfigured)
    assert refused.value.code == "8" and "运单不存在" in str(refused.value)
    fake.fail_next.append("api-refuse")
    with pytest.raises(JdRefused) as refused:
        carrier.track(shipment)
    assert "18600001111" not in str(refused.value) and "超区" in str(refused.value)


def test_cancel_sends_the_waybill_and_a_reason(fake: FakeJdl) -> None:
    carrier = jdl(fake)
    shipment = carrier.create(shipment_request(), "ed-m-0001")
    carrier.cancel(shipment)
    assert fake.orders["o-1001@W01"]["cancelled"]
    [cancel] = json.loads(fake.calls[-1]["body"])
    assert cancel["waybillCode"] == shipment.tracking_number
    assert cancel["cancelType"] == 1 and 1 <= len(cancel["cancelReason"]) <= 30


@pytest.mark.parametrize("missing", ["app_key", "app_secret", "access_token", "customer_code"])
def test_missing_credentials_are_refused_at_construction(fake: FakeJdl, missing: str) -> None:
    empty: object = SecretStr(" ") if missing in ("app_secret", "access_token") else ""
    with pytest.raises(CarrierMisconfigured, match=missing):
        jdl(fake, **{missing: empty})


# ---------------------------------------------------------------- pushes


def test_a_push_for_another_app_or_an_old_one_is_refused(fake: FakeJdl) -> None:
    carrier = jdl(fake)
    carrier.create(shipment_request(), "ed-m-0001")
    body, headers = fake.signed_push(category=440)
    [event] = carrier.parse_push(body, headers)
    assert event.status is TrackingStatus.OUT_FOR_DELIVERY
    assert "13819999999" not in (event.description or "")
    with pytest.raises(PushRefused):
        carrier.parse_push(body, headers | {"app_key": "other"})
    with pytest.raises(PushRefused):
        carrier.parse_push(body, {k: v for k, v in headers.items() if k != "sign"})
    later = jdl(fake, clock=lambda: datetime.now(UTC) + timedelta(minutes=11))
    with pytest.raises(PushRefused, match="ten minutes"):
        later.parse_push(body, headers)
