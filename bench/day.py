"""`oms bench day`: the seed's peak day — ORDERS orders of the restaurant and retail mix from the
channels' own payloads, through the connectors, `oms worker` and `oms project`, into ClickHouse.

The day is the simulator's (`connectors.simulator.traffic`): the restaurant profile (Meituan,
Ele.me, the WeChat mini-program and the phone at the demo catalogue's 5 stores; delivery,
pickup, dine-in) and the Double-11 retail profile (Tmall, JD, the web shop, WooCommerce, Square
POS; shipped from the warehouses or sold at a store), with their duplicates, revisions and
malformed payloads. Payloads are written before the clock starts (making them is the
channels' work, not ours). A feeder process of its own then runs them through the channels'
connectors and the publisher, as `oms simulate` and file import do: parsed, sealed (new
customers' data keys stored a chunk at a time), produced with the publisher's settings. No
payload goes before the times it carries; at the default day rate (`NOMINAL_RATE`, more than
two cores can take) that never holds the feeder back, so it runs flat out.

Everything runs with default settings on scratch topics and a scratch database: the demo
catalogue without capacity limits, stock received at every location before the first order.
Figures: wall time from the first order taken by a connector to the last order's final state
in ClickHouse (its status one the pipeline leaves it in: prioritised, rejected, held, ...),
orders/s, each process's peak resident memory and CPU time, the greatest lag of the worker's
group and of the projector, and freshness (send → first row in `orders`) of 1 in
ORDERS/1,000 orders. Target (docs/architecture.md): 1,000,000 orders in at most 10 minutes on
2 cores, memory flat; freshness p99 <= 1 s is the target at 500 orders/s, reported here under
the day's load.
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import pickle
import random
import resource
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from datetime import datetime
from multiprocessing import get_context
from pathlib import Path
from typing import IO, Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from bench.kafka_tools import scratch_topics
from bench.pipeline import (
    Watcher,
    bench_catalogue,
    bench_process,
    orders,
    percentile,
    publish_orders,
    wait_for_group,
    worker_env,
)
from connectors import limits
from connectors.base import Connector, PayloadRejected
from connectors.intake import KEYS_CHUNK
from connectors.registry import available
from connectors.simulator import PROFILES, Send, new_run_id, traffic
from events.lifecycle import OrderStatus
from events.models import utc_now
from infra import offsets
from infra.kafka import admin_config, consumer_config
from infra.publisher import Publisher
from infra.settings import Settings, get_settings
from oms import operations
from oms.stack import ClickHouseService, KafkaService
from projections.pipeline_status import consumers
from projections.projector import next_offsets
from projections.schema import migrate
from projections.store import ClickHouseStore, StoreError, connect, with_database_url
from streams.reference import load_catalogue

ORDERS = 1_000_000
WALL_TARGET_S = 600.0  # for ORDERS orders
RATE_TARGET_PER_S = ORDERS / WALL_TARGET_S
FRESHNESS_P99_TARGET_S = 1.0  # docs/architecture.md: at 500 orders/s
FLAT_WITHIN = 0.10  # resident memory at the end within 10 % of its sample at 30 % of the run
NOMINAL_RATE = 20_000.0  # orders/s of the compressed day when no --rate is given
DAY_PROFILES = ("restaurant", "peak")  # the peak day's retail is the Double-11 profile
STOCK = 10**7  # units of every stocked product received at every location
WARM = 20
SAMPLES = 1000
UNSETTLED = frozenset(
    {
        OrderStatus.RECEIVED,
        OrderStatus.ACCEPTED,
        OrderStatus.ROUTED,
        OrderStatus.PARTIALLY_RESERVED,
        OrderStatus.RESERVATION_FAILED,
        OrderStatus.RESERVED,
    }
)  # the worker has not finished with an order in one of these


# ---------------------------------------------------------------- the day's payloads


def write_traffic(
    path: Path, *, profile_name: str, orders: int, day_s: float, start: datetime, seed: int
) -> Counter[str]:
    """The first `orders` new orders of the profile's day compressed into `day_s` seconds from
    `start`, with the duplicates, revisions and malformed payloads among them, one pickled
    `Send` a record; returns the sends by kind."""
    profile = PROFILES[profile_name]
    new_share = 1 - profile.duplicate_share - profile.revision_share - profile.malformed_share
    sends = traffic(
        profile_name=profile_name,
        rate=orders / (day_s * new_share),
        duration_s=day_s * 1.1,  # a little more than the orders need: the day is cut at them
        start=start,
        run_id=new_run_id(),
        rng=random.Random(f"{seed}:{profile_name}"),
    )
    kinds: Counter[str] = Counter()
    with path.open("wb") as out:
        for send in sends:
            pickle.dump(send, out, protocol=pickle.HIGHEST_PROTOCOL)
            kinds[send.kind] += 1
            if kinds["order"] == orders:
                break
    return kinds


def read_traffic(path: Path) -> Iterator[Send]:
    with path.open("rb") as source:
        while True:
            try:
                yield pickle.load(source)  # noqa: S301 - written by this run, just before
            except EOFError:
                return


def make_day(
    directory: Path, *, orders: int, restaurant_share: float, day_s: float, seed: int
) -> tuple[list[Path], dict[str, dict[str, int]], datetime]:
    """Each profile's payloads in a file of its own, made in parallel (one process each)."""
    restaurant = round(orders * restaurant_share)
    counts = dict(zip(DAY_PROFILES, (restaurant, orders - restaurant), strict=True))
    start = utc_now()
    paths = {name: directory / f"{name}.pickle" for name in DAY_PROFILES}
    with ProcessPoolExecutor(len(counts), mp_context=get_context("spawn")) as pool:
        made = {
            name: pool.submit(
                write_traffic,
                paths[name],
                profile_name=name,
                orders=count,
                day_s=day_s,
                start=start,
                seed=seed,
            )
            for name, count in counts.items()
            if count
        }
        kinds = {name: dict(future.result()) for name, future in made.items()}
    return [paths[name] for name in made], kinds, start


