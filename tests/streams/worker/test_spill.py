"""Orders spilled out of the order agent's memory (streams.worker.spill) and read back."""

from __future__ import annotations

import signal
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from events.codec import AvroCodec
from events.models import (
    Customer,
    FulfilmentGroup,
    LineQuantity,
    OrderAccepted,
    OrderReceived,
    OrderRouted,
)
from events.privacy import PrivateCodec
from infra.keystore import MasterKey, MemoryKeys
from infra.settings import Settings
from streams import partitions
from streams.partitions import KeptInMemory, OrderPartition
from streams.worker.snapshots import OrderSnapshots, Sealer, SnapshotStore
from streams.worker.spill import SpillFile, claim_directory, sweep
from tests.factories import received
from tests.streams.test_orders import context


def test_a_spilled_state_reads_back_equal_and_the_file_goes_with_the_partition(
    tmp_path: Path,
) -> None:
    partition = OrderPartition(spilled=SpillFile(tmp_path, 3), max_in_memory=100)
    step = partition.handle(received(), context())
    assert step.to_log
    spill = partition.spilled
    assert isinstance(spill, SpillFile)
    spill.put({"o-1": partition.orders["o-1"]})
    assert spill.get("o-1") == partition.orders["o-1"]
    assert spill.get("o-2") is None
    assert spill.path.exists() and spill.path.parent == tmp_path
    partition.close()
    assert not spill.path.exists()


def test_memory_stays_bounded_and_a_spilled_order_is_still_known(tmp_path: Path) -> None:
    partition = OrderPartition(spilled=SpillFile(tmp_path, 0), max_in_memory=100)
    ctx = context()
    for n in range(1000):
        order = received(event_id=f"e-{n}", order_id=f"o-{n}", external_id=str(n))
        assert partition.handle(order, ctx).to_log
        partition.spill()
        assert len(partition.orders) <= 100
    assert "o-0" not in partition.orders
    # A channel sends order 0 again: it is recognised (nothing written), not taken anew.
    again = partition.handle(received(event_id="e-0", order_id="o-0", external_id="0"), ctx)
    assert again.to_log == [] and again.refusal is None
    # A different event id for the same order is refused as a duplicate receipt.
    other = partition.handle(received(event_id="e-x", order_id="o-0", external_id="0"), ctx)
    assert other.refusal is not None and "already received" in other.refusal
    partition.close()


def test_a_spilled_order_waiting_for_its_store_still_escalates_and_alerts(tmp_path: Path) -> None:
    """An order a store has not accepted is spilled like any (memory stays bounded) but kept
    on a watch list: its at-risk alert and its escalation still come, each once."""
    from datetime import timedelta

    from events.models import OrderAtRisk
    from tests.streams.test_orders import NOW, lunch, with_policy

    ctx = context(catalogue=with_policy(accept_within_minutes=8))
    locations = ctx.catalogue.locations
    partition = OrderPartition(spilled=SpillFile(tmp_path, 1), max_in_memory=10)
    for n in range(40):
        step = partition.handle(
            lunch(event_id=f"e-{n}", order_id=f"o-{n}", external_id=f"{n}"), ctx
        )
        assert step.to_log
        partition.spill()
    assert len(partition.orders) <= 10 and "o-0" not in partition.orders
    assert partition.state_of("o-0") is not None

    halfway = partition.expiries(NOW + timedelta(minutes=4), locations)
    alerted = {e.order_id for e in halfway if isinstance(e, OrderAtRisk)}
    assert alerted == {f"o-{n}" for n in range(40)}  # spilled or not
    assert partition.expiries(NOW + timedelta(minutes=5), locations) == []  # once each
    # Past the window (and past the next look): every order escalates, the spilled ones too.
    closed = partition.expiries(NOW + timedelta(minutes=9), locations)
    escalated = {e.order_id for e in closed if not isinstance(e, OrderAtRisk)}
    assert escalated == {f"o-{n}" for n in range(40)}
    partition.close()


