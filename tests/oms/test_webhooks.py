"""Outbound webhooks (oms/webhooks.py, `oms subscriptions`) on the real broker, against a real
local HTTP receiver that verifies every Standard Webhooks signature on its own and dedupes on
`webhook-id`: each order's events delivered once, in order; a receiver failing then recovering
is retried; one that always fails gets its subscription disabled; a poison message and a bad
subscription stop nothing; a replay sends again with the same ids; and a sender killed with
SIGKILL mid-run, restarted, loses no delivery."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest
from click.testing import CliRunner
from confluent_kafka import Consumer, Producer, TopicPartition

from events.models import Actor, ActorKind, Event, OrderAcceptedByStore, OrderRouted, utc_now
from events.webhook_subscriptions import DeliveryStatus
from infra.kafka import consumer_config
from infra.keystore import MasterKey
from infra.publisher import Publisher
from infra.settings import Settings, get_settings
from oms.cli import main
from oms.webhooks import (
    WebhookSender,
    group_of,
    lag,
    open_secret,
    read_deliveries,
    read_subscriptions,
    save,
    seal_secret,
)
from streams.webhook_delivery import InvalidSecret, Progress, webhook_id
from tests.conftest import settings_env
from tests.factories import received
from tests.fake_http import FakeHttpServer

pytestmark = pytest.mark.integration
FAST = {  # retries within a test's time; the defaults are seconds to a day
    "webhook_backoff_base_s": 0.05,
    "webhook_backoff_cap_s": 0.2,
    "webhook_retry_for_s": 60.0,
    "webhook_timeout_s": 5.0,
}


@dataclass
class Delivery:
    webhook_id: str
    event_type: str
    order_id: str
    sequence: int
    signer: int | None  # which of the receiver's secrets signed it; None: none did

    @property
    def verified(self) -> bool:
        return self.signer is not None


@dataclass
class Receiver:
    """A subscriber's endpoint: checks the signature with the secrets it is given, records
    each request, and answers `failures` 500s first (or always, with `down`)."""

    url: str = ""
    secrets: list[str] = field(default_factory=list)
    failures: int = 0
    down: bool = False
    delay_s: float = 0.0
    received: list[Delivery] = field(default_factory=list)
    answered_500: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def signer(self, headers: Any, body: bytes) -> int | None:
        """Standard Webhooks verification, written here apart from the sender's."""
        signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
        wanted = set(headers.get("webhook-signature", "").split())
        for n, secret in enumerate(self.secrets):
            key = base64.b64decode(secret.removeprefix("whsec_"))
            digest = hmac.new(key, signed, hashlib.sha256).digest()
            if "v1," + base64.b64encode(digest).decode() in wanted:
                return n
        return None

    def ids(self) -> set[str]:
        with self.lock:
            return {d.webhook_id for d in self.received if d.verified}

    def first_seen(self) -> list[Delivery]:
        """Each webhook id once, as it first arrived (the receiver's dedup)."""
        seen: dict[str, Delivery] = {}
        with self.lock:
            for delivery in self.received:
                seen.setdefault(delivery.webhook_id, delivery)
        return list(seen.values())


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers["content-length"]))
            time.sleep(state.delay_s)
            with state.lock:
                failing = state.down or state.failures > 0
                if failing:
                    state.failures -= 1
                    state.answered_500 += 1
                else:
                    data = json.loads(body)
                    state.received.append(
                        Delivery(
                            webhook_id=self.headers["webhook-id"],
                            event_type=data["type"],
                            order_id=data["data"]["order_id"],
                            sequence=data["data"]["sequence"],
                            signer=state.signer(self.headers, body),
                        )
                    )
            self.send_response(500 if failing else 204)
            self.end_headers()

        def log_message(self, *_args: Any) -> None:
            pass  # the test's output stays the test's

    server = FakeHttpServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hooks"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


@pytest.fixture
def settings(isolated_settings: Settings) -> Settings:
    return isolated_settings.model_copy(update=FAST)


