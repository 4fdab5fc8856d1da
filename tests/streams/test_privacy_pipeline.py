"""Crypto-shredding end to end (events/privacy.py, infra/keystore.py, projections/privacy.py):
a customer forgotten while orders flow is nowhere afterwards (topics through the codec,
ClickHouse, the API, the reports, an access request), their orders and totals stay; losing
the key store is the documented failure mode of forgetting everyone."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from confluent_kafka.admin import AdminClient

from events.codec import AvroCodec
from events.models import Address, Customer, OrderReceived
from events.privacy import PrivateCodec, customer_key
from infra.kafka import admin_config
from infra.keystore import KafkaKeys, KeyStoreError, MasterKey
from infra.publisher import Publisher
from infra.replay import read_partition
from infra.settings import Settings
from oms import operations
from oms.api import create_app
from oms.privacy import export
from projections.projector import Projector
from projections.reports import REPORTS, run_report
from projections.store import ClickHouseStore, connect
from tests.conftest import ADMIN, settings_env
from tests.factories import received
from tests.streams.test_pipeline import worker  # noqa: F401  (the fixture)

pytestmark = pytest.mark.integration

ERIN = Customer(name="Erin Forgetme", phone="+8613900000001", email="erin.forgetme@example.com")
BO = Customer(name="Bo Keepme", phone="+8613900000002")
ERIN_TEXTS = ["Erin", "Forgetme", "13900000001", "139****0001", "erin.forgetme", "Lethe Road"]


def an_order(n: int, customer: Customer, street: str) -> OrderReceived:
    return received(
        event_id=f"pe-{n}", order_id=f"po-{n}", external_id=f"p-{n}", correlation_id=f"po-{n}",
        customer=customer, address=Address(text=street, city="上海"), notes=f"{street} 门口",
    )  # fmt: skip


def publish(settings: Settings, orders: list[OrderReceived]) -> None:
    publisher = Publisher(settings)
    for order in orders:
        publisher.publish(settings.topics.intake, order)
    assert not publisher.flush().failed


@pytest.fixture
def projector(isolated_settings: Settings, store: ClickHouseStore) -> Iterator[Projector]:
    """The projector, running in the background for the whole test (mid-stream), on its own
    connection."""
    stop = threading.Event()
    own = connect(isolated_settings.resolved_clickhouse_url)
    running = Projector(settings=isolated_settings, store=own, batch_seconds=0.2)
    thread = threading.Thread(target=lambda: running.run(until=lambda _: stop.is_set()))
    thread.start()
    yield running
    stop.set()
    thread.join(timeout=60)
    own.close()


def wait_for(condition: Any, what: str, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.3)


def orders_in(store: ClickHouseStore) -> dict[str, tuple[str, int, str]]:
    rows = store.query(
        f"SELECT order_id, status, total, customer_name FROM {store.database}.orders FINAL"
    )
    return {row[0]: (row[1], row[2], row[3]) for row in rows}


def everything_in(store: ClickHouseStore) -> str:
    """Every row of every table of the test's database, as text."""
    tables = [row[0] for row in store.query(f"SHOW TABLES FROM {store.database}")]
    return "\n".join(
        repr(store.query(f"SELECT * FROM {store.database}.{table}")) for table in tables
    )


def decoded_topics(settings: Settings, codec: AvroCodec) -> str:
    """Every event on the intake topic and the order log, as an authorised reader sees it."""
    admin = AdminClient(admin_config(settings.kafka_bootstrap))
    seen = []
    for topic in (settings.topics.intake, settings.topics.orders):
        for partition in admin.list_topics(topic, timeout=10).topics[topic].partitions:
            for event in read_partition(settings.kafka_bootstrap, topic, partition, codec=codec):
                seen.append(event.model_dump_json())
    return "\n".join(seen)