# ---------------------------------------------------------------- the feeder (its own process)


def feed(
    settings: Settings, paths: list[Path], *, sample_every: int, out: IO[str]
) -> dict[str, Any]:
    """Every payload of `paths`, in the order they are due, through its channel's connector
    onto the intake topic (or its bytes onto the DLQ), a chunk at a time so that the chunk's
    new customers get their data keys together; none before the feeder's start plus its due
    time (the times it carries count from the earlier moment the day was made). Writes
    `first EPOCH` as it starts, `sample ORDER_ID EPOCH` (when a connector took it) for every
    `sample_every`th new order, and returns the counts."""
    installed = available()
    connectors: dict[str, Connector] = {}
    publisher = Publisher(settings)
    merged = heapq.merge(*(read_traffic(path) for path in paths), key=lambda send: send.due_s)
    kinds: Counter[str] = Counter()
    channels: Counter[str] = Counter()
    rejected = 0
    new_orders = 0
    cpu_before = time.process_time()
    began = time.time()
    out.write(f"first {began}\n")
    upcoming = next(merged, None)
    while upcoming is not None:
        # A chunk is what is due by now (at most KEYS_CHUNK): all of it when the feeder is
        # behind the day, one payload at a time when it is paced.
        if (wait := began + upcoming.due_s - time.time()) > 0:
            time.sleep(wait)
        chunk = [upcoming]
        upcoming = next(merged, None)
        while (
            upcoming is not None
            and len(chunk) < KEYS_CHUNK
            and upcoming.due_s <= time.time() - began
        ):
            chunk.append(upcoming)
            upcoming = next(merged, None)
        taken = []
        for send in chunk:
            connector = connectors.get(send.channel) or connectors.setdefault(
                send.channel, installed[send.channel]()
            )
            at = time.time()
            try:
                limits.check_size(send.body, what="payload")
                event: Any = connector.parse(send.body, received_at=utc_now(), headers=send.headers)
            except PayloadRejected as exc:
                event = exc
            taken.append((send, connector, at, event))
        publisher.prepare(e for _, _, _, e in taken if not isinstance(e, PayloadRejected))
        for send, connector, at, event in taken:
            kinds[send.kind] += 1
            channels[send.channel] += 1
            if isinstance(event, PayloadRejected):
                rejected += 1
                publisher.dead_letter(
                    limits.dead_letter(
                        source=connector.name,
                        source_ref=f"bench-day:{kinds.total()}",
                        reason=str(event),
                        raw=send.body,
                    )
                )
                continue
            publisher.intake(event)
            if send.kind == "order":
                new_orders += 1
                if new_orders % sample_every == 0:
                    out.write(f"sample {event.order_id} {at}\n")
        out.flush()
    delivered = publisher.flush(120)
    ended = time.time()
    topics = settings.topics
    return {
        "orders": new_orders,
        "payloads": kinds.total(),
        "kinds": dict(kinds),
        "channels": dict(channels),
        "dead_lettered": rejected,
        "acknowledged": delivered.acknowledged[topics.intake],
        "acknowledged_dlq": delivered.acknowledged[topics.dlq],
        "failed": sum(delivered.failed.values()),
        "first_at": began,
        "acked_at": ended,
        "cpu_s": time.process_time() - cpu_before,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main(argv: list[str] | None = None) -> None:
    """`python -m bench.day feed FILE...`: the feeder `run` starts (settings from OMS_*)."""
    parser = argparse.ArgumentParser(prog="python -m bench.day")
    parser.add_argument("command", choices=["feed"])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--sample-every", type=int, default=1000)
    args = parser.parse_args(argv)
    counts = feed(get_settings(), args.files, sample_every=args.sample_every, out=sys.stdout)
    sys.stdout.write(f"report {json.dumps(counts)}\n")
    sys.stdout.flush()


# ---------------------------------------------------------------- watching the run


def _status_of(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of `pid` in KiB (empty once it is gone)."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    found = {}
    for line in lines:
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            found[name] = int(value.split()[0])
    return found


def _cpu_s(pid: int) -> float | None:
    """User + system CPU seconds `pid` has used so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


class Gauges(threading.Thread):
    """Every second: each process's resident memory and CPU time, the worker group's lag
    (committed offsets against the ends of its input topics) and the projector's (its offset
    ledger in ClickHouse against the ends of the order log and the stock ledger)."""

    def __init__(self, settings: Settings, store_url: str, processes: dict[str, int]) -> None:
        super().__init__(name="bench-gauges", daemon=True)
        from confluent_kafka import Consumer

        self.settings = settings
        self.store = connect(store_url)
        self.probe = Consumer(
            consumer_config(settings.kafka_bootstrap, group_id=settings.consumer_group)
        )
        self.processes = dict(processes)
        self.cpu_start = {name: _cpu_s(pid) for name, pid in self.processes.items()}
        self.samples: list[dict[str, Any]] = []
        self.missed: list[str] = []  # why a sample could not be taken
        self.peak_rss: Counter[str] = Counter()  # KiB
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        topics = consumers(settings)
        self.worker_partitions = offsets.partitions_of(self.probe, topics["worker"], timeout_s=10)
        self.projector_topics = topics["projector"]
        self.projector_partitions = offsets.partitions_of(
            self.probe, self.projector_topics, timeout_s=10
        )

    def track(self, name: str, pid: int) -> None:
        with self.lock:
            self.processes[name] = pid
            self.cpu_start[name] = _cpu_s(pid)

    def _expand(self) -> dict[str, int]:
        """The tracked processes, a worker's children (`--processes N`) as worker-1..N."""
        expanded = {}
        with self.lock:
            for name, pid in self.processes.items():
                children = _children(pid) if name == "worker" else []
                expanded[name] = pid
                for n, child in enumerate(children, start=1):
                    expanded[f"worker-{n}"] = child
                    if f"worker-{n}" not in self.cpu_start:
                        self.cpu_start[f"worker-{n}"] = 0.0  # started with the worker
        return expanded

    def sample(self) -> dict[str, Any]:
        at = time.time()
        rss = {}
        for name, pid in self._expand().items():
            status = _status_of(pid)
            if "VmRSS" in status:
                rss[name] = status["VmRSS"]
                self.peak_rss[name] = max(self.peak_rss[name], status["VmRSS"])
        worker = offsets.lag(self.probe, dict.fromkeys(self.worker_partitions), timeout_s=10)
        projected = next_offsets(self.store, self.projector_topics)
        projector = offsets.lag(
            self.probe,
            {where: projected.get(where, 0) for where in self.projector_partitions},
            timeout_s=10,
        )
        found = {
            "t": at,
            "rss_kib": rss,
            "worker_lag": sum(worker.values()),
            "worker_lag_by_topic": _by_topic(worker),
            "projector_lag": sum(projector.values()),
            "projector_lag_by_topic": _by_topic(projector),
        }
        self.samples.append(found)
        return found

    def run(self) -> None:
        while not self.stopping.wait(1.0):
            try:
                self.sample()
            except (KafkaException, StoreError) as exc:  # a slow answer loses one sample
                self.missed.append(str(exc)[:200])

    def cpu_used(self) -> dict[str, float]:
        """CPU seconds each process used since it was tracked."""
        used = {}
        for name, pid in self._expand().items():
            now = _cpu_s(pid)
            start = self.cpu_start.get(name)
            if now is not None and start is not None:
                used[name] = now - start
        return used

    def peak_hwm(self, names: Iterable[str]) -> dict[str, float]:
        """VmHWM (MiB) of the processes still running whose name starts with one of `names`:
        their peak since they started (the bench's own; the broker's and the server's VmHWM
        would be their whole life's)."""
        prefixes = tuple(names)
        return {
            name: status["VmHWM"] / 1024
            for name, pid in self._expand().items()
            if name.startswith(prefixes) and "VmHWM" in (status := _status_of(pid))
        }

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=30)
        self.probe.close()


