"""The agents in Faust's test context: no broker; sends are captured, state starts empty."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client import REGISTRY

from events.codec import AvroCodec
from events.models import DeadLetter, OrderAccepted, OrderReceived, OrderRejected, ReserveStock
from events.privacy import PrivateCodec
from infra.keystore import MemoryKeys
from infra.settings import Settings
from oms import operations
from streams.reference import load_catalogue
from streams.worker.app import create_app
from streams.worker.views import SharedViews
from tests.factories import T0, received

CODEC = AvroCodec()


class FakeSink:
    """Captures what the agents produce (a fake: unit-level agent tests have no broker)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes]] = []

    def produce(self, topic: str, *, key: bytes, value: bytes, partition: int | None = None
                ) -> None:  # fmt: skip
        self.sent.append((topic, key, value))

    async def confirmed(self) -> None:
        return None


@pytest.fixture
def app_and_sent(tmp_path: Any) -> Iterator[tuple[Any, list[Any]]]:
    with app_of(Settings(home=tmp_path)) as made:
        yield made


@contextmanager
def app_of(settings: Settings) -> Iterator[tuple[Any, list[Any]]]:
    views = SharedViews(catalogue=load_catalogue(), codec=CODEC)
    views.ready.set()  # nothing to read: no broker here
    sink = FakeSink()
    app = create_app(settings, replay=lambda topic, partition: [], views=views,
                     sink=sink)  # type: ignore[arg-type]  # fmt: skip
    yield app, sink.sent
    # The test context never starts Faust's consumer thread; close the loop it made for it.
    consumer = app.__dict__.get("_consumer")
    thread = getattr(consumer, "_thread", None)
    loop = getattr(thread, "thread_loop", None)
    if loop is not None and not loop.is_closed():
        loop.close()


FLOW = ["OrderReceived", "OrderAccepted", "OrderRouted", "OrderPrioritised"]


async def test_valid_order_goes_to_the_order_log_accepted_routed_and_prioritised(
    app_and_sent: Any,
) -> None:
    app, sent = app_and_sent
    order = received()
    async with app.agents["orders"].test_context() as agent:
        result = await agent.put(CODEC.encode(order))
        assert agent.results[result.message.offset] == FLOW
    topics = {topic for topic, _, _ in sent}
    assert topics == {"oms.orders.v1"}
    decoded = [CODEC.decode(value) for _, _, value in sent]
    assert isinstance(decoded[0], OrderReceived) and isinstance(decoded[1], OrderAccepted)
    assert all(key == order.order_id.encode() for _, key, _ in sent)


async def test_inventory_agent_reserves_and_answers_the_order(app_and_sent: Any) -> None:
    app, sent = app_and_sent
    receipt = operations.stock_receive("KETTLE-IRON", "WH-SH", quantity=30, actor="test")
    reserve = ReserveStock(
        event_id="r-1", sequence=1, occurred_at=T0, recorded_at=T0, correlation_id="o-1",
        actor=receipt.actor, sku="KETTLE-IRON", location="WH-SH", order_id="o-1",
        reservation_id="res-1", quantity=2,
    )  # fmt: skip
    async with app.agents["inventory"].test_context() as agent:
        await agent.put(CODEC.encode(receipt))
        await agent.put(CODEC.encode(reserve))
        await agent.put(CODEC.encode(reserve))  # redelivered: answered again, not reserved again
    written = [(topic, CODEC.decode(value).event_type) for topic, _, value in sent]
    assert written == [
        ("oms.inventory.v1", "StockReceived"),
        ("oms.inventory.v1", "StockReserved"),
        ("oms.order-commands.v1", "StockReserved"),
        ("oms.order-commands.v1", "StockReserved"),
    ]
    assert sent[2][1] == b"o-1"  # the answer goes to the order's partition


async def test_invalid_order_is_rejected_with_reasons(app_and_sent: Any) -> None:
    app, sent = app_and_sent
    async with app.agents["orders"].test_context() as agent:
        await agent.put(CODEC.encode(received(total=1)))
    verdict = CODEC.decode(sent[-1][2])
    assert isinstance(verdict, OrderRejected)
    assert verdict.reasons[0].code == "TOTAL_MISMATCH"


