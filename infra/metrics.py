"""Metrics for Prometheus, and the small HTTP server each long-running process answers
`/metrics`, `/livez` and `/readyz` on (docs/operations.md, "Metrics and health").

Every metric is defined here, once, so the worker, the projector, the API and the senders name
a thing the same way; a process moves the ones it has. They live in prometheus_client's
default registry, with its process and garbage-collector metrics. What belongs to one running
process — its consumer lag, read from Kafka when scraped, and its readiness — is registered
with that process's server only.

Liveness is "the process's loop came round lately" (`Health.beat`); readiness is what the
process says about itself (`Health(why_not_ready=...)`): the worker's views read and its
partitions' states rebuilt, the projector connected to Kafka and ClickHouse.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from confluent_kafka import Consumer, KafkaException
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from infra import offsets
from infra.kafka import client_security, consumer_config
from infra.settings import Settings

log = logging.getLogger(__name__)

# A `_created` series per counter doubles the text and tells nothing a restart does not.
disable_created_metrics()

LIVENESS_STALE_S = 300.0  # a loop that has not come round in this long is stuck
LAG_TIMEOUT_S = 5.0  # how long a scrape waits for Kafka's answers on lag

CONSUMED = Counter("oms_consumed", "Messages taken from Kafka and handled, per topic.", ["topic"])
PRODUCED = Counter(
    "oms_produced", "Messages written to Kafka and acknowledged by it, per topic.", ["topic"]
)
DEAD_LETTERS = Counter(
    "oms_dead_letters",
    "Dead letters written, per source (the topic or channel of what was refused).",
    ["source"],
)
DECIDE_SECONDS = Histogram(
    "oms_decide_seconds",
    "The worker's time to decide one input and encode what it writes, per agent.",
    ["agent"],
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)
DECIDE_BATCH_SECONDS = Histogram(
    "oms_decide_batch_seconds",
    "The worker's time to decide one batch of inputs (up to 500), per agent.",
    ["agent"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
PROJECTOR_FRESHNESS = Gauge(
    "oms_projector_freshness_seconds",
    "Of the last batch the projector wrote: seconds from its oldest event's Kafka timestamp "
    "to the batch being in ClickHouse, per topic.",
    ["topic"],
)
HTTP_REQUESTS = Counter(
    "oms_http_requests", "Requests `oms api` answered, per route and status.", ["route", "status"]
)
HTTP_SECONDS = Histogram(
    "oms_http_request_seconds", "Time `oms api` took to answer, per route.", ["route"]
)
OUTBOX_BACKLOG = Gauge(
    "oms_outbox_backlog",
    "Calls to the platforms whose intent is on the outbox without an outcome.",
    ["platform"],
)

# Recovery and the shared views (streams/worker/app.py, snapshots.py, views.py).
REBUILD_SECONDS = Histogram(
    "oms_rebuild_seconds",
    "The worker's time to rebuild one partition's state (snapshot, if any, and the tail), "
    "per agent.",
    ["agent"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0),
)
REBUILD_EVENTS = Counter(
    "oms_rebuild_events",
    "Log events folded while rebuilding partitions (the tails after snapshots), per agent.",
    ["agent"],
)
ORDERS_EVICTED = Counter(
    "oms_orders_evicted",
    "Settled orders the worker forgot, untouched for OMS_ORDER_RETENTION_DAYS.",
)
PERSONAL_SCRUBBED = Counter(
    "oms_personal_scrubbed",
    "Orders whose personal data the worker emptied from memory after their customer's data "
    "keys were forgotten, per where (views: the velocity indexes; orders: the order states).",
    ["where"],
)
SNAPSHOTS_WRITTEN = Counter(
    "oms_snapshots_written", "Snapshots the worker wrote, per name.", ["name"]
)
SNAPSHOT_BYTES = Counter(
    "oms_snapshot_bytes", "Bytes of snapshots the worker wrote, per name.", ["name"]
)
ORDERS_IN_FLIGHT = Gauge(
    "oms_orders_in_flight",
    "Orders waiting for the stock ledger's answers in this worker process (OMS_ORDERS_IN_FLIGHT "
    "bounds them per partition by holding back the partition's intake).",
)
INTAKE_HELD_BACK = Gauge(
    "oms_intake_held_back_partitions",
    "Intake partitions this worker stopped reading until its orders in flight there drain.",
)
VIEWS_BEHIND = Gauge(
    "oms_views_behind_seconds",
    "Seconds from the Kafka timestamp of the last event the shared views folded to the time "
    "they folded it: every worker reads the whole order log, so this grows first when the "
    "day's total volume outgrows one core (docs/scaling.md).",
)


class BatchHistogram:
    """A histogram fed a batch of values at once. prometheus_client's `observe` costs about a
    microsecond a value, a tenth of the projector's time at 100,000 events a second; here a
    batch is sorted once and counted per bucket."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        *,
        buckets: Sequence[float],
        registry: CollectorRegistry | None = REGISTRY,
    ) -> None:
        self.name, self.documentation, self.labelnames = name, documentation, tuple(labelnames)
        self.buckets = tuple(sorted(buckets))
        self._lock = threading.Lock()
        # labels -> (cumulative count per bucket, count, sum)
        self._series: dict[tuple[str, ...], tuple[list[int], int, float]] = {}
        if registry is not None:
            registry.register(self)

    def observe_many(self, values: Sequence[float], *labels: str) -> None:
        if not values:
            return
        ordered = sorted(values)
        within = [bisect_right(ordered, bound) for bound in self.buckets]
        total = sum(ordered)
        with self._lock:
            counts, count, summed = self._series.get(labels, ([0] * len(self.buckets), 0, 0.0))
            self._series[labels] = (
                [a + b for a, b in zip(counts, within, strict=True)],
                count + len(ordered),
                summed + total,
            )

    def describe(self) -> Iterator[Metric]:
        yield HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        with self._lock:
            series = sorted(self._series.items())
        for labels, (counts, count, summed) in series:
            buckets = [
                (floatToGoString(bound), n) for bound, n in zip(self.buckets, counts, strict=True)
            ]
            family.add_metric(list(labels), [*buckets, ("+Inf", count)], summed)
        yield family


