"""The notifier (oms/notify.py) on the real broker, against a real SMTP server (aiosmtpd):
orders on the order log become exactly the expected e-mails, opted-out and forgotten customers
are recorded skipped, a restart re-sends nothing, and a notifier killed with SIGKILL mid-run,
restarted, leaves every message received and none twice (but the one a kill may catch between
the relay's answer and the outcome record, sent again with the same Message-ID)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner

from connectors.email import SmtpMailer
from events.models import (
    Actor,
    ActorKind,
    Customer,
    Event,
    OrderAcceptedByStore,
    OrderDelivered,
    OrderMode,
    OrderPickedUp,
    OrderReady,
    utc_now,
)
from events.notifications import MessageKind, NotificationStatus
from infra.keystore import KafkaKeys
from infra.publisher import Publisher
from infra.settings import Settings
from oms.cli import main
from oms.notify import Notifier, read_records
from oms.privacy import subject_for
from tests.conftest import settings_env
from tests.connectors.smtp_server import RecordingHandler, smtp_server
from tests.factories import received

pytestmark = pytest.mark.integration
COOK = Actor(kind=ActorKind.USER, id="cook")
FROM = "Dumpling House <orders@dumplings.example>"


@pytest.fixture
def smtp() -> Iterator[tuple[RecordingHandler, int]]:
    with smtp_server() as running:
        yield running


def _order(n: int, *, mode: OrderMode, email: str | None) -> list[Event]:
    """Order `n` of customer `cust-n`, happening now: accepted with an estimate, then ready
    (pickup) or taken by a courier and delivered (delivery)."""
    now = utc_now()
    order_id, external = f"o-{n}", f"{5000 + n}"
    customer = Customer(id=f"cust-{n}", name=f"客户{n}", email=email, phone=f"+86138000000{n:02d}")
    base = received(
        order_id=order_id, event_id=f"r-{order_id}", external_id=external, mode=mode,
        customer=customer, occurred_at=now, recorded_at=now, placed_at=now,
    )  # fmt: skip

    def follow(kind: type[Event], seq: int, **fields: Any) -> Event:
        return kind.model_validate(dict(
            event_id=f"{kind.__name__}-{order_id}", order_id=order_id, sequence=seq,
            occurred_at=now, recorded_at=now, correlation_id=order_id, actor=COOK,
            channel="webshop", external_id=external,
        ) | fields)  # fmt: skip

    accepted = follow(OrderAcceptedByStore, 2, location="S01",
                      estimated_ready_at=now + timedelta(minutes=20))  # fmt: skip
    if mode is OrderMode.PICKUP:
        return [base, accepted, follow(OrderReady, 3, location="S01")]
    return [
        base,
        accepted,
        follow(OrderPickedUp, 3, location="S01", picked_up_by="李师傅"),
        follow(OrderDelivered, 4),
    ]


def _publish(settings: Settings, events: list[Event]) -> None:
    publisher = Publisher(settings)
    for event in events:
        publisher.publish(settings.topics.orders, event)
    publisher.flush()


def _settings(settings: Settings, tmp_path: Path, port: int) -> Settings:
    return settings.model_copy(
        update={
            "smtp_host": "127.0.0.1",
            "smtp_port": port,
            "smtp_from": FROM,
            "smtp_starttls": False,
            "notify_quiet_hours": "",  # the test runs at any hour
            "notify_rate_limit": 100,
            "notify_preferences_file": tmp_path / "preferences.json",
        }
    )


def _env(settings: Settings) -> dict[str, str]:
    return settings_env(settings) | {
        "OMS_SMTP_HOST": "127.0.0.1",
        "OMS_SMTP_PORT": str(settings.smtp_port),
        "OMS_SMTP_FROM": FROM,
        "OMS_SMTP_STARTTLS": "false",
        "OMS_NOTIFY_QUIET_HOURS": "",
        "OMS_NOTIFY_RATE_LIMIT": "100",
        "OMS_NOTIFY_PREFERENCES_FILE": str(settings.notify_preferences_file),
    }


def _mailer(settings: Settings) -> SmtpMailer:
    return SmtpMailer(host="127.0.0.1", port=settings.smtp_port, starttls=False, timeout_s=10)


def _settled(settings: Settings) -> int:
    return sum(1 for r in read_records(settings, timeout_s=10).values() if r.status.settled)


def test_orders_become_exactly_the_expected_emails_and_a_restart_sends_none_again(
    isolated_settings: Settings,
    smtp: tuple[RecordingHandler, int],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    handler, port = smtp
    settings = _settings(isolated_settings, tmp_path, port)
    events = (
        _order(1, mode=OrderMode.PICKUP, email="ann@example.com")  # confirmed, ready
        + _order(
            2, mode=OrderMode.DELIVERY, email="bo@example.com"
        )  # confirmed, on its way, delivered
        + _order(3, mode=OrderMode.PICKUP, email="cy@example.com")  # opted out: 2 skipped
        + _order(4, mode=OrderMode.PICKUP, email="di@example.com")  # forgotten: 2 skipped
        + _order(5, mode=OrderMode.PICKUP, email=None)  # no address: nothing at all
    )
    _publish(settings, events)
    for name, value in _env(settings).items():
        monkeypatch.setenv(name, value)
    from infra.settings import get_settings

    get_settings.cache_clear()
    try:
        runner = CliRunner()
        assert runner.invoke(main, ["notify", "opt-out", "webshop:cust-3"]).exit_code == 0
        changed = runner.invoke(main, ["notify", "opt-in", "webshop:cust-2", "--locale", "en"])
        assert changed.exit_code == 0, changed.output
    finally:
        get_settings.cache_clear()
    keys = KafkaKeys(settings)
    assert keys.forget([subject_for("webshop:cust-4", keys.pepper)]) >= 1

    notifier = Notifier(settings, mailer=_mailer(settings))
    assert notifier.health.why_not_ready() == "reading the notifications topic"  # (/readyz)
    stats = notifier.run(until=lambda n: n.stats.sent + n.stats.skipped >= 9)
    assert notifier.health.why_not_ready() == "stopped"
    assert (stats.sent, stats.skipped, stats.failed) == (5, 4, 0)

    got = Counter((r.recipients[0], r.message["Subject"]) for r in handler.received)
    assert got == Counter({
        ("ann@example.com", "订单 5001 已确认"): 1,
        ("ann@example.com", "订单 5001 已可取餐"): 1,
        ("bo@example.com", "Order 5002 confirmed"): 1,
        ("bo@example.com", "Order 5002 is on its way"): 1,
        ("bo@example.com", "Order 5002 delivered"): 1,
    })  # fmt: skip
    on_its_way = next(r.message for r in handler.received if "on its way" in r.message["Subject"])
    assert "with 李师傅" in on_its_way.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    records = read_records(settings)
    sent = {r.message_id: r for r in records.values() if r.status is NotificationStatus.SENT}
    assert {r.message["Message-ID"] for r in handler.received} == set(sent)
    assert all(mid == f"<{r.key}@dumplings.example>" for mid, r in sent.items())
    skipped = Counter(
        (r.notice.external_id, r.detail) for r in records.values()
        if r.status is NotificationStatus.SKIPPED
    )  # fmt: skip
    assert skipped == Counter({
        ("5003", "the customer opted out"): 2,
        ("5004", "the customer's personal data was forgotten"): 2,
    })  # fmt: skip
    assert all(
        "@" not in r.encode().decode().replace("@dumplings.example", "") for r in records.values()
    )

    again = Notifier(settings, mailer=_mailer(settings))
    restarted = again.run(until=lambda n: n.stats.events >= len(events))
    assert (restarted.sent, restarted.skipped) == (0, 0) and len(handler.received) == 5


@pytest.mark.fault
def test_a_notifier_killed_mid_run_sends_every_message_and_none_twice(
    isolated_settings: Settings, smtp: tuple[RecordingHandler, int], tmp_path: Path
) -> None:
    handler, port = smtp
    settings = _settings(isolated_settings, tmp_path, port)
    orders = 12
    events = [
        e
        for n in range(orders)
        for e in _order(
            n, mode=OrderMode.PICKUP if n % 2 else OrderMode.DELIVERY, email=f"c{n}@example.com"
        )
    ]
    _publish(settings, events)
    expected = (orders // 2) * 2 + (orders // 2) * 3
    handler.delay_s = 0.05
    command = [sys.executable, "-m", "oms.cli", "notify", "run"]
    env = _env(settings)
    notifier = subprocess.Popen(command, env=env, stderr=subprocess.PIPE)
    try:
        _wait(lambda: len(handler.received) >= expected // 3, notifier, "some e-mails")
        os.kill(notifier.pid, signal.SIGKILL)
        notifier.wait(10)
        assert len(handler.received) < expected, "the notifier was not killed mid-run"
        if notifier.stderr:
            notifier.stderr.close()
        notifier = subprocess.Popen(command, env=env, stderr=subprocess.PIPE)
        _wait(lambda: _settled(settings) >= expected, notifier, "every message settled")
    finally:
        notifier.kill()
        notifier.wait(10)
        if notifier.stderr:
            notifier.stderr.close()
    by_id = Counter(r.message["Message-ID"] for r in handler.received)
    by_what = Counter((r.recipients[0], r.message["Subject"]) for r in handler.received)
    assert len(by_id) == expected and len(by_what) == expected  # none missing
    # SMTP cannot be asked what it took: the messages a kill may catch between the relay's
    # answer and the acknowledgement of their outcome (OMS_NOTIFY_IN_FLIGHT) are sent again,
    # each with the same Message-ID.
    twice = {mid for mid, n in by_id.items() if n > 1}
    assert len(twice) <= settings.notify_in_flight and all(by_id[mid] == 2 for mid in twice)
    assert sum(by_what.values()) - len(by_what) == len(twice)
    records = read_records(settings)
    assert all(r.status is NotificationStatus.SENT for r in records.values())
    kinds = Counter(r.notice.kind for r in records.values())
    assert kinds[MessageKind.CONFIRMED] == orders and kinds[MessageKind.DELIVERED] == orders // 2


def test_in_quiet_hours_a_confirmation_waits_for_their_end_and_ready_goes_at_once(
    isolated_settings: Settings, smtp: tuple[RecordingHandler, int], tmp_path: Path
) -> None:
    handler, port = smtp
    now = utc_now()
    local = now.astimezone(ZoneInfo(isolated_settings.notify_timezone))
    quiet = f"{local - timedelta(hours=1):%H:%M}-{local + timedelta(hours=1):%H:%M}"
    settings = _settings(isolated_settings, tmp_path, port).model_copy(
        update={"notify_quiet_hours": quiet}
    )
    _publish(settings, _order(1, mode=OrderMode.PICKUP, email="ann@example.com"))
    later = [timedelta(0)]

    def morning_comes(notifier: Notifier) -> bool:
        if notifier.stats.deferred and notifier.stats.sent:
            later[0] = timedelta(hours=2)  # the quiet hours are over
        return notifier.stats.sent >= 2

    notifier = Notifier(settings, mailer=_mailer(settings), clock=lambda: utc_now() + later[0])
    stats = notifier.run(until=morning_comes)
    assert (stats.deferred, stats.sent) == (1, 2)
    assert [r.message["Subject"] for r in handler.received] == [
        "订单 5001 已可取餐",  # ready: sent in quiet hours
        "订单 5001 已确认",  # confirmed: held until they ended, then sent
    ]


def test_a_4xx_is_tried_again_and_a_5xx_is_failed_dead_lettered_and_listed(
    isolated_settings: Settings,
    smtp: tuple[RecordingHandler, int],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    handler, port = smtp
    settings = _settings(isolated_settings, tmp_path, port)
    _publish(settings, _order(1, mode=OrderMode.PICKUP, email="ann@example.com"))
    handler.answers = ["451 4.3.0 busy", "accept", "550 5.1.1 <ann@example.com> no such user"]
    slept: list[float] = []
    notifier = Notifier(settings, mailer=_mailer(settings), sleep=slept.append)
    stats = notifier.run(until=lambda n: n.stats.sent + n.stats.failed >= 2)
    assert (stats.sent, stats.failed) == (1, 1) and len(slept) == 1
    records = read_records(settings)
    [sent] = [r for r in records.values() if r.status is NotificationStatus.SENT]
    [refused] = [r for r in records.values() if r.status is NotificationStatus.FAILED]
    assert (sent.notice.kind, sent.attempts) == (MessageKind.CONFIRMED, 2)
    assert refused.notice.kind is MessageKind.READY_FOR_PICKUP and "550" in refused.detail
    assert "ann@example.com" not in refused.detail  # no address on the records
    from connectors.dead_letters import read_dead_letters

    letters = list(read_dead_letters(settings, timeout_s=10))
    assert any(refused.key in letter.source_ref for letter in letters)
    for name, value in _env(settings).items():
        monkeypatch.setenv(name, value)
    from infra.settings import get_settings

    get_settings.cache_clear()
    try:
        listed = CliRunner().invoke(main, ["notify", "list", "--failed"])
    finally:
        get_settings.cache_clear()
    assert listed.exit_code == 0 and refused.key in listed.output and sent.key not in listed.output


def _wait(
    condition: Any, process: subprocess.Popen[bytes], what: str, timeout_s: float = 60
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        if process.poll() is not None:
            stderr = process.stderr.read().decode() if process.stderr else ""
            pytest.fail(
                f"the notifier exited ({process.returncode}) before {what}: {stderr[-2000:]}"
            )
        time.sleep(0.2)
    pytest.fail(f"no {what} within {timeout_s} s")


def test_the_notifier_refuses_to_start_with_email_on_and_no_relay(
    isolated_settings: Settings,
) -> None:
    env = settings_env(isolated_settings) | {"OMS_SMTP_FROM": FROM}
    done = subprocess.run(
        [sys.executable, "-m", "oms.cli", "notify", "run"], env=env, capture_output=True, timeout=60
    )
    assert done.returncode == 78 and b"OMS_SMTP_HOST" in done.stderr
