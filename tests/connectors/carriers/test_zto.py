"""ZTO Express against the fake of ZTO's open platform (fake_zto.py): the conformance kit, then
the format - the data digest, the headers and bodies sent, scan types to statuses, one shipment
per reference, and ZTO's answers told apart."""

from __future__ import annotations

import base64
import hashlib
import json
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import SecretStr

from connectors.carriers.base import (
    CarrierMisconfigured,
    PushRefused,
    Shipment,
    Temperature,
    TrackingStatus,
)
from connectors.carriers.registry import registered
from connectors.carriers.testing import CarrierConformance, shipment_request
from connectors.carriers.zto import (
    PRODUCTION_URL,
    PUSH_RECEIVED,
    SERVICE,
    Zto,
    ZtoRate,
    data_digest,
    scan_status,
)
from connectors.outbound import PermanentFailure, TransientFailure, Unsupported
from tests.connectors.carriers.fake_zto import (
    ACCOUNT_ID,
    ACCOUNT_PASSWORD,
    APP_KEY,
    APP_SECRET,
    FakeZto,
    fake_zto,
)

RATES = {
    ("浙江省", "广东省"): ZtoRate(first_kg=1200, additional_kg=500),
    ("浙江", "*"): ZtoRate(first_kg=1500, additional_kg=800),
}


def make_zto(fake: FakeZto, *, secret: str = APP_SECRET, **changes: Any) -> Zto:
    fields: dict[str, object] = {
        "app_key": APP_KEY,
        "app_secret": SecretStr(secret),
        "account_id": ACCOUNT_ID,
        "account_password": SecretStr(ACCOUNT_PASSWORD),
        "rates": RATES,
        "api_url": fake.url,
    }
    return Zto(**(fields | changes))  # type: ignore[arg-type]


@pytest.fixture
def fake() -> Iterator[FakeZto]:
    with fake_zto() as server:
        yield server


class TestZtoConformance(CarrierConformance):
    @pytest.fixture
    def carrier(self, fake: FakeZto) -> Zto:
        return make_zto(fake)

    @pytest.fixture
    def wrong_secret(self, fake: FakeZto) -> Zto:
        return make_zto(fake, secret="not-the-secret")

    @pytest.fixture
    def push(self, fake: FakeZto, carrier: Zto) -> tuple[bytes, dict[str, str]]:
        shipment = carrier.create(shipment_request("o-2001@W01"), SERVICE)
        return fake.signed_push(shipment.tracking_number, action="SIGNED")


# ------------------------------------------------------------ the digest


def test_the_digest_is_base64_of_md5_over_utf8_body_and_secret() -> None:
    body = '{"billCode":"73100196611386","mobilePhone":"5514","remark":"中通"}'
    secret = "11109419708e0cc91fd0a1b9369d64c4"
    md5 = hashlib.md5((body + secret).encode("utf-8")).digest()
    assert data_digest(body, secret=secret) == base64.b64encode(md5).decode()
    assert data_digest(body.encode(), secret=secret) == data_digest(body, secret=secret)
    # fixed values from `printf %s 'abckey' | openssl md5 -binary | base64` (and the same for
    # the UTF-8 text '{"a":"中通"}密钥')
    assert data_digest("abc", secret="key") == "EedMh9GZyU/UwCMitCOR3Q=="
    assert data_digest('{"a":"中通"}', secret="密钥") == "J4ocv44VH0yl6XDIxQwk9A=="


def test_the_digest_changes_with_the_secret_and_with_any_byte_of_the_body() -> None:
    assert data_digest("{}", secret="a") != data_digest("{}", secret="b")
    assert data_digest('{"a":1}', secret="a") != data_digest('{"a":2}', secret="a")


# ------------------------------------------------------------ what is sent


