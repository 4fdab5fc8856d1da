"""SF Express (顺丰) adapter against the fake SF platform (`fake_sf`): the carrier kit, and SF's
own format — the msgDigest (SF's published example and an independent recomputation), the form
fields sent, opCodes, idempotent create after SF's 8016, and SF's answers told apart."""

from __future__ import annotations

import base64
import hashlib
import json
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import SecretStr

from connectors.carriers.base import (
    CarrierMisconfigured,
    PushRefused,
    Shipment,
    Temperature,
    TrackingStatus,
)
from connectors.carriers.sf_express import OP_CODES, SfExpress, SfRefused, msg_digest, status_of
from connectors.carriers.testing import RECIPIENT, CarrierConformance, shipment_request
from connectors.outbound import PermanentFailure, TransientFailure, urllib_transport
from tests.connectors.carriers.fake_sf import (
    CHECK_WORD,
    MONTHLY_CARD,
    PARTNER_ID,
    FakeSf,
    fake_sf,
)


@pytest.fixture
def fake_server() -> Iterator[FakeSf]:
    with fake_sf() as fake:
        yield fake


def sf(fake: FakeSf, **changes: object) -> SfExpress:
    fields: dict[str, object] = {
        "partner_id": PARTNER_ID,
        "check_word": SecretStr(CHECK_WORD),
        "monthly_card": MONTHLY_CARD,
        "api_url": fake.url,
    }
    return SfExpress(**(fields | changes))  # type: ignore[arg-type]


class TestSfExpressConformance(CarrierConformance):
    @pytest.fixture
    def carrier(self, fake_server: FakeSf) -> SfExpress:
        return sf(fake_server)

    @pytest.fixture
    def wrong_secret(self, fake_server: FakeSf) -> SfExpress:
        return sf(fake_server, check_word=SecretStr("not-the-check-word"))

    @pytest.fixture
    def push(self, fake_server: FakeSf, carrier: SfExpress) -> tuple[bytes, dict[str, str]]:
        shipment = carrier.create(shipment_request("o-push@W01"), "2")
        return fake_server.signed_push(shipment.tracking_number)


# ---------------------------------------------------------------- the digest


def java_url_encode(text: str) -> str:
    """java.net.URLEncoder.encode(text, "UTF-8"), written out here from Java's rules."""
    keep = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-*_"
    return "".join(
        chr(b) if chr(b) in keep else "+" if b == 0x20 else f"%{b:02X}" for b in text.encode()
    )


def test_digest_of_sfs_published_example() -> None:
    # SF's digital-signature guide: this msgData, timestamp and checkWord give this digest.
    data = '{"language":"zh-CN","orderId":"QIAO-20200618-004"}'
    digest = msg_digest(data, "12312334453453", "fjcg5PGKaNpPSHFAZ4QsCOkV71R3zVci")
    assert digest == "IIKJtuLVzoFTu4kHI8M8vA=="


@pytest.mark.parametrize(
    "data",
    [
        '{"orderId":"o-1001@W01","remark":"a b*c~d+e&f=g"}',
        '{"contact":"张三","address":"科技园南区 1 栋 (东)","note":"100%!\'"}',
    ],
)
def test_digest_equals_an_independent_computation(data: str) -> None:
    timestamp, check_word = "1765072800000", "k~ey*w ord"
    expected = base64.b64encode(
        hashlib.md5(java_url_encode(data + timestamp + check_word).encode()).digest()
    ).decode()
    assert msg_digest(data, timestamp, check_word) == expected
    # and it is not the digest of the text left unencoded (SF's "simple MD5")
    raw = hashlib.md5((data + timestamp + check_word).encode()).digest()
    assert expected != base64.b64encode(raw).decode()


# ---------------------------------------------------------------- the form sent


