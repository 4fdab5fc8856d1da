"""Commands from people: checked on their face here, judged by the owning agent, and carried
over HTTP and the CLI onto the real broker; a held order is released by a reviewer."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from events.codec import AvroCodec
from events.models import DeadLetter
from infra.principals import AccessFile, Role
from infra.publisher import Publisher
from infra.settings import Settings
from oms import operations
from oms.api import create_app
from tests.conftest import read_topic, settings_env
from tests.factories import T0, received

CODEC = AvroCodec()


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: operations.review("o-1", approve=False, reviewer="li", reason=" "), "reason"),
        (lambda: operations.review("o-1", approve=True, reviewer="", reason=None), "actor"),
        (lambda: operations.stock_set("MUG", "WH-SH", counted=-1, actor="x"), "counted"),
        (
            lambda: operations.stock_adjust("MUG", "WH-SH", delta=0, reason="LOST", actor="x"),
            "delta",
        ),
        (lambda: operations.stock_receive("MUG@X", "WH-SH", quantity=1, actor="x"), "sku"),
        (lambda: operations.cancel("", by="x", reason_code="C", reason="r"), "order_id"),
        (
            lambda: operations.store_action(
                "decline", "o-1", "S01", by="x", reason="r", reason_code="not_accepted"
            ),
            "reason_code",
        ),
        (
            lambda: operations.store_action(
                "handoff", "o-1", "S01", by="x", to="table", courier="李"
            ),
            "courier",
        ),
        (
            lambda: operations.store_action("accept", "o-1", "S01", by="x", ready_in_minutes=0),
            "ready_in_minutes",
        ),
        (lambda: operations.store_action("accept", "o-1", "", by="x"), "location"),
        (
            lambda: operations.store_action("accept-change", "o-1", "S01", by="x", revision=0),
            "revision",
        ),
        (lambda: operations.store_action("refuse-change", "o-1", "S01", by="x"), "reason"),
    ],
)
def test_a_command_wrong_on_its_face_names_the_field(build: Any, field: str) -> None:
    with pytest.raises(operations.CommandRejected) as caught:
        build()
    assert caught.value.field == field


def test_a_store_answers_a_change_for_the_pending_revision_or_the_one_it_saw() -> None:
    taken = operations.store_action("accept-change", "o-1", "S01", by="chef")
    refused = operations.store_action(
        "refuse-change", "o-1", "S01", by="chef", revision=3, reason="in the wok", reason_code="c"
    )
    assert (taken.event_type, taken.revision, taken.location) == (
        "OrderAmendmentAccepted",
        0,
        "S01",
    )
    assert (refused.event_type, refused.revision, refused.reason_code) == (
        "OrderAmendmentRefused", 3, "C"
    )  # fmt: skip


def test_commands_go_to_the_agent_that_owns_the_aggregate() -> None:
    settings = Settings()
    review = operations.review("o-1", approve=True, reviewer="li", reason=None)
    count = operations.stock_set("MUG", "WH-SH", counted=3, actor="x")
    pause = operations.location_pause("S01", paused=True, reason="kitchen fire", actor="x")
    assert [operations.topic_for(settings, e) for e in (review, count, pause)] == [
        settings.topics.order_commands,
        settings.topics.stock_commands,
        settings.topics.catalogue,
    ]
    assert review.actor.id == "li" and review.actor.kind.value == "user"


@pytest.fixture
def guarded(isolated_settings: Settings, tmp_path: Path) -> Settings:
    rules = tmp_path / "fraud.json"
    rules.write_text(json.dumps({"blocked_phones": ["+86 139 0000 0000"]}))
    return isolated_settings.model_copy(update={"fraud_rules_file": rules})


@pytest.fixture
def worker(guarded: Settings, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    env = settings_env(guarded) | {"OMS_FRAUD_RULES_FILE": str(guarded.fraud_rules_file)}
    with (tmp_path / "worker.log").open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "oms.cli", "worker"], env=env,
                                   stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    yield process
    process.terminate()
    process.wait(timeout=60)


@pytest.fixture
def reviewer_key(guarded: Settings) -> tuple[str, str]:
    """A reviewer's API key: (its id, the key)."""
    return AccessFile.of(guarded).create_key(Role.REVIEWER, name="li.na")


