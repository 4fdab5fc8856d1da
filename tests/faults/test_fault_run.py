"""The short seeded fault run of `make test`: 30 s of mixed load at 40 orders/s against a private
stack, while the nemesis kills a worker and the projector (kill -9) and restarts the broker and
ClickHouse; then every safety and liveness property of tests/faults/checker.py must hold.
`make chaos` runs long randomized schedules of the same harness."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.harness import Scenario, run
from tests.faults.nemesis import KILL_PROJECTOR, KILL_WORKER, RESTART_BROKER, RESTART_CLICKHOUSE
from tests.faults.workload import Load

pytestmark = [pytest.mark.integration, pytest.mark.fault]
SEED = 20261204
SHORT = Scenario(seed=SEED, load=Load(rate=40, duration_s=30), settle_s=45, quiet_s=5)


def test_the_short_schedule_has_every_required_fault() -> None:
    kinds = [fault.kind for fault in SHORT.faults()]
    assert sorted(kinds) == sorted(
        [KILL_WORKER, KILL_PROJECTOR, RESTART_BROKER, RESTART_CLICKHOUSE]
    )
    assert SHORT.faults() == SHORT.faults()  # a seed is a schedule
    assert all(fault.at_s < SHORT.load.duration_s for fault in SHORT.faults())


@pytest.mark.timeout(600)  # about 100 s; a run that goes wrong should fail on its report
def test_orders_survive_kills_and_restarts_and_settle(tmp_path: Path) -> None:
    outcome = run(SHORT, home=tmp_path / "fault-run")
    print(outcome.report())
    assert outcome.result.ok, outcome.report()