def _by_topic(lags: dict[offsets.Partition, int]) -> dict[str, int]:
    totals: Counter[str] = Counter()
    for (topic, _), behind in lags.items():
        totals[topic.rsplit(".", 1)[-1]] += behind
    return dict(totals)


class Freshness(threading.Thread):
    """The sampled orders' first row in `orders`, and their first row in a settled status
    (polled every 100 ms)."""

    def __init__(self, store_url: str) -> None:
        super().__init__(name="bench-freshness", daemon=True)
        self.store = connect(store_url)
        self.sent: dict[str, float] = {}
        self.visible: dict[str, float] = {}
        self.settled: dict[str, float] = {}
        self.missed: list[str] = []  # why a poll failed
        self.lock = threading.Lock()
        self.stopping = threading.Event()

    def sent_at(self, order_id: str, at: float) -> None:
        with self.lock:
            self.sent[order_id] = at

    def run(self) -> None:
        while not self.stopping.wait(0.1):
            with self.lock:
                waiting = [o for o in self.sent if o not in self.settled]
            if not waiting:
                continue
            ids = ", ".join(f"'{order_id}'" for order_id in waiting)
            try:
                rows = self.store.query(
                    f"SELECT order_id, status FROM {self.store.database}.orders "
                    f"WHERE order_id IN ({ids})"
                )
            except StoreError as exc:  # one poll lost; the next one sees the rows
                self.missed.append(str(exc)[:200])
                continue
            now = time.time()
            for order_id, status in rows:
                self.visible.setdefault(order_id, now)
                if status not in UNSETTLED:
                    self.settled.setdefault(order_id, now)

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=30)

    def figures(self) -> dict[str, Any]:
        def of(seen: dict[str, float]) -> dict[str, Any]:
            latencies = [seen[o] - sent for o, sent in self.sent.items() if o in seen]
            if not latencies:
                return {"orders": 0}
            return {
                "orders": len(latencies),
                "p50_s": percentile(latencies, 50),
                "p90_s": percentile(latencies, 90),
                "p99_s": percentile(latencies, 99),
                "max_s": max(latencies),
            }

        return {
            "sampled": len(self.sent),
            "visible": of(self.visible),
            "settled": of(self.settled),
            "polls_missed": len(self.missed),
        }