def test_the_form_sent_is_sfs_signed_form(fake_server: FakeSf) -> None:
    sent: list[urllib.request.Request] = []

    def recording(request: urllib.request.Request) -> tuple[int, bytes]:
        sent.append(request)
        return urllib_transport(request)

    before = int(datetime.now(UTC).timestamp() * 1000)
    sf(fake_server, transport=recording).create(shipment_request(), "2")
    after = int(datetime.now(UTC).timestamp() * 1000)

    (request,) = sent
    assert request.get_method() == "POST" and request.full_url == fake_server.url
    assert request.get_header("Content-type") == "application/x-www-form-urlencoded;charset=UTF-8"
    assert isinstance(request.data, bytes)
    form = dict(urllib.parse.parse_qsl(request.data.decode()))
    assert set(form) == {
        "partnerID",
        "requestID",
        "serviceCode",
        "timestamp",
        "msgData",
        "msgDigest",
    }
    assert form["partnerID"] == PARTNER_ID
    assert form["serviceCode"] == "EXP_RECE_CREATE_ORDER"
    uuid.UUID(form["requestID"])
    assert before <= int(form["timestamp"]) <= after  # milliseconds
    expected = java_url_encode(form["msgData"] + form["timestamp"] + CHECK_WORD).encode()
    assert form["msgDigest"] == base64.b64encode(hashlib.md5(expected).digest()).decode()

    order = json.loads(form["msgData"])
    assert order["orderId"] == "o-1001@W01" and order["expressTypeId"] == 2
    assert order["monthlyCard"] == MONTHLY_CARD and order["payMethod"] == 1
    assert order["parcelQty"] == 1 and order["totalWeight"] == 1.2
    assert order["cargoDetails"][0]["name"] == "goods"
    sender, recipient = order["contactInfoList"]
    assert (sender["contactType"], recipient["contactType"]) == (1, 2)
    assert recipient["contact"] == RECIPIENT.name and recipient["mobile"] == RECIPIENT.phone
    assert order["sendStartTm"] == "2026-12-07 17:00:00"  # 09:00 UTC in Beijing time
    assert order["serviceList"] == [{"name": "INSURE", "value": "199.00"}]


def test_cash_on_delivery_is_sfs_cod_added_service_in_yuan(fake_server: FakeSf) -> None:
    sf(fake_server).create(shipment_request(cod_amount=1234), "1")
    order = json.loads(fake_server.requests[-1]["msgData"])
    assert {"name": "COD", "value": "12.34", "value1": MONTHLY_CARD} in order["serviceList"]


# ---------------------------------------------------------------- quotes


def test_quote_reads_sfs_fee_in_yuan_as_exact_fen(fake_server: FakeSf) -> None:
    quotes = {q.service: q for q in sf(fake_server).quote(shipment_request())}
    # 1.2 kg → 2 kg: 特快 23.00 + 13.00, 标快 12.00 + 2.00 (the fake's table)
    assert quotes["1"].price == 3600 and quotes["2"].price == 1400
    assert quotes["2"].service_name == "顺丰标快" and quotes["2"].currency == "CNY"
    assert quotes["2"].promised_by is not None and quotes["2"].promised_by.hour == 18
    asked = [json.loads(r["msgData"]) for r in fake_server.requests]
    assert [a["businessType"] for a in asked] == ["1", "2"]
    assert all(a["searchPrice"] == "1" and a["weight"] == 1.2 for a in asked)
    assert asked[0]["srcAddress"]["city"] == "杭州市" and asked[0]["volume"] == 6000


def test_no_request_for_a_temperature_sf_is_not_offered_for(fake_server: FakeSf) -> None:
    carrier = sf(fake_server)
    assert carrier.temperatures == frozenset({Temperature.AMBIENT})
    assert carrier.quote(shipment_request(temperature=Temperature.FROZEN)) == []
    assert fake_server.requests == []


# ---------------------------------------------------------------- create, idempotently


def test_a_second_create_after_sfs_duplicate_answer_returns_the_first(fake_server: FakeSf) -> None:
    carrier = sf(fake_server)
    first = carrier.create(shipment_request(), "2")
    again = carrier.create(shipment_request(), "2")
    assert again == first
    assert fake_server.service_codes() == [
        "EXP_RECE_CREATE_ORDER",
        "EXP_RECE_CREATE_ORDER",
        "EXP_RECE_SEARCH_ORDER_RESP",
    ]
    assert fake_server.rejected == ["8016"] and len(fake_server.orders) == 1
    assert first.tracking_number == fake_server.waybill_of("o-1001@W01")