def test_create_posts_the_signed_json_zto_documents(fake: FakeZto) -> None:
    zto = make_zto(fake)
    shipment = zto.create(shipment_request(), SERVICE)
    method, headers, raw = next(call for call in fake.calls if call[0] == "zto.open.createOrder")
    assert headers["x-appkey"] == APP_KEY and headers["x-companyid"] == APP_KEY
    assert headers["content-type"] == "application/json; charset=UTF-8"
    expected = base64.b64encode(hashlib.md5(raw + APP_SECRET.encode()).digest()).decode()
    assert headers["x-datadigest"] == expected
    body = json.loads(raw)
    assert body["partnerType"] == "2" and body["orderType"] == "2"
    assert body["partnerOrderCode"] == "o-1001@W01"
    assert body["accountInfo"] == {"accountId": "test", "accountPassword": "ZTO123", "type": 1}
    assert body["senderInfo"] == {
        "senderName": "杭州仓", "senderPhone": "057188888888", "senderProvince": "浙江省",
        "senderCity": "杭州市", "senderDistrict": "余杭区", "senderAddress": "文一西路 969 号",
    }  # fmt: skip
    assert body["receiveInfo"]["receiverMobile"] == "13800000000"
    assert body["receiveInfo"]["receiverProvince"] == "广东省"
    assert body["summaryInfo"] == {"quantity": 1, "startTime": "2026-12-07 17:00:00"}
    assert body["orderItems"] == [{"name": "goods", "weight": 1200, "quantity": 1}]
    assert "杭州仓".encode() in raw  # UTF-8 text, as signed, not \u escapes
    assert shipment.tracking_number in fake.orders
    assert fake.subscriptions[shipment.tracking_number] == "0000"  # recipient's last 4 digits


def test_the_request_goes_to_the_method_path_with_zto_header_names() -> None:
    sent: list[urllib.request.Request] = []

    def transport(request: urllib.request.Request) -> tuple[int, bytes]:
        sent.append(request)
        return 200, json.dumps({"status": True, "statusCode": "SYS000", "result": []}).encode()

    zto = Zto(
        app_key="k",
        app_secret=SecretStr("s"),
        account_id="a",
        account_password=SecretStr("p"),
        rates=RATES,
        company_id="company-7",
        transport=transport,
    )
    assert zto.api_url == PRODUCTION_URL
    shipment = make_shipment("73100196611386")
    assert zto.track(shipment) == []
    (request,) = sent
    assert request.full_url == "https://japi.zto.com/zto.merchant.waybill.track.query"
    assert request.get_method() == "POST"
    headers = {name.lower(): value for name, value in request.header_items()}
    assert headers["x-appkey"] == "k" and headers["x-companyid"] == "company-7"
    assert request.data == b'{"billCode":"73100196611386"}'
    assert headers["x-datadigest"] == data_digest(b'{"billCode":"73100196611386"}', secret="s")


def make_shipment(bill_code: str) -> Shipment:
    return Shipment(carrier="zto", reference="r", tracking_number=bill_code, service=SERVICE)


# ------------------------------------------------------------ quotes


def test_the_quote_is_the_rate_card_price_by_started_kilogram(fake: FakeZto) -> None:
    zto = make_zto(fake)
    (quote,) = zto.quote(shipment_request())  # 1.2 kg: first kg + 1 started kg
    assert (quote.price, quote.currency, quote.service) == (1200 + 500, "CNY", SERVICE)
    assert quote.temperatures == frozenset({Temperature.AMBIENT}) and not quote.cash_on_delivery
    assert any(call[0] == "zto.innovate.bagAddrMark" for call in fake.calls)


def test_a_lane_with_no_rate_or_no_route_gets_no_quote(fake: FakeZto) -> None:
    from connectors.carriers.testing import RECIPIENT, SENDER

    zto = make_zto(fake, rates={("浙江", "广东"): ZtoRate(first_kg=1200, additional_kg=500)})
    far = RECIPIENT.model_copy(update={"province": "西藏自治区"})
    assert zto.quote(shipment_request(recipient=far)) == []  # no rate for the lane
    sender_elsewhere = SENDER.model_copy(update={"province": "四川省"})
    assert zto.quote(shipment_request(sender=sender_elsewhere)) == []
    fake.routed.discard("广东省")
    assert zto.quote(shipment_request()) == []  # ZTO gives no sorting mark
    assert zto.quote(shipment_request(cod_amount=1000)) == []


# ------------------------------------------------------------ one shipment per reference


def test_a_repeated_reference_gets_the_first_shipment_and_zto_is_asked_once(
    fake: FakeZto,
) -> None:
    zto = make_zto(fake)
    first = zto.create(shipment_request(), SERVICE)
    again = zto.create(shipment_request(), SERVICE)
    assert again == first and len(fake.orders) == 1