# ---------------------------------------------------------------- the run


@contextmanager
def scratch_database(settings: Settings) -> Iterator[tuple[ClickHouseStore, str]]:
    """A database of its own on the ClickHouse server, migrated; dropped afterwards."""
    database = f"bench_day_{uuid.uuid4().hex[:8]}"
    url = with_database_url(settings.resolved_clickhouse_url, database)
    if not url.startswith("clickhouse://"):
        raise RuntimeError("oms bench day needs the ClickHouse server (`oms stack up`)")
    store = connect(settings.resolved_clickhouse_url).with_database(database)
    store.execute(f"CREATE DATABASE IF NOT EXISTS {database}")
    try:
        migrate(store)
        yield store, url
    finally:
        store.execute(f"DROP DATABASE IF EXISTS {database}")


def receive_stock(settings: Settings) -> int:
    """Every stocked product received at every location (stores sell them over the POS);
    returns how many receipts were sent."""
    catalogue = load_catalogue()
    publisher = Publisher(settings)
    sent = 0
    for product in catalogue.products.values():
        if not product.stock_tracked:
            continue
        for location in catalogue.locations:
            event = operations.stock_receive(product.sku, location, quantity=STOCK, actor="bench")
            publisher.publish(operations.topic_for(settings, event), event)
            sent += 1
    publisher.flush(60)
    return sent