@pytest.fixture
async def client(guarded: Settings, reviewer_key: tuple[str, str]) -> AsyncIterator[TestClient]:
    headers = {"Authorization": f"Bearer {reviewer_key[1]}"}
    async with TestClient(TestServer(create_app(guarded)), headers=headers) as test_client:
        yield test_client


def history(
    settings: Settings, order_id: str, *, until: str | None, timeout_s: float = 60
) -> list[Any]:
    """The order's events once its last one is `until` (None: as they are now)."""
    deadline = time.monotonic() + timeout_s
    while True:
        events = sorted(
            (CODEC.decode(m.value()) for m in read_topic(settings, settings.topics.orders,
                                                          expect=1, timeout_s=timeout_s)),
            key=lambda e: e.sequence,
        )  # fmt: skip
        mine = [e for e in events if getattr(e, "order_id", None) == order_id]
        if until is None or (mine and mine[-1].event_type == until):
            return mine
        assert time.monotonic() < deadline, [e.event_type for e in mine]
        time.sleep(0.5)


@pytest.mark.integration
async def test_a_held_order_is_released_by_a_reviewer_over_http(
    guarded: Settings,
    worker: subprocess.Popen[bytes],
    client: TestClient,
    reviewer_key: tuple[str, str],
) -> None:
    publisher = Publisher(guarded)
    order = received(customer={"name": "王伟", "phone": "+8613900000000"})
    publisher.intake(order)
    publisher.flush()
    held = history(guarded, order.order_id, until="OrderHeld")
    assert held[-1].signals[0].rule == "BLOCKED_PHONE"

    bad = await client.post(
        f"/orders/{order.order_id}/review",
        data=b'{"decision": "maybe"}',
        headers={"Content-Type": "application/json"},
    )
    assert bad.status == 400 and (await bad.json())["field"] == "decision"
    # Who decides is who signed the request: a name in the body is refused, not recorded.
    forged = await client.post(
        f"/orders/{order.order_id}/review", json={"decision": "approve", "reviewer": "boss"}
    )
    assert forged.status == 400 and (await forged.json())["field"] == "reviewer"
    response = await client.post(f"/orders/{order.order_id}/review", json={"decision": "approve"})
    assert response.status == 202, await response.text()
    done = history(guarded, order.order_id, until="OrderPrioritised")
    approved = next(e for e in done if e.event_type == "ReviewApproved")
    assert (approved.actor.kind.value, approved.actor.id) == ("user", f"key:{reviewer_key[0]}")
    assert [e.event_type for e in done][-3:] == ["ReviewApproved", "OrderRouted",
                                                  "OrderPrioritised"]  # fmt: skip
    letters = [CODEC.decode(m.value()) for m in read_topic(guarded, guarded.topics.dlq, expect=1)]
    assert any(isinstance(d, DeadLetter) and d.raw == b'{"decision": "maybe"}' for d in letters)


@pytest.mark.integration
def test_a_reviewer_rejects_a_held_order_from_the_command_line(
    guarded: Settings, worker: subprocess.Popen[bytes]
) -> None:
    publisher = Publisher(guarded)
    order = received(customer={"name": "王伟", "phone": "+86 13900000000"})
    publisher.intake(order)
    publisher.flush()
    history(guarded, order.order_id, until="OrderHeld")
    cli = subprocess.run(
        [sys.executable, "-m", "oms.cli", "review", "reject", order.order_id, "--reviewer",
         "zhang.min", "--reason", "stolen card reported"],
        env=settings_env(guarded), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    done = history(guarded, order.order_id, until="ReviewRejected")
    assert done[-1].reason == "stolen card reported" and done[-1].actor.id == "zhang.min"
    missing = subprocess.run(
        [sys.executable, "-m", "oms.cli", "review", "reject", order.order_id, "--reviewer", "x",
         "--reason", " "],
        env=settings_env(guarded), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert missing.returncode != 0 and "reason" in missing.stderr


def run_cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "oms.cli", *args], env=settings_env(settings),
                          capture_output=True, text=True, timeout=60)  # fmt: skip


