"""Settings derived from others."""

from __future__ import annotations

import pytest

from infra.settings import Settings


@pytest.mark.parametrize(
    ("in_memory", "partitions", "per_partition"),
    [(50_000, 12, 4_166), (50_000, 1, 50_000), (1_000, 12, 100)],
)
def test_the_orders_kept_in_memory_are_a_bound_per_process_shared_by_its_partitions(
    in_memory: int, partitions: int, per_partition: int
) -> None:
    settings = Settings(orders_in_memory=in_memory, kafka_partitions=partitions)
    assert settings.orders_in_memory_per_partition == per_partition
    # a process holding every partition keeps no more than the setting (above the floor)
    assert per_partition * partitions <= max(in_memory, 100 * partitions)