def statuses(store: ClickHouseStore) -> dict[str, int]:
    """Each order's latest status (by version), counted."""
    rows = store.query(
        f"SELECT status, count() FROM (SELECT order_id, argMax(status, version) AS status "
        f"FROM {store.database}.orders GROUP BY order_id) GROUP BY status"
    )
    return {str(status): int(count) for status, count in rows}


def wait_settled(
    store: ClickHouseStore, gauges: Gauges, *, expected: int, timeout_s: float
) -> tuple[float | None, dict[str, int]]:
    """Until ClickHouse holds `expected` orders, each in a status the worker leaves it in;
    returns when that was first seen (the start of the query that saw it; None if not within
    `timeout_s`) and the statuses. Asked once the projector has caught up with the logs, or
    every 10 s."""
    deadline = time.monotonic() + timeout_s
    asked = 0.0
    found: dict[str, int] = {}
    while time.monotonic() < deadline:
        latest = gauges.samples[-1] if gauges.samples else None
        caught_up = latest is not None and latest["projector_lag"] == 0
        if caught_up or time.monotonic() - asked > 10:
            asked = time.monotonic()
            at = time.time()
            found = statuses(store)
            waiting = sum(n for status, n in found.items() if status in UNSETTLED)
            if sum(found.values()) >= expected and not waiting:
                return at, found
        time.sleep(0.5)
    return None, statuses(store)


def event_counts(store: ClickHouseStore) -> dict[str, int]:
    rows = store.query(
        f"SELECT event_type, count() FROM {store.database}.order_events GROUP BY event_type"
    )
    return {str(kind): int(count) for kind, count in rows}