@pytest.mark.integration
def test_catalogue_events_keep_running_workers_current(
    guarded: Settings, worker: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    from events.models import OrderLine

    dish = OrderLine(sku="MAPO-TOFU", name="麻婆豆腐", quantity=1, unit_price=2800)
    before = received(event_id="e-before", order_id="o-before", lines=[dish], total=3300)
    publisher = Publisher(guarded)
    publisher.intake(before)
    publisher.flush()
    rejected = history(guarded, "o-before", until="OrderRejected")
    assert rejected[-1].reasons[0].code == "UNKNOWN_SKU"

    menu = tmp_path / "menu.json"
    menu.write_text(
        json.dumps(
            {
                "products": [
                    {
                        "sku": "MAPO-TOFU",
                        "name": "麻婆豆腐",
                        "unit_price": 2800,
                        "stock_tracked": False,
                    }
                ]
            }
        )
    )
    published = run_cli(guarded, "catalogue", "publish", str(menu))
    assert published.returncode == 0 and "1 updates" in published.stdout, published.stderr
    time.sleep(1.5)  # the worker's views read the catalogue topic
    after = received(event_id="e-after", order_id="o-after", lines=[dish], total=3300)
    publisher.intake(after)
    publisher.flush()
    assert history(guarded, "o-after", until="OrderPrioritised")[1].event_type == "OrderAccepted"

    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"products": [{"sku": "X", "name": "x", "unit_price": "a"}]}))
    refused = run_cli(guarded, "catalogue", "publish", str(broken))
    assert refused.returncode != 0 and "products.0.unit_price" in refused.stderr


@pytest.mark.integration
def test_a_store_paused_by_hand_gets_no_orders(
    guarded: Settings, worker: subprocess.Popen[bytes]
) -> None:
    paused = run_cli(guarded, "location", "pause", "S01", "--reason", "kitchen closed")
    assert paused.returncode == 0, paused.stderr
    time.sleep(1.5)
    near = {"text": "南京东路 100号", "latitude": 31.235, "longitude": 121.475}
    order = received(location_hint="S01", address=near)  # a platform delivery placed at S01
    publisher = Publisher(guarded)
    publisher.intake(order)
    publisher.flush()
    done = history(guarded, order.order_id, until="OrderRejected")
    assert done[-1].reasons[0].code == "ALL_PAUSED_OR_FULL", done[-1].reasons
    assert run_cli(guarded, "location", "resume", "S01").returncode == 0


