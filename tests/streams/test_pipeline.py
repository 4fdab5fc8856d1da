"""End to end on the real broker and ClickHouse: `oms connect` → Faust worker → projector."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from connectors.samples import MALFORMED_LINES, sample_lines
from connectors.webshop import WebshopConnector
from events.codec import AvroCodec
from events.models import DeadLetter
from infra.settings import Settings
from oms import operations
from projections.projector import Projector
from projections.queries import event_count, order_state, status_counts
from projections.store import ClickHouseStore
from tests.conftest import FIXTURES, read_topic, settings_env, wait_consumed
from tests.factories import received

pytestmark = pytest.mark.integration
ORDERS = 60


@pytest.fixture
def worker(isolated_settings: Settings, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    log = (tmp_path / "worker.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "oms.cli", "worker"],
        env=settings_env(isolated_settings),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    yield process
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    log.close()


def connect_file(settings: Settings, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "oms.cli", "connect", "webshop", str(path)],
        env=settings_env(settings),
        capture_output=True,
        text=True,
        timeout=120,
    )


def project_until(settings: Settings, store: ClickHouseStore, *, events: int) -> None:
    Projector(settings=settings, store=store, batch_seconds=0.3).run(
        until=lambda _: event_count(store) >= events
    )


def test_orders_flow_from_file_to_clickhouse_and_bad_lines_to_the_dlq(
    isolated_settings: Settings,
    store: ClickHouseStore,
    worker: subprocess.Popen[bytes],
    tmp_path: Path,
) -> None:
    settings = isolated_settings
    lines, planted = sample_lines(count=ORDERS, run_id="e2e", invalid_share=0.3)
    path = tmp_path / "orders.jsonl"
    path.write_bytes(b"\n".join([*lines[:10], MALFORMED_LINES[0], *lines[10:]]) + b"\n")

    result = connect_file(settings, path)
    assert result.returncode == 0, result.stderr
    assert f"{path}:11: not JSON" in result.stderr
    assert f"{ORDERS} of {ORDERS + 1} lines acknowledged" in result.stdout

    (message,) = read_topic(settings, settings.topics.dlq, expect=1)
    letter = AvroCodec().decode(message.value())
    assert isinstance(letter, DeadLetter)
    assert (letter.raw, letter.source, letter.source_ref) == (
        MALFORMED_LINES[0],
        "webshop",
        "orders.jsonl:11",
    )

    rejected = sum(1 for defect in planted.values() if defect)
    # Accepted orders (dishes, made to order) are routed to a store and prioritised: 4 events.
    project_until(settings, store, events=2 * ORDERS + 2 * (ORDERS - rejected))
    assert worker.poll() is None, "the worker died"
    connector = WebshopConnector()
    for external_id, defect in planted.items():
        state = order_state(store, connector.order_id(external_id))
        assert state is not None, f"order {external_id} missing from ClickHouse"
        assert state["status"] == ("rejected" if defect else "prioritised"), (external_id, defect)
    assert status_counts(store) == {"prioritised": ORDERS - rejected, "rejected": rejected}


def test_the_same_channel_order_delivered_twice_is_one_order(
    isolated_settings: Settings,
    store: ClickHouseStore,
    worker: subprocess.Popen[bytes],
    tmp_path: Path,
) -> None:
    settings = isolated_settings
    lines, _ = sample_lines(count=5, run_id="dup", invalid_share=0.0)
    path = tmp_path / "orders.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    for _ in range(2):
        assert connect_file(settings, path).returncode == 0
    wait_consumed(settings, settings.topics.intake)
    # The worker took the second delivery as a redelivery: the log has each order once.
    events = read_topic(settings, settings.topics.orders, expect=20, timeout_s=30)
    assert len(events) == 20
    kinds = ("OrderReceived", "OrderAccepted", "OrderRouted", "OrderPrioritised")
    assert Counter(AvroCodec().decode(m.value()).event_type for m in events) == {
        kind: 5 for kind in kinds}  # fmt: skip
    project_until(settings, store, events=20)
    assert status_counts(store) == {"prioritised": 5}


def test_a_revision_is_sequenced_after_the_order_and_validated_again(
    isolated_settings: Settings,
    store: ClickHouseStore,
    worker: subprocess.Popen[bytes],
    tmp_path: Path,
) -> None:
    settings = isolated_settings
    operations.send(settings, operations.stock_receive("GIFTBOX-M", "WH-SH", quantity=10,
                                                       actor="test"))  # fmt: skip
    # The stock is in the ledger before the order comes (else it is rightly out of stock).
    read_topic(settings, settings.topics.inventory, expect=1, timeout_s=60)
    path = tmp_path / "orders.jsonl"
    original = FIXTURES / "webshop" / "ship_order.json"
    revised = FIXTURES / "webshop" / "ship_order_modified.json"
    path.write_bytes(b"\n".join(p.read_bytes().replace(b"\n", b"") for p in (original, revised))
                     + b"\n")  # fmt: skip
    assert connect_file(settings, path).returncode == 0
    codec = AvroCodec()

    def history() -> list[Any]:
        found = read_topic(settings, settings.topics.orders, expect=1, timeout_s=30)
        return sorted((codec.decode(m.value()) for m in found), key=lambda e: e.sequence)

    deadline = time.monotonic() + 60
    while (log := history())[-1].event_type != "OrderPrioritised" or not any(
        e.event_type == "OrderModified" for e in log
    ):
        assert time.monotonic() < deadline, [e.event_type for e in log]
        time.sleep(0.5)
    assert [e.sequence for e in log] == list(range(1, len(log) + 1))
    assert [e.event_type for e in log[:3]] == ["OrderReceived", "OrderAccepted", "OrderRouted"]
    modified = next(i for i, e in enumerate(log) if e.event_type == "OrderModified")
    assert log[modified + 1].event_type == "OrderAccepted"  # validated again
    assert log[modified].total == 15000
    # The ledger holds exactly the revised quantity for the order, whatever the timing was.
    gift_lines = [line for line in log[modified].lines if line.sku == "GIFTBOX-M"]
    ledger = [codec.decode(m.value()) for m in
              read_topic(settings, settings.topics.inventory, expect=1, timeout_s=30)]  # fmt: skip
    held = sum(e.quantity if e.event_type == "StockReserved" else -e.quantity
               for e in ledger if e.event_type in ("StockReserved", "StockReleased"))  # fmt: skip
    assert held == sum(line.quantity for line in gift_lines)
    project_until(settings, store, events=len(log))
    state = order_state(store, log[0].order_id)
    assert state is not None
    assert (state["version"], state["status"], state["total"]) == (
        len(log), "prioritised", 15000)  # fmt: skip


def test_worker_dead_letters_corrupt_and_unknown_schema_messages_and_keeps_going(
    isolated_settings: Settings, worker: subprocess.Popen[bytes]
) -> None:
    settings = isolated_settings
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    bad = {b"\x00\x00\x00\x27\x0fwhatever": "unknown schema id 9999", b"{json?}": "magic byte"}
    for raw in bad:
        producer.produce(settings.topics.intake, key=b"k", value=raw, partition=0)
    producer.produce(settings.topics.intake, key=b"k", value=AvroCodec().encode(received()),
                     partition=0)  # fmt: skip
    assert producer.flush(10) == 0

    verdicts = read_topic(settings, settings.topics.orders, expect=2, timeout_s=60)
    assert [AvroCodec().decode(m.value()).event_type for m in verdicts][:2] == [
        "OrderReceived", "OrderAccepted"]  # fmt: skip
    letters = [AvroCodec().decode(m.value()) for m in read_topic(settings, settings.topics.dlq,
                                                                 expect=2)]  # fmt: skip
    by_raw = {letter.raw: letter for letter in letters if isinstance(letter, DeadLetter)}
    assert set(by_raw) == set(bad)
    for offset, (raw, reason) in enumerate(bad.items()):
        letter = by_raw[raw]
        assert reason in letter.reason
        where = f"topic {settings.topics.intake} partition 0 offset {offset}"
        assert letter.source_ref == where and where in letter.reason
    assert worker.poll() is None


def _long_overflow() -> bytes:
    """An OrderReceived whose sequence is a varint longer than 64 bits."""
    raw = AvroCodec().encode(received(event_id="e-ovf", order_id="o-ovf", sequence=2**62))
    varint = b"\x80" * 9 + b"\x01"  # zigzag(2**62)
    assert raw.count(varint) == 1
    return raw.replace(varint, b"\xff" * 10 + b"\x7f")


def test_crafted_inputs_each_reach_the_dlq_once_and_the_partition_keeps_flowing(
    isolated_settings: Settings, worker: subprocess.Popen[bytes]
) -> None:
    """Issue 16's crafted inputs, past the edge (written to the intake topic directly, as a
    buggy or hostile producer would): each is dead-lettered once with its reason, the orders
    after them on the same partition are decided, and the worker keeps running."""
    settings = isolated_settings
    codec = AvroCodec()
    line = received().lines[0]
    crafted = {
        "year 9999": codec.encode(
            received(
                event_id="e-9999", order_id="o-9999", placed_at=datetime(9999, 12, 31, tzinfo=UTC)
            )
        ),
        "year 1": codec.encode(
            received(event_id="e-0001", order_id="o-0001", placed_at=datetime(1, 1, 1, tzinfo=UTC))
        ),
        "quantity 3e9": codec.encode(
            received(
                event_id="e-qty",
                order_id="o-qty",
                lines=[line.model_copy(update={"quantity": 3_000_000_000})],
                total=3_000_000_000 * line.unit_price + 500,
            )
        ),
        "long overflow": _long_overflow(),
    }
    reasons = {
        "year 9999": "placed_at is outside the times stored",
        "year 1": "placed_at is outside the times stored",
        "quantity 3e9": "lines[0].quantity 3000000000 is outside",
        "long overflow": "varint longer than 10 bytes",
    }
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    for n, raw in enumerate(crafted.values()):
        producer.produce(settings.topics.intake, key=b"k", value=raw, partition=0)
        good = received(event_id=f"e-good-{n}", order_id=f"o-good-{n}")
        producer.produce(settings.topics.intake, key=b"k", value=codec.encode(good), partition=0)
    assert producer.flush(10) == 0

    wait_consumed(settings, settings.topics.intake)
    log = [codec.decode(m.value()) for m in read_topic(settings, settings.topics.orders, expect=8)]
    decided = {e.order_id for e in log if e.event_type == "OrderAccepted"}  # type: ignore[union-attr]
    assert decided == {f"o-good-{n}" for n in range(len(crafted))}
    letters = [codec.decode(m.value()) for m in read_topic(settings, settings.topics.dlq, expect=4)]
    by_raw = Counter(letter.raw for letter in letters if isinstance(letter, DeadLetter))
    assert by_raw == Counter(crafted.values())  # each exactly once
    for name, raw in crafted.items():
        [letter] = [x for x in letters if isinstance(x, DeadLetter) and x.raw == raw]
        assert reasons[name] in letter.reason, (name, letter.reason)
    assert worker.poll() is None


def test_a_line_sold_by_weight_reserves_its_exact_measure_on_the_real_pipeline(
    isolated_settings: Settings, tmp_path: Path
) -> None:
    """2 kg of loose tea on the ledger: an order of 1.5 kg reserves exactly 1500000 millionths,
    and the next 1.5 kg finds 0.5 kg left and is refused for stock (rounded to whole kilograms,
    both would have fitted in 2)."""
    import json

    from events.models import Customer, OrderLine, OrderMode
    from infra.publisher import Publisher
    from streams.reference import DEFAULT_FILE

    document = json.loads(DEFAULT_FILE.read_text(encoding="utf-8"))
    document["products"].append({"sku": "TEA-LOOSE", "name": "散装龙井", "unit": "kg"})
    catalogue = tmp_path / "catalogue.json"
    catalogue.write_text(json.dumps(document, ensure_ascii=False))
    settings = isolated_settings.model_copy(update={"catalogue_file": catalogue})
    log = (tmp_path / "worker.log").open("wb")
    worker = subprocess.Popen([sys.executable, "-m", "oms.cli", "worker"],
                              env=settings_env(settings), stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)  # fmt: skip
    try:
        kilos = operations.stock_receive("TEA-LOOSE", "WH-SH", quantity=2_000_000, actor="test")
        operations.send(settings, kilos)
        read_topic(settings, settings.topics.inventory, expect=1, timeout_s=60)
        publisher = Publisher(settings)
        for n in (1, 2):
            tea = OrderLine(sku="TEA-LOOSE", name="散装龙井", quantity=2, unit_price=40_000,
                            unit="kg", quantity_millionths=1_500_000)  # fmt: skip
            publisher.intake(received(
                event_id=f"e-tea-{n}", order_id=f"o-tea-{n}", external_id=f"tea-{n}",
                mode=OrderMode.SHIP, lines=[tea], total=60_000, delivery_fee=0,
                customer=Customer(name=f"顾客{n}", phone=f"+861380000000{n}"),
            ))  # fmt: skip
            publisher.flush()
            time.sleep(1.0)  # the first is routed before the second comes
        codec = AvroCodec()
        deadline = time.monotonic() + 90
        ends: dict[str, str] = {}
        why: dict[str, Any] = {}
        while len(ends) < 2:
            assert time.monotonic() < deadline, ends
            for message in read_topic(settings, settings.topics.orders, expect=1, timeout_s=30):
                event = codec.decode(message.value())
                if event.event_type in ("OrderPrioritised", "OrderReservationFailed",
                                        "OrderRejected"):  # fmt: skip
                    ends.setdefault(event.order_id, event.event_type)
                    why[event.order_id] = getattr(event, "reasons", None)
            time.sleep(0.5)
        assert ends == {"o-tea-1": "OrderPrioritised", "o-tea-2": "OrderReservationFailed"}, why
        found = read_topic(settings, settings.topics.inventory, expect=2, timeout_s=30)
        ledger = [codec.decode(m.value()) for m in found]
        reserved = [e for e in ledger if e.event_type == "StockReserved"]
        assert [(e.order_id, e.quantity) for e in reserved] == [("o-tea-1", 1_500_000)]
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        log.close()