class CountedReads(KeptInMemory):
    """Spilled orders kept in a dict, counting the reads back."""

    reads = 0

    def get(self, order_id: str, default: Any = None) -> Any:
        self.reads += 1
        return super().get(order_id, default)


def test_a_tick_reads_back_only_the_spilled_orders_whose_timer_is_due() -> None:
    """The timers keep a schedule: a tick looks at the orders due, not at every order with a
    timer (which cost seconds of the event loop on a busy day, and read the spilled ones back
    every 30 s)."""
    from events.models import OrderAtRisk
    from tests.streams.test_orders import NOW, lunch, with_policy

    ctx = context(catalogue=with_policy(accept_within_minutes=60))
    locations = ctx.catalogue.locations
    spill = CountedReads()
    partition = OrderPartition(spilled=spill, max_in_memory=10)
    for n in range(200):
        assert partition.handle(
            lunch(event_id=f"e-{n}", order_id=f"o-{n}", external_id=f"{n}"), ctx
        )
        partition.spill()
    assert len(partition.orders) <= 10
    # First look: the store (and so its window) is known only now; each order is scheduled
    # exactly: its at-risk alert halfway through the hour.
    assert partition.expiries(NOW + timedelta(minutes=1), locations) == []
    spill.reads = 0
    assert partition.expiries(NOW + timedelta(minutes=2), locations) == []
    assert partition.expiries(NOW + timedelta(minutes=29), locations) == []
    assert spill.reads == 0  # nothing due: nothing read back
    halfway = partition.expiries(NOW + timedelta(minutes=30), locations)
    assert {e.order_id for e in halfway if isinstance(e, OrderAtRisk)} == {
        f"o-{n}" for n in range(200)
    }
    assert 0 < spill.reads <= 200


def test_an_order_holding_its_reservation_spills_and_its_hold_still_expires() -> None:
    """An order reserved and waiting to ship holds its units for hours: it is settled (no
    answer awaited), so it spills like any; its hold's expiry is on the schedule."""
    from events.models import OrderReservationReleased
    from tests.streams.test_orders import answer, teapots

    ctx = context({("KETTLE-IRON", "WH-BJ"): 5})
    partition = OrderPartition(spilled=CountedReads(), max_in_memory=1)
    step = partition.handle(teapots(), ctx)
    (reserve,) = step.commands
    assert partition.spill() == 0  # awaiting the ledger's answer: in flight, kept
    partition.handle(answer(reserve, ok=True), ctx)
    state = partition.orders["o-ship"]
    assert state.held and state.hold_expires_at is not None
    for n in range(3):
        partition.handle(teapots(order_id=f"o-{n}", event_id=f"e-{n}", external_id=f"x{n}"), ctx)
    partition.spill()
    assert "o-ship" not in partition.orders  # spilled, holding its reservation
    early = partition.expiries(state.hold_expires_at - timedelta(seconds=1))
    assert not [e for e in early if isinstance(e, OrderReservationReleased)]  # (an alert, LATE)
    expired = partition.expiries(state.hold_expires_at + timedelta(seconds=1))
    assert [(type(e), e.order_id) for e in expired if e.order_id == "o-ship"] == [
        (OrderReservationReleased, "o-ship")
    ]


SEALER = Sealer(AvroCodec())


def spilled_partition(directory: Path) -> OrderPartition:
    """300 orders, 200 of them spilled; order o-5 read back from the file and changed since
    (its row in the file is stale)."""
    partition = OrderPartition(spilled=SpillFile(directory, 0, sealer=SEALER), max_in_memory=100)
    ctx = context()
    for n in range(300):
        order = received(event_id=f"e-{n}", order_id=f"o-{n}", external_id=str(n))
        assert partition.handle(order, ctx).to_log
        partition.spill()
    assert "o-5" not in partition.orders
    partition.fold(accepted_event(partition, "o-5"))  # as a rebuild reads it off the log
    assert "o-5" in partition.orders
    return partition


