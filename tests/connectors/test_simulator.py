"""`oms simulate`: traffic that is new on every run, never from the future, and that the demo
catalogue's stores can take at the default rate; and, end to end, into the real broker."""

from __future__ import annotations

import random
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import NamedTuple

import pytest

from connectors.base import PayloadRejected
from connectors.registry import available
from connectors.simulator import PROFILES, Send, simulate, traffic
from events.codec import AvroCodec
from events.models import DeadLetter, LocationPaused, OrderModified, OrderReceived
from infra.publisher import DeliveryCount
from infra.settings import Settings
from oms.cli.intake import simulate as simulate_command
from streams import capacity
from streams.catalogue import Catalogue, slot_start
from streams.reference import load_catalogue
from streams.routing import NoRoute, route
from tests.conftest import read_topic, settings_env

# What `oms simulate` runs with when given no --rate or --duration (the documented defaults).
DEFAULTS = {param.name: param.default for param in simulate_command.params}
NOON = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)  # a capacity slot starts here


@dataclass
class FakeClock:
    """Wall-clock time that passes only when the simulator sleeps."""

    now: datetime

    def __call__(self) -> datetime:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class FakePublisher:
    """Keeps what `simulate` publishes instead of sending it to Kafka (unit tests only)."""

    events: list[OrderReceived | OrderModified] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    settings: SimpleNamespace = field(
        default_factory=lambda: SimpleNamespace(topics=SimpleNamespace(intake="in", dlq="dlq"))
    )

    def intake(self, event: OrderReceived | OrderModified) -> None:
        self.events.append(event)

    def dead_letter(self, letter: DeadLetter) -> None:
        self.dead_letters.append(letter)

    def flush(self) -> DeliveryCount:
        return DeliveryCount(Counter(**{"in": len(self.events), "dlq": len(self.dead_letters)}))


class Received(NamedTuple):
    at: datetime
    kind: str
    event: OrderReceived | OrderModified


def parsed(sends: Iterable[Send], *, start: datetime) -> list[Received]:
    """Each send the connectors accept, as its connector parses it when it is due."""
    connectors = {name: connector() for name, connector in available().items()}
    events = []
    for send in sends:
        at = start + timedelta(seconds=send.due_s)
        try:
            event = connectors[send.channel].parse(send.body, received_at=at, headers=send.headers)
        except PayloadRejected:
            assert send.kind == "malformed", send
            continue
        events.append(Received(at, send.kind, event))
    return events


def run(profile: str, *, run_id: str, start: datetime = NOON) -> list[Send]:
    """A run at the default rate and duration."""
    return list(traffic(profile_name=profile, rate=DEFAULTS["rate"],
                        duration_s=DEFAULTS["duration"], start=start, run_id=run_id,
                        rng=random.Random(3)))  # fmt: skip


def test_a_second_simulate_sends_new_orders_even_with_the_same_seed() -> None:
    runs = []
    for _ in range(2):
        publisher, clock = FakePublisher(), FakeClock(NOON)
        report = simulate(profile_name="restaurant", rate=100, duration_s=2, seed=3,
                          publisher=publisher, clock=clock, sleep=clock.sleep)  # fmt: skip
        received = {e.order_id for e in publisher.events if isinstance(e, OrderReceived)}
        runs.append((report.run_id, received))
    (first_run, first), (second_run, second) = runs
    assert first_run != second_run
    assert len(first) > 150 and len(second) > 150
    assert not first & second, "orders of the second run taken for redeliveries of the first"


def test_duplicates_and_revisions_reuse_the_external_id_of_an_order_of_their_run() -> None:
    received = parsed(run("retail", run_id="R1"), start=NOON)
    originals = [r.event.external_id for r in received if r.kind == "order"]
    assert len(set(originals)) == len(originals)
    assert all(isinstance(r.event, OrderReceived) for r in received if r.kind == "order")
    assert {r.kind for r in received} == {"order", "duplicate", "revision"}
    earlier: set[str] = set()
    for kind, event in ((r.kind, r.event) for r in received):
        assert event.external_id in originals, (kind, event.external_id)
        if kind == "revision":
            assert isinstance(event, OrderModified), event.external_id
        if kind == "duplicate":  # the same event again, whether the order or its revision
            assert event.event_id in earlier, event.external_id
        earlier.add(event.event_id)