@pytest.fixture
def oms(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., str]]:
    """`oms ARGS` in this process, on the test's topics; its output, or the test fails."""
    for name, value in settings_env(settings).items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()

    def run(*args: str, fails: bool = False) -> str:
        done = CliRunner().invoke(main, list(args))
        assert (done.exit_code != 0) == fails, done.output
        return done.output

    yield run
    get_settings.cache_clear()


def subscribe(oms: Callable[..., str], receiver: Receiver, *args: str) -> str:
    """A new subscription for `receiver`; its id (the secret is handed to the receiver)."""
    shown = dict(line.split(": ", 1) for line in oms("subscriptions", "add", receiver.url, *args)
                 .splitlines() if ": " in line)  # fmt: skip
    receiver.secrets.append(shown["secret"])
    return shown["id"]


def order(n: int, *, channel: str) -> list[Event]:
    """An order received, routed to S01 and accepted there."""
    now, order_id = utc_now(), f"o-{n}"
    actor = Actor(kind=ActorKind.USER, id="cook")
    envelope: dict[str, Any] = {
        "order_id": order_id, "occurred_at": now, "recorded_at": now, "correlation_id": order_id,
        "actor": actor, "channel": channel, "external_id": str(n),
    }  # fmt: skip
    return [
        received(event_id=f"r-{n}", placed_at=now, **envelope),
        OrderRouted(
            event_id=f"t-{n}", sequence=2, location="S01", groups=[], reasons=[], **envelope
        ),  # fmt: skip
        OrderAcceptedByStore(event_id=f"a-{n}", sequence=3, location="S01", **envelope),
    ]


def publish(settings: Settings, events: list[Event]) -> None:
    publisher = Publisher(settings)
    for event in events:
        publisher.publish(settings.topics.orders, event)
    publisher.flush()


def deliver(
    settings: Settings, done: Callable[[WebhookSender], bool], timeout_s: float = 30
) -> WebhookSender:
    """A sender run until `done` (or the time is up: then the test fails)."""
    deadline = time.monotonic() + timeout_s
    sender = WebhookSender(settings)
    sender.run(until=lambda s: done(s) or time.monotonic() > deadline)
    assert done(sender), f"not done within {timeout_s} s: {sender.stats}"
    return sender


def in_order(deliveries: list[Delivery]) -> bool:
    """Every order's events arrived at each subscriber in their sequence."""
    by_order: dict[tuple[int | None, str], list[int]] = {}
    for delivery in deliveries:
        by_order.setdefault((delivery.signer, delivery.order_id), []).append(delivery.sequence)
    return all(seq == sorted(seq) for seq in by_order.values())


def test_each_event_is_delivered_once_in_order_signed_logged_and_replayed_with_its_ids(
    settings: Settings, receiver: Receiver, oms: Callable[..., str]
) -> None:
    everything = subscribe(oms, receiver)
    meituan_accepts = subscribe(oms, receiver, "--channel", "meituan", "--event",
                                "OrderAcceptedByStore", "--store", "S01")  # fmt: skip
    events = [e for n in range(6) for e in order(n, channel="meituan" if n % 2 else "eleme")]
    publish(settings, events[:9])
    # Bytes that are no event, in the middle of the log: dead-lettered and passed over.
    poison = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    poison.produce(settings.topics.orders, key=b"o-3", value=b"\x00not avro")
    poison.flush(10)
    publish(settings, events[9:])
    expected = len(events) + 3  # every event, and the 3 meituan orders' acceptances
    read = 2 * (len(events) + 1)  # each subscription reads the whole log
    sender = deliver(settings, lambda s: s.stats.delivered >= expected and s.stats.read >= read)

    assert all(d.verified for d in receiver.received)
    assert len(receiver.received) == expected  # no duplicate, nothing extra
    assert in_order(receiver.received)
    filtered = [d for d in receiver.received if d.event_type == "OrderAcceptedByStore"]
    assert sorted(d.order_id for d in filtered) == ["o-0", "o-1", "o-1", "o-2", "o-3", "o-3",
                                                    "o-4", "o-5", "o-5"]  # fmt: skip
    assert sender.stats.poison == 2  # once per subscription that read it
    assert lag(settings) == {everything: 0, meituan_accepts: 0}
    assert f"{meituan_accepts}  enabled  lag 0" in oms("subscriptions", "list")
    logged = read_deliveries(settings, subscription_id=meituan_accepts)
    assert len(logged) == 3 and all(d.status is DeliveryStatus.DELIVERED for d in logged)
    assert oms("subscriptions", "deliveries", meituan_accepts).count("delivered") == 3

    # Replayed from the start: the same ids again, which the receiver already has.
    before = receiver.ids()
    oms("subscriptions", "replay", everything, "--offset", "0")
    deliver(settings, lambda _: len(receiver.received) >= 2 * expected - 3)
    assert receiver.ids() == before and in_order(receiver.received[expected:])
    assert "--since" in oms(
        "subscriptions", "replay", everything, "--since", "yesterday", fails=True
    )
    since = oms("subscriptions", "replay", everything, "--since", "2000-01-01T08:00:00+08:00")
    assert since.strip().endswith("from partition:offset 0:0, 1:0, 2:0")


