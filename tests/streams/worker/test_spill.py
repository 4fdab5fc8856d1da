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