def test_cancel_is_sfs_update_order_deal_type_2_and_twice_is_fine(fake_server: FakeSf) -> None:
    carrier = sf(fake_server)
    shipment = carrier.create(shipment_request(), "2")
    carrier.cancel(shipment)
    carrier.cancel(shipment)  # SF's 8037 订单已消单: already done
    assert fake_server.orders["o-1001@W01"]["status"] == "cancelled"
    assert json.loads(fake_server.requests[1]["msgData"])["dealType"] == 2
    assert fake_server.rejected == ["8037"]


def test_cancelling_an_order_sf_does_not_know_is_refused(fake_server: FakeSf) -> None:
    unknown = Shipment(carrier="sf", reference="o-9@W01", tracking_number="SF9", service="2")
    with pytest.raises(SfRefused, match="6150") as refused:
        sf(fake_server).cancel(unknown)
    assert refused.value.code == "6150"


# ---------------------------------------------------------------- tracking and opCodes


@pytest.mark.parametrize(
    ("op_code", "status"),
    [
        ("50", TrackingStatus.PICKED_UP),
        ("54", TrackingStatus.PICKED_UP),
        ("30", TrackingStatus.IN_TRANSIT),
        ("31", TrackingStatus.IN_TRANSIT),
        ("36", TrackingStatus.IN_TRANSIT),
        ("44", TrackingStatus.OUT_FOR_DELIVERY),
        ("204", TrackingStatus.OUT_FOR_DELIVERY),
        ("80", TrackingStatus.DELIVERED),
        ("8000", TrackingStatus.DELIVERED),
        ("70", TrackingStatus.EXCEPTION),
        ("33", TrackingStatus.EXCEPTION),
        ("99", TrackingStatus.EXCEPTION),
        ("648", TrackingStatus.RETURNED_TO_SENDER),
        ("631", TrackingStatus.RETURNED_TO_SENDER),
        ("607", TrackingStatus.IN_TRANSIT),  # not listed: a handling step on the way
    ],
)
def test_op_codes_read_as_tracking_statuses(op_code: str, status: TrackingStatus) -> None:
    assert status_of(op_code) is status


def test_every_listed_delivered_code_is_a_signature_code() -> None:
    delivered = {code for code, status in OP_CODES.items() if status is TrackingStatus.DELIVERED}
    assert delivered == {"80", "8000"}


def test_tracking_sorts_sfs_routes_by_time(fake_server: FakeSf) -> None:
    carrier = sf(fake_server)
    shipment = carrier.create(shipment_request(), "2")
    later = datetime.now(UTC) + timedelta(hours=1)
    fake_server.add_route(
        shipment.tracking_number, "44", "正在派送途中", at=later, place="深圳市南山区"
    )
    events = carrier.track(shipment)
    assert [e.carrier_status for e in events] == ["50", "30", "44"]  # SF keeps newest first
    assert [e.status for e in events] == [
        TrackingStatus.PICKED_UP,
        TrackingStatus.IN_TRANSIT,
        TrackingStatus.OUT_FOR_DELIVERY,
    ]
    assert events[-1].place == "深圳市南山区" and events[-1].at.utcoffset() is not None
    assert json.loads(fake_server.requests[-1]["msgData"])["trackingNumber"] == [
        shipment.tracking_number
    ]


# ---------------------------------------------------------------- pushes


def test_a_push_is_believed_only_as_sfs_route_query_confirms_it(fake_server: FakeSf) -> None:
    carrier = sf(fake_server)
    shipment = carrier.create(shipment_request(), "2")
    body, headers = fake_server.signed_push(shipment.tracking_number, op_code="80")
    (event,) = carrier.parse_push(body, headers)
    assert event.status is TrackingStatus.DELIVERED
    assert fake_server.service_codes()[-1] == "EXP_RECE_SEARCH_ROUTES"

    delivered_as_failed = body.replace(b'"opCode": "80"', b'"opCode": "70"')
    assert delivered_as_failed != body
    with pytest.raises(PushRefused):
        carrier.parse_push(delivered_as_failed, headers)
    pushed = json.loads(body)
    pushed["Body"]["WaybillRoute"][0]["acceptTime"] = "2026-12-01 08:00:00"
    with pytest.raises(PushRefused):
        carrier.parse_push(json.dumps(pushed).encode(), headers)