@pytest.mark.integration
def test_the_read_side_commands_show_the_review_queue_a_store_queue_and_stock(
    guarded: Settings, worker: subprocess.Popen[bytes]
) -> None:
    from projections.projector import Projector
    from projections.schema import migrate
    from projections.store import connect

    assert run_cli(guarded, "stock", "receive", "MUG-CERAMIC", "WH-SH", "7").returncode == 0
    publisher = Publisher(guarded)
    risky = received(event_id="e-risky", order_id="o-risky",
                     customer={"name": "王伟", "phone": "+8613900000000"})  # fmt: skip
    near = {"text": "南京东路 100号", "latitude": 31.235, "longitude": 121.475}
    lunch = received(event_id="e-lunch", order_id="o-lunch", location_hint="S01", address=near)
    for order in (risky, lunch):
        publisher.intake(order)
    publisher.flush()
    history(guarded, "o-risky", until="OrderHeld")
    history(guarded, "o-lunch", until="OrderPrioritised")
    store = connect(guarded.resolved_clickhouse_url)
    try:
        migrate(store)
        projector = Projector(settings=guarded, store=store, batch_seconds=0.2, lease=False)
        projector.run(until=lambda _: projector.lag() == 0)
    finally:
        store.close()

    held = run_cli(guarded, "review", "list")
    assert held.returncode == 0 and "o-risky" in held.stdout and "o-lunch" not in held.stdout
    queue = run_cli(guarded, "queue", "S01")
    assert queue.returncode == 0 and "o-lunch" in queue.stdout, queue.stdout + queue.stderr
    assert "no open orders at S02" in run_cli(guarded, "queue", "S02").stdout
    stock = run_cli(guarded, "stock", "show", "MUG-CERAMIC")
    assert stock.returncode == 0 and "WH-SH" in stock.stdout and " 7 " in f" {stock.stdout} "


@pytest.mark.parametrize(
    ("text", "unit", "units"),
    [
        ("3", None, 3),
        ("3", "each", 3),
        ("12.5kg", None, 12_500_000),  # a SKU the catalogue does not know: as typed
        ("12.5 kg", "kg", 12_500_000),
        ("12.5", "kg", 12_500_000),  # in the product's own unit
        ("2", "lb", 2_000_000),
        ("-0.25lb", "lb", -250_000),
        ("0.000001l", "l", 1),
    ],
)
def test_an_operator_quantity_becomes_the_units_its_stock_ledger_counts(
    text: str, unit: str | None, units: int
) -> None:
    assert operations.stock_units("SKU", text, field="quantity", unit=unit) == units


@pytest.mark.parametrize(
    ("text", "unit", "says"),
    [
        ("2.5", "each", "not a whole number of items"),
        ("2.5", None, "not a whole number of items"),
        ("500g", "kg", "stocked in kg, not g"),
        ("3kg", "each", "stocked in each, not kg"),
        ("1.1234567kg", "kg", "at most 6 decimals"),
        ("lots", None, "neither a whole number nor a measure"),
    ],
)
def test_an_operator_quantity_the_ledger_cannot_count_is_refused_naming_the_field(
    text: str, unit: str | None, says: str
) -> None:
    with pytest.raises(operations.CommandRejected) as caught:
        operations.stock_units("SKU", text, field="delta", unit=unit)
    assert caught.value.field == "delta" and says in str(caught.value)


def test_the_cli_refuses_a_fraction_of_an_item_before_sending_anything() -> None:
    refused = run_cli(Settings(), "stock", "receive", "MUG-CERAMIC", "WH-SH", "2.5")
    assert refused.returncode == 2
    assert "quantity" in refused.stderr and "not a whole number of items" in refused.stderr


def test_stock_of_a_product_sold_by_weight_shows_in_its_unit() -> None:
    from events.models import Product
    from oms.cli.operators import in_units

    products = {
        "TEA": Product(sku="TEA", name="tea", unit="kg"),
        "MUG": Product(sku="MUG", name="m"),
    }
    row = {"sku": "TEA", "location": "S1", "on_hand": 12_500_000, "reserved": 250_000,
           "safety_stock": 0, "available": 12_250_000}  # fmt: skip
    assert in_units(row, products) == {
        "sku": "TEA", "location": "S1", "on_hand": "12.5kg", "reserved": "0.25kg",
        "safety_stock": "0kg", "available": "12.25kg",
    }  # fmt: skip
    mugs = {**row, "sku": "MUG"}
    assert in_units(mugs, products) == mugs