def busiest_processes(top: int = 6) -> list[str]:
    """What else is running, busiest first (`ps`), recorded with the figures."""
    found = subprocess.run(
        ["ps", "-eo", "pid,pcpu,rss,args", "--sort=-pcpu", "--no-headers"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.splitlines()
    others = [line.split(None, 1)[1] for line in found if int(line.split()[0]) != os.getpid()]
    return [" ".join(line.split())[:160] for line in others[:top]]


def _rss_flat(samples: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    """RSS at 30 % of the run against the end (bench memory's measure of flat)."""
    series = [(s["t"], s["rss_kib"][name]) for s in samples if name in s["rss_kib"]]
    if len(series) < 5:
        return None
    first, last = series[0][0], series[-1][0]
    at_30 = next(rss for t, rss in series if t >= first + 0.3 * (last - first))
    end = series[-1][1]
    growth = (end - at_30) / at_30
    return {
        "at_30pct_mib": at_30 / 1024,
        "end_mib": end / 1024,
        "growth": growth,
        "flat": growth <= FLAT_WITHIN,
    }


def measure(
    scratch: Settings,
    *,
    env: dict[str, str],
    store: ClickHouseStore,
    url: str,
    paths: list[Path],
    processes: dict[str, int],
    sample_every: int,
    log: Path,
    timeout_s: float,
) -> dict[str, Any]:
    """The feeder started and the run watched until the last order has settled in ClickHouse."""
    gauges = Gauges(scratch, url, processes)
    fresh = Freshness(url)
    gauges.start()
    fresh.start()
    command = [sys.executable, "-m", "bench.day", "feed", *map(str, paths)]
    command += ["--sample-every", str(sample_every)]
    report: dict[str, Any] = {}
    first: float | None = None
    with log.open("wb") as errors:
        feeder = subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=errors, text=True
        )
    try:
        gauges.track("feeder", feeder.pid)
        assert feeder.stdout is not None
        for line in feeder.stdout:
            kind, _, rest = line.strip().partition(" ")
            if kind == "sample":
                order_id, at = rest.split()
                fresh.sent_at(order_id, float(at))
            elif kind == "first":
                first = float(rest)
            elif kind == "report":
                report = json.loads(rest)
        if feeder.wait() != 0 or not report or first is None:
            raise RuntimeError(f"the feeder failed (exit {feeder.returncode}); see {log}")
        expected = report["orders"] + WARM
        done_at, settled = wait_settled(store, gauges, expected=expected, timeout_s=timeout_s)
        finished = done_at is not None
        done_at = done_at or time.time()
        cpu = gauges.cpu_used()
        hwm = gauges.peak_hwm(("worker", "projector"))
    finally:
        if feeder.poll() is None:
            feeder.kill()
            feeder.wait()
        fresh.stop()
        gauges.stop()
    wall = done_at - first
    samples = [s for s in gauges.samples if s["t"] <= done_at]
    worst_worker = max(samples, key=lambda s: s["worker_lag"])
    worst_projector = max(samples, key=lambda s: s["projector_lag"])
    cpu["feeder"] = report["cpu_s"]
    peak_mib = {name: kib / 1024 for name, kib in gauges.peak_rss.items()}
    peak_mib["feeder"] = max(peak_mib.get("feeder", 0.0), report["peak_rss_mib"])
    peak_mib |= {name: max(peak_mib.get(name, 0.0), mib) for name, mib in hwm.items()}
    freshness = fresh.figures()
    p99 = freshness["visible"].get("p99_s")
    settled_orders = sum(n for status, n in settled.items() if status not in UNSETTLED) - WARM
    return {
        "feeder": report,
        "finished": finished,
        "settled_orders": settled_orders,
        "wall_s": wall,
        "orders_per_s": settled_orders / wall,
        "feed_s": report["acked_at"] - first,
        "feed_orders_per_s": report["orders"] / (report["acked_at"] - first),
        "statuses": settled,
        "events": event_counts(store),
        "peak_rss_mib": peak_mib,
        "rss_flat": {
            name: flat
            for name in ("worker", "worker-1", "worker-2", "projector")
            if (flat := _rss_flat(samples, name)) is not None
        },
        "cpu_s": cpu,
        "cores_busy": {name: seconds / wall for name, seconds in cpu.items()},
        "max_worker_lag": worst_worker["worker_lag"],
        "max_worker_lag_by_topic": worst_worker["worker_lag_by_topic"],
        "max_worker_lag_at_s": worst_worker["t"] - first,
        "max_projector_lag": worst_projector["projector_lag"],
        "max_projector_lag_by_topic": worst_projector["projector_lag_by_topic"],
        "max_projector_lag_at_s": worst_projector["t"] - first,
        "lag_timeline": [
            {
                "at_s": round(s["t"] - first, 1),
                "worker_lag": s["worker_lag"],
                "projector_lag": s["projector_lag"],
                "rss_mib": {k: round(v / 1024) for k, v in s["rss_kib"].items()},
            }
            for s in samples[:: max(1, len(samples) // 60)]
            if s["t"] >= first
        ],
        "freshness": freshness,
        "gauge_samples_missed": gauges.missed[:5],
        "freshness_p99_target_s": FRESHNESS_P99_TARGET_S,
        "meets_freshness_target": p99 is not None and p99 <= FRESHNESS_P99_TARGET_S,
    }


def run(
    settings: Settings,
    *,
    orders_count: int = ORDERS,
    processes: int = 1,
    rate: float | None = None,
    restaurant_share: float = 0.5,
    seed: int = 7,
    timeout_s: float | None = None,
) -> dict[str, Any]:
    """The day through the whole pipeline; see the module's docstring. `timeout_s`: how long
    to wait, once the feeder is done, for the last order to settle (then the figures are of
    what settled by then)."""
    before = {"load_1min": round(os.getloadavg()[0], 2), "busiest": busiest_processes()}
    home = settings.home / "bench"
    home.mkdir(parents=True, exist_ok=True)
    day_s = orders_count / (rate or NOMINAL_RATE)
    with (
        tempfile.TemporaryDirectory() as tmp,
        scratch_topics(settings, "benchday") as scratch,
        scratch_database(scratch) as (store, url),
    ):
        made = time.perf_counter()
        paths, kinds, _ = make_day(
            Path(tmp),
            orders=orders_count,
            restaurant_share=restaurant_share,
            day_s=day_s,
            seed=seed,
        )
        made_s = time.perf_counter() - made
        catalogue = bench_catalogue(Path(tmp) / "catalogue.json")
        env = worker_env(scratch, catalogue) | {"OMS_CLICKHOUSE_URL": url}
        receipts = receive_stock(scratch)
        worker = [sys.executable, "-m", "oms.cli", "worker", "--processes", str(processes)]
        projector = [sys.executable, "-m", "oms.cli", "project"]
        with (
            faust_topics_deleted(scratch),
            bench_process(worker, env, log=home / "day-worker.log") as worker_process,
            bench_process(projector, env, log=home / "day-projector.log") as projector_process,
        ):
            wait_for_group(scratch, members=processes, timeout_s=120)
            stocked = Watcher(scratch, scratch.topics.inventory)
            stocked.follow(None, until=receipts, timeout_s=120)
            stocked.close()
            warm = orders(WARM, run="warm")
            publish_orders(scratch, scratch.topics.intake, warm, rate=None)
            _wait_settled_ids(store, [o.order_id for o in warm], timeout_s=120)
            infrastructure = {
                "broker": KafkaService(settings).process.pid(),
                "clickhouse": ClickHouseService(settings).process.pid(),
            }
            figures = measure(
                scratch,
                env=env,
                store=store,
                url=url,
                paths=paths,
                processes={
                    "worker": worker_process.pid,
                    "projector": projector_process.pid,
                    "bench": os.getpid(),
                    **{name: pid for name, pid in infrastructure.items() if pid is not None},
                },
                sample_every=max(1, orders_count // SAMPLES),
                log=home / "day-feeder.log",
                timeout_s=timeout_s or max(1800.0, orders_count / 100),
            )
    wall = figures["wall_s"]
    return {
        "orders": figures["feeder"]["orders"],
        "restaurant_share": restaurant_share,
        "processes": processes,
        "day_rate_per_s": rate or NOMINAL_RATE,
        "paced": rate is not None,
        "payloads_made": kinds,
        "payloads_made_s": made_s,
        "stock_receipts": receipts,
        **figures,
        "wall_target_s": WALL_TARGET_S * orders_count / ORDERS,
        "rate_target_per_s": RATE_TARGET_PER_S,
        "meets_wall_target": figures["finished"] and figures["orders_per_s"] >= RATE_TARGET_PER_S,
        "wall_over_target_s": max(0.0, wall - WALL_TARGET_S * orders_count / ORDERS),
        "worker_log": incidents(home / "day-worker.log"),
        "before": before,
    }


@contextmanager
def faust_topics_deleted(settings: Settings) -> Iterator[None]:
    """Faust's own topics of the worker group (its assignor's), deleted once the block ends."""
    try:
        yield
    finally:
        admin = AdminClient(admin_config(settings.kafka_bootstrap))
        prefix = f"{settings.consumer_group}-"
        own = [t for t in admin.list_topics(timeout=10).topics if t.startswith(prefix)]
        if own:
            for future in admin.delete_topics(own, operation_timeout=30).values():
                future.result(timeout=60)


INCIDENTS = {
    "heartbeat_expired": "Heartbeat session expired",
    "keepalive_not_responding": "keepalive is not responding",
    "commit_overlapping": "Timer commit is overlapping",
    "errors": "[ERROR]",
}


def incidents(log: Path) -> dict[str, int]:
    """How often the worker's log says it fell behind its group or its timers."""
    text = log.read_text(errors="replace") if log.exists() else ""
    return {name: text.count(marker) for name, marker in INCIDENTS.items()}


def _wait_settled_ids(store: ClickHouseStore, ids: Iterable[str], *, timeout_s: float) -> None:
    wanted = list(ids)
    quoted = ", ".join(f"'{order_id}'" for order_id in wanted)
    unsettled = ", ".join(f"'{status}'" for status in UNSETTLED)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        rows = store.query(
            f"SELECT uniqExact(order_id) FROM {store.database}.orders "
            f"WHERE order_id IN ({quoted}) AND status NOT IN ({unsettled})"
        )
        if rows[0][0] >= len(wanted):
            return
        time.sleep(0.2)
    raise RuntimeError("the warm-up orders never settled in ClickHouse")


def report(figures: dict[str, Any]) -> list[str]:
    f = figures
    feeder = f["feeder"]
    target = f["wall_target_s"]
    fresh = f["freshness"]
    lines = [
        f"the day: {f['orders']:,} orders ({f['restaurant_share']:.0%} restaurant), "
        f"{feeder['payloads']:,} payloads through the connectors "
        f"({feeder['kinds'].get('duplicate', 0):,} duplicates, "
        f"{feeder['kinds'].get('revision', 0):,} revisions, {feeder['dead_lettered']:,} "
        f"dead-lettered), {f['processes']} worker process(es), "
        + (f"paced at {f['day_rate_per_s']:,.0f}/s" if f["paced"] else "flat out"),
        (
            f"wall, first order sent -> last order settled in ClickHouse: {f['wall_s']:,.1f} s "
            if f["finished"]
            else f"NOT FINISHED: {f['settled_orders']:,} orders settled in {f['wall_s']:,.1f} s "
        )
        + f"({f['orders_per_s']:,.0f} orders/s)  "
        + (
            f"meets target {target:,.0f} s"
            if f["meets_wall_target"]
            else f"OVER target {target:,.0f} s by {f['wall_over_target_s']:,.0f} s"
        )
        + f" ({RATE_TARGET_PER_S:,.0f} orders/s)",
        f"  feeder: {f['feed_s']:,.1f} s for all payloads ({f['feed_orders_per_s']:,.0f} orders/s "
        f"acknowledged by Kafka)",
        "  statuses: " + ", ".join(f"{k} {v:,}" for k, v in sorted(f["statuses"].items())),
        "peak RSS (MiB): "
        + ", ".join(f"{k} {v:,.0f}" for k, v in sorted(f["peak_rss_mib"].items())),
        "CPU over the run (cores): "
        + ", ".join(
            f"{k} {v:.2f}" for k, v in sorted(f["cores_busy"].items(), key=lambda kv: -kv[1])
        ),
    ]
    for name, flat in f["rss_flat"].items():
        lines.append(
            f"  {name} RSS {flat['at_30pct_mib']:,.0f} MiB at 30 % of the run, "
            f"{flat['end_mib']:,.0f} at the end ({flat['growth']:+.1%}): "
            + ("flat" if flat["flat"] else f"GROWS (limit {FLAT_WITHIN:.0%})")
        )
    lines += [
        f"max lag: worker group {f['max_worker_lag']:,} ({f['max_worker_lag_by_topic']}) at "
        f"{f['max_worker_lag_at_s']:,.0f} s; projector {f['max_projector_lag']:,} "
        f"({f['max_projector_lag_by_topic']}) at {f['max_projector_lag_at_s']:,.0f} s (no target)",
    ]
    visible, settled = fresh["visible"], fresh["settled"]
    if visible.get("orders"):
        lines.append(
            f"freshness, send -> row in orders, {visible['orders']:,} of {fresh['sampled']:,} "
            f"sampled: p50 {visible['p50_s']:.2f} s, p90 {visible['p90_s']:.2f} s, p99 "
            f"{visible['p99_s']:.2f} s, max {visible['max_s']:.2f} s  "
            f"{'meets' if f['meets_freshness_target'] else 'ABOVE'} target p99 <= "
            f"{FRESHNESS_P99_TARGET_S:.0f} s (set for 500 orders/s)"
        )
    if settled.get("orders"):
        lines.append(
            f"  send -> settled: p50 {settled['p50_s']:.2f} s, p99 {settled['p99_s']:.2f} s"
        )
    lines.append(
        f"worker log: {f['worker_log']['heartbeat_expired']} heartbeat session(s) expired, "
        f"{f['worker_log']['commit_overlapping']} commit(s) overlapping, "
        f"{f['worker_log']['errors']} error line(s)"
    )
    lines.append(f"load before the run: {f['before']['load_1min']}")
    return lines


if __name__ == "__main__":
    main()