def accepted_event(partition: OrderPartition, order_id: str) -> Any:
    state = partition.state_of(order_id)
    assert state is not None
    order = state.order
    return OrderAccepted(
        event_id=f"acc-{order_id}",
        sequence=2,
        occurred_at=order.occurred_at,
        recorded_at=order.occurred_at,
        correlation_id=order.correlation_id,
        actor=order.actor,
        order_id=order_id,
        channel=order.channel,
        external_id=order.external_id,
        total=order.total,
        currency=order.currency,
    )


@pytest.mark.parametrize("into", ["file", "memory"])
def test_a_snapshot_carries_the_spill_file_and_restores_every_order_as_it_is(
    tmp_path: Path, into: str
) -> None:
    before = spilled_partition(tmp_path / "before")
    before.fold(accepted_event(before, "o-299"))
    before.fold(routed_event(before, "o-299"))  # in flight: waits for the ledger's answer
    assert before.in_flight == 1
    ids = [f"o-{n}" for n in range(300)]
    settings = Settings(home=tmp_path)
    store = SnapshotStore(settings, master=MasterKey(bytes(32)))
    snapshots = OrderSnapshots(store, SEALER.codec)
    payload = snapshots.capture(before)()
    spilled = SpillFile(tmp_path / "after", 0, sealer=SEALER) if into == "file" else KeptInMemory()
    after = OrderPartition(spilled=spilled, max_in_memory=100)
    snapshots.restore(after, snapshots.opened(payload))
    assert {i: after.state_of(i) for i in ids} == {i: before.state_of(i) for i in ids}
    state = after.state_of("o-5")
    assert state is not None and state.status == "accepted"  # not the stale row's "received"
    if isinstance(spilled, SpillFile):
        assert spilled.count >= 200  # the file came back whole, not the orders one by one
        # No order was decoded, in flight or not: each is read back when something touches it.
        assert after.orders == {}
    before.close()
    after.close()


def routed_event(partition: OrderPartition, order_id: str) -> Any:
    """The order routed to WH-A with a stocked line: it waits for the ledger's answer."""
    state = partition.state_of(order_id)
    assert state is not None
    order = state.order
    line = LineQuantity(sku=order.lines[0].sku, quantity=1, location="WH-A")
    return OrderRouted(
        event_id=f"route-{order_id}",
        sequence=3,
        occurred_at=order.occurred_at,
        recorded_at=order.occurred_at,
        correlation_id=order.correlation_id,
        actor=order.actor,
        order_id=order_id,
        channel=order.channel,
        external_id=order.external_id,
        location="WH-A",
        reasons=["test"],
        groups=[FulfilmentGroup(location="WH-A", lines=[line])],
    )