def test_personal_data_is_delivered_sealed_as_the_log_holds_it(
    settings: Settings, receiver: Receiver, oms: Callable[..., str]
) -> None:
    subscribe(oms, receiver, "--event", "OrderReceived")
    bodies: list[dict[str, Any]] = []

    def keep(url: str, body: bytes, headers: dict[str, str], *, timeout_s: float) -> Any:
        bodies.append(json.loads(body))
        return 204, ""

    publish(settings, order(1, channel="webshop"))
    deadline = time.monotonic() + 30
    WebhookSender(settings, post=keep).run(
        until=lambda _: bool(bodies) or time.monotonic() > deadline
    )
    data = bodies[0]["data"]
    assert data["sealed"].startswith("pii1:")
    assert "王伟" not in json.dumps(bodies[0], ensure_ascii=False)


def test_a_failing_receiver_is_retried_with_the_same_id_until_it_recovers(
    settings: Settings, receiver: Receiver, oms: Callable[..., str]
) -> None:
    subscription = subscribe(oms, receiver)
    receiver.failures = 3
    publish(settings, order(1, channel="webshop"))
    sender = deliver(settings, lambda _: len(receiver.ids()) >= 3)
    assert receiver.answered_500 == 3 and sender.stats.retried == 3
    assert [d.sequence for d in receiver.received] == [1, 2, 3]
    first = [d for d in read_deliveries(settings, subscription_id=subscription) if d.offset == 0]
    assert first[0].attempts == 4 and first[0].status is DeliveryStatus.DELIVERED


def test_a_receiver_that_always_fails_is_disabled_and_enable_resumes_where_it_stopped(
    settings: Settings, receiver: Receiver, oms: Callable[..., str]
) -> None:
    settings = settings.model_copy(
        update={"webhook_disable_failures": 3, "webhook_disable_after_s": 0.0}
    )
    subscription = subscribe(oms, receiver)
    # A secret copied from another subscription does not open (it is bound to its id): that
    # subscription is disabled, never sent unsigned, and stops nothing.
    broken = read_subscriptions(settings)[subscription].model_copy(update={"id": "sub_broken"})
    save(settings, broken)
    receiver.down = True
    publish(settings, order(1, channel="webshop"))

    deliver(settings, lambda sender: sender.stats.disabled >= 2)
    assert receiver.answered_500 == 3 and receiver.received == []
    listed = oms("subscriptions", "list")
    assert f"{subscription}  disabled (3 failed attempts in a row" in listed
    assert "sub_broken  disabled (invalid secret" in listed

    receiver.down = False
    oms("subscriptions", "enable", subscription)
    deliver(settings, lambda _: len(receiver.ids()) >= 3)
    assert [d.sequence for d in receiver.received] == [1, 2, 3]
    oms("subscriptions", "remove", "sub_broken")
    assert "sub_broken" not in oms("subscriptions", "list")


