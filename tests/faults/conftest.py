"""Fixtures of the fault tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.settings import Settings
from tests.faults.brokers import BrokerCluster, broker_cluster


@pytest.fixture
def three_brokers(stack_settings: Settings, tmp_path: Path) -> Iterator[BrokerCluster]:
    """Three KRaft brokers of this test only (the stack's jars, a home and ports of its own),
    the stack's topics on them with 3 copies; every broker stopped afterwards."""
    with broker_cluster(tmp_path / "brokers", kafka_libs=stack_settings.kafka_libs_dir) as made:
        yield made