PROJECTOR_EVENT_DELAY = BatchHistogram(
    "oms_projector_event_delay_seconds",
    "Seconds from each event's Kafka timestamp (when the worker wrote it) to the projector's "
    "batch holding it being in ClickHouse, per topic.",
    ["topic"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0),
)

# Where a position is not known, the group's committed offset is asked (infra/offsets.py).
Positions = Callable[[], Mapping[offsets.Partition, int | None]]


class ConsumerLag:
    """`oms_consumer_lag{topic, partition}`: for each partition the process consumes now,
    messages from its position to the end, read from Kafka when scraped (by a consumer that
    only asks). A scrape while Kafka does not answer shows no lag rather than an old one."""

    name = "oms_consumer_lag"
    documentation = "Messages between the process's position and the partition's end."

    def __init__(self, settings: Settings, *, group: str, positions: Positions) -> None:
        self.settings = settings
        self.group = group
        self.positions = positions
        self._lock = threading.Lock()
        self._probe: Consumer | None = None

    def describe(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(self.name, self.documentation, labels=["topic", "partition"])

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(self.name, self.documentation, labels=["topic", "partition"])
        wanted = dict(self.positions())
        if wanted:
            with self._lock:
                try:
                    behind = offsets.lag(self._consumer(), wanted, timeout_s=LAG_TIMEOUT_S)
                except KafkaException as exc:
                    log.warning("consumer lag not read: %s", exc)
                    behind = {}
            for (topic, partition), messages in sorted(behind.items()):
                family.add_metric([topic, str(partition)], messages)
        yield family

    def _consumer(self) -> Consumer:
        if self._probe is None:
            settings = self.settings
            self._probe = Consumer(
                consumer_config(settings.kafka_bootstrap, group_id=self.group)
                | client_security(settings)
            )
        return self._probe

    def close(self) -> None:
        with self._lock:
            if self._probe is not None:
                self._probe.close()
                self._probe = None


class Health:
    """A process's liveness and readiness. `beat()` from its main loop: live while the last
    beat is younger than `stale_after_s`. `why_not_ready()` says what the process still waits
    for (None: ready); it is called from the server's thread, so it only reads."""

    def __init__(
        self,
        *,
        why_not_ready: Callable[[], str | None],
        stale_after_s: float = LIVENESS_STALE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.why_not_ready = why_not_ready
        self.stale_after_s = stale_after_s
        self._clock = clock
        self._beat = clock()

    def beat(self) -> None:
        self._beat = self._clock()

    def why_not_live(self) -> str | None:
        silent = self._clock() - self._beat
        if silent > self.stale_after_s:
            return f"the process's loop has not come round for {silent:.0f} s"
        return None

    def describe(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("oms_ready", "1 when the process is ready, else 0.")

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "oms_ready", "1 when the process is ready, else 0.", value=self.why_not_ready() is None
        )


def exposition(extra: CollectorRegistry | None = None) -> bytes:
    """The text Prometheus scrapes: the shared metrics, then the process's own."""
    text = generate_latest(REGISTRY)
    return text + generate_latest(extra) if extra is not None else text


def health_answer(why_not: str | None) -> tuple[int, dict[str, str]]:
    """The status and body of `/livez` or `/readyz`: 200 ok, or 503 with the reason."""
    if why_not is None:
        return 200, {"status": "ok"}
    return 503, {"status": "unavailable", "reason": why_not}


class MetricsServer:
    """`/metrics`, `/livez`, `/readyz` (and `/healthz`, as `/livez`) on a port of the process's
    own, served by a daemon thread. It holds no personal data: labels name topics,
    partitions, agents, routes and platforms only, so it binds to OMS_METRICS_HOST
    (127.0.0.1 by default) without authentication, as exporters do."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        health: Health,
        collectors: Iterable[Any] = (),
    ) -> None:
        self.health = health
        self.registry = CollectorRegistry(auto_describe=True)
        self.collectors = [health, *collectors]
        for collector in self.collectors:
            self.registry.register(collector)
        self._server = ThreadingHTTPServer((host, port), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="oms-metrics", daemon=True
        )
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, exposition(server.registry), CONTENT_TYPE_LATEST)
                elif path in {"/livez", "/healthz", "/readyz"}:
                    check = server.health.why_not_ready if path == "/readyz" else None
                    why_not = (check or server.health.why_not_live)()
                    status, body = health_answer(why_not)
                    self._send(status, json.dumps(body).encode(), "application/json")
                else:
                    self._send(404, b'{"status": "no such path"}', "application/json")

            def _send(self, status: int, body: bytes, media_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", media_type)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass  # a scrape every few seconds is not worth a log line

        return Handler

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
        for collector in self.collectors:
            close = getattr(collector, "close", None)
            if close is not None:
                close()


def serve_metrics(
    settings: Settings,
    *,
    port: int | None = None,
    health: Health,
    collectors: Iterable[Any] = (),
) -> MetricsServer | None:
    """The process's metrics server on `port` (default OMS_METRICS_PORT), or None when that
    is 0."""
    port = settings.metrics_port if port is None else port
    if not port:
        return None
    server = MetricsServer(
        host=settings.metrics_host, port=port, health=health, collectors=collectors
    )
    log.info("metrics and health on http://%s:%d/metrics", settings.metrics_host, server.port)
    return server
