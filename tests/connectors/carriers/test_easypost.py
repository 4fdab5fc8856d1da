"""EasyPost's adapter against a fake of its API (tests/connectors/carriers/fake_easypost.py):
the conformance kit, then the format: the webhook HMAC of EasyPost's own published example,
rates in minor units, units, statuses, one label per reference across a lost answer, and
failures told apart."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import unicodedata
import urllib.request
from collections.abc import Iterator
from decimal import Decimal

import pytest
from pydantic import SecretStr

from connectors.carriers.base import (
    Carrier,
    CarrierMisconfigured,
    Parcel,
    Party,
    PushRefused,
    ShipmentRequest,
    Temperature,
    TrackingStatus,
)
from connectors.carriers.easypost import (
    EasyPost,
    EasyPostRefused,
    inches,
    ounces,
    price_minor_units,
    tracking_status,
)
from connectors.carriers.testing import CarrierConformance, shipment_request
from connectors.outbound import (
    PermanentFailure,
    TransientFailure,
    Transport,
    Unsupported,
    urllib_transport,
)
from tests.connectors.carriers.fake_easypost import (
    API_KEY,
    WEBHOOK_SECRET,
    FakeEasyPost,
    fake_easypost,
)

WAREHOUSE = Party(
    name="OrderStream Fulfilment", company="OrderStream Inc", phone="4155550100", country="US",
    province="CA", city="San Francisco", street="417 Montgomery St", postal_code="94104",
)  # fmt: skip
CUSTOMER = Party(
    name="Ada Lovelace", phone="3125550199", country="US", province="IL", city="Chicago",
    street="233 S Wacker Dr", postal_code="60606", email="ada@example.com",
)  # fmt: skip
LONDON = Party(
    name="Charles Babbage", phone="+442079460000", country="GB", city="London",
    street="1 Dorset St", postal_code="W1U 4EG",
)  # fmt: skip


def us_request(reference: str = "o-1001@W01", **changes: object) -> ShipmentRequest:
    """A parcel of 1.2 kg within the US, in dollars."""
    fields: dict[str, object] = {"sender": WAREHOUSE, "recipient": CUSTOMER, "currency": "USD"}
    return shipment_request(reference, **(fields | changes))


@pytest.fixture
def fake() -> Iterator[FakeEasyPost]:
    with fake_easypost() as server:
        yield server


def easypost(
    fake: FakeEasyPost, *, api_key: str = API_KEY, transport: Transport = urllib_transport
) -> EasyPost:
    return EasyPost(
        api_key=SecretStr(api_key),
        webhook_secret=SecretStr(WEBHOOK_SECRET),
        api_url=fake.url,
        transport=transport,
    )


class TestEasyPostConformance(CarrierConformance):
    @pytest.fixture
    def request_(self) -> ShipmentRequest:
        return us_request()

    @pytest.fixture
    def carrier(self, fake: FakeEasyPost) -> EasyPost:
        return easypost(fake)

    @pytest.fixture
    def wrong_secret(self, fake: FakeEasyPost) -> EasyPost:
        return easypost(fake, api_key="EZTK" + "0" * 32)

    @pytest.fixture
    def push(
        self, fake: FakeEasyPost, carrier: Carrier, request_: ShipmentRequest
    ) -> tuple[bytes, dict[str, str]]:
        shipment = carrier.create(request_, carrier.quote(request_)[0].service)
        return fake.signed_push(tracking_code=shipment.tracking_number, status="delivered")


EASYPOST_EVENT_BODY = (
    b'{"description":"tracker.updated","mode":"production","previous_attributes":{"status":"in'
    b'_transit"},"created_at":"2024-08-02T19:26:52.000Z","pending_urls":["https://example.com/'
    b'easypost"],"completed_urls":[],"updated_at":"2024-08-02T19:26:52.000Z","id":"evt_1","use'
    b'r_id":"user_1","status":"pending","object":"Event","result":{"id":"trk_1","object":"Trac'
    b'ker","mode":"production","tracking_code":"1","status":"in_transit","status_detail":"arri'
    b'ved_at_facility","created_at":"2024-07-31T14:45:27Z","updated_at":"2024-08-02T19:26:51Z"'
    b',"signed_by":null,"weight":614.4,"est_delivery_date":"2024-08-05T00:00:00Z","shipment_id'
    b'":null,"carrier":"FedEx","tracking_details":[{"object":"TrackingDetail","message":"Shipm'
    b'ent information sent to FedEx","description":"Shipment information sent to FedEx","statu'
    b's":"pre_transit","status_detail":"label_created","datetime":"2024-07-31T15:00:00Z","sour'
    b'ce":"FedEx","carrier_code":"OC","tracking_location":{"object":"TrackingLocation","city":'
    b'null,"state":null,"country":"US","zip":"32837"}},{"object":"TrackingDetail","message":"P'
    b'icked up","description":"Picked up","status":"in_transit","status_detail":"arrived_at_fa'
    b'cility","datetime":"2024-07-31T19:27:00Z","source":"FedEx","carrier_code":"PU","tracking'
    b'_location":{"object":"TrackingLocation","city":"ORLANDO","state":"FL","country":"US","zi'
    b'p":"32809"}},{"object":"TrackingDetail","message":"Arrived at FedEx location","descripti'
    b'on":"Arrived at FedEx location","status":"in_transit","status_detail":"arrived_at_facili'
    b'ty","datetime":"2024-07-31T22:35:00Z","source":"FedEx","carrier_code":"AR","tracking_loc'
    b'ation":{"object":"TrackingLocation","city":"ORLANDO","state":"FL","country":"US","zip":"'
    b'32809"}},{"object":"TrackingDetail","message":"Departed FedEx location","description":"D'
    b'eparted FedEx location","status":"in_transit","status_detail":"departed_facility","datet'
    b'ime":"2024-08-01T14:42:13Z","source":"FedEx","carrier_code":"DP","tracking_location":{"o'
    b'bject":"TrackingLocation","city":"ORLANDO","state":"FL","country":"US","zip":"32809"}},{'
    b'"object":"TrackingDetail","message":"On the way","description":"On the way","status":"in'
    b'_transit","status_detail":"unknown","datetime":"2024-08-02T02:46:19Z","source":"FedEx","'
    b'carrier_code":"IT","tracking_location":{"object":"TrackingLocation","city":"KENLY","stat'
    b'e":"NC","country":"US","zip":"27542"}},{"object":"TrackingDetail","message":"On the way"'
    b',"description":"On the way","status":"in_transit","status_detail":"unknown","datetime":"'
    b'2024-08-02T18:35:20Z","source":"FedEx","carrier_code":"IT","tracking_location":{"object"'
    b':"TrackingLocation","city":"EDISON TWP","state":"NJ","country":"US","zip":"08817"}},{"ob'
    b'ject":"TrackingDetail","message":"Arrived at FedEx location","description":"Arrived at F'
    b'edEx location","status":"in_transit","status_detail":"arrived_at_facility","datetime":"2'
    b'024-08-02T18:50:00Z","source":"FedEx","carrier_code":"AR","tracking_location":{"object":'
    b'"TrackingLocation","city":"EDISON","state":"NJ","country":"US","zip":"08817"}}],"carrier'
    b'_detail":{"object":"CarrierDetail","service":"FEDEX_GROUND","container_type":null,"est_d'
    b'elivery_date_local":"2024-08-05","est_delivery_time_local":null,"origin_location":"ORLAN'
    b'DO FL US","origin_tracking_location":{"object":"TrackingLocation","city":"ORLANDO","stat'
    b'e":"FL","country":"US","zip":"32809"},"destination_location":"BROOKLYN HGTS NY US","dest'
    b'ination_tracking_location":null,"guaranteed_delivery_date":null,"alternate_identifier":n'
    b'ull,"initial_delivery_attempt":null},"finalized":false,"is_return":false,"public_url":"h'
    b'ttps://track.easypost.com/1"}}'
)
# ---------------------------------------------------------------- the webhook signature

# EasyPost's own example: the Event body its client libraries test `validate_webhook` with
# (EasyPost/examples, official/fixtures/event-body.json, serialised compactly as
# easypost-python's tests/conftest.py `event_bytes` does), and the signature and secret
# of client-library-fixtures.json "webhooks". The secret is not ASCII: NFKD matters.
EASYPOST_SECRET = "s\u00e9cret"
EASYPOST_SIGNATURE = (
    "hmac-sha256-hex=38f3f53c103713df81616a0a186d77141957323ec21d5fe9363db93840f527db"
)


def test_easypost_published_webhook_signature_is_hmac_sha256_of_the_body_with_nfkd_secret() -> None:
    key = unicodedata.normalize("NFKD", EASYPOST_SECRET).encode("utf-8")
    digest = hmac.new(key, EASYPOST_EVENT_BODY, hashlib.sha256).hexdigest()
    assert f"hmac-sha256-hex={digest}" == EASYPOST_SIGNATURE
    unnormalised = hmac.new(EASYPOST_SECRET.encode(), EASYPOST_EVENT_BODY, hashlib.sha256)
    assert f"hmac-sha256-hex={unnormalised.hexdigest()}" != EASYPOST_SIGNATURE


def test_easypost_published_webhook_is_read_as_easypost_signs_it(fake: FakeEasyPost) -> None:
    carrier = EasyPost(
        api_key=SecretStr(API_KEY), webhook_secret=SecretStr(EASYPOST_SECRET), api_url=fake.url
    )
    events = carrier.parse_push(EASYPOST_EVENT_BODY, {"x-hmac-signature": EASYPOST_SIGNATURE})
    assert len(events) == 7 and {e.tracking_number for e in events} == {"1"}
    assert events[0].status is TrackingStatus.CREATED
    assert events[0].description == "Shipment information sent to FedEx"
    assert [e.status for e in events[1:]] == [TrackingStatus.IN_TRANSIT] * 6
    assert events[-1].place == "EDISON, NJ, US"
    assert [e.at for e in events] == sorted(e.at for e in events)
    with pytest.raises(PushRefused):
        carrier.parse_push(EASYPOST_EVENT_BODY, {"X-Hmac-Signature": EASYPOST_SIGNATURE[:-1]})
    with pytest.raises(PushRefused):
        carrier.parse_push(EASYPOST_EVENT_BODY, {})


def test_a_push_without_a_webhook_secret_set_is_refused(fake: FakeEasyPost) -> None:
    carrier = EasyPost(api_key=SecretStr(API_KEY), api_url=fake.url)
    body, headers = fake.signed_push()
    with pytest.raises(PushRefused):
        carrier.parse_push(body, headers)


def test_a_signed_event_about_something_else_is_read_as_no_tracking(fake: FakeEasyPost) -> None:
    body = json.dumps(
        {"object": "Event", "description": "batch.updated", "result": {"object": "Batch"}}
    ).encode()
    key = unicodedata.normalize("NFKD", WEBHOOK_SECRET).encode()
    headers = {"X-Hmac-Signature": "hmac-sha256-hex=" + hmac.new(key, body, "sha256").hexdigest()}
    assert easypost(fake).parse_push(body, headers) == []


# ---------------------------------------------------------------- money, units, statuses


@pytest.mark.parametrize(
    ("rate", "currency", "minor"),
    [("7.58", "USD", 758), ("10", "USD", 1000), ("34.15", "USD", 3415), ("7.580", "USD", 758),
     ("0.01", "USD", 1), ("1200", "JPY", 1200), ("12.345", "KWD", 12345)],
)  # fmt: skip
def test_a_decimal_rate_is_exact_minor_units(rate: str, currency: str, minor: int) -> None:
    assert price_minor_units(rate, currency=currency) == minor


@pytest.mark.parametrize("rate", ["7.585", "seven", "1e3x", "NaN", ""])
def test_a_rate_that_is_not_a_plain_amount_is_refused(rate: str) -> None:
    with pytest.raises(PermanentFailure):
        price_minor_units(rate, currency="USD")


def test_quoted_prices_are_easypost_rates_in_cents(fake: FakeEasyPost) -> None:
    quotes = {q.service: q for q in easypost(fake).quote(us_request())}
    asked = next(iter(fake.shipments.values()))
    rates = {f"{r['carrier']}:{r['service']}": r for r in asked["rates"]}
    assert set(quotes) == set(rates)
    for service, quote in quotes.items():
        assert Decimal(quote.price) == Decimal(rates[service]["rate"]) * 100
        assert quote.currency == "USD"
    assert quotes["FedEx:FEDEX_2_DAY"].price == 1000  # EasyPost's "10"
    assert quotes["USPS:Priority"].promised_by is not None
    assert quotes["USPS:Priority"].promised_by.isoformat() == "2026-12-10T18:00:00+00:00"
    assert quotes["UPS:Ground"].promised_by is None


@pytest.mark.parametrize(
    ("grams", "oz"),
    [(1200, "42.4"), (1, "0.1"), (28, "1.0"), (29, "1.1"), (454, "16.1"), (2835, "100.1")],
)
def test_grams_are_ounces_rounded_up_to_a_tenth(grams: int, oz: str) -> None:
    assert ounces(grams) == Decimal(oz)
    assert ounces(grams) * Decimal("28.349523125") >= grams


@pytest.mark.parametrize(("mm", "inch"), [(300, "11.9"), (254, "10.0"), (255, "10.1"), (1, "0.1")])
def test_millimetres_are_inches_rounded_up_to_a_tenth(mm: int, inch: str) -> None:
    assert inches(mm) == Decimal(inch)


def test_the_parcel_is_sent_in_ounces_and_inches(fake: FakeEasyPost) -> None:
    easypost(fake).quote(us_request())
    parcel = next(iter(fake.shipments.values()))["parcel"]
    assert (parcel["weight"], parcel["length"], parcel["width"], parcel["height"]) == (
        42.4, 11.9, 7.9, 4.0,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("status", "normalised"),
    [("unknown", TrackingStatus.CREATED), ("pre_transit", TrackingStatus.CREATED),
     ("in_transit", TrackingStatus.IN_TRANSIT),
     ("out_for_delivery", TrackingStatus.OUT_FOR_DELIVERY),
     ("delivered", TrackingStatus.DELIVERED),
     ("available_for_pickup", TrackingStatus.EXCEPTION),
     ("return_to_sender", TrackingStatus.RETURNED_TO_SENDER),
     ("failure", TrackingStatus.EXCEPTION), ("cancelled", TrackingStatus.CANCELLED),
     ("error", TrackingStatus.EXCEPTION), ("something_new", TrackingStatus.EXCEPTION)],
)  # fmt: skip
def test_easypost_statuses_are_normalised(status: str, normalised: TrackingStatus) -> None:
    assert tracking_status(status) is normalised


def test_tracking_follows_the_carrier_scans(fake: FakeEasyPost) -> None:
    carrier = easypost(fake)
    shipment = carrier.create(us_request(), "USPS:Priority")
    fake.advance(shipment.tracking_number, "out_for_delivery", "Out for Delivery", city="CHICAGO")
    fake.advance(shipment.tracking_number, "delivered", "Delivered, In/At Mailbox")
    events = carrier.track(shipment)
    assert [e.status for e in events][-2:] == [
        TrackingStatus.OUT_FOR_DELIVERY,
        TrackingStatus.DELIVERED,
    ]
    assert events[-1].carrier_status == "delivered"
    assert events[-2].place == "CHICAGO, TX"


def test_a_shipment_known_by_tracking_number_only_is_tracked_through_trackers(
    fake: FakeEasyPost,
) -> None:
    carrier = easypost(fake)
    shipment = carrier.create(us_request(), "UPS:Ground")
    trackers = len(fake.trackers)
    events = carrier.track(shipment.model_copy(update={"carrier_id": None}))
    assert events and events[0].tracking_number == shipment.tracking_number
    assert len(fake.trackers) == trackers  # EasyPost answers the tracker it has
    assert ("POST", "/v2/trackers") in fake.requests


# ---------------------------------------------------------------- one label per reference


def test_a_second_create_with_the_reference_returns_the_first_label(fake: FakeEasyPost) -> None:
    first = easypost(fake).create(us_request(), "USPS:Priority")
    again = easypost(fake).create(us_request(), "USPS:Priority")  # a new process: no memory
    assert again.tracking_number == first.tracking_number
    assert again.carrier_id == first.carrier_id and again.price == first.price
    assert fake.purchases == 1
    assert [s["reference"] for s in fake.shipments.values()] == ["o-1001@W01"]


def test_a_lost_answer_to_the_purchase_is_not_bought_twice(fake: FakeEasyPost) -> None:
    def loses_the_purchase_answer(request: urllib.request.Request) -> tuple[int, bytes]:
        answer = urllib_transport(request)
        if request.full_url.endswith("/buy") and fake.purchases == 1:
            raise TransientFailure("no answer: timed out")  # bought, but we never heard
        return answer

    with pytest.raises(TransientFailure):
        easypost(fake, transport=loses_the_purchase_answer).create(us_request(), "UPS:Ground")
    shipment = easypost(fake).create(us_request(), "UPS:Ground")
    assert fake.purchases == 1 and len(fake.shipments) == 1
    assert shipment.tracking_number == next(iter(fake.shipments.values()))["tracking_code"]


def test_a_shipment_created_but_not_bought_before_a_crash_is_bought_not_made_again(
    fake: FakeEasyPost,
) -> None:
    def crashes_before_buying(request: urllib.request.Request) -> tuple[int, bytes]:
        if request.full_url.endswith("/buy"):
            raise TransientFailure("no answer: connection reset")
        return urllib_transport(request)

    with pytest.raises(TransientFailure):
        easypost(fake, transport=crashes_before_buying).create(us_request(), "USPS:Priority")
    assert len(fake.shipments) == 1 and fake.purchases == 0
    shipment = easypost(fake).create(us_request(), "USPS:Priority")
    assert len(fake.shipments) == 1 and fake.purchases == 1
    assert shipment.service == "USPS:Priority" and shipment.price == 1182  # 7.58 + 0.10 × 42.4


def test_quotes_leave_nothing_a_create_would_take_for_its_own(fake: FakeEasyPost) -> None:
    carrier = easypost(fake)
    carrier.quote(us_request())
    carrier.quote(us_request())
    assert all(s["reference"] is None for s in fake.shipments.values())
    carrier.create(us_request(), "USPS:Priority")
    assert [s["reference"] for s in fake.shipments.values()].count("o-1001@W01") == 1


def test_the_label_is_a_pdf_fetched_without_our_key(fake: FakeEasyPost) -> None:
    shipment = easypost(fake).create(us_request(), "USPS:Priority")
    assert shipment.label is not None and shipment.label.media_type == "application/pdf"
    assert shipment.label.content.startswith(b"%PDF")
    assert fake.files_asked_with_key == 0


def test_a_label_made_in_another_format_is_converted_to_pdf(fake: FakeEasyPost) -> None:
    carrier = easypost(fake)
    carrier.create(us_request(), "USPS:Priority")
    shipment = next(iter(fake.shipments.values()))
    shipment["postage_label"]["label_pdf_url"] = None  # as bought in PNG
    carrier.create(us_request(), "USPS:Priority")
    assert any(path.endswith("/label") for _, path in fake.requests)


def test_a_service_easypost_did_not_rate_is_refused(fake: FakeEasyPost) -> None:
    with pytest.raises(PermanentFailure, match="no DHL:Nope"):
        easypost(fake).create(us_request(), "DHL:Nope")
    assert fake.purchases == 0


def test_a_cancelled_label_is_refunded_once(fake: FakeEasyPost) -> None:
    carrier = easypost(fake)
    shipment = carrier.create(us_request(), "USPS:Priority")
    carrier.cancel(shipment)
    carrier.cancel(shipment)
    assert next(iter(fake.shipments.values()))["refund_status"] == "submitted"
    assert [p for m, p in fake.requests if m == "POST" and p.endswith("/refund")] == [
        f"/v2/shipments/{shipment.carrier_id}/refund"
    ]


# ---------------------------------------------------------------- what is sent


def test_requests_carry_the_key_as_basic_username_without_password(fake: FakeEasyPost) -> None:
    seen: list[str | None] = []

    def spy(request: urllib.request.Request) -> tuple[int, bytes]:
        seen.append(request.get_header("Authorization"))
        return urllib_transport(request)

    easypost(fake, transport=spy).quote(us_request())
    assert seen == ["Basic " + base64.b64encode(f"{API_KEY}:".encode()).decode()]


def test_an_international_parcel_is_declared_to_customs(fake: FakeEasyPost) -> None:
    request = us_request(recipient=LONDON, declared_value=19900)
    quotes = easypost(fake).quote(request)
    assert {q.service for q in quotes} == {
        "USPS:PriorityMailInternational",
        "DHLExpress:ExpressWorldwide",
    }
    customs = next(iter(fake.shipments.values()))["customs_info"]
    assert customs["customs_certify"] is True
    (item,) = customs["customs_items"]
    assert (item["value"], item["origin_country"], item["weight"]) == ("199.00", "US", 42.4)


def test_cash_on_delivery_is_easypost_cod_amount_option(fake: FakeEasyPost) -> None:
    quotes = easypost(fake).quote(us_request(cod_amount=4250))
    assert quotes and all(q.cash_on_delivery for q in quotes)
    options = next(iter(fake.shipments.values()))["options"]
    assert (options["cod_amount"], options["cod_method"]) == ("42.50", "CASH")


def test_no_quote_and_no_call_for_a_chilled_parcel(fake: FakeEasyPost) -> None:
    carrier = easypost(fake)
    assert carrier.quote(us_request(temperature=Temperature.CHILLED)) == []
    assert fake.requests == []
    with pytest.raises(Unsupported):
        carrier.create(us_request(temperature=Temperature.FROZEN), "USPS:Priority")


def test_several_parcels_are_refused_as_unsupported(fake: FakeEasyPost) -> None:
    parcels = [Parcel(weight_g=500), Parcel(weight_g=700)]
    with pytest.raises(Unsupported):
        easypost(fake).quote(us_request(parcels=parcels))


# ---------------------------------------------------------------- failures told apart


def test_our_wrong_key_is_misconfiguration(fake: FakeEasyPost) -> None:
    with pytest.raises(CarrierMisconfigured, match="HTTP 401"):
        easypost(fake, api_key="EZTK-wrong").quote(us_request())


@pytest.mark.parametrize("status", [402, 403])
def test_an_account_easypost_will_not_serve_is_misconfiguration(
    fake: FakeEasyPost, status: int
) -> None:
    fake.fail_next.append((status, "PAYMENT.REQUIRED" if status == 402 else "FORBIDDEN"))
    with pytest.raises(CarrierMisconfigured):
        easypost(fake).quote(us_request())


@pytest.mark.parametrize("status", [429, 500, 503, 504])
def test_throttling_and_server_errors_are_worth_another_try(
    fake: FakeEasyPost, status: int
) -> None:
    fake.fail_next.append((status, "RATE_LIMITED" if status == 429 else "INTERNAL_SERVER_ERROR"))
    with pytest.raises(TransientFailure):
        easypost(fake).quote(us_request())
    assert easypost(fake).quote(us_request())  # and the next try goes through


def test_a_refused_request_names_easypost_code_and_no_personal_data(fake: FakeEasyPost) -> None:
    no_zip = CUSTOMER.model_copy(update={"postal_code": None})
    with pytest.raises(EasyPostRefused) as refused:
        easypost(fake).quote(us_request(recipient=no_zip))
    assert not isinstance(refused.value, CarrierMisconfigured | TransientFailure)
    assert refused.value.status == 422 and refused.value.code == "PARAMETER.REQUIRED"
    said = str(refused.value)
    assert "PARAMETER.REQUIRED" in said and "Missing required parameter" in said
    for personal in (CUSTOMER.name, CUSTOMER.phone, CUSTOMER.street, WAREHOUSE.street):
        assert personal not in said


def test_an_answer_that_is_not_json_is_worth_another_try(fake: FakeEasyPost) -> None:
    carrier = easypost(fake, transport=lambda request: (200, b"<html>maintenance</html>"))
    with pytest.raises(TransientFailure):
        carrier.quote(us_request())


@pytest.mark.parametrize("key", ["", "   "])
def test_a_missing_api_key_is_misconfiguration(key: str) -> None:
    with pytest.raises(CarrierMisconfigured):
        EasyPost(api_key=SecretStr(key))


def test_an_empty_webhook_secret_is_misconfiguration() -> None:
    with pytest.raises(CarrierMisconfigured):
        EasyPost(api_key=SecretStr(API_KEY), webhook_secret=SecretStr(""))


def test_the_api_key_is_not_in_the_adapter_repr_or_errors(fake: FakeEasyPost) -> None:
    carrier = easypost(fake)
    assert API_KEY not in repr(vars(carrier))
    fake.fail_next.append((422, "SHIPMENT.INVALID_PARAMS"))
    with pytest.raises(PermanentFailure) as refused:
        carrier.quote(us_request())
    assert API_KEY not in str(refused.value)
