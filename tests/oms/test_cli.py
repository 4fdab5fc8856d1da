from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from events.codec import AvroCodec
from events.models import StockAdjusted
from infra.settings import Settings
from tests.conftest import read_topic, settings_env


def oms(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "oms.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def test_connect_names_the_unknown_channel(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text("{}\n")
    result = oms("connect", "telex", str(path))
    assert result.returncode == 2
    assert "no connector named 'telex'" in result.stderr and "webshop" in result.stderr


def test_connect_names_a_missing_file() -> None:
    result = oms("connect", "webshop", "/no/such/file.jsonl")
    assert result.returncode == 2
    assert "/no/such/file.jsonl" in result.stderr and "does not exist" in result.stderr


def summary_line(stdout: str, label: str) -> str:
    return next(line for line in stdout.splitlines() if line.startswith(label))


@pytest.mark.integration
def test_demo_adds_up_and_leaves_the_shared_stack_running(isolated_settings: Settings) -> None:
    env = settings_env(isolated_settings)
    result = oms("demo", "--orders", "80", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    summary = dict(
        line.split(None, 1)
        for line in result.stdout.splitlines()
        if line.startswith(("generated", "received", "accepted", "rejected"))
    )
    accepted, rejected = int(summary["accepted"]), int(summary["rejected"])
    assert accepted + rejected == 80
    assert rejected > 0
    assert "in ClickHouse  80: " in result.stdout
    statuses = dict(
        reversed(part.split())
        for part in summary_line(result.stdout, "in ClickHouse").split(": ")[1].split(", ")
    )
    assert int(statuses.get("prioritised", 0)) + int(statuses.get("held", 0)) == accepted
    assert int(statuses["rejected"]) == rejected
    assert "next up at S01" in result.stdout and "score" in result.stdout
    assert "line " in result.stdout and "not JSON" in result.stdout
    status = oms(
        "stack", "status", env={k: v for k, v in os.environ.items() if not k.startswith("OMS_")}
    )
    assert status.returncode == 0, "the demo stopped a stack it did not start"


@pytest.mark.integration
def test_a_first_demo_on_a_stack_it_starts_prints_no_library_log_lines(
    stack_settings: Settings, tmp_path: Path
) -> None:
    """A newcomer's first run: the demo starts a fresh broker (own home and ports), whose first
    moments made librdkafka print `%4|...|GETPID|...` lines and the first read fail."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMS_")} | {
        "OMS_HOME": str(tmp_path / "home"),
        "OMS_KAFKA_BOOTSTRAP": "localhost:19392",
        "OMS_KAFKA_CONTROLLER_PORT": "19393",
        "OMS_KAFKA_LIBS": str(stack_settings.kafka_libs_dir),
        "OMS_CLICKHOUSE_PORT": "19300",
        "OMS_CLICKHOUSE_HTTP_PORT": "18423",
    }
    result = oms("demo", "--orders", "20", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    output = (result.stdout + result.stderr).splitlines()
    assert [line for line in output if line.startswith("%") or "rdkafka" in line] == []
    assert oms("stack", "status", env=env).returncode == 1, "the demo left its stack running"


@pytest.mark.integration
def test_orders_show_and_list_read_from_clickhouse(isolated_settings: Settings) -> None:
    env = settings_env(isolated_settings)
    assert oms("demo", "--orders", "20", env=env).returncode == 0
    listing = oms("orders", "list", "--status", "rejected", "--limit", "1", env=env)
    assert listing.returncode == 0, listing.stderr
    order_id = listing.stdout.splitlines()[1].split()[0]
    shown = oms("orders", "show", order_id, env=env)
    assert shown.returncode == 0, shown.stderr
    assert "rejected" in shown.stdout
    assert "OrderReceived" in shown.stdout and "OrderRejected" in shown.stdout
    missing = oms("orders", "show", "no-such-order", env=env)
    assert missing.returncode == 1 and "no order 'no-such-order'" in missing.stderr


def test_demo_summary_names_each_store_of_the_sales_report(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from click.testing import CliRunner

    import oms.demo
    from oms.cli import main

    summary = oms.demo.DemoSummary(
        generated=2, malformed=0, received=2, dead_lettered=0, accepted=2, rejected=0,
        statuses={"prioritised": 2}, in_clickhouse=2, elapsed_s=1.0,
        sales=[{"store": "S03", "currency": "CNY", "orders": 2, "units": 3, "revenue": 12345}],
    )  # fmt: skip
    monkeypatch.setattr(oms.demo, "run_demo", lambda *args, **kwargs: summary)
    result = CliRunner().invoke(main, ["demo"])
    assert result.exit_code == 0, result.output
    line = next(line for line in result.output.splitlines() if "orders" in line and "CNY" in line)
    assert line.split() == ["S03", "2", "orders", "123.45", "CNY"]


@pytest.mark.integration
def test_stock_adjust_takes_a_negative_delta_as_its_argument(isolated_settings: Settings) -> None:
    env = settings_env(isolated_settings)
    removed = oms("stock", "adjust", "TEA-GIFT-M", "W1", "-3", "--reason", "damaged", env=env)
    assert removed.returncode == 0, removed.stderr
    added = oms("stock", "adjust", "--reason", "found", "TEA-GIFT-M", "W1", "2", env=env)
    assert added.returncode == 0, added.stderr
    mistyped = oms("stock", "adjust", "TEA-GIFT-M", "W1", "-3", "--reason", "lost", "--nte", "x",
                   env=env)  # fmt: skip
    assert mistyped.returncode == 2 and "--nte" in mistyped.stderr
    sent = [
        AvroCodec().decode(m.value())
        for m in read_topic(isolated_settings, isolated_settings.topics.stock_commands, expect=2)
    ]
    adjusted = [e for e in sent if isinstance(e, StockAdjusted)]
    assert len(adjusted) == len(sent)
    assert [(e.sku, e.location, e.delta, e.reason) for e in adjusted] == [
        ("TEA-GIFT-M", "W1", -3, "DAMAGED"),
        ("TEA-GIFT-M", "W1", 2, "FOUND"),
    ]


def test_help_lists_every_command_group() -> None:
    result = oms("--help")
    assert result.returncode == 0, result.stderr
    listed = result.stdout.split("Commands:", 1)[1].split()
    commands = {word for word in listed if word.islower() and word.isalpha()}
    assert {"stack", "demo", "connect", "simulate", "connectors", "dlq", "worker", "project",
            "api", "orders", "review", "stock", "queue", "catalogue", "location", "report",
            "schemas", "bench"} <= commands  # fmt: skip


PIPELINE_FIGURES = {
    "orders": 20_000, "orders_per_s": 2_069.0, "processes": 1, "profiled": False,
    "target_orders_per_s": 2_000, "meets_throughput_target": True, "rate_per_s": 500.0,
    "paced_orders": 5_000, "p50_ms": 9.0, "p90_ms": 13.0, "p99_ms": 22.0, "max_ms": 35.0,
    "target_p99_ms": 200.0, "meets_latency_target": True, "profile_top": [],
    "passthrough": {"events": 20_000, "events_per_s": 8_309.0}, "ratio_to_passthrough": 0.249,
}  # fmt: skip


def test_bench_prints_its_figure_and_ratio_once_and_runs_unprofiled_unless_asked(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from click.testing import CliRunner

    import bench.machine
    import bench.pipeline
    from oms.cli import main

    asked: list[bool] = []

    def fake_run(settings: Settings, **kwargs: object) -> dict[str, object]:
        asked.append(bool(kwargs["profile"]))
        return PIPELINE_FIGURES | {"profiled": kwargs["profile"]}

    monkeypatch.setattr(bench.pipeline, "run", fake_run)
    monkeypatch.setattr(
        bench.machine, "write_result", lambda home, name, f, machine=None: tmp_path / name
    )
    monkeypatch.setattr(bench.machine, "broker_partitions", lambda bootstrap: 5_000)
    result = CliRunner().invoke(main, ["bench", "pipeline"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert sum("2,069 orders/s" in line for line in lines) == 1
    assert sum("(ours = 25% of it)" in line for line in lines) == 1
    assert sum(line.startswith("machine: ") for line in lines) == 1
    assert lines[-1] == f"written to {tmp_path / 'pipeline'}"
    assert "broker: 5,000 partitions" in lines and any("cluttered" in line for line in lines)
    assert "profiled" not in lines[0] and "--profile shows" in result.output
    profiled = CliRunner().invoke(main, ["bench", "pipeline", "--profile"])
    assert profiled.exit_code == 0, profiled.output
    assert asked == [False, True]
    assert "profiled" in profiled.output.splitlines()[0]