def test_the_record_given_to_the_adapter_survives_a_new_adapter(fake: FakeZto) -> None:
    record: dict[str, object] = {}
    first = make_zto(fake, shipments=record).create(shipment_request(), SERVICE)
    again = make_zto(fake, shipments=record).create(shipment_request(), SERVICE)
    assert again == first and len(fake.orders) == 1


def test_a_failed_subscription_is_tried_again_without_a_second_label(fake: FakeZto) -> None:
    zto = make_zto(fake)
    fake.fail_next.append(("zto.merchant.waybill.track.subsrcibe", "S203"))
    with pytest.raises(TransientFailure):
        zto.create(shipment_request(), SERVICE)
    shipment = zto.create(shipment_request(), SERVICE)
    assert len(fake.orders) == 1 and shipment.tracking_number in fake.subscriptions


# ------------------------------------------------------------ tracking


SCANS = [
    ("收件", TrackingStatus.PICKED_UP),
    ("发件", TrackingStatus.IN_TRANSIT),
    ("到件", TrackingStatus.IN_TRANSIT),
    ("派件", TrackingStatus.OUT_FOR_DELIVERY),
    ("签收", TrackingStatus.DELIVERED),
    ("问题件", TrackingStatus.EXCEPTION),
    ("退件", TrackingStatus.EXCEPTION),
    ("退件签收", TrackingStatus.RETURNED_TO_SENDER),
    ("GOT", TrackingStatus.PICKED_UP),
    ("DEPARTURE", TrackingStatus.IN_TRANSIT),
    ("ARRIVAL", TrackingStatus.IN_TRANSIT),
    ("DISPATCH", TrackingStatus.OUT_FOR_DELIVERY),
    ("INBOUND", TrackingStatus.OUT_FOR_DELIVERY),
    ("SIGNED", TrackingStatus.DELIVERED),
    ("DEPARTURE_SIGNED", TrackingStatus.DELIVERED),
    ("HANDOVERSCAN_SIGNED", TrackingStatus.DELIVERED),
    ("PROBLEM", TrackingStatus.EXCEPTION),
    ("RETURN_SCAN", TrackingStatus.EXCEPTION),
    ("RETURN_SIGNED", TrackingStatus.RETURNED_TO_SENDER),
]


@pytest.mark.parametrize(("code", "status"), SCANS)
def test_scan_types_map_to_tracking_statuses(code: str, status: TrackingStatus) -> None:
    assert scan_status(code) is status


def test_an_unknown_scan_type_reads_as_in_transit_and_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert scan_status("航空发件") is TrackingStatus.IN_TRANSIT
    assert "航空发件" in caplog.text


def test_tracking_reads_zto_traces_in_time_order(fake: FakeZto) -> None:
    zto = make_zto(fake)
    shipment = zto.create(shipment_request(), SERVICE)
    fake.scan(shipment.tracking_number, "派件", datetime(2026, 12, 9, 1, 0, tzinfo=UTC))
    fake.scan(shipment.tracking_number, "收件", datetime(2026, 12, 7, 9, 0, tzinfo=UTC))
    fake.scan(shipment.tracking_number, "到件", datetime(2026, 12, 8, 3, 0, tzinfo=UTC))
    events = zto.track(shipment)
    assert [e.carrier_status for e in events] == ["收件", "到件", "派件"]
    assert [e.status for e in events] == [
        TrackingStatus.PICKED_UP, TrackingStatus.IN_TRANSIT, TrackingStatus.OUT_FOR_DELIVERY,
    ]  # fmt: skip
    assert events[0].at == datetime(2026, 12, 7, 9, 0, tzinfo=UTC)
    assert events[0].place == "杭州中转"


def test_a_push_is_read_in_china_time(fake: FakeZto) -> None:
    zto = make_zto(fake)
    body, headers = fake.signed_push(
        "73100196611386", action="DISPATCH", at=datetime(2026, 12, 9, 7, 30, tzinfo=UTC)
    )
    assert b"actionTime%22%3A%222026-12-09+15%3A30%3A00" in body
    (event,) = zto.parse_push(body, headers)
    assert event.status is TrackingStatus.OUT_FOR_DELIVERY and event.carrier_status == "DISPATCH"
    assert event.at == datetime(2026, 12, 9, 7, 30, tzinfo=UTC)
    assert event.tracking_number == "73100196611386" and event.place == "深圳南山"
    assert PUSH_RECEIVED["status"] is True