def test_a_delivery_failing_past_its_retry_window_is_dead_lettered_and_passed_over(
    settings: Settings, receiver: Receiver, oms: Callable[..., str]
) -> None:
    from connectors.dead_letters import read_dead_letters

    settings = settings.model_copy(update={"webhook_retry_for_s": 0.3})
    subscription = subscribe(oms, receiver)
    receiver.down = True
    publish(settings, order(1, channel="webshop"))
    sender = deliver(settings, lambda s: s.stats.failed >= 3)
    assert sender.stats.delivered == 0 and receiver.answered_500 > 3  # retried, then given up
    logged = read_deliveries(settings, subscription_id=subscription)
    assert [d.status for d in logged] == [DeliveryStatus.FAILED] * 3
    assert all(d.http_status == 500 for d in logged)
    assert sum(d.attempts for d in logged) == receiver.answered_500  # every attempt counted
    letters = [d for d in read_dead_letters(settings, timeout_s=10) if d.source == "webhooks"]
    assert sorted(json.loads(d.raw)["data"]["sequence"] for d in letters) == [1, 2, 3]
    assert oms("subscriptions", "deliveries", subscription, "--failed").count("failed") == 3
    assert lag(settings) == {subscription: 0}  # passed over: the log is not held back


def test_the_cli_names_the_field_of_a_url_or_event_type_it_refuses(
    oms: Callable[..., str],
) -> None:
    assert "url: must be an http:// or https:// URL" in oms(
        "subscriptions", "add", "ftp://x.example/", fails=True
    )
    assert "event_types: not an event of the order log: Nope" in oms(
        "subscriptions", "add", "https://x.example/", "--event", "Nope", fails=True
    )


def test_a_secret_is_kept_wrapped_and_opens_only_for_its_subscription_and_master_key(
    settings: Settings, receiver: Receiver, oms: Callable[..., str]
) -> None:
    subscription = subscribe(oms, receiver)
    kept = read_subscriptions(settings)[subscription]
    assert receiver.secrets[0] not in kept.sealed_secret and "whsec_" not in kept.sealed_secret
    master = MasterKey.from_settings(settings)
    assert open_secret(master, kept) == receiver.secrets[0]
    with pytest.raises(InvalidSecret):
        open_secret(MasterKey(bytes(32)), kept)
    with pytest.raises(InvalidSecret):
        open_secret(master, kept.model_copy(update={"id": "sub_other"}))
    not_standard = seal_secret(master, subscription, "whsec_c2hvcnQ=")
    with pytest.raises(InvalidSecret):
        open_secret(master, kept.model_copy(update={"sealed_secret": not_standard}))


@pytest.mark.fault
def test_a_sender_killed_mid_run_loses_no_delivery(
    settings: Settings, receiver: Receiver, oms: Callable[..., str]
) -> None:
    subscription = subscribe(oms, receiver)
    events = [e for n in range(30) for e in order(n, channel="webshop")]
    publish(settings, events)
    receiver.delay_s = 0.1  # 3 partitions, 90 events: about 3 s of deliveries
    env = settings_env(settings) | {f"OMS_{k.upper()}": str(v) for k, v in FAST.items()}
    command = [sys.executable, "-m", "oms.cli", "subscriptions", "run"]
    sender = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)
    try:
        # Killed once some progress is committed: the restart resumes from it, not the start.
        wait(lambda: lag(settings)[subscription] < len(events), sender)
        os.kill(sender.pid, signal.SIGKILL)
        sender.wait(10)
        assert len(receiver.ids()) < len(events), "the sender was not killed mid-run"
        sender = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)
        wait(lambda: len(receiver.ids()) >= len(events), sender)
    finally:
        sender.kill()
        sender.wait(10)
    assert all(d.verified for d in receiver.received)
    # None missing; a duplicate only with an id the receiver already had.
    assert receiver.ids() == {webhook_id(subscription, e.event_id) for e in events}
    assert in_order(receiver.first_seen())