async def test_corrupt_message_goes_to_the_dlq_and_the_agent_keeps_going(app_and_sent: Any) -> None:
    app, sent = app_and_sent
    async with app.agents["orders"].test_context() as agent:
        await agent.put(b"\x00\x00\x00\x00\x01garbage")
        await agent.put(CODEC.encode(received()))
    assert sent[0][0] == "oms.dlq.v1"
    letter = CODEC.decode(sent[0][2])
    assert isinstance(letter, DeadLetter)
    assert letter.raw == b"\x00\x00\x00\x00\x01garbage"
    assert "corrupt Avro body" in letter.reason
    assert [topic for topic, _, _ in sent[1:]] == ["oms.orders.v1"] * len(FLOW)


async def test_a_redelivered_order_is_written_once(app_and_sent: Any) -> None:
    app, sent = app_and_sent
    async with app.agents["orders"].test_context() as agent:
        first = await agent.put(CODEC.encode(received()))
        second = await agent.put(CODEC.encode(received()))
        assert agent.results[first.message.offset] == FLOW
        assert agent.results[second.message.offset] == []
    assert len(sent) == len(FLOW)


# ------------------------------------------------------------ poison messages


def letters(sent: list[Any]) -> list[DeadLetter]:
    decoded = [CODEC.decode(value) for topic, _, value in sent if topic == "oms.dlq.v1"]
    return [letter for letter in decoded if isinstance(letter, DeadLetter)]


@pytest.mark.parametrize(
    "placed_at", [datetime(9999, 12, 31, 23, 59, tzinfo=UTC), datetime(1, 1, 1, tzinfo=UTC)]
)
async def test_an_order_with_a_time_outside_what_is_stored_is_dead_lettered_before_deciding(
    app_and_sent: Any, placed_at: datetime
) -> None:
    """Such a date passes the contract; deciding it would overflow (priority, fraud windows)
    and ClickHouse's DateTime could not hold it."""
    app, sent = app_and_sent
    poison = CODEC.encode(received(placed_at=placed_at))
    async with app.agents["orders"].test_context() as agent:
        bad = await agent.put(poison)
        good = await agent.put(CODEC.encode(received(event_id="e-2", order_id="o-2")))
        assert agent.results[bad.message.offset] == ["DeadLetter"]
        assert agent.results[good.message.offset] == FLOW
    [letter] = letters(sent)
    assert letter.raw == poison
    assert "placed_at" in letter.reason and "outside the times stored" in letter.reason