@pytest.mark.integration
async def test_a_store_takes_an_order_from_acceptance_to_completion_and_its_stock_leaves(
    guarded: Settings, worker: subprocess.Popen[bytes]
) -> None:
    """A pickup of a stocked mug at S01, taken through the kitchen over HTTP by S01's kitchen:
    another store's staff are refused, a step out of order is dead-lettered with the reason,
    and the hand-off commits the reservation on the ledger."""
    from events.models import OrderLine, OrderMode

    operations.send(guarded, operations.stock_receive("MUG-CERAMIC", "S01", quantity=5,
                                                      actor="test"))  # fmt: skip
    read_topic(guarded, guarded.topics.inventory, expect=1, timeout_s=60)
    order = received(
        event_id="e-mug", order_id="o-mug", external_id="mug-1", mode=OrderMode.PICKUP,
        location_hint="S01", address=None, delivery_fee=0, total=6800,
        lines=[OrderLine(sku="MUG-CERAMIC", name="陶瓷杯", quantity=1, unit_price=6800)],
    )  # fmt: skip
    publisher = Publisher(guarded)
    publisher.intake(order)
    publisher.flush()
    routed = history(guarded, "o-mug", until="OrderPrioritised")
    assert routed[-1].location == "S01"

    keys = AccessFile.of(guarded)
    cook_id, cook = keys.create_key(Role.KITCHEN, name="chef.wang", stores=["S01"])
    _, other = keys.create_key(Role.KITCHEN, name="chef.li", stores=["S02"])
    async with TestClient(TestServer(create_app(guarded))) as client:

        async def step(action: str, key: str = cook, **body: Any) -> int:
            response = await client.post(f"/stores/S01/orders/o-mug/{action}", json=body,
                                         headers={"Authorization": f"Bearer {key}"})  # fmt: skip
            return response.status

        assert await step("accept", other, ready_in_minutes=15) == 403  # not their store
        assert await step("accept", ready_in_minutes=0) == 400  # no ETA in the past
        assert await step("ready") == 202  # taken over HTTP, refused by the order: too early
        assert await step("accept", ready_in_minutes=15) == 202
        history(guarded, "o-mug", until="OrderAcceptedByStore")
        for action, body in (("start", {}), ("ready", {}), ("handoff", {"to": "customer"}),
                             ("complete", {})):  # fmt: skip
            assert await step(action, **body) == 202
            time.sleep(0.3)  # one command after the other, as a kitchen bumps a ticket
    done = history(guarded, "o-mug", until="OrderCompleted")
    kinds = [e.event_type for e in done]
    assert kinds[-5:] == ["OrderAcceptedByStore", "OrderPreparing", "OrderReady",
                          "OrderPickedUp", "OrderCompleted"]  # fmt: skip
    accepted = done[-5]
    assert accepted.actor.id == f"key:{cook_id}" and accepted.location == "S01"
    assert accepted.estimated_ready_at is not None
    assert abs((accepted.estimated_ready_at - accepted.occurred_at).total_seconds() - 900) < 1
    assert done[-2].picked_up_by == "customer"
    letters = [CODEC.decode(m.value()) for m in read_topic(guarded, guarded.topics.dlq, expect=1)]
    reasons = [d.reason for d in letters if isinstance(d, DeadLetter)]
    assert any("OrderReady is not allowed" in reason for reason in reasons), reasons
    deadline = time.monotonic() + 60
    while True:
        ledger = [CODEC.decode(m.value()) for m in read_topic(guarded, guarded.topics.inventory,
                                                                expect=1)]  # fmt: skip
        committed = [e for e in ledger if e.event_type == "StockCommitted"]
        if committed:
            break
        assert time.monotonic() < deadline, [e.event_type for e in ledger]
        time.sleep(0.5)
    assert [(e.order_id, e.sku, e.location, e.quantity) for e in committed] == [
        ("o-mug", "MUG-CERAMIC", "S01", 1)]  # fmt: skip