def test_a_customer_forgotten_mid_stream_is_nowhere_and_their_orders_stay(
    isolated_settings: Settings,
    store: ClickHouseStore,
    worker: subprocess.Popen[bytes],  # noqa: F811
    projector: Projector,
) -> None:
    settings = isolated_settings
    erins = [an_order(n, ERIN, f"{n} Lethe Road") for n in range(3)]
    bos = [an_order(n, BO, f"{n} Mnemosyne Lane") for n in range(3, 5)]
    publish(settings, [*erins, *bos])
    wait_for(lambda: len(orders_in(store)) == 5, "5 orders in ClickHouse")
    before = orders_in(store)
    assert before["po-0"][2] == "E*" and before["po-3"][2] == "B*"  # masked, never clear
    codec = PrivateCodec(KafkaKeys(settings))
    assert "Erin Forgetme" in decoded_topics(settings, codec)  # an authorised reader, before

    forgot = subprocess.run(
        [sys.executable, "-m", "oms.cli", "privacy", "forget", "+86 139 0000 0001"],
        env=settings_env(settings), capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert forgot.returncode == 0, forgot.stderr
    assert "personal data of 3 order(s) erased" in forgot.stdout

    # The stream goes on: Bo orders again, and one of Erin's orders is cancelled.
    publish(settings, [an_order(5, BO, "5 Mnemosyne Lane")])
    operations.send(
        settings, operations.cancel("po-1", by="ops@example.com", reason_code="CUSTOMER",
                                    reason="asked by phone")
    )  # fmt: skip
    wait_for(
        lambda: len(orders_in(store)) == 6 and orders_in(store)["po-1"][0] == "cancelled",
        "the later events projected",
    )
    time.sleep(1.0)  # one more projector batch after the last event
    after = orders_in(store)

    # Orders and totals intact; Erin's only change is the cancellation.
    assert {k: v[:2] for k, v in after.items() if k != "po-1"} == {
        k: v[:2] for k, v in before.items() if k != "po-1"
    } | {"po-5": after["po-5"][:2]}
    assert after["po-1"][1] == before["po-1"][1]
    # ClickHouse: nothing of Erin's in any table; Bo's masked name still there (the control).
    stored = everything_in(store)
    for text in ERIN_TEXTS + ["E*"]:
        assert text not in stored, text
    assert "B*" in stored and "Mnemosyne" not in stored
    # Topics, read through the codec with keys: nothing of Erin's; Bo's opens.
    codec = PrivateCodec(KafkaKeys(settings))
    topics = decoded_topics(settings, codec)
    for text in ERIN_TEXTS:
        assert text not in topics, text
    assert "Bo Keepme" in topics
    # The reports and the API.
    for name, report in REPORTS.items():
        needed = {p: "store-1" for p in ("location",) if "{" + p + ":" in report.sql}
        shown = json.dumps(
            run_report(store, name, **needed).as_dicts(), default=str, ensure_ascii=False
        )
        for text in [*ERIN_TEXTS, "E*"]:
            assert text not in shown, (name, text)
    erin_key = customer_key("+8613900000001", KafkaKeys(settings).pepper)
    held = export(settings, erin_key)
    assert held["data_keys"] == [] and held["read_model_orders"]  # the orders, not the person
    for text in ERIN_TEXTS:
        assert text not in json.dumps(held, ensure_ascii=False), text
    assert "Bo Keepme" in json.dumps(export(settings, "+8613900000002"), ensure_ascii=False)


@pytest.mark.asyncio
async def test_the_api_shows_a_forgotten_customer_s_orders_without_them(
    isolated_settings: Settings, store: ClickHouseStore, projector: Projector
) -> None:
    settings = isolated_settings
    orders = [
        an_order(n, BO, "7 Lethe Road").model_copy(update={"sequence": 1, "event_id": f"pa-{n}"})
        for n in range(2)
    ]
    # Straight onto the order log, sealed, as the worker writes it.
    publisher = Publisher(settings)
    for order in orders:
        publisher.publish(settings.topics.orders, order)
    assert not publisher.flush().failed
    wait_for(lambda: len(orders_in(store)) == 2, "2 orders in ClickHouse")
    async with TestClient(TestServer(create_app(settings)), headers=ADMIN) as client:
        shown = await (await client.get("/orders/po-0")).text()
        assert "B*" in shown and "Keepme" not in shown and "Lethe" not in shown
        forgot = subprocess.run(
            [sys.executable, "-m", "oms.cli", "privacy", "forget", "+8613900000002"],
            env=settings_env(settings), capture_output=True, text=True, timeout=180,
        )  # fmt: skip
        assert forgot.returncode == 0, forgot.stderr
        response = await client.get("/orders/po-0")
        shown = await response.text()
        assert response.status == 200 and "6100" in shown.replace(" ", "")
        assert "B*" not in shown and "139****0002" not in shown


def test_losing_the_key_store_is_forgetting_everyone_and_a_wrong_master_key_fails_closed(
    isolated_settings: Settings, store: ClickHouseStore
) -> None:
    settings = isolated_settings
    keys = KafkaKeys(settings)
    codec = PrivateCodec(keys)
    order = an_order(9, ERIN, "9 Lethe Road").model_copy(update={"sequence": 1})
    data = codec.encode(order)
    # A process with another master key refuses to start on this key store: it fails closed
    # rather than go on without the keys it should have.
    wrong = MasterKey(b"\x01" * 32)
    with pytest.raises(KeyStoreError, match="OMS_MASTER_KEY"):
        KafkaKeys(settings, master=wrong)
    # No master key at all: nothing that reads or writes personal data starts.
    keyless = settings.model_copy(update={"master_key": None, "home": settings.home / "none"})
    with pytest.raises(KeyStoreError, match="OMS_MASTER_KEY is not set"):
        KafkaKeys(keyless)

    # The key topic is lost (deleted, or a cluster rebuilt without it).
    admin = AdminClient(admin_config(settings.kafka_bootstrap))
    for future in admin.delete_topics([settings.topics.privacy_keys]).values():
        future.result(timeout=30)
    wait_for(
        lambda: settings.topics.privacy_keys not in admin.list_topics(timeout=10).topics,
        "the key topic gone",
    )
    after = PrivateCodec(KafkaKeys(settings)).decode(data)  # a fresh, empty key store
    assert isinstance(after, OrderReceived)
    assert after.customer.name is None and after.address is not None and after.address.text == ""
    assert after.total == order.total and after.lines == order.lines and after.sealed
    # Projected afterwards: the order whole, its personal data nowhere.
    publisher = Publisher(settings, codec=AvroCodec())
    publisher.produce(settings.topics.orders, order.order_id, data)
    assert not publisher.flush().failed
    Projector(settings=settings, store=store, batch_seconds=0.2).run(
        until=lambda _: len(orders_in(store)) == 1
    )
    assert orders_in(store)["po-9"][:2] == ("received", order.total)
    stored = everything_in(store)
    for text in ERIN_TEXTS:
        assert text not in stored, text


def test_new_keys_are_stored_together_and_found_by_a_reader_that_meets_their_data(
    isolated_settings: Settings,
) -> None:
    """A chunk's new customers get their keys with one wait; data sealed with a key written
    a moment ago is opened by another process at once (no 'recently caught up' window in
    which it would read as erased); a key that is not there is looked for once."""
    writer, reader = KafkaKeys(isolated_settings), KafkaKeys(isolated_settings)
    waits: list[int] = []
    produced = 0
    confirm, key_producer = writer._confirm, writer._key_producer()
    produce_key = key_producer.produce

    def counted_confirm(subjects: set[str]) -> None:
        waits.append(len(subjects))
        confirm(subjects)

    def counted_produce(*args: object, **kwargs: object) -> None:
        nonlocal produced
        produced += 1
        produce_key(*args, **kwargs)

    methods = {
        "poll": key_producer.poll,
        "produce": staticmethod(counted_produce),
        "flush": key_producer.flush,
    }
    writer._producer = type("Counted", (), methods)()
    writer._confirm = counted_confirm  # type: ignore[method-assign]
    subjects = [f"subject-{n}" for n in range(300)]
    made = writer.prepare(subjects)
    # One wait for all 300 new keys, not one each; each key written once.
    assert len(made) == 300 and waits == [300] and produced == 300
    assert writer.prepare(subjects) == made  # held: nothing written again, nothing waited for
    assert waits == [300] and produced == 300

    for subject in subjects[:50]:  # each one a moment after it was stored
        key_id, key = writer.current(subject)
        assert reader.find(subject, key_id) == key
    fresh = writer.current("subject-new")
    assert reader.find("subject-new", fresh[0]) == fresh[1]

    catch_ups = 0
    real = reader._ends

    def counting() -> dict[int, int]:
        nonlocal catch_ups
        catch_ups += 1
        return real()

    reader._ends = counting  # type: ignore[method-assign]
    assert reader.find("subject-0", "0123456789abcdef") is None
    assert reader.find("subject-0", "0123456789abcdef") is None
    assert catch_ups == 1


def test_a_record_on_the_key_topic_that_is_no_wrapped_key_is_skipped(
    isolated_settings: Settings,
) -> None:
    """Somebody's stray record on the key topic stops no reader: it is skipped, and the keys
    around it are found."""
    writer = KafkaKeys(isolated_settings)
    before = writer.current("subject-before")
    publisher = Publisher(isolated_settings, codec=AvroCodec())
    for junk in (b'{"wrapped":"x"}', b"not json", b'{"other":1}', b'{"wrapped":"AAAA"}'):
        publisher.produce(isolated_settings.topics.privacy_keys, "stray/0123", junk)
    assert not publisher.flush().failed
    after = writer.current("subject-after")
    reader = KafkaKeys(isolated_settings)
    assert reader.find("subject-before", before[0]) == before[1]
    assert reader.find("subject-after", after[0]) == after[1]
    assert reader.find("stray", "0123") is None