@pytest.mark.parametrize(
    "body",
    [b"content=%3CRequest%3E", b'{"Body": {}}', b'{"Body": {"WaybillRoute": [{"opCode": "80"}]}}'],
)
def test_a_push_that_is_not_sfs_json_is_refused(fake_server: FakeSf, body: bytes) -> None:
    with pytest.raises(PushRefused):
        sf(fake_server).parse_push(body, {"Content-Type": "application/json"})
    assert fake_server.requests == []


def test_a_push_is_not_refused_when_sf_cannot_be_asked(fake_server: FakeSf) -> None:
    carrier = sf(fake_server)
    shipment = carrier.create(shipment_request(), "2")
    body, headers = fake_server.signed_push(shipment.tracking_number)
    fake_server.fail_next.append(("api", "A1099"))
    with pytest.raises(TransientFailure):  # SF pushes again
        carrier.parse_push(body, headers)


# ---------------------------------------------------------------- answers told apart


def test_credentials_are_checked_when_the_client_is_made() -> None:
    with pytest.raises(CarrierMisconfigured):
        SfExpress(partner_id=" ", check_word=SecretStr("x"))
    with pytest.raises(CarrierMisconfigured):
        SfExpress(partner_id=PARTNER_ID, check_word=SecretStr("  "))
    with pytest.raises(CarrierMisconfigured):
        SfExpress(partner_id=PARTNER_ID, check_word=SecretStr("x"), monthly_card="12345")


def test_an_unknown_partner_is_our_misconfiguration(fake_server: FakeSf) -> None:
    with pytest.raises(CarrierMisconfigured, match="A1004"):
        sf(fake_server, partner_id="SOMEONE").quote(shipment_request())


@pytest.mark.parametrize("code", ["A1005", "A1099"])
def test_throttling_and_sfs_system_errors_are_transient(fake_server: FakeSf, code: str) -> None:
    fake_server.fail_next.append(("api", code))
    with pytest.raises(TransientFailure, match=code):
        sf(fake_server).quote(shipment_request())


@pytest.mark.parametrize(("status", "failure"), [(503, TransientFailure), (404, PermanentFailure)])
def test_http_errors(status: int, failure: type[Exception]) -> None:
    def answer(_: urllib.request.Request) -> tuple[int, bytes]:
        return status, b"<html>busy</html>"

    carrier = SfExpress(partner_id=PARTNER_ID, check_word=SecretStr(CHECK_WORD), transport=answer)
    with pytest.raises(failure) as raised:
        carrier.quote(shipment_request())
    assert not isinstance(raised.value, CarrierMisconfigured)


def test_a_refused_order_names_sfs_code_and_no_personal_data(fake_server: FakeSf) -> None:
    no_phone = RECIPIENT.model_copy(update={"phone": ""})
    with pytest.raises(SfRefused) as refused:
        sf(fake_server).create(shipment_request(recipient=no_phone), "2")
    assert refused.value.code == "1016" and "1016" in str(refused.value)
    assert not isinstance(refused.value, CarrierMisconfigured | TransientFailure)
    for personal in (RECIPIENT.name, RECIPIENT.street, "13800000000"):
        assert personal not in str(refused.value)


def test_a_card_sf_does_not_know_is_a_refusal_not_transient(fake_server: FakeSf) -> None:
    with pytest.raises(SfRefused, match="8119"):
        sf(fake_server, monthly_card="7559999999").create(shipment_request(), "2")


def test_a_fee_is_read_exactly_not_through_a_float() -> None:
    # 0.29 yuan read as a float is 28.999… fen; SF's fee must come out as 29.
    def answer(request: urllib.request.Request) -> tuple[int, bytes]:
        assert isinstance(request.data, bytes)
        form = dict(urllib.parse.parse_qsl(request.data.decode()))
        product = json.loads(form["msgData"])["businessType"]
        option = {"businessType": product, "businessTypeDesc": "x", "fee": "FEE"}
        data = {"success": True, "errorCode": "S0000", "msgData": {"deliverTmDto": [option]}}
        result = json.dumps(data).replace('"FEE"', "0.29")
        return 200, json.dumps({"apiResultCode": "A1000", "apiResultData": result}).encode()

    carrier = SfExpress(partner_id=PARTNER_ID, check_word=SecretStr(CHECK_WORD), transport=answer)
    assert [q.price for q in carrier.quote(shipment_request())] == [29, 29]
