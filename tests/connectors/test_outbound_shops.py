"""The Square and WooCommerce clients (connectors/outbound_shops.py) against the fake shop server,
which checks authentication, required fields, Square's version and idempotency key."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from connectors.outbound import MissingCredentials, PermanentFailure, Unsupported, clients
from connectors.outbound_shops import (
    AlreadyPast,
    SquareClient,
    WooCommerceClient,
    woocommerce_note,
)
from events.platform_calls import CallKind, PlatformCall, call_key
from infra.settings import Settings
from tests.connectors.fake_shops import (
    SQUARE_TOKEN,
    SQUARE_VERSION,
    WOO_KEY,
    WOO_SECRET,
    FakeShops,
    fake_shops,
)

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


@pytest.fixture
def fake() -> Iterator[FakeShops]:
    with fake_shops() as running:
        yield running


def _square(fake: FakeShops, token: str = SQUARE_TOKEN) -> SquareClient:
    return SquareClient(
        access_token=token, api_url=f"{fake.url}/square/", square_version=SQUARE_VERSION
    )


def _woo(fake: FakeShops, secret: str = WOO_SECRET) -> WooCommerceClient:
    return WooCommerceClient(
        store_url=f"{fake.url}/woocommerce", consumer_key=WOO_KEY, consumer_secret=secret
    )


def _call(platform: str, kind: CallKind, order: str, event: str = "e-1", **fields: Any) -> Any:
    return PlatformCall(
        idempotency_key=call_key(platform=platform, kind=kind, cause_event_id=event),
        platform=platform, kind=kind, cause_event_id=event, cause_type="Test", caused_at=NOW,
        platform_order_id=order, **fields,
    )  # fmt: skip


def test_square_walks_the_fulfillment_through_its_states_with_version_and_key(
    fake: FakeShops,
) -> None:
    fake.square_order("SQ1")
    client = _square(fake)
    for n, (kind, state) in enumerate(
        [(CallKind.CONFIRM, "RESERVED"), (CallKind.READY, "PREPARED"),
         (CallKind.COMPLETE, "COMPLETED")], start=1,
    ):  # fmt: skip
        call = _call("square", kind, "SQ1", event=f"e-{n}")
        assert client.already_done(call, now=NOW) is False
        client.send(call, now=NOW)
        assert fake.square_state("SQ1") == state and client.already_done(call, now=NOW) is True
        sent = fake.calls[-1].params
        assert sent["idempotency_key"] == f"{call.idempotency_key}-v{n}"  # the version it read
        assert sent["order"] == {"location_id": "L8Q0J1YH3V5XP", "version": n,
                                 "fulfillments": [{"uid": "f-SQ1", "state": state}]}  # fmt: skip
    assert fake.rejected == [] and len(fake.calls) == 3


def test_square_repeats_nothing_a_repeated_call_finds_done(fake: FakeShops) -> None:
    fake.square_order("SQ2")
    client, call = _square(fake), _call("square", CallKind.READY, "SQ2")
    client.send(call, now=NOW)
    answer = client.send(call, now=NOW)  # e.g. made again after a crash without asking first
    assert '"already"' in answer and len(fake.calls) == 1
    # Further along counts as done: READY is moot once the order is COMPLETED.
    fake.square["SQ2"]["fulfillments"][0]["state"] = "COMPLETED"
    assert client.already_done(call, now=NOW) is True


def test_square_dedups_the_same_key_and_rereads_a_stale_version(fake: FakeShops) -> None:
    fake.square_order("SQ3")
    client, call = _square(fake), _call("square", CallKind.CONFIRM, "SQ3")
    fake.concurrent_updates = 1  # another app updates the order between our read and write
    with pytest.raises(Exception, match="VERSION_MISMATCH") as failure:
        client.send(call, now=NOW)
    assert not getattr(failure.value, "permanent", True)  # retried: read again, write again
    client.send(call, now=NOW)
    assert fake.square_state("SQ3") == "RESERVED" and len(fake.calls) == 1
    assert fake.calls[0].params["idempotency_key"].endswith("-v2")


def test_square_cancel_and_what_cannot_be_moved(fake: FakeShops) -> None:
    client = _square(fake)
    fake.square_order("SQ4")
    client.send(_call("square", CallKind.CANCEL, "SQ4"), now=NOW)
    assert fake.square_state("SQ4") == "CANCELED"
    with pytest.raises(AlreadyPast):  # skipped: a cancelled order is not made ready
        client.send(_call("square", CallKind.READY, "SQ4"), now=NOW)
    fake.square_order("SQ5", state="COMPLETED")
    with pytest.raises(PermanentFailure, match="cannot be canceled"):
        client.send(_call("square", CallKind.CANCEL, "SQ5"), now=NOW)
    with pytest.raises(PermanentFailure, match="UNAUTHORIZED"):
        _square(fake, token="wrong").send(_call("square", CallKind.CONFIRM, "SQ5"), now=NOW)
    with pytest.raises(PermanentFailure, match="NOT_FOUND"):
        client.send(_call("square", CallKind.CONFIRM, "nope"), now=NOW)
    assert len(fake.calls) == 1


def test_woocommerce_status_calls_and_their_check(fake: FakeShops) -> None:
    fake.woo_order(723)
    client = _woo(fake)
    for kind, status in ((CallKind.CONFIRM, "processing"), (CallKind.COMPLETE, "completed")):
        call = _call("woocommerce", kind, "723")
        assert client.already_done(call, now=NOW) is False
        client.send(call, now=NOW)
        assert fake.woo[723]["status"] == status and client.already_done(call, now=NOW)
    fake.woo_order(724)
    client.send(_call("woocommerce", CallKind.CANCEL, "724"), now=NOW)
    assert fake.woo[724]["status"] == "cancelled"
    assert [(c.action, c.params) for c in fake.calls] == [
        ("status", {"status": "processing"}), ("status", {"status": "completed"}),
        ("status", {"status": "cancelled"}),
    ]  # fmt: skip
    assert fake.rejected == []


def test_woocommerce_tells_the_customer_ready_in_a_note_found_again_by_its_text(
    fake: FakeShops,
) -> None:
    fake.woo_order(725)
    client = _woo(fake)
    ready = _call("woocommerce", CallKind.READY, "725")
    assert client.already_done(ready, now=NOW) is False
    fake.woo_notes[725].append({"id": 1, "note": "Your order is ready for pickup.",
                                "customer_note": False, "author": "shop"})  # fmt: skip
    assert client.already_done(ready, now=NOW) is False  # a private note is not the customer's
    client.send(ready, now=NOW)
    assert client.already_done(ready, now=NOW) is True
    assert [c.params for c in fake.calls] == [
        {"note": "Your order is ready for pickup.", "customer_note": True}
    ]
    with pytest.raises(Unsupported):  # no other note: nothing else is told in one
        woocommerce_note(_call("woocommerce", CallKind.DELIVERING, "725"))


def test_woocommerce_puts_no_closed_order_back(fake: FakeShops) -> None:
    client = _woo(fake)
    fake.woo_order(727, status="cancelled")  # the customer cancelled it in the shop
    assert '"already"' in client.send(_call("woocommerce", CallKind.CONFIRM, "727"), now=NOW)
    fake.woo_order(730, status="failed")  # its payment failed
    with pytest.raises(AlreadyPast):  # skipped: not reopened as processing
        client.send(_call("woocommerce", CallKind.CONFIRM, "730"), now=NOW)
    fake.woo_order(728, status="completed")
    with pytest.raises(PermanentFailure, match="completed: not set to cancelled"):
        client.send(_call("woocommerce", CallKind.CANCEL, "728"), now=NOW)
    fake.woo_order(729, status="completed")
    assert '"already"' in client.send(_call("woocommerce", CallKind.COMPLETE, "729"), now=NOW)
    assert fake.calls == [] and fake.woo[727]["status"] == "cancelled"
    assert fake.woo[730]["status"] == "failed"


def test_woocommerce_refuses_a_wrong_secret_a_bad_id_and_plain_http(fake: FakeShops) -> None:
    fake.woo_order(726)
    with pytest.raises(PermanentFailure, match="401"):
        _woo(fake, secret="wrong").send(_call("woocommerce", CallKind.CONFIRM, "726"), now=NOW)
    with pytest.raises(PermanentFailure, match="is a number"):
        _woo(fake).send(_call("woocommerce", CallKind.CONFIRM, "wc-726"), now=NOW)
    with pytest.raises(MissingCredentials, match="not https"):
        WooCommerceClient.from_settings(
            Settings(
                woocommerce_url="http://shop.example.com",
                woocommerce_consumer_key="k",
                woocommerce_consumer_secret="s",
            )  # fmt: skip
        )
    assert fake.calls == []


def test_shop_credentials_are_required_only_when_served() -> None:
    with pytest.raises(MissingCredentials, match="OMS_SQUARE_ACCESS_TOKEN"):
        clients(Settings(square_access_token=None), ["square"])
    with pytest.raises(MissingCredentials, match="OMS_WOOCOMMERCE_CONSUMER_SECRET"):
        clients(
            Settings(woocommerce_url="https://shop.example.com", woocommerce_consumer_key="k",
                     woocommerce_consumer_secret=None),
            ["woocommerce"],
        )  # fmt: skip
    served = clients(
        Settings(square_access_token="t", meituan_app_id="1", meituan_secret="s"),
        ["meituan", "square"],
    )
    assert set(served) == {"meituan", "square"}  # no WooCommerce settings needed
