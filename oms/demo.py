"""`oms demo`: the main job on the local stack, from channel file to ClickHouse, with a summary."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition

from connectors.intake import ImportReport, import_file
from connectors.samples import MALFORMED_LINES, sample_lines
from connectors.webshop import WebshopConnector
from events.codec import AvroCodec, CodecError
from events.models import OrderAccepted, OrderRejected
from infra.kafka import consumer_config
from infra.keystore import KafkaKeys
from infra.publisher import Publisher
from infra.settings import Settings
from oms.stack import Stack
from projections.projector import Projector
from projections.queries import fulfilment_queue, status_counts
from projections.reports import run_report
from projections.schema import migrate
from projections.store import connect, redacted


class DemoFailed(RuntimeError):
    """The demo could not finish; the message says where to look."""


SETTLED = ("prioritised", "rejected", "held")  # where an order rests until people act


@dataclass
class DemoSummary:
    generated: int
    malformed: int
    received: int
    dead_lettered: int
    accepted: int
    rejected: int
    statuses: dict[str, int]  # current status of the demo's orders in ClickHouse
    in_clickhouse: int
    elapsed_s: float
    sales: list[dict[str, object]] = field(default_factory=list)  # the sales_by_store report
    queue: list[dict[str, object]] = field(default_factory=list)  # S01's fulfilment queue
    rejections: dict[str, int] = field(default_factory=dict)  # rejected orders by reason code

    @property
    def settled(self) -> int:
        return sum(self.statuses.get(status, 0) for status in SETTLED)

    @property
    def consistent(self) -> bool:
        return (
            self.accepted + self.rejected == self.generated == self.received
            and self.in_clickhouse == self.generated == self.settled
            and self.statuses.get("rejected", 0) >= self.rejected
        )


def end_offsets(settings: Settings, topic: str) -> dict[int, int]:
    consumer = Consumer(consumer_config(settings.kafka_bootstrap, group_id="oms-demo"))
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in partitions
        }
    finally:
        consumer.close()


def count_verdicts(
    settings: Settings, *, since: dict[int, int], order_ids: set[str], timeout_s: float = 60.0
) -> tuple[int, Counter[str]]:
    """Accepted verdicts on the order log (the source of truth) for these orders, and the
    rejected ones by reason code (the first the rejection names)."""
    topic = settings.topics.orders
    consumer = Consumer(consumer_config(settings.kafka_bootstrap, group_id="oms-demo"))
    codec = AvroCodec.for_registry(settings.schema_registry_url)
    verdicts: dict[str, str] = {}  # order id -> "accepted" or the rejection's reason code
    end = end_offsets(settings, topic)
    consumer.assign([TopicPartition(topic, p, since.get(p, 0)) for p in end])
    remaining = {p for p, last in end.items() if last > since.get(p, 0)}
    deadline = time.monotonic() + timeout_s
    try:
        while remaining and time.monotonic() < deadline:
            for message in consumer.consume(1000, timeout=0.5):
                if message.error():
                    continue
                partition, offset = message.partition() or 0, message.offset() or 0
                if offset + 1 >= end[partition]:
                    remaining.discard(partition)
                try:
                    event = codec.decode(message.value() or b"")
                except CodecError:
                    continue
                # The last verdict stands: an accepted order may be rejected when routed.
                if isinstance(event, OrderAccepted) and event.order_id in order_ids:
                    verdicts[event.order_id] = "accepted"
                elif isinstance(event, OrderRejected) and event.order_id in order_ids:
                    verdicts[event.order_id] = next((r.code for r in event.reasons), "UNKNOWN")
    finally:
        consumer.close()
    rejections = Counter(v for v in verdicts.values() if v != "accepted")
    return len(verdicts) - rejections.total(), rejections


def start_worker(settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "oms.cli", "worker"],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def stop_process(process: subprocess.Popen[bytes], *, timeout_s: float = 20.0) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def run_demo(
    settings: Settings,
    *,
    orders: int = 300,
    timeout_s: float = 180.0,
    say: Callable[[str], None] = print,
) -> DemoSummary:
    stack = Stack(settings)
    started = [name for name, outcome in stack.up() if outcome == "started"]
    say(
        f"stack: Kafka at {settings.kafka_bootstrap}, ClickHouse at "
        f"{redacted(settings.resolved_clickhouse_url)}"
    )
    worker = None
    began = time.monotonic()
    try:
        run_id = f"demo{uuid.uuid4().hex[:8]}"
        lines, _ = sample_lines(count=orders, run_id=run_id)
        all_lines = list(lines)
        for i, bad in enumerate(MALFORMED_LINES):  # spread the malformed lines through the file
            all_lines.insert((i + 1) * len(all_lines) // (len(MALFORMED_LINES) + 1), bad)
        connector = WebshopConnector()
        order_ids = {connector.order_id(f"{run_id}-{n:05d}") for n in range(orders)}
        since = end_offsets(settings, settings.topics.orders)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"{run_id}.jsonl"
            path.write_bytes(b"\n".join(all_lines) + b"\n")
            report: ImportReport = import_file(
                path, connector=connector, publisher=Publisher(settings)
            )
        say(
            f"connector: {report.acknowledged} orders acknowledged by Kafka, "
            f"{report.dead_lettered} malformed lines sent to {settings.topics.dlq}"
        )
        for error in report.errors:
            say(f"  line {error.line}: {error.reason}")
        worker = start_worker(settings, settings.home / "logs" / "demo-worker.log")
        say("worker: validating, screening, routing, prioritising; projector: writing ClickHouse")
        store = connect(settings.resolved_clickhouse_url)
        migrate(store)
        projector = Projector(settings=settings, store=store)
        deadline = time.monotonic() + timeout_s
        ids = sorted(order_ids)

        def caught_up(_: object) -> bool:
            counts = status_counts(store, order_ids=ids)
            if worker is not None and worker.poll() is not None:
                raise DemoFailed(
                    f"the worker exited with code {worker.returncode}; see "
                    f"{settings.home / 'logs' / 'demo-worker.log'}"
                )
            settled = sum(counts.get(status, 0) for status in SETTLED)
            return settled >= report.acknowledged or time.monotonic() > deadline

        projector.run(until=caught_up)
        accepted, rejections = count_verdicts(settings, since=since, order_ids=order_ids)
        if rejections:
            say(
                "rejected by reason: "
                + ", ".join(f"{count} {code}" for code, count in rejections.most_common())
            )
        counts = status_counts(store, order_ids=ids)
        return DemoSummary(
            generated=orders,
            malformed=len(MALFORMED_LINES),
            received=report.acknowledged,
            dead_lettered=report.dead_lettered,
            accepted=accepted,
            rejected=rejections.total(),
            statuses=counts,
            in_clickhouse=sum(counts.values()),
            elapsed_s=time.monotonic() - began,
            sales=run_report(store, "sales_by_store", limit=5).as_dicts(),
            queue=fulfilment_queue(store, "S01", limit=3),
            rejections=dict(rejections),
        )
    finally:
        if worker is not None:
            stop_process(worker)
        # This process's key stores stop following the key topic before its broker goes.
        KafkaKeys.close_all(settings)
        for service in reversed(stack.services):
            if service.name in started:
                service.down()