def test_the_same_seed_and_run_id_repeat_the_run_exactly() -> None:
    assert run("restaurant", run_id="R1") == run("restaurant", run_id="R1")
    other = {send.body for send in run("restaurant", run_id="R2")}
    assert not other & {send.body for send in run("restaurant", run_id="R1")}


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_no_order_time_is_later_than_the_moment_it_is_sent(profile: str) -> None:
    publisher = FakePublisher()
    clock = FakeClock(datetime(2026, 12, 4, 17, 59, 58, 700_000, tzinfo=UTC))
    report = simulate(profile_name=profile, rate=300, duration_s=4, seed=5, publisher=publisher,
                      clock=clock, sleep=clock.sleep)  # fmt: skip
    assert report.revisions > 10 and report.published > 1000
    for event in publisher.events:  # recorded_at is the clock when the connector parsed it
        assert event.placed_at <= event.recorded_at, (event.external_id, event.placed_at)
        assert event.occurred_at <= event.recorded_at, (event.external_id, event.occurred_at)
    revised = {e.event_id: e for e in publisher.events if isinstance(e, OrderModified)}
    assert len(revised) == report.revisions  # duplicates may re-send a revision
    assert all(e.occurred_at > e.placed_at for e in revised.values() if e.channel != "phone")


def route_orders(received: Iterable[Received], *, catalogue: Catalogue) -> Counter[str]:
    """Route each new order when it is sent, as the worker does: the orders routed to each
    location in its capacity slot count against it, and `capacity.changes` pauses a location
    that is full. Stock is ample everywhere: this is about capacity. Outcomes by NoRoute code."""
    routed: Counter[tuple[str, datetime]] = Counter()
    auto_paused: set[str] = set()
    outcomes: Counter[str] = Counter()
    seen: set[str] = set()

    def load(now: datetime) -> dict[str, int]:
        return {
            loc.id: routed[loc.id, slot_start(loc, now)] for loc in catalogue.locations.values()
        }

    for now, _, order in received:
        if not isinstance(order, OrderReceived) or order.order_id in seen:
            continue  # a duplicate or a revision: the order is routed, or not, once
        seen.add(order.order_id)
        decision = route(order, catalogue=catalogue, available=lambda sku, location: 10**6,
                         load=load(now), now=now)  # fmt: skip
        if isinstance(decision, NoRoute):
            outcomes[decision.code] += 1
        else:
            outcomes["routed"] += 1
            routed[decision.location, slot_start(catalogue.locations[decision.location], now)] += 1
        for change in capacity.changes(catalogue, load=load(now), auto_paused=auto_paused, now=now):
            catalogue = catalogue.apply(change)
            if isinstance(change, LocationPaused):
                auto_paused.add(change.entity_id)
            else:
                auto_paused.discard(change.entity_id)
    return outcomes


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_two_runs_at_the_default_rate_are_routed_not_turned_away_as_full(profile: str) -> None:
    # Two runs back to back, both in the capacity slot that starts at NOON.
    second = NOON + timedelta(seconds=DEFAULTS["duration"] + 5)
    received = parsed(run(profile, run_id="R1"), start=NOON)
    received += parsed(run(profile, run_id="R2", start=second), start=second)
    outcomes = route_orders(received, catalogue=load_catalogue())
    orders = sum(outcomes.values())
    assert orders > 2 * 0.8 * DEFAULTS["rate"] * DEFAULTS["duration"]
    assert outcomes["ALL_PAUSED_OR_FULL"] == 0, outcomes
    assert outcomes["routed"] >= 0.99 * orders, outcomes


def figure(output: str, label: str) -> int:
    match = re.search(rf"^{label}\s+(\d+)", output, re.MULTILINE)
    assert match, f"no {label!r} in:\n{output}"
    return int(match.group(1))


@pytest.mark.integration
@pytest.mark.parametrize("profile", ["restaurant", "retail"])
def test_simulated_traffic_is_all_acknowledged_or_dead_lettered(
    isolated_settings: Settings, profile: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "oms.cli", "simulate", "--profile", profile, "--rate", "150",
         "--duration", "3", "--seed", "3"],
        env=settings_env(isolated_settings), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    generated, malformed = figure(out, "generated"), figure(out, "malformed")
    assert 300 <= generated <= 600
    for channel in PROFILES[profile].channels:
        assert re.search(rf"^  {channel}\s+\d+", out, re.MULTILINE), channel
    assert figure(out, "duplicates") > 0 and figure(out, "revisions") > 0 and malformed > 0
    acknowledged = int(re.search(r"acknowledged\s+(\d+)", out).group(1))  # type: ignore[union-attr]
    assert acknowledged + malformed == generated

    topics = isolated_settings.topics
    intake = read_topic(isolated_settings, topics.intake, expect=acknowledged, timeout_s=60)
    events = [AvroCodec().decode(m.value()) for m in intake]
    modified = {e.event_id for e in events if isinstance(e, OrderModified)}
    assert len(modified) == figure(out, "revisions")
    distinct = {e.event_id for e in events}  # type: ignore[union-attr]
    assert len(distinct) == acknowledged - figure(out, "duplicates")
    assert len(read_topic(isolated_settings, topics.dlq, expect=malformed)) == malformed
