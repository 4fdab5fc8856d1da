"""Orders spilled out of the order agent's memory (streams.worker.spill) and read back."""

from __future__ import annotations

from pathlib import Path

from streams.partitions import OrderPartition
from streams.worker.spill import SpillFile
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
