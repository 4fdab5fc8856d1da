"""The outbox sender (oms/outbox.py) on the real broker, against the fake platform server:
retries with backoff, dead letters with `oms outbox list|retry`, one call per event id, and
(item 9 of issue 12) a sender killed with SIGKILL mid-run that, restarted, tells each platform
of each transition exactly once, none missing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from click.testing import CliRunner

from connectors.outbound import ElemeClient, MeituanClient, PlatformClient
from events.models import (
    Actor,
    ActorKind,
    DeadLetter,
    Event,
    LocationPaused,
    LocationResumed,
    OrderAcceptedByStore,
    OrderReady,
    OrderRouted,
    StockReceived,
    StockReserved,
    utc_now,
)
from events.platform_calls import OutboxStatus
from infra.publisher import Publisher
from infra.settings import Settings
from oms.cli import main
from oms.outbox import OutboxSender, read_records
from tests.conftest import settings_env
from tests.connectors.fake_platforms import (
    ELEME_APP_KEY,
    ELEME_SECRET,
    ELEME_TOKEN,
    MEITUAN_APP_ID,
    MEITUAN_SECRET,
    FakePlatforms,
    fake_platforms,
    platform_env,
)
from tests.factories import received

pytestmark = pytest.mark.integration
COOK = Actor(kind=ActorKind.USER, id="cook")


@pytest.fixture
def fake() -> Iterator[FakePlatforms]:
    with fake_platforms() as running:
        yield running


def _clients(fake: FakePlatforms) -> dict[str, PlatformClient]:
    meituan = f"{fake.url}/meituan/api/v1/"
    eleme = f"{fake.url}/eleme/api/v1/"
    return {
        "meituan": MeituanClient(app_id=MEITUAN_APP_ID, secret=MEITUAN_SECRET, api_url=meituan),
        "eleme": ElemeClient(
            app_key=ELEME_APP_KEY, secret=ELEME_SECRET, token=ELEME_TOKEN, api_url=eleme
        ),
    }


def _order_events(n: int, channel: str) -> list[Event]:
    """An order of `channel` taken through accept and ready at S01, happening now."""
    now = utc_now()
    order_id, external = f"o-{channel}-{n}", f"{3000 + n}"
    base = received(
        order_id=order_id,
        event_id=f"r-{order_id}",
        channel=channel,
        external_id=external,
        occurred_at=now,
        recorded_at=now,
        placed_at=now,
    )

    def follow(kind: type[Event], seq: int, **fields: Any) -> Event:
        return kind.model_validate(dict(
            event_id=f"{kind.__name__}-{order_id}", order_id=order_id, sequence=seq,
            occurred_at=now, recorded_at=now, correlation_id=order_id, actor=COOK,
            channel=channel, external_id=external,
        ) | fields)  # fmt: skip

    return [
        base,
        follow(OrderRouted, 2, location="S01", groups=[], reasons=[]),
        follow(OrderAcceptedByStore, 3, location="S01"),
        follow(OrderReady, 4, location="S01"),
    ]


def _stock_and_pause() -> list[Event]:
    now = utc_now()
    envelope = dict(sequence=1, occurred_at=now, recorded_at=now, correlation_id="c", actor=COOK)
    stock = dict(envelope, sku="MUG-CERAMIC", location="S01")
    return [
        StockReceived(event_id="s1", quantity=1, **stock),
        StockReserved(
            event_id="s2", order_id="o", reservation_id="r", quantity=1, **stock
        ),  # sold out
        StockReceived(event_id="s3", quantity=3, **stock),  # back on the shelf
        LocationPaused(event_id="p1", entity_id="S01", reason="rush", **envelope),
        LocationResumed(event_id="p2", entity_id="S01", reason="calm", **envelope),
    ]


def _publish(settings: Settings, events: list[Event]) -> None:
    publisher = Publisher(settings)
    topics = settings.topics
    for event in events:
        topic = (
            topics.orders if hasattr(event, "order_id") and not hasattr(event, "sku")
            else topics.inventory if hasattr(event, "sku") else topics.catalogue
        )  # fmt: skip
        publisher.publish(topic, event)
    publisher.flush()


def _with_eleme_shop(settings: Settings, tmp_path: Any) -> Settings:
    """The demo catalogue with S01 listed on Meituan (app_poi_code S01) and on Ele.me (shop
    168830201); the other stores are on neither (their shops and shelves are not told)."""
    import json

    from streams.reference import load_catalogue

    catalogue = load_catalogue()
    document = {
        "products": [p.model_dump(mode="json") for p in catalogue.products.values()],
        "locations": [
            loc.model_dump(mode="json")
            | ({"aliases": ["meituan:S01", "eleme:168830201"]} if loc.id == "S01" else {})
            for loc in catalogue.locations.values()
        ],
    }
    path = tmp_path / "catalogue.json"
    path.write_text(json.dumps(document, ensure_ascii=False))
    return settings.model_copy(update={"catalogue_file": path})


def test_retries_with_backoff_dead_letters_a_refusal_lists_it_and_retries_it(
    isolated_settings: Settings, fake: FakePlatforms, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _with_eleme_shop(isolated_settings, tmp_path)
    _publish(settings, _order_events(1, "meituan") + _order_events(2, "eleme"))
    fake.fail_next = 2  # the first call meets two 503s
    fake.refuse["eleme.order.setOrderPrepared"] = ("BIZ_ORDER_STATUS_ERROR", "不能出餐")
    slept: list[float] = []
    sender = OutboxSender(settings, _clients(fake), sleep=slept.append)
    stats = sender.run(until=lambda s: s.stats.sent + s.stats.failed >= 4)
    assert (stats.sent, stats.failed) == (3, 1)
    assert (
        len(slept) == 2 and 0.25 <= slept[0] <= 0.5 and 0.5 <= slept[1] <= 1.0
    )  # jittered, doubling
    records = read_records(settings)
    [refused] = [r for r in records.values() if r.status is OutboxStatus.FAILED]
    assert refused.call.kind.value == "ready" and "BIZ_ORDER_STATUS_ERROR" in refused.detail

    letters = _dead_letters(settings)
    assert any(refused.key in letter.source_ref for letter in letters)

    for name, value in (settings_env(settings) | platform_env(fake)).items():
        monkeypatch.setenv(name, value)
    from infra.settings import get_settings

    get_settings.cache_clear()
    try:
        listed = CliRunner().invoke(main, ["outbox", "list", "--failed"])
        assert listed.exit_code == 0 and refused.key in listed.output and "ready" in listed.output
        del fake.refuse["eleme.order.setOrderPrepared"]
        retried = CliRunner().invoke(main, ["outbox", "retry", refused.key, "--by", "ops-lin"])
        assert retried.exit_code == 0, retried.output
    finally:
        get_settings.cache_clear()
    again = read_records(settings)[refused.key]
    assert (again.status, again.by) == (OutboxStatus.SENT, "ops-lin")
    assert Counter(c.action for c in fake.calls)["eleme.order.setOrderPrepared"] == 1
    assert any("BIZ_ORDER_STATUS_ERROR" in why for why in fake.rejected)  # the first, refused


class _Garbled:
    """A client whose platform answers something it cannot read (a field missing, a cut
    connection): it raises what a parser raises, not a `CallFailed`."""

    def __init__(self) -> None:
        self.tries = 0

    def send(self, call: Any, *, now: Any) -> str:
        self.tries += 1
        raise KeyError("data")

    def already_done(self, call: Any, *, now: Any) -> bool | None:
        raise ValueError("not JSON")


def test_a_client_raising_anything_fails_its_call_and_the_sender_goes_on(
    isolated_settings: Settings, fake: FakePlatforms, tmp_path: Any
) -> None:
    settings = _with_eleme_shop(isolated_settings, tmp_path)
    _publish(settings, _order_events(1, "meituan") + _order_events(2, "eleme"))
    garbled = _Garbled()
    clients = _clients(fake) | {"meituan": garbled}
    slept: list[float] = []
    sender = OutboxSender(settings, clients, sleep=slept.append)
    stats = sender.run(until=lambda s: s.stats.sent + s.stats.failed >= 4)
    # Meituan's two calls: tried the configured number of times each, then failed and
    # dead-lettered; Ele.me's two calls, read after them, still made.
    assert (stats.sent, stats.failed) == (2, 2)
    assert garbled.tries == 2 * settings.outbox_attempts
    records = read_records(settings)
    failed = [r for r in records.values() if r.status is OutboxStatus.FAILED]
    assert {r.call.platform for r in failed} == {"meituan"}
    assert all("unreadable answer" in r.detail and "KeyError" in r.detail for r in failed)
    letters = _dead_letters(settings)
    assert all(any(r.key in letter.source_ref for letter in letters) for r in failed)


def test_old_settled_records_are_dropped_and_causes_past_the_window_leave_none(
    isolated_settings: Settings, fake: FakePlatforms, tmp_path: Any
) -> None:
    settings = _with_eleme_shop(isolated_settings, tmp_path)
    _publish(settings, _order_events(1, "meituan"))
    # Two days on (past OMS_OUTBOX_MAX_AGE_S, inside the keep window): the calls are
    # recorded `expired` (listed, retryable), not made.
    soon = utc_now() + timedelta(days=2)
    first = OutboxSender(settings, _clients(fake), clock=lambda: soon)
    assert first.run(until=lambda s: s.stats.events >= 4).expired == 2
    kept = read_records(settings)
    assert [r.status for r in kept.values()] == [OutboxStatus.EXPIRED] * 2 and not fake.calls
    # Ten days on: those records are past the keep window and tombstoned at start, and the
    # order's events, read again, are passed over without a call and without a record.
    later = utc_now() + timedelta(days=10)
    second = OutboxSender(settings, _clients(fake), clock=lambda: later)
    stats = second.run(until=lambda s: s.stats.events >= 4)
    assert stats.expired == 2 and stats.sent == 0 and not fake.calls
    assert read_records(settings) == {} and second.records == {}


def _dead_letters(settings: Settings) -> list[DeadLetter]:
    from connectors.dead_letters import read_dead_letters

    return list(read_dead_letters(settings, timeout_s=10))


def test_each_event_is_one_call_however_often_it_is_read(
    isolated_settings: Settings, fake: FakePlatforms, tmp_path: Any
) -> None:
    settings = _with_eleme_shop(isolated_settings, tmp_path)
    events = _order_events(1, "meituan") + _stock_and_pause()
    _publish(settings, events + events)  # every event twice on the log
    first = OutboxSender(settings, _clients(fake)).run(until=lambda s: s.stats.sent >= 10)
    assert first.sent == 10  # confirm, ready; sold out, back, close, open on both platforms
    # A second sender (a restart) reads it all again from the beginning: nothing is re-sent.
    second = OutboxSender(settings, _clients(fake))
    second.run(until=lambda s: s.stats.events >= 2 * len(events))
    assert second.stats.sent == 0 and len(fake.calls) == 10
    assert "meituan:S01:MUG-CERAMIC" not in fake.off_shelf and not fake.closed


@pytest.mark.fault
def test_a_sender_killed_mid_run_tells_each_transition_exactly_once(
    isolated_settings: Settings, fake: FakePlatforms, tmp_path: Any
) -> None:
    settings = _with_eleme_shop(isolated_settings, tmp_path)
    orders = 12
    events = [e for n in range(orders) for e in _order_events(n, "meituan" if n % 2 else "eleme")]
    _publish(settings, events + _stock_and_pause())
    expected = 2 * orders + 8  # confirm and ready per order; 4 shelf and 4 shop calls
    fake.delay_s = 0.05
    env = (
        settings_env(settings)
        | platform_env(fake)
        | {"OMS_CATALOGUE_FILE": str(settings.catalogue_file)}
    )
    command = [sys.executable, "-m", "oms.cli", "outbox", "run"]
    sender = subprocess.Popen(command, env=env, stderr=subprocess.PIPE)
    try:
        _wait(lambda: len(fake.calls) >= expected // 3, sender, "some calls")
        os.kill(sender.pid, signal.SIGKILL)
        sender.wait(10)
        killed_after = len(fake.calls)
        assert killed_after < expected, "the sender was not killed mid-run"
        if sender.stderr:
            sender.stderr.close()
        sender = subprocess.Popen(command, env=env, stderr=subprocess.PIPE)
        _wait(lambda: _settled(settings) >= expected, sender, "every call settled")
    finally:
        sender.kill()
        sender.wait(10)
        if sender.stderr:
            sender.stderr.close()
    told = Counter((c.platform, _what(c.action, c.params), c.target) for c in fake.calls)
    # Meituan publishes no query of 出餐 or of a dish's sell status: one of those in flight at
    # the kill may be made again (docs/connectors.md); every other call is made exactly once.
    unaskable = {"order/preparationMealComplete", "food/sku/sellStatus0", "food/sku/sellStatus1"}
    twice = {k: n for k, n in told.items() if n > 1}
    assert all(action in unaskable and n == 2 for (_, action, _), n in twice.items()), twice
    assert len(twice) <= 1
    assert len(told) == expected  # none missing
    assert (
        sum(1 for (_, action, _) in told if action.endswith(("confirm", "confirmOrderLite")))
        == orders
    )
    assert fake.rejected == []
    records = read_records(settings)
    assert all(r.status is OutboxStatus.SENT for r in records.values())


def _what(action: str, params: dict[str, Any]) -> str:
    """The call, told apart from its opposite on the same endpoint (on / off the shelf, open /
    closed)."""
    state = params.get("sell_status", params.get("properties", {}).get("isOpen", ""))
    return f"{action}{state}"


def _settled(settings: Settings) -> int:
    return sum(1 for r in read_records(settings, timeout_s=10).values() if r.status.settled)


def _wait(
    condition: Any, process: subprocess.Popen[bytes], what: str, timeout_s: float = 60
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        if process.poll() is not None:
            stderr = process.stderr.read().decode() if process.stderr else ""
            pytest.fail(f"the sender exited ({process.returncode}) before {what}: {stderr[-2000:]}")
        time.sleep(0.2)
    pytest.fail(f"no {what} within {timeout_s} s")


def test_sender_refuses_to_start_without_credentials(isolated_settings: Settings) -> None:
    env = settings_env(isolated_settings) | {"OMS_OUTBOX_PLATFORMS": '["meituan"]'}
    done = subprocess.run(
        [sys.executable, "-m", "oms.cli", "outbox", "run"], env=env, capture_output=True, timeout=60
    )
    assert done.returncode == 78 and b"OMS_MEITUAN_APP_ID" in done.stderr
    assert timedelta(seconds=isolated_settings.outbox_max_age_s) == timedelta(hours=24)