def test_spilling_never_walks_the_orders_waiting_for_the_ledger(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Memory full of orders waiting for stock answers: spilling cannot move them, and must
    not walk them on every batch either (it did: the worker then had no time left for the
    answers that would settle them — a livelock in the day's run)."""
    partition = OrderPartition(spilled=SpillFile(tmp_path, 0, sealer=SEALER), max_in_memory=100)
    for n in range(300):
        order_id = f"o-{n}"
        partition.fold(received(event_id=f"e-{n}", order_id=order_id, external_id=str(n)))
        partition.fold(accepted_event(partition, order_id))
        partition.fold(routed_event(partition, order_id))
    looked = []
    monkeypatch.setattr(partitions, "_settled", lambda state: looked.append(state) or True)
    for _ in range(50):  # a batch each
        assert partition.spill() == 0
    assert looked == []
    assert len(partition.orders) == 300  # all in flight: all kept
    # Once the ledger's answers settle some, the oldest settled go, and only they are read.
    monkeypatch.undo()
    state_before = partition.orders["o-0"]
    for n in range(150):
        state = partition.orders[f"o-{n}"]
        partition.restore({f"o-{n}": replace(state, requested={})}, [])
    assert partition.spill() == 150  # down to 90 wanted: every settled one goes
    assert set(partition.orders) == {f"o-{n}" for n in range(150, 300)}
    assert partition.state_of("o-0") == replace(state_before, requested={})
    partition.close()


def test_orders_untouched_past_the_retention_are_forgotten_and_the_rest_kept(
    tmp_path: Path,
) -> None:
    """Order state grew with the whole history (every order ever, in the spill file and in
    every snapshot of it). Rows untouched since the horizon go, a bounded number a tick,
    oldest first; an order written again since stays; so do the orders in memory; and the
    rows' times travel with a snapshot's image."""
    made = OrderPartition()
    ctx = context()
    for n in range(300):
        order = received(event_id=f"e-{n}", order_id=f"o-{n}", external_id=str(n))
        assert made.handle(order, ctx).to_log
    states = made.orders
    day = 86_400
    clock = [1_000_000.0]
    spilled = SpillFile(tmp_path, 0, sealer=SEALER, clock=lambda: clock[0])
    spilled.put({f"o-{n}": states[f"o-{n}"] for n in range(100)})  # spilled on day 0
    clock[0] += day
    spilled.put({f"o-{n}": states[f"o-{n}"] for n in range(100, 200)})  # and on day 1
    spilled.put({"o-7": states["o-7"]})  # o-7 read back and written again on day 1
    partition = OrderPartition(spilled=spilled)
    partition.restore({f"o-{n}": states[f"o-{n}"] for n in range(200, 300)}, [])  # in memory
    partition.restore({"o-0": states["o-0"]}, [])  # and o-0 (its day-0 row is stale)

    horizon = datetime.fromtimestamp(1_000_000 + day // 2, tz=UTC)  # half a day after day 0
    assert spilled.evict(horizon.timestamp(), at_most=10) == 10  # a bounded bite
    image = spilled.image()  # what a snapshot carries
    assert partition.evict(horizon) == 99 - 10
    assert partition.evict(horizon) == 0
    kept = {f"o-{n}" for n in range(300) if partition.state_of(f"o-{n}") is not None}
    assert kept == {"o-0", "o-7"} | {f"o-{n}" for n in range(100, 300)}

    restored = SpillFile(tmp_path / "restored", 0, sealer=SEALER)
    restored.load_image(image)
    assert restored.evict(horizon.timestamp()) == 99 - 10  # the same rows, by their times
    assert restored.get("o-7") is not None and restored.get("o-1") is None
    assert restored.evict(clock[0] + 1) == 101 and restored.get("o-7") is None
    partition.close()
    restored.close()


CLAIM = """
import sys, time
from pathlib import Path
from streams.worker.spill import SpillFile, claim_directory
directory = claim_directory(Path(sys.argv[1]))
SpillFile(directory, 0).put_rows([("o-1", b"state")])
print(directory, flush=True)
time.sleep(600)
"""


def test_a_killed_workers_spill_files_are_removed_by_the_next_and_a_live_ones_are_kept(
    tmp_path: Path,
) -> None:
    """A worker killed with SIGKILL deletes nothing: its spill files (a gigabyte and more at a
    million orders) would stay on the disk for ever. The next process to claim a directory
    under the same base removes them; a worker still running keeps its own."""
    base = tmp_path / "spilled"
    base.mkdir()
    legacy = base / "orders-p0-0123456789ab.sqlite"  # left by a version without directories
    legacy.write_bytes(b"old")

    def claimant() -> tuple[subprocess.Popen[str], Path]:
        child = subprocess.Popen([sys.executable, "-c", CLAIM, str(base)],
                                 stdout=subprocess.PIPE, text=True)  # fmt: skip
        assert child.stdout is not None
        return child, Path(child.stdout.readline().strip())

    killed, killed_directory = claimant()
    alive, alive_directory = claimant()
    try:
        assert not legacy.exists()  # the first claim swept it
        assert any(killed_directory.glob("orders-p0-*.sqlite"))
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        assert killed_directory.exists()  # nobody removed it yet

        mine = claim_directory(base)
        assert claim_directory(base) == mine  # one directory a process
        assert not killed_directory.exists()
        assert any(alive_directory.glob("orders-p0-*.sqlite"))
        assert sweep(base) == []  # this process's and the live child's stay
        assert mine.exists()
    finally:
        for child in (killed, alive):
            child.kill()
            child.wait()
            assert child.stdout is not None
            child.stdout.close()
    assert sweep(base) == [alive_directory]


def test_a_forgotten_customers_orders_in_memory_are_scrubbed_and_spill_no_new_key(
    tmp_path: Path,
) -> None:
    """`oms privacy forget` while the worker holds the customer's orders: those in memory keep
    only what a reader without the key sees (the spilled ones are sealed rows already), so
    spilling or snapshotting them later makes no new data key for the forgotten customer."""
    keys = MemoryKeys()
    codec = PrivateCodec(keys)
    partition = OrderPartition(spilled=SpillFile(tmp_path, 0, sealer=Sealer(codec)),
                               max_in_memory=100)  # fmt: skip
    ctx = context()
    theirs = [
        codec.decode(codec.encode(received(event_id=f"e-{n}", order_id=f"o-{n}",
                                           external_id=str(n))))
        for n in (1, 2)
    ]  # fmt: skip
    other = received(event_id="e-3", order_id="o-3", external_id="3",
                     customer=Customer(name="李", phone="+8613911111111"))  # fmt: skip
    for order in (*theirs, codec.decode(codec.encode(other))):
        assert isinstance(order, OrderReceived)
        assert partition.handle(order, ctx).to_log
    spill = partition.spilled
    assert isinstance(spill, SpillFile)
    spill.put({"o-1": partition.orders.pop("o-1")})  # settled and spilled, sealed
    [subject] = {o.customer.key for o in theirs if isinstance(o, OrderReceived)}
    assert subject is not None and subject in keys.keys

    keys.forget([subject])
    assert partition.forget_personal({subject}) == 1  # o-2, in memory
    kept = partition.orders["o-2"].order
    assert kept.customer.phone is None and kept.customer.name is None
    assert kept.customer.key == subject and kept.total == theirs[1].total
    assert partition.orders["o-3"].order.customer.phone == "+8613911111111"

    spill.put(dict(partition.orders))  # what the next spill or snapshot writes
    assert subject not in keys.keys  # no new key: the forgotten phone stays unreadable
    for order_id in ("o-1", "o-2"):
        back = spill.get(order_id)
        assert back is not None and back.order.customer.phone is None, order_id
    assert partition.forget_personal({subject}) == 0  # nothing left to empty
    partition.close()


def test_many_rows_are_written_in_a_few_statements_not_one_each(tmp_path: Path) -> None:
    """Python's sqlite3 lets go of the GIL around every statement it steps and waits to take
    it back while another thread computes (up to the 5 ms switch interval): a restore's
    thousands of rows written one statement each took seconds beside the views' reader. The
    rows go in statements of many."""
    spilled = SpillFile(tmp_path, 0)
    steps: list[str] = []
    spilled._db.set_trace_callback(steps.append)
    rows = [(f"o-{n}", b"\x00" * 100) for n in range(7_000)]
    spilled.put_rows(rows)
    inserts = [sql for sql in steps if sql.startswith("INSERT")]
    assert 1 <= len(inserts) <= 3, f"{len(inserts)} INSERTs for 7,000 rows"
    assert spilled._db.execute("SELECT count(*) FROM orders").fetchone()[0] == 7_000
    spilled.put_rows([("o-1", b"again")])  # replaced, not added
    assert spilled._db.execute("SELECT count(*) FROM orders").fetchone()[0] == 7_000
    assert spilled._db.execute("SELECT state FROM orders WHERE order_id = 'o-1'").fetchone() == (
        b"again",
    )