def test_a_push_signed_with_another_secret_or_for_another_app_is_refused(
    fake: FakeZto,
) -> None:
    zto = make_zto(fake)
    body, headers = fake.signed_push("73100196611386", secret="someone-else")
    with pytest.raises(PushRefused):
        zto.parse_push(body, headers)
    good, _ = fake.signed_push("73100196611386")
    form = dict(urllib.parse.parse_qsl(good.decode()))
    with pytest.raises(PushRefused):
        zto.parse_push(urllib.parse.urlencode(form | {"company_id": "other"}).encode(), headers)
    with pytest.raises(PushRefused):
        zto.parse_push(urllib.parse.urlencode(form | {"msg_type": "Order"}).encode(), headers)
    with pytest.raises(PushRefused):
        zto.parse_push(b"\xff\xfe", headers)


# ------------------------------------------------------------ errors told apart


def test_bad_credentials_are_ours_and_stop_everything(fake: FakeZto) -> None:
    with pytest.raises(CarrierMisconfigured, match="S211"):
        make_zto(fake, secret="wrong").create(shipment_request(), SERVICE)
    with pytest.raises(CarrierMisconfigured, match="S210"):
        make_zto(fake, app_key="nobody").quote(shipment_request())
    with pytest.raises(CarrierMisconfigured, match="E404"):
        make_zto(fake, account_password=SecretStr("wrong")).create(shipment_request(), SERVICE)


@pytest.mark.parametrize("code", ["S200", "S202", "S203", "S206", "S221", 500, 503, 429])
def test_throttling_and_system_errors_are_worth_another_try(fake: FakeZto, code: object) -> None:
    zto = make_zto(fake)
    fake.fail_next.append(("zto.open.createOrder", code))
    with pytest.raises(TransientFailure):
        zto.create(shipment_request(), SERVICE)
    assert zto.create(shipment_request(), SERVICE).tracking_number  # and the retry works


def test_a_refused_request_is_permanent_with_zto_code_and_no_personal_data(
    fake: FakeZto,
) -> None:
    zto = make_zto(fake)
    shipment = zto.create(shipment_request(), SERVICE)
    zto.cancel(shipment)
    with pytest.raises(PermanentFailure, match="E003") as refused:
        zto.cancel(shipment)
    assert not isinstance(refused.value, CarrierMisconfigured | TransientFailure)
    with pytest.raises(PermanentFailure, match="E416"):
        zto.track(make_shipment("not-a-bill"))


def test_zto_echoing_personal_data_is_blanked_out(fake: FakeZto) -> None:
    def transport(request: urllib.request.Request) -> tuple[int, bytes]:
        message = "收件人张三电话13800000000地址科技园南区 1 栋不合法"
        answer = {"status": False, "statusCode": "E999", "message": message}
        return 200, json.dumps(answer, ensure_ascii=False).encode()

    zto = make_zto(fake, transport=transport)
    with pytest.raises(PermanentFailure) as refused:
        zto.create(shipment_request(), SERVICE)
    detail = str(refused.value)
    assert "E999" in detail
    assert "张三" not in detail and "13800000000" not in detail and "科技园" not in detail


def test_what_zto_cannot_do_is_unsupported(fake: FakeZto) -> None:
    zto = make_zto(fake)
    with pytest.raises(Unsupported):
        zto.create(shipment_request(temperature=Temperature.CHILLED), SERVICE)
    with pytest.raises(Unsupported):
        zto.create(shipment_request(cod_amount=5000), SERVICE)
    with pytest.raises(Unsupported):
        zto.create(shipment_request(), "SF-1")
    assert fake.calls == []


@pytest.mark.parametrize(
    "changes",
    [
        {"app_key": " "},
        {"app_secret": SecretStr("")},
        {"account_id": ""},
        {"account_password": SecretStr(" ")},
        {"rates": {}},
        {"rates": {("*", "*"): ZtoRate(first_kg=12.5, additional_kg=5)}},  # type: ignore[arg-type]
        {"api_url": "japi.zto.com"},
    ],
)
def test_missing_or_wrong_configuration_is_refused_at_construction(
    fake: FakeZto, changes: dict[str, Any]
) -> None:
    with pytest.raises(CarrierMisconfigured):
        make_zto(fake, **changes)


def test_zto_is_registered_as_a_carrier() -> None:
    (entry,) = [r for r in registered() if r.name == "zto"]
    assert entry.carrier is Zto, entry.error