async def test_an_order_whose_decision_raises_is_dead_lettered_and_the_next_one_flows(
    app_and_sent: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    app, sent = app_and_sent
    from streams import orders

    real = orders.decide

    def raises_for_o_1(state: Any, received: Any, ctx: Any) -> Any:
        if received.order_id == "o-1":
            return {}["a bug"]
        return real(state, received, ctx)

    monkeypatch.setattr(orders, "decide", raises_for_o_1)
    poison = CODEC.encode(received())
    async with app.agents["orders"].test_context() as agent:
        bad = await agent.put(poison)
        good = await agent.put(CODEC.encode(received(event_id="e-2", order_id="o-2")))
        assert agent.results[bad.message.offset] == ["DeadLetter"]
        assert agent.results[good.message.offset] == FLOW
    [letter] = letters(sent)
    assert letter.raw == poison
    assert "KeyError: 'a bug'" in letter.reason and "raises_for_o_1" in letter.reason
    # Nothing of the poisoned order was written, nor kept: it is not an order the agent knows.
    logged = [CODEC.decode(value) for topic, _, value in sent if topic == "oms.orders.v1"]
    assert {event.order_id for event in logged} == {"o-2"}  # type: ignore[union-attr]


async def test_a_poison_message_changes_no_state_so_a_good_redelivery_is_decided_afresh(
    app_and_sent: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The decision ran, its output could not be written: the order must stay unknown, or the
    same order arriving well-formed would be taken for a redelivery and dropped."""
    app, sent = app_and_sent
    worker = app.worker
    real = worker.encoded
    calls = {"n": 0}

    def fails_once(event: Any) -> bytes:
        calls["n"] += 1
        if calls["n"] == 2:  # the verdict, after the receipt encoded fine
            raise ValueError("cannot encode")
        return real(event)

    monkeypatch.setattr(worker, "encoded", fails_once)
    async with app.agents["orders"].test_context() as agent:
        first = await agent.put(CODEC.encode(received()))
        again = await agent.put(CODEC.encode(received()))
        assert agent.results[first.message.offset] == ["DeadLetter"]
        assert agent.results[again.message.offset] == FLOW


async def test_an_output_larger_than_kafka_takes_dead_letters_its_input(app_and_sent: Any) -> None:
    app, sent = app_and_sent
    huge = received(notes="辣" * 400_000)  # 1.2 MB of UTF-8 in one field
    async with app.agents["orders"].test_context() as agent:
        bad = await agent.put(CODEC.encode(huge))
        good = await agent.put(CODEC.encode(received(event_id="e-2", order_id="o-2")))
        assert agent.results[bad.message.offset] == ["DeadLetter"]
        assert agent.results[good.message.offset] == FLOW
    [letter] = letters(sent)
    assert "OutputTooLarge" in letter.reason and "over Kafka's 1,000,000" in letter.reason


async def test_a_stock_command_whose_decision_raises_is_dead_lettered(
    app_and_sent: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    app, sent = app_and_sent
    receipt = operations.stock_receive("KETTLE-IRON", "WH-SH", quantity=30, actor="test")
    other = operations.stock_receive("KETTLE-IRON", "WH-BJ", quantity=5, actor="test")
    from streams import inventory

    real = inventory.decide

    def raises_for_wh_sh(level: Any, command: Any, **kw: Any) -> Any:
        if command.location == "WH-SH":
            raise ZeroDivisionError("a bug")
        return real(level, command, **kw)

    monkeypatch.setattr(inventory, "decide", raises_for_wh_sh)
    async with app.agents["inventory"].test_context() as agent:
        bad = await agent.put(CODEC.encode(receipt))
        good = await agent.put(CODEC.encode(other))
        assert agent.results[bad.message.offset] == ["DeadLetter"]
        assert agent.results[good.message.offset][0] == "StockReceived"
    [letter] = letters(sent)
    assert "ZeroDivisionError: a bug" in letter.reason and "raises_for_wh_sh" in letter.reason


def reserve(location: str, quantity: int = 2, n: int = 1) -> ReserveStock:
    return ReserveStock(
        event_id=f"r-{n}", sequence=1, occurred_at=T0, recorded_at=T0, correlation_id=f"o-{n}",
        actor=operations.stock_receive("KETTLE-IRON", location, quantity=1, actor="t").actor,
        sku="KETTLE-IRON", location=location, order_id=f"o-{n}", reservation_id=f"res-{n}",
        quantity=quantity,
    )  # fmt: skip


async def test_a_dead_lettered_reservation_request_is_answered_refused(
    app_and_sent: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ReserveStock the ledger refuses as malformed, or whose decision raises, goes to the
    dead-letter topic; its order hears "refused" (else it waits routed for good, in flight);
    a receipt that fails is answered to nobody."""
    app, sent = app_and_sent
    from streams import inventory

    real = inventory.decide

    def raises_for_wh_bj(level: Any, command: Any, **kw: Any) -> Any:
        if command.location == "WH-BJ":
            raise ZeroDivisionError("a bug")
        return real(level, command, **kw)

    monkeypatch.setattr(inventory, "decide", raises_for_wh_bj)
    async with app.agents["inventory"].test_context() as agent:
        await agent.put(CODEC.encode(reserve("WH-SH", quantity=0, n=1)))  # refused: 0 units
        await agent.put(CODEC.encode(reserve("WH-BJ", n=2)))  # its decision raises
        await agent.put(CODEC.encode(reserve("WH-BJ", n=2)))  # and again, redelivered
        receipt = operations.stock_receive("KETTLE-IRON", "WH-BJ", quantity=3, actor="test")
        await agent.put(CODEC.encode(receipt))  # raises too: nobody waits on it
    assert [topic for topic, _, _ in sent].count("oms.dlq.v1") == 4
    answers = [(key, CODEC.decode(value)) for topic, key, value in sent
               if topic == "oms.order-commands.v1"]  # fmt: skip
    assert [(key, a.event_type, a.reservation_id, a.reason) for key, a in answers] == [
        (b"o-1", "StockReservationRefused", "res-1", "NON_POSITIVE_QUANTITY"),
        (b"o-2", "StockReservationRefused", "res-2", "LEDGER_ERROR"),
        (b"o-2", "StockReservationRefused", "res-2", "LEDGER_ERROR"),
    ]
    assert answers[1][1].event_id == answers[2][1].event_id  # the same answer, deduplicated
    assert all(a.available == 0 and a.causation_id == f"r-{a.order_id[2:]}" for _, a in answers)
    assert not [topic for topic, _, _ in sent if topic == "oms.inventory.v1"]


async def test_the_timer_forgets_orders_untouched_for_the_retention_and_only_those(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    with app_of(Settings(home=tmp_path, order_retention_days=2)) as (app, _):
        await forgets_after_the_retention(app, monkeypatch)


async def forgets_after_the_retention(app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    worker = app.worker
    async with app.agents["orders"].test_context() as agent:
        await agent.put(CODEC.encode(received()))
    [partition] = worker.order_states.states.values()
    spilled = partition.spilled
    spilled.put({"o-1": partition.orders.pop("o-1")})  # settled and spilled, now
    from streams.worker import app as module

    now = datetime.now(UTC)
    for days, kept in ((1, True), (2.01, False)):  # the timer's tick, `days` from now
        monkeypatch.setattr(module, "utc_now", lambda days=days: now + timedelta(days=days))
        await worker.expire()
        assert (partition.state_of("o-1") is not None) is kept, days


async def test_the_timer_empties_a_forgotten_customers_data_from_the_workers_memory(
    app_and_sent: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`oms privacy forget` elsewhere: the worker's key store takes the tombstone, and its next
    tick empties the customer's phone and address from the order in memory and from the
    views' velocity indexes, and has the views cut again."""
    app, _ = app_and_sent
    worker = app.worker
    keys = MemoryKeys()
    worker.codec = PrivateCodec(keys)
    async with app.agents["orders"].test_context() as agent:
        await agent.put(worker.codec.encode(received()))
    [partition] = worker.order_states.states.values()
    held = partition.orders["o-1"].order
    assert held.customer.phone == "+8613800000000" and held.customer.key
    views = worker.views
    since = T0 - timedelta(hours=1)
    assert views.history.recent(phone="+8613800000000", since=since) == 1
    before = REGISTRY.get_sample_value("oms_personal_scrubbed_total", {"where": "orders"}) or 0
    from streams.worker import app as module

    monkeypatch.setattr(module, "utc_now", lambda: T0 + timedelta(minutes=1))  # the tick's

    await worker.expire()  # nothing forgotten yet: nothing changes
    assert partition.orders["o-1"].order == held and not views.recut
    assert views.history.recent(phone="+8613800000000", since=since) == 1
    keys.forget([held.customer.key])
    await worker.expire()

    kept = partition.orders["o-1"].order
    assert kept.customer.phone is None and kept.customer.name is None
    assert kept.address is not None and kept.address.text == ""
    assert kept.total == held.total and kept.customer.key == held.customer.key
    assert views.history.recent(phone="+8613800000000", since=since) == 0 and views.recut
    after = REGISTRY.get_sample_value("oms_personal_scrubbed_total", {"where": "orders"})
    assert after == before + 1


async def test_a_log_event_the_fold_cannot_take_is_skipped_and_the_rest_rebuilt() -> None:
    """Otherwise one such event would stop the worker at every start, for good."""
    from streams.partitions import OrderPartition
    from streams.worker.app import PartitionStates

    class Brittle(OrderPartition):
        def fold(self, event: Any) -> None:
            if event.order_id == "o-bad":
                raise KeyError("cannot fold")
            super().fold(event)

    async def settled() -> None:
        return None

    log = [
        received(),
        received(event_id="e-9", order_id="o-bad"),
        received(event_id="e-2", order_id="o-2"),
    ]
    states = PartitionStates(
        topic="oms.orders.v1", replay=lambda t, p: log, new=lambda _: Brittle(), settle=settled
    )
    rebuilt = await states.of(0)
    assert set(rebuilt.orders) == {"o-1", "o-2"}
