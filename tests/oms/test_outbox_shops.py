"""The outbox sender (oms/outbox.py) on the real broker telling Square and WooCommerce, against
the fake shop server (tests/connectors/fake_shops.py): each transition of a shop's order is
told once, in the platform's own terms, and a sender serving a shop without its credentials
does not start."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import SecretStr

from connectors.outbound import clients
from events.models import (
    Actor,
    ActorKind,
    CancelledBy,
    Event,
    OrderAcceptedByStore,
    OrderCancelled,
    OrderCompleted,
    OrderDelivered,
    OrderMode,
    OrderPickedUp,
    OrderReady,
    OrderRouted,
    utc_now,
)
from events.platform_calls import OutboxStatus
from infra.publisher import Publisher
from infra.settings import Settings
from oms.outbox import OutboxSender, read_records
from tests.conftest import settings_env
from tests.connectors.fake_shops import FakeShops, fake_shops, shop_env
from tests.factories import received

pytestmark = pytest.mark.integration
COOK = Actor(kind=ActorKind.USER, id="cook")
SYSTEM = Actor(kind=ActorKind.SYSTEM, id="orders")


@pytest.fixture
def fake() -> Iterator[FakeShops]:
    with fake_shops() as running:
        yield running


def _with_shops(settings: Settings, fake: FakeShops) -> Settings:
    """`settings` with the shops' credentials, as `oms outbox run` reads them from the env."""
    env = shop_env(fake)
    return settings.model_copy(
        update={
            "outbox_platforms": ["square", "woocommerce"],
            "square_access_token": SecretStr(env["OMS_SQUARE_ACCESS_TOKEN"]),
            "square_api_url": env["OMS_SQUARE_API_URL"],
            "square_version": env["OMS_SQUARE_VERSION"],
            "woocommerce_url": env["OMS_WOOCOMMERCE_URL"],
            "woocommerce_consumer_key": SecretStr(env["OMS_WOOCOMMERCE_CONSUMER_KEY"]),
            "woocommerce_consumer_secret": SecretStr(env["OMS_WOOCOMMERCE_CONSUMER_SECRET"]),
        }
    )


def _order(
    channel: str, external: str, mode: OrderMode, steps: list[tuple[type[Event], dict[str, Any]]]
) -> list[Event]:
    """An order of `channel` routed to S01, then `steps` (event type, its own fields)."""
    now = utc_now()
    order_id = f"o-{channel}-{external}"
    base = received(
        order_id=order_id,
        event_id=f"r-{order_id}",
        channel=channel,
        external_id=external,
        mode=mode,
        occurred_at=now,
        recorded_at=now,
        placed_at=now,
        actor=Actor(kind=ActorKind.CHANNEL, id=channel),
    )
    routed = (OrderRouted, {"location": "S01", "groups": [], "reasons": []})
    return [base] + [
        kind.model_validate(
            dict(
                event_id=f"{kind.__name__}-{order_id}",
                order_id=order_id,
                sequence=seq,
                occurred_at=now,
                recorded_at=now,
                correlation_id=order_id,
                actor=COOK,
                channel=channel,
                external_id=external,
            )
            | fields
        )
        for seq, (kind, fields) in enumerate([routed, *steps], start=2)
    ]


def _publish(settings: Settings, events: list[Event]) -> None:
    publisher = Publisher(settings)
    for event in events:
        publisher.publish(settings.topics.orders, event)
    publisher.flush()


S01 = {"location": "S01"}
COLLECTED = [
    (OrderAcceptedByStore, S01),
    (OrderReady, S01),
    (OrderPickedUp, S01 | {"picked_up_by": "customer"}),
    (OrderCompleted, S01),
]
DELIVERED = [
    (OrderAcceptedByStore, S01),
    (OrderReady, S01),
    (OrderPickedUp, S01 | {"picked_up_by": "Lin"}),
    (OrderDelivered, S01),
    (OrderCompleted, S01),
]
CANCELLED = [
    (
        OrderCancelled,
        {
            "actor": SYSTEM,
            "cancelled_by": CancelledBy.SYSTEM,
            "reason_code": "NOT_ACCEPTED",
            "reason": "no store took it",
        },
    ),
]


def test_square_and_woocommerce_orders_are_told_each_step_once(
    isolated_settings: Settings, fake: FakeShops
) -> None:
    settings = _with_shops(isolated_settings, fake)
    fake.square_order("SQ-1")
    fake.square_order("SQ-2")
    fake.woo_order(801)
    fake.woo_order(802)
    events = (
        _order("square", "SQ-1", OrderMode.PICKUP, COLLECTED)
        + _order("square", "SQ-2", OrderMode.PICKUP, CANCELLED)
        + _order("woocommerce", "801", OrderMode.PICKUP, COLLECTED)
        + _order("woocommerce", "802", OrderMode.DELIVERY, DELIVERED)
        + _order("meituan", "27001", OrderMode.DELIVERY, COLLECTED[:2])  # not served here
    )
    _publish(settings, events)
    served = clients(settings)
    assert set(served) == {"square", "woocommerce"}
    sender = OutboxSender(settings, served)
    stats = sender.run(until=lambda s: s.stats.events >= len(events))
    assert (stats.sent, stats.failed, stats.skipped, stats.poison) == (9, 0, 0, 0)
    told: dict[str, list[str]] = {}  # each order's calls in order (orders interleave)
    for call in fake.calls:
        told.setdefault(f"{call.platform} {call.order}", []).append(call.what)
    assert told == {
        "square SQ-1": ["RESERVED", "PREPARED", "COMPLETED"],
        "square SQ-2": ["CANCELED"],
        "woocommerce 801": ["processing", "Your order is ready for pickup.", "completed"],
        # ready: no note for a delivery; with the courier: completed once delivered
        "woocommerce 802": ["processing", "completed"],
    }
    assert fake.rejected == []
    assert [fake.square_state(o) for o in ("SQ-1", "SQ-2")] == ["COMPLETED", "CANCELED"]
    assert [fake.woo[o]["status"] for o in (801, 802)] == ["completed", "completed"]
    records = read_records(settings)
    assert len(records) == 9 and all(r.status is OutboxStatus.SENT for r in records.values())

    # A restart reads every log again from the beginning: nothing is told twice.
    again = OutboxSender(settings, clients(settings))
    assert again.run(until=lambda s: s.stats.events >= len(events)).sent == 0
    assert len(fake.calls) == 9


@pytest.mark.parametrize(
    ("platform", "variable"),
    [("square", "OMS_SQUARE_ACCESS_TOKEN"), ("woocommerce", "OMS_WOOCOMMERCE_CONSUMER_SECRET")],
)
def test_sender_serving_a_shop_refuses_to_start_without_its_credentials(
    isolated_settings: Settings, fake: FakeShops, platform: str, variable: str
) -> None:
    env = settings_env(isolated_settings) | shop_env(fake)
    env |= {"OMS_OUTBOX_PLATFORMS": f'["{platform}"]', variable: ""}
    done = subprocess.run(
        [sys.executable, "-m", "oms.cli", "outbox", "run"], env=env, capture_output=True, timeout=60
    )
    assert done.returncode == 78 and variable.encode() in done.stderr, done.stderr[-500:]