@pytest.mark.integration
def test_a_store_declines_from_the_command_line_and_the_order_goes_elsewhere(
    guarded: Settings, worker: subprocess.Popen[bytes]
) -> None:
    publisher = Publisher(guarded)
    from events.models import Address

    # A web shop's delivery names no store: whichever is near may cook it.
    order = received(event_id="e-busy", order_id="o-busy", external_id="busy-1",
                     address=Address(text="南京东路 1号", latitude=31.235,
                                     longitude=121.475))  # fmt: skip
    publisher.intake(order)
    publisher.flush()
    routed = history(guarded, "o-busy", until="OrderPrioritised")
    assert routed[-1].event_type == "OrderPrioritised", getattr(routed[-1], "reasons", None)
    first = routed[-1].location
    refused = run_cli(guarded, "store", "decline", "o-busy", "--store", first, "--by", "chef",
                      "--code", "busy", "--reason", " ")  # fmt: skip
    assert refused.returncode != 0 and "reason" in refused.stderr
    cli = run_cli(guarded, "store", "decline", "o-busy", "--store", first, "--by", "chef.wang",
                  "--code", "busy", "--reason", "rush hour: 40 tickets open")  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    deadline = time.monotonic() + 60
    while True:
        events = history(guarded, "o-busy", until=None)
        kinds = [e.event_type for e in events]
        if "OrderDeclinedByStore" in kinds[-3:] and kinds[-1] in (
            "OrderPrioritised",
            "OrderRejected",
        ):
            break
        assert time.monotonic() < deadline, kinds
        time.sleep(0.5)
    declined = events[kinds.index("OrderDeclinedByStore")]
    assert (declined.location, declined.reason_code, declined.actor.id) == (first, "BUSY",
                                                                           "chef.wang")  # fmt: skip
    after = [e.location for e in events[kinds.index("OrderDeclinedByStore"):]
             if e.event_type == "OrderRouted"]  # fmt: skip
    assert kinds[-1] == "OrderPrioritised" and after and first not in after


@pytest.mark.integration
def test_a_store_auto_accepts_a_channels_orders_on_the_real_worker(
    guarded: Settings, tmp_path: Path
) -> None:
    """S01 takes Meituan's orders on by itself (its catalogue entry says so); a phone order at
    the same store waits for a person."""
    from events.models import OrderMode
    from infra.publisher import Publisher as Sender
    from streams.reference import DEFAULT_FILE

    document = json.loads(DEFAULT_FILE.read_text(encoding="utf-8"))
    for place in document["locations"]:
        if place["id"] == "S01":
            place["auto_accept_channels"] = ["meituan"]
    catalogue = tmp_path / "catalogue.json"
    catalogue.write_text(json.dumps(document, ensure_ascii=False))
    settings = guarded.model_copy(update={"catalogue_file": catalogue})
    env = settings_env(settings) | {"OMS_FRAUD_RULES_FILE": str(settings.fraud_rules_file)}
    with (tmp_path / "worker.log").open("wb") as log:
        worker = subprocess.Popen([sys.executable, "-m", "oms.cli", "worker"], env=env,
                                  stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        sender = Sender(settings)
        for channel in ("meituan", "phone"):
            sender.intake(received(event_id=f"e-{channel}", order_id=f"o-{channel}",
                                   channel=channel, external_id=f"{channel}-1",
                                   mode=OrderMode.PICKUP, address=None, delivery_fee=0,
                                   total=5600, location_hint="S01", placed_at=T0))  # fmt: skip
        sender.flush()
        taken = history(settings, "o-meituan", until="OrderAcceptedByStore")[-1]
        assert (taken.actor.id, taken.location) == ("auto-accept", "S01")
        assert taken.estimated_ready_at is not None
        waiting = history(settings, "o-phone", until="OrderPrioritised")
        assert waiting[-1].location == "S01"
        time.sleep(2)  # nothing more comes for it
        assert history(settings, "o-phone", until=None)[-1].event_type == "OrderPrioritised"
    finally:
        worker.terminate()
        worker.wait(timeout=60)
