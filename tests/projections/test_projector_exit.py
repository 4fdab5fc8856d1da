"""`oms project` ends with the exit code docs/operations.md gives: a failure retrying cannot mend
ends it at once (78, or 1 for a bug), and an outage longer than `--retry-for` ends it with 75
(SIGTERM ending it with 0 is in test_projector_reconnect.py)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest

from infra.exit_codes import ExitCode
from infra.settings import Settings
from projections.schema import migrate
from projections.store import ClickHouseStore
from tests.conftest import settings_env
from tests.projections.scenario import build

pytestmark = pytest.mark.integration


def oms_project(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "oms.cli", "project", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize("fold", ["native", "python"])
def test_a_table_without_a_column_the_projector_writes_exits_78_at_once(
    isolated_settings: Settings, store: ClickHouseStore, fold: str
) -> None:
    settings = isolated_settings
    if not settings.resolved_clickhouse_url.startswith("clickhouse://"):
        pytest.fail("this test needs the ClickHouse server (a second process shares it)")
    migrate(store)
    store.execute(f"ALTER TABLE {store.database}.order_events DROP COLUMN payload")
    build(orders=5, stock_events=10, seed=2).publish(settings)

    env = settings_env(settings) | {"OMS_NATIVE_FOLD": "1" if fold == "native" else "0"}
    done = oms_project(env)
    assert done.returncode == ExitCode.CONFIG, done.stderr
    assert "configuration error" in done.stderr and "payload" in done.stderr
    assert "reconnecting" not in done.stderr, "a schema mismatch was retried"


@pytest.mark.parametrize(
    ("variable", "value"),
    [("OMS_CLICKHOUSE_URL", "postgres://localhost/oms"), ("OMS_KAFKA_PARTITIONS", "lots")],
)
def test_a_bad_setting_exits_78(variable: str, value: str) -> None:
    env = settings_env(Settings()) | {variable: value}
    done = oms_project(env)
    assert done.returncode == ExitCode.CONFIG, done.stderr
    assert "configuration error" in done.stderr and value in done.stderr


def test_clickhouse_away_longer_than_the_retry_budget_exits_75(
    isolated_settings: Settings,
) -> None:
    nowhere = f"clickhouse://127.0.0.1:{closed_port()}/oms?http_port={closed_port()}"
    env = settings_env(isolated_settings) | {"OMS_CLICKHOUSE_URL": nowhere}
    began = time.monotonic()
    done = oms_project(env, "--retry-for", "2")
    assert done.returncode == ExitCode.TEMPFAIL, done.stderr
    assert time.monotonic() - began >= 2, "gave up before the budget was spent"
    assert "reconnecting in" in done.stderr and "Connection refused" in done.stderr
