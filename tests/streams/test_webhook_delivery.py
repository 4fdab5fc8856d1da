"""The decisions of outbound webhooks (streams/webhook_delivery.py): Standard Webhooks signing,
which subscriptions an event goes to, backoff, giving up and disabling. No broker."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from events.models import Actor, ActorKind, OrderAcceptedByStore, OrderEvent
from events.webhook_subscriptions import Start, Subscription
from streams.webhook_delivery import (
    Health,
    InvalidSecret,
    Progress,
    Retrying,
    RetryPolicy,
    after_attempt,
    gives_up,
    key_of,
    matches,
    message,
    new_secret,
    retry_delay_s,
    sign,
    verify,
    webhook_id,
)
from tests.factories import received

# The vector every Standard Webhooks (and Svix) library tests itself against.
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SPEC_TIMESTAMP = 1614265330
SPEC_BODY = b'{"test": 2432232314}'
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
T0 = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
POLICY = RetryPolicy(
    backoff_base_s=5,
    backoff_cap_s=3600,
    retry_for=timedelta(hours=24),
    disable_after_failures=3,
    disable_after=timedelta(hours=1),
)


def subscription(**fields: object) -> Subscription:
    return Subscription.model_validate(
        {
            "id": "sub_1",
            "url": "https://erp.example.com/hooks",
            "sealed_secret": "wrapped",
            "start": Start(mark="m", offsets={0: 0}),
            "changed_at": T0,
        }
        | fields
    )


def accepted_at(location: str, *, channel: str = "webshop") -> OrderEvent:
    return OrderAcceptedByStore(
        event_id="e-2", order_id="o-1", sequence=2, occurred_at=T0, recorded_at=T0,
        correlation_id="o-1", actor=Actor(kind=ActorKind.USER, id="cook"), channel=channel,
        external_id="1001", location=location,
    )  # fmt: skip


def test_the_signature_is_the_standard_webhooks_test_vector() -> None:
    signed = sign(SPEC_SECRET, webhook_id=SPEC_ID, timestamp=SPEC_TIMESTAMP, body=SPEC_BODY)
    assert signed == SPEC_SIGNATURE


def test_a_receiver_verifies_one_of_several_signatures_and_refuses_a_changed_body() -> None:
    header = f"v1,bm9wZQ== {SPEC_SIGNATURE}"
    args = {"webhook_id": SPEC_ID, "timestamp": SPEC_TIMESTAMP}
    assert verify(SPEC_SECRET, body=SPEC_BODY, header=header, **args)
    assert not verify(SPEC_SECRET, body=SPEC_BODY + b" ", header=header, **args)
    assert not verify(SPEC_SECRET, body=SPEC_BODY, header=SPEC_SIGNATURE, webhook_id="x",
                      timestamp=SPEC_TIMESTAMP)  # fmt: skip


def test_a_new_secret_is_whsec_and_base64_of_its_key() -> None:
    secret = new_secret(bytes(range(32)))
    assert secret.startswith("whsec_") and key_of(secret) == bytes(range(32))
    with pytest.raises(InvalidSecret):
        new_secret(b"short")


@pytest.mark.parametrize(
    "secret",
    ["", "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_", "whsec_not base64!",
     "whsec_" + base64.b64encode(b"16 bytes only!!!").decode()],
)  # fmt: skip
def test_nothing_is_signed_with_a_secret_that_is_not_a_standard_one(secret: str) -> None:
    with pytest.raises(InvalidSecret):
        sign(secret, webhook_id="msg_1", timestamp=1, body=b"{}")


def test_the_webhook_id_is_the_same_for_the_same_event_and_subscription_only() -> None:
    assert webhook_id("sub_1", "e-1") == webhook_id("sub_1", "e-1")
    assert webhook_id("sub_1", "e-1") != webhook_id("sub_2", "e-1")
    assert webhook_id("sub_1", "e-1") != webhook_id("sub_1", "e-2")


def test_filters_keep_the_event_types_channels_and_stores_asked_for() -> None:
    event = accepted_at("S01")
    assert matches(subscription(), event)
    assert matches(subscription(event_types=["OrderAcceptedByStore"]), event)
    assert not matches(subscription(event_types=["OrderReceived"]), event)
    assert matches(subscription(channels=["webshop", "meituan"]), event)
    assert not matches(subscription(channels=["meituan"]), event)
    assert matches(subscription(stores=["S01"]), event)
    assert not matches(subscription(stores=["S02"]), event)
    # Before it is routed an order names no store: a store's subscription does not see it.
    assert not matches(subscription(stores=["S01"]), received())
    assert not matches(subscription(enabled=False), event)


def test_a_subscription_is_refused_for_a_url_that_is_not_http_or_an_unknown_event_type() -> None:
    with pytest.raises(ValidationError, match="url"):
        subscription(url="ftp://erp.example.com/")
    with pytest.raises(ValidationError, match="url"):
        subscription(url="https:///no-host")
    with pytest.raises(ValidationError, match="OrderTeleported"):
        subscription(event_types=["OrderTeleported"])


def test_the_body_is_the_event_as_logged_with_its_type() -> None:
    event = received()
    document = json.loads(message(event))
    assert document["type"] == "OrderReceived"
    assert document["data"]["order_id"] == "o-1" and document["data"]["total"] == 6100


def test_backoff_doubles_to_its_cap_and_jitter_takes_off_at_most_half() -> None:
    assert [retry_delay_s(n, POLICY, jitter=0) for n in (1, 2, 3)] == [5, 10, 20]
    assert retry_delay_s(20, POLICY, jitter=0) == 3600
    assert retry_delay_s(1000, POLICY, jitter=0) == 3600
    assert retry_delay_s(2, POLICY, jitter=1) == 5


def test_a_delivery_gives_up_only_past_its_retry_window() -> None:
    assert not gives_up(first_attempt=T0, now=T0 + timedelta(hours=23), policy=POLICY)
    assert gives_up(first_attempt=T0, now=T0 + timedelta(hours=24), policy=POLICY)


def test_a_subscription_is_disabled_after_failures_in_a_row_over_the_window() -> None:
    health, why = Health(), None
    for minutes in (0, 30, 59):
        health, why = after_attempt(
            health, delivered=False, now=T0 + timedelta(minutes=minutes), policy=POLICY
        )
    assert health.failures == 3 and why is None  # three in a row, but within the hour
    health, why = after_attempt(health, delivered=False, now=T0 + timedelta(hours=1), policy=POLICY)
    assert why is not None and "4 failed attempts" in why


def test_a_delivery_between_failures_starts_the_count_again() -> None:
    health, _ = after_attempt(Health(), delivered=False, now=T0, policy=POLICY)
    health, _ = after_attempt(health, delivered=False, now=T0, policy=POLICY)
    health, _ = after_attempt(health, delivered=True, now=T0, policy=POLICY)
    assert health == Health()
    late = T0 + timedelta(hours=5)
    health, why = after_attempt(health, delivered=False, now=late, policy=POLICY)
    assert why is None and health.failing_since == late


def test_progress_carries_the_run_of_failures_and_the_retry_clock_within_the_broker_limit() -> None:
    at = datetime(2026, 12, 6, 21, 0, tzinfo=UTC)
    progress = Progress(
        mark="a" * 32,
        health=Health(failures=7, failing_since=at),
        retrying=Retrying(offset=41, attempts=7, first_attempt=at, due=at + timedelta(hours=1)),
    )
    note = progress.note()
    assert Progress.read(note) == progress
    assert len(note.encode()) < 4096  # offset.metadata.max.bytes
    assert Progress.read(Progress(mark="m").note()) == Progress(mark="m")


def test_progress_committed_before_notes_or_unreadable_remembers_nothing() -> None:
    assert Progress.read("0f3c9a") == Progress(mark="0f3c9a")  # a plain mark, as before
    assert Progress.read(None) == Progress(mark="")
    assert Progress.read('{"mark": "m", "failures": "many"}') == Progress(mark="")