def committed_progress(settings: Settings, subscription: str) -> list[Progress]:
    """What the subscription's group has committed, partition by partition."""
    consumer = Consumer(
        consumer_config(settings.kafka_bootstrap, group_id=group_of(settings, subscription))
    )
    try:
        topic = settings.topics.orders
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        committed = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
        return [Progress.read(tp.metadata) for tp in committed if tp.offset >= 0]
    finally:
        consumer.close()


def test_a_sender_crashing_again_and_again_still_counts_to_disabling_and_keeps_the_retry_clock(
    settings: Settings, receiver: Receiver, oms: Callable[..., str]
) -> None:
    # Killed after each failed attempt: each restart goes on from the failures and attempts
    # its commit carries, so the third attempt of all disables (not the third of one run).
    subscription = subscribe(oms, receiver)
    receiver.down = True
    publish(settings, order(1, channel="webshop"))
    env = settings_env(settings) | {f"OMS_{k.upper()}": str(v) for k, v in FAST.items()}
    env |= {"OMS_WEBHOOK_DISABLE_FAILURES": "3", "OMS_WEBHOOK_DISABLE_AFTER_S": "0"}
    # Retries 1 to 2 s apart: each run is killed (within a poll) before its second attempt,
    # and the restarted one waits out the retry's due time it remembers.
    env |= {"OMS_WEBHOOK_BACKOFF_BASE_S": "2", "OMS_WEBHOOK_BACKOFF_CAP_S": "2"}
    command = [sys.executable, "-m", "oms.cli", "subscriptions", "run"]
    for failures in (1, 2):
        sender = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)
        try:
            wait(
                lambda n=failures: any(
                    p.health.failures >= n for p in committed_progress(settings, subscription)
                ),
                sender,
            )
        finally:
            os.kill(sender.pid, signal.SIGKILL)
            sender.wait(10)
        assert receiver.answered_500 == failures  # killed before a second attempt this run
    remembered = [p.retrying for p in committed_progress(settings, subscription) if p.retrying]
    assert [head.attempts for head in remembered] == [2]
    sender = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)
    try:
        wait(lambda: not read_subscriptions(settings)[subscription].enabled, sender)
    finally:
        sender.kill()
        sender.wait(10)
    assert receiver.answered_500 == 3
    logged = read_deliveries(settings, subscription_id=subscription)
    assert [(d.status, d.attempts) for d in logged] == [(DeliveryStatus.RETRYING, 3)]

    # Removed: its progress (the consumer group) goes with it.
    assert "removed, with its progress" in oms("subscriptions", "remove", subscription)
    assert committed_progress(settings, subscription) == []


def wait(condition: Callable[[], bool], process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 45
    while time.monotonic() < deadline:
        if condition():
            return
        assert process.poll() is None, f"the sender exited ({process.returncode})"
        time.sleep(0.05)
    pytest.fail("not delivered within 45 s")


async def test_the_api_lists_subscriptions_with_their_lag_and_no_more_of_the_url_than_its_host(
    settings: Settings, receiver: Receiver, oms: Callable[..., str]
) -> None:
    from aiohttp.test_utils import TestClient, TestServer

    from oms.api import create_app
    from oms.webhooks import lag
    from tests.conftest import ADMIN

    oms("subscriptions", "add", receiver.url.replace("http://", "http://u:p@"), fails=True)
    receiver.url += "?token=abc"  # (a token in the query is the subscriber's own: not shown)
    busy = subscribe(oms, receiver)
    events = order(1, channel="eleme") + order(2, channel="eleme")
    publish(settings, events)
    async with TestClient(TestServer(create_app(settings))) as client:
        before = await (await client.get("/subscriptions", headers=ADMIN)).json()
        [row] = before["subscriptions"]
        assert (row["id"], row["lag"], row["enabled"]) == (busy, len(events), True)
        assert row["host"].startswith("http://127.0.0.1:") and "token" not in str(before)
        await asyncio.to_thread(
            deliver, settings, lambda s: len(receiver.ids()) >= 6 and lag(settings)[busy] == 0
        )
        after = await (await client.get("/subscriptions", headers=ADMIN)).json()
        assert after["subscriptions"][0]["lag"] == 0
