"""Connector intake into Kafka: file import orders/s next to kafka-producer-perf-test, and
webhook latency at a fixed request rate.

Targets (docs/architecture.md): file import >= 20,000 orders/s; webhook p99 <= 20 ms at 500 req/s.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from bench.kafka_tools import producer_perf_test, scratch_topics
from connectors.simulator import PROFILES, sample_order
from connectors.webshop import WebshopConnector, sample_payload
from events.codec import AvroCodec
from infra.publisher import Publisher
from infra.settings import Settings

IMPORT_TARGET_PER_S = 20_000
WEBHOOK_P99_TARGET_MS = 20.0


def order_file(path: Path, count: int, *, seed: int = 11) -> tuple[int, int]:
    """`count` web-shop orders as JSON lines; returns (payload bytes, mean Avro event bytes)."""
    rng = random.Random(seed)
    day = datetime(2026, 11, 11, tzinfo=UTC)
    codec, connector = AvroCodec(), WebshopConnector()
    avro_bytes = 0
    with path.open("wb") as out:
        for n in range(count):
            order = sample_order(
                rng, PROFILES["retail"], channel="webshop", number=n, placed_at=day, run_id="BENCH"
            )
            body, _ = sample_payload(order)
            out.write(body + b"\n")
            if n < 1000:
                avro_bytes += len(codec.encode(connector.parse(body, received_at=day)))
    return path.stat().st_size, avro_bytes // min(count, 1000)


def file_import(settings: Settings, *, orders: int, workers: int, runs: int = 3) -> dict[str, Any]:
    from connectors.intake import import_file

    with tempfile.TemporaryDirectory() as tmp, scratch_topics(settings, "bench") as scratch:
        path = Path(tmp) / "orders.jsonl"
        size, record_size = order_file(path, orders)
        rates, acknowledged = [], []
        for _ in range(runs):  # the broker shares the 2 cores: take the median of a few runs
            started = time.perf_counter()
            report = import_file(
                path, connector=WebshopConnector(), publisher=Publisher(scratch), workers=workers
            )
            rates.append(report.acknowledged / (time.perf_counter() - started))
            acknowledged.append(report.acknowledged)
        limit = producer_perf_test(
            scratch, topic=scratch.topics.notifications, records=orders, record_size=record_size
        )
    rate = statistics.median(rates)
    return {
        "orders": orders,
        "acknowledged": min(acknowledged),
        "workers": workers,
        "file_bytes": size,
        "avro_record_bytes": record_size,
        "runs_orders_per_s": rates,
        "orders_per_s": rate,
        "producer_perf_test_records_per_s": limit,
        "ratio_to_producer_perf_test": rate / limit,
        "target_orders_per_s": IMPORT_TARGET_PER_S,
        "meets_target": rate >= IMPORT_TARGET_PER_S,
    }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _load(
    url: str, bodies: list[tuple[bytes, dict[str, str]]], rate: float
) -> tuple[list[float], int]:
    """Send `bodies` at `rate` per second on a fixed schedule (open loop); latencies in ms."""
    latencies: list[float] = []
    failures = 0
    connector = aiohttp.TCPConnector(limit=200)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(body: bytes, headers: dict[str, str]) -> None:
            nonlocal failures
            started = time.perf_counter()
            async with session.post(
                url, data=body, headers={"Content-Type": "application/json"} | headers
            ) as response:
                await response.read()
                if response.status != 200:
                    failures += 1
            latencies.append((time.perf_counter() - started) * 1000)

        begin = time.perf_counter()
        tasks = []
        for n, (body, headers) in enumerate(bodies):
            delay = begin + n / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(body, headers)))
        await asyncio.gather(*tasks)
    return latencies, failures


BENCH_SECRET = "bench web-shop secret, not for use"


def webhook_latency(settings: Settings, *, rate: float, seconds: float) -> dict[str, Any]:
    count = int(rate * seconds)
    rng = random.Random(5)
    day = datetime(2026, 11, 11, tzinfo=UTC)
    retail = PROFILES["retail"]
    orders = (
        sample_order(rng, retail, channel="webshop", number=n, placed_at=day, run_id="BENCH")
        for n in range(count + 200)
    )
    bodies = [sample_payload(order, secret=BENCH_SECRET) for order in orders]
    port = _free_port()
    with scratch_topics(settings, "bench") as scratch:
        env = os.environ | {
            "OMS_KAFKA_BOOTSTRAP": scratch.kafka_bootstrap,
            # the sample orders are placed on 2026-11-11; let the edge take them whatever today is
            "OMS_INTAKE_WINDOW": '["P36500D", "P1D"]',
            **{
                f"OMS_TOPIC_{name.upper()}": topic
                for name, topic in scratch.topics.model_dump().items()
            },
        }
        env["OMS_WEBSHOP_SECRET"] = BENCH_SECRET  # signed, as every web-shop order must be
        server = subprocess.Popen(
            # only the web shop is posted to: the other channels may go without their secrets
            [
                sys.executable,
                "-m",
                "oms.cli",
                "api",
                "--port",
                str(port),
                "--allow-missing-webhook-secrets",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            _wait_for(f"{url}/healthz", seconds=30)
            asyncio.run(_load(f"{url}/webhooks/webshop", bodies[:200], rate=200))  # warm up
            latencies, failures = asyncio.run(_load(f"{url}/webhooks/webshop", bodies[200:], rate))
        finally:
            server.terminate()
            server.wait(timeout=30)
            if server.stderr is not None:
                server.stderr.close()
    ordered = sorted(latencies)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]

    return {
        "rate_per_s": rate,
        "requests": len(latencies),
        "failures": failures,
        "p50_ms": pct(50),
        "p90_ms": pct(90),
        "p99_ms": pct(99),
        "max_ms": ordered[-1],
        "target_p99_ms": WEBHOOK_P99_TARGET_MS,
        "meets_target": pct(99) <= WEBHOOK_P99_TARGET_MS,
    }


def _wait_for(url: str, *, seconds: float) -> None:
    import urllib.request

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 - loopback
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {seconds}s")


def run(settings: Settings, *, orders: int, rate: float, seconds: float) -> dict[str, Any]:
    return {
        "file_import": file_import(settings, orders=orders, workers=os.cpu_count() or 1),
        "webhook": webhook_latency(settings, rate=rate, seconds=seconds),
    }


def report(figures: dict[str, Any]) -> list[str]:
    f, w = figures["file_import"], figures["webhook"]
    return [
        f"file import of {f['orders']:,} orders: median {f['orders_per_s']:,.0f} orders/s of "
        f"{len(f['runs_orders_per_s'])} runs "
        f"({', '.join(f'{r:,.0f}' for r in f['runs_orders_per_s'])}; {f['workers']} processes)  "
        f"{'meets' if f['meets_target'] else 'BELOW'} target {IMPORT_TARGET_PER_S:,}/s",
        f"  kafka-producer-perf-test, {f['avro_record_bytes']}-byte records: "
        f"{f['producer_perf_test_records_per_s']:,.0f} records/s "
        f"(ours = {f['ratio_to_producer_perf_test']:.0%} of it)",
        f"webhook at {w['rate_per_s']:.0f} req/s: p50 {w['p50_ms']:.1f} ms, p90 "
        f"{w['p90_ms']:.1f} ms, p99 {w['p99_ms']:.1f} ms, max {w['max_ms']:.1f} ms, "
        f"{w['failures']} failures of {w['requests']}  "
        f"{'meets' if w['meets_target'] else 'BELOW'} target p99 <= {WEBHOOK_P99_TARGET_MS:.0f} ms",
    ]
