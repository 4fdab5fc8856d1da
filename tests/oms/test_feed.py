"""`GET /events` (oms/feed.py) on the real broker: a follower that keeps `next` sees every event
of the log once, in log order per partition, across pages and new events; filters and scopes
narrow what it sees without losing its place; personal data stays out; bad input is a 400."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from events.codec import AvroCodec
from events.models import Event
from events.privacy import personal_paths
from infra.principals import AccessFile, Role
from infra.publisher import Publisher
from infra.replay import read_partition
from infra.settings import Settings
from oms.api import create_app
from oms.feed import shown
from tests.conftest import ADMIN
from tests.projections.scenario import Scenario, build

pytestmark = pytest.mark.integration


@pytest.fixture
def scenario(isolated_settings: Settings) -> Scenario:
    built = build(orders=25, stock_events=30, seed=14, duplicates=0.0)
    built.publish(isolated_settings)
    return built


@pytest.fixture
async def client(isolated_settings: Settings) -> AsyncIterator[TestClient[Any, Any]]:
    async with TestClient(TestServer(create_app(isolated_settings))) as test_client:
        yield test_client


def on_the_log(settings: Settings, topic: str) -> dict[int, list[str]]:
    """Event ids per partition, in log order, as Kafka holds them."""
    codec = AvroCodec()
    return {
        p: [e.event_id for e in read_partition(settings.kafka_bootstrap, topic, p, codec=codec)]
        for p in range(settings.kafka_partitions)
    }


async def follow(
    client: TestClient[Any, Any], query: dict[str, str], headers: dict[str, str]
) -> tuple[list[dict[str, Any]], str]:
    """Every page from `query` until caught up: the entries and the last `next`."""
    entries: list[dict[str, Any]] = []
    pages = 0
    while True:
        answer = await client.get("/events", params=query, headers=headers)
        assert answer.status == 200, await answer.text()
        page = await answer.json()
        entries += page["events"]
        query = query | {"after": page["next"]}
        pages += 1
        assert pages < 100
        if page["caught_up"]:
            return entries, page["next"]


def by_partition(entries: list[dict[str, Any]]) -> dict[int, list[str]]:
    seen: dict[int, list[str]] = defaultdict(list)
    for entry in entries:
        seen[entry["partition"]].append(entry["event"]["event_id"])
    return dict(seen)


async def test_a_follower_sees_every_event_once_in_log_order_and_then_only_new_ones(
    isolated_settings: Settings, scenario: Scenario, client: TestClient[Any, Any]
) -> None:
    settings = isolated_settings
    entries, cursor = await follow(client, {"limit": "7"}, ADMIN)
    expected = {p: ids for p, ids in on_the_log(settings, settings.topics.orders).items() if ids}
    assert by_partition(entries) == expected
    assert len(entries) == len(scenario.order_log)
    offsets = [(e["partition"], e["offset"]) for e in entries]
    assert len(set(offsets)) == len(offsets)
    assert {e["type"] for e in entries} == {e.event_type for e in scenario.order_log}

    # Nothing new: an empty page that keeps its place.
    again = await (await client.get("/events", params={"after": cursor}, headers=ADMIN)).json()
    assert (again["events"], again["next"], again["caught_up"]) == ([], cursor, True)

    # New events after the cursor, and only they, come next; `end` starts past everything.
    end = await (await client.get("/events", params={"after": "end"}, headers=ADMIN)).json()
    assert end["events"] == []
    fresh = build(orders=3, stock_events=0, seed=99, duplicates=0.0).order_log
    publisher = Publisher(settings)
    for event in fresh:
        publisher.publish(settings.topics.orders, event)
    publisher.flush()
    newer, _ = await follow(client, {"after": cursor}, ADMIN)
    assert sorted(e["event"]["event_id"] for e in newer) == sorted(e.event_id for e in fresh)
    from_end, _ = await follow(client, {"after": end["next"]}, ADMIN)
    assert sorted(e["event"]["event_id"] for e in from_end) == sorted(e.event_id for e in fresh)


async def test_an_empty_answer_is_held_open_until_an_event_comes(
    isolated_settings: Settings, scenario: Scenario, client: TestClient[Any, Any]
) -> None:
    settings = isolated_settings
    end = await (await client.get("/events", params={"after": "end"}, headers=ADMIN)).json()
    late = build(orders=1, stock_events=0, seed=5, duplicates=0.0).order_log[0]

    async def publish_soon() -> None:
        await asyncio.sleep(1.0)
        publisher = Publisher(settings)
        publisher.publish(settings.topics.orders, late)
        await asyncio.to_thread(publisher.flush)

    waiting = client.get("/events", params={"after": end["next"], "wait": "20"}, headers=ADMIN)
    answer, _ = await asyncio.gather(waiting, publish_soon())
    page = await answer.json()
    assert [e["event"]["event_id"] for e in page["events"]] == [late.event_id]


async def test_types_and_scopes_narrow_what_a_caller_sees_without_losing_its_place(
    isolated_settings: Settings, scenario: Scenario, client: TestClient[Any, Any]
) -> None:
    settings = isolated_settings
    log = scenario.order_log
    wanted = {"OrderReceived", "OrderRouted"}
    typed, _ = await follow(client, {"types": ",".join(sorted(wanted)), "limit": "5"}, ADMIN)
    assert sorted(e["event"]["event_id"] for e in typed) == sorted(
        e.event_id for e in log if e.event_type in wanted
    )

    channel = log[0].channel
    access = AccessFile.of(settings)
    _, integration = access.create_key(Role.INTEGRATION, name="erp", channels=[channel])
    mine, _ = await follow(client, {}, {"Authorization": f"Bearer {integration}"})
    assert sorted(e["event"]["event_id"] for e in mine) == sorted(
        e.event_id for e in log if e.channel == channel
    )
    assert 0 < len(mine) < len(log)

    store = next(getattr(e, "location", None) for e in log if getattr(e, "location", None))
    _, kitchen = access.create_key(Role.KITCHEN, name="pass", stores=[store])
    theirs, _ = await follow(client, {"log": "stock"}, {"Authorization": f"Bearer {kitchen}"})
    assert sorted(e["event"]["event_id"] for e in theirs) == sorted(
        e.event_id for e in scenario.stock_log if e.location == store
    )


async def test_personal_fields_and_their_ciphertext_stay_out(
    scenario: Scenario, client: TestClient[Any, Any]
) -> None:
    entries, _ = await follow(client, {"types": "OrderReceived"}, ADMIN)
    assert entries
    received: list[Event] = [e for e in scenario.order_log if e.event_type == "OrderReceived"]
    assert any(e.customer is not None and e.customer.phone for e in received)  # type: ignore[attr-defined]
    for entry in entries:
        body = entry["event"]
        assert "sealed" not in body and "platform_ciphertext" not in body
        for path in personal_paths(type(received[0])):
            value: Any = body
            for name in path:
                value = value.get(name) if isinstance(value, dict) else None
            assert value in (None, ""), (path, value)


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ({"after": "c1.bm90LWpzb24"}, "after"),
        ({"after": "42"}, "after"),
        ({"limit": "0"}, "limit"),
        ({"limit": "1001"}, "limit"),
        ({"wait": "-1"}, "wait"),
        ({"types": "OrderReceived,Nonsense"}, "types"),
        ({"log": "payments"}, "log"),
    ],
)
async def test_bad_input_is_a_400_that_names_the_parameter(
    isolated_settings: Settings, client: TestClient[Any, Any], query: dict[str, str], parameter: str
) -> None:
    answer = await client.get("/events", params=query, headers=ADMIN)
    assert answer.status == 400
    body = await answer.json()
    assert body["parameter"] == parameter and body["error"]


async def test_a_cursor_of_one_log_is_refused_by_the_other(
    scenario: Scenario, client: TestClient[Any, Any]
) -> None:
    page = await (await client.get("/events", params={"limit": "1"}, headers=ADMIN)).json()
    other = await client.get(
        "/events", params={"log": "stock", "after": page["next"]}, headers=ADMIN
    )
    assert other.status == 400 and "orders" in (await other.json())["error"]


def test_an_event_written_in_clear_is_shown_without_its_personal_fields() -> None:
    """Events the log holds unsealed (written before sealing, or by a plain codec) too."""
    clear = next(e for e in build(orders=3, stock_events=0, seed=3).order_log
                 if e.event_type == "OrderReceived")  # fmt: skip
    assert clear.customer is not None and clear.customer.phone  # type: ignore[attr-defined]
    body = shown(0, 0, clear)["event"]
    assert body["customer"]["phone"] is None and body["customer"]["name"] is None
    assert body["order_id"] == clear.order_id and body["lines"]
