"""One fault run, start to finish: a private stack, the workers and the projector under a
supervisor, the workload and the nemesis together, a settle period, then the checker.

The run has its own Kafka broker and ClickHouse server (free ports, a temporary OMS_HOME), so
the nemesis can restart them without touching the shared stack other tests use.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import socket
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from events.codec import AvroCodec
from events.models import Event, OrderEvent, StockEvent
from infra.settings import Settings
from oms.stack import ClickHouseService, KafkaService
from tests.conftest import settings_env
from tests.faults import observe
from tests.faults.brokers import SUITE_PARTITIONS
from tests.faults.checker import (
    Observation,
    Result,
    check,
    fold_ledger,
    histories,
    suspect_reservations,
)
from tests.faults.nemesis import (
    KILL_PROJECTOR,
    KILL_WORKER,
    RESTART_BROKER,
    RESTART_CLICKHOUSE,
    Fault,
    Nemesis,
    plan,
)
from tests.faults.supervisor import Supervisor
from tests.faults.workload import Load, Workload, WorkloadReport, write_catalogue

ROOT = Path(__file__).resolve().parents[2]
REQUIRED = (KILL_WORKER, KILL_PROJECTOR, RESTART_BROKER, RESTART_CLICKHOUSE)
STARTUP_TIMEOUT_S = 180.0
CATCH_UP_S = 60.0  # for the projector, once the workers are stopped


class HarnessError(RuntimeError):
    """The run could not be carried out (not a property violated: the harness itself)."""


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class PrivateStack:
    """A Kafka broker (KRaft) and a ClickHouse server of the run's own, under `home`."""

    def __init__(self, home: Path, *, kafka_libs: Path) -> None:
        if shutil.which("clickhouse-server") is None:
            raise HarnessError(
                "the fault harness restarts a ClickHouse server: install "
                "clickhouse-server (make test does, as root)"
            )
        kafka, controller, native, http = free_ports(4)
        home.mkdir(parents=True, exist_ok=True)
        self.settings = Settings(
            home=home,
            kafka_bootstrap=f"localhost:{kafka}",
            kafka_controller_port=controller,
            kafka_libs=kafka_libs,
            # The suite's 4, not the product's 12: a restarted worker rebuilds every partition
            # it is given within the settle bound (tests/faults/brokers.py, SUITE_PARTITIONS).
            kafka_partitions=SUITE_PARTITIONS,
            clickhouse_port=native,
            clickhouse_http_port=http,
            clickhouse_url=f"clickhouse://127.0.0.1:{native}/oms?http_port={http}",
            catalogue_file=write_catalogue(home / "catalogue.json"),
        )
        self.kafka = KafkaService(self.settings)
        self.clickhouse = ClickHouseService(self.settings)

    def up(self) -> None:
        with _detached():
            self.kafka.up()
            self.clickhouse.up()

    def down(self) -> None:
        self.clickhouse.down()
        self.kafka.down()

    def restart_broker(self, pause_s: float) -> None:
        self.kafka.down()
        time.sleep(pause_s)
        with _detached():
            self.kafka.up()

    def restart_clickhouse(self, pause_s: float) -> None:
        self.clickhouse.down()
        time.sleep(pause_s)
        with _detached():
            self.clickhouse.up()

    def env(self) -> dict[str, str]:
        """What `oms worker` and `oms project` need to use this stack (and this source)."""
        return settings_env(self.settings) | {
            "OMS_CATALOGUE_FILE": str(self.settings.catalogue_file),
            "PYTHONPATH": str(ROOT),
        }


@contextlib.contextmanager
def _detached() -> Iterator[None]:
    """`oms.stack` starts a server and keeps its pid file, not its `Popen`: the object is
    dropped while the server runs, which warns (ResourceWarning). That is by design there."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        yield


@dataclass(frozen=True)
class Scenario:
    seed: int
    load: Load = field(default_factory=Load)
    settle_s: float = 60.0  # the liveness bound: how long after the faults orders may take
    quiet_s: float = 5.0  # how long the command topics must not grow once settled
    workers: int = 1
    mean_gap_s: float | None = None  # random faults this far apart, besides the required ones

    def faults(self) -> list[Fault]:
        return plan(
            self.seed,
            duration_s=self.load.duration_s,
            required=REQUIRED,
            mean_gap_s=self.mean_gap_s,
            workers=self.workers,
        )

    def command(self) -> str:
        """The command line that replays this scenario."""
        return (
            f".venv/bin/python -m tests.faults --seed {self.seed} "
            f"--duration {self.load.duration_s:g} --rate {self.load.rate:g} "
            f"--settle {self.settle_s:g} --workers {self.workers} "
            f"--fault-gap {self.mean_gap_s or 0:g}"
        )


@dataclass
class Run:
    scenario: Scenario
    result: Result
    schedule: list[Fault]
    applied: list[str]
    workload: WorkloadReport
    home: Path
    elapsed_s: float
    settled_after_s: float | None

    def report(self) -> str:
        settled = (
            f"settled {self.settled_after_s:.0f} s after the faults stopped"
            if self.settled_after_s is not None
            else f"NOT settled within {self.scenario.settle_s:.0f} s"
        )
        lines = [
            f"fault run, seed {self.scenario.seed} ({self.elapsed_s:.0f} s; {settled})",
            f"  load: {self.workload.describe()}",
            "  faults:",
            *(f"    {line}" for line in self.applied),
            "  " + self.result.report().replace("\n", "\n  "),
            f"  replay: {self.scenario.command()}",
        ]
        if not self.result.ok:
            lines.append(f"  logs and the named orders' histories: {self.home}")
        return "\n".join(lines)


def run(
    scenario: Scenario,
    *,
    home: Path,
    kafka_libs: Path | None = None,
    keep: bool = False,
    say: Callable[[str], None] = print,
) -> Run:
    """Carry out `scenario` against a fresh private stack under `home`; check; tear down.
    A passed run's home is removed; a failed one keeps its logs and `evidence.txt` (and, with
    `keep`, the broker's and ClickHouse's data too)."""
    began = time.monotonic()

    def note(message: str) -> None:
        say(f"[{time.monotonic() - began:6.1f} s] {message}")

    libs = kafka_libs or Settings().kafka_libs_dir
    stack = PrivateStack(home, kafka_libs=libs)
    settings = stack.settings
    schedule = scenario.faults()
    note(
        f"seed {scenario.seed}; nemesis schedule:\n"
        + "\n".join("    " + fault.describe() for fault in schedule)
    )
    supervisor = Supervisor(
        env=stack.env(),
        cwd=ROOT,
        logs=home / "logs",
        clock=lambda: time.monotonic() - began,
        say=note,
    )
    reader: observe.TopicReader | None = None
    ok = False
    try:
        stack.up()
        note(
            f"private stack up: kafka {settings.kafka_bootstrap}, clickhouse "
            f"{settings.clickhouse_port}"
        )
        for _ in range(scenario.workers):
            supervisor.start("worker")
        supervisor.start("projector")
        supervisor.watch()
        workload = Workload(settings, scenario.load, seed=scenario.seed)
        receipts = workload.send_initial_stock()
        _wait_for_ledger(settings, receipts, supervisor)
        note(f"{receipts} initial stock receipts on the ledger; load starts")

        load_began = time.monotonic()
        nemesis = Nemesis(
            schedule, seed=scenario.seed, supervisor=supervisor, stack=stack, say=note
        )
        nemesis.start(load_began)
        report = workload.run()
        note(f"load done: {report.describe()}")
        nemesis.join()
        try:
            _wait(supervisor.all_up, timeout_s=60, what="every process up after the faults")
        except HarnessError as exc:  # processes_stay_up will say which, and why
            note(str(exc))
        faults_over = time.monotonic()
        note("faults over; waiting for the orders to settle")

        codec = AvroCodec()
        reader = observe.TopicReader(settings, settings.topics.orders, codec)
        settled_after = _settle(settings, scenario, report, reader, since=faults_over, say=note)
        observation = _observe(settings, scenario, report, reader, supervisor, codec)
        if settled_after is not None:
            observation = replace(observation, settle_s=settled_after)
        result = check(observation)
        ok = result.ok
        if not ok:
            _write_evidence(home / "evidence.txt", result, observation)
        return Run(
            scenario,
            result,
            schedule,
            nemesis.applied,
            report,
            home,
            time.monotonic() - began,
            settled_after,
        )
    finally:
        if reader is not None:
            reader.close()
        supervisor.stop_all()
        stack.down()
        if ok and not keep:
            shutil.rmtree(home, ignore_errors=True)
        elif not keep:  # the logs say what happened; the data is large and says no more
            for data in (home / "kafka" / "data", home / "clickhouse" / "data"):
                shutil.rmtree(data, ignore_errors=True)


def _settle(
    settings: Settings,
    scenario: Scenario,
    report: WorkloadReport,
    reader: observe.TopicReader,
    *,
    since: float,
    say: Callable[[str], None],
) -> float | None:
    """Wait until every order is at rest, every acknowledged order is on the log and the
    projector has caught up; how long that took, or None if not within the bound."""
    follower = observe.OrderFollower(reader)
    behind = observe.caught_up(settings)
    while True:
        follower.catch_up()
        missing = report.acknowledged - follower.by_order.keys()
        lag = behind()
        if not follower.restless and not missing and lag == 0:
            say("settled")
            return time.monotonic() - since
        if time.monotonic() - since > scenario.settle_s:
            say(
                f"not settled: {len(follower.restless)} orders in flight, {len(missing)} "
                f"acknowledged orders not on the log, projector behind {lag}"
            )
            return None
        time.sleep(1.0)


def _observe(
    settings: Settings,
    scenario: Scenario,
    report: WorkloadReport,
    reader: observe.TopicReader,
    supervisor: Supervisor,
    codec: AvroCodec,
) -> Observation:
    """Everything the checker looks at, read once the orders settled (or the bound passed)."""
    from connectors.dead_letters import read_dead_letters

    commands = (settings.topics.stock_commands, settings.topics.order_commands)
    before = {t: _size(settings, t) for t in commands}
    time.sleep(scenario.quiet_s)
    growth = {t: _size(settings, t) - before[t] for t in commands}
    lag = observe.worker_lag(settings)
    # Freeze the system, so the logs and ClickHouse are read as one consistent picture: the
    # workers stop writing, the projector gets a last chance to catch up with what they wrote.
    supervisor.stop("worker")
    behind = observe.caught_up(settings)
    with contextlib.suppress(HarnessError):
        _wait(lambda: behind() == 0, timeout_s=CATCH_UP_S, what="the projector")
    supervisor.stop("projector")
    reader.read_to_end()
    order_log = [e for e in reader.events if isinstance(e, OrderEvent)]
    ledger_reader = observe.TopicReader(settings, settings.topics.inventory, codec)
    try:
        ledger = observe.ledger_events(ledger_reader)
    finally:
        ledger_reader.close()
    suspects = suspect_reservations(order_log, fold_ledger(ledger))
    return Observation(
        acknowledged=frozenset(report.acknowledged),
        order_log=order_log,
        ledger=ledger,
        dead_letters=list(read_dead_letters(settings)),
        malformed=list(report.malformed),
        topic_sizes=observe.topic_sizes(settings),
        growth=growth,
        quiet_s=scenario.quiet_s,
        settle_s=scenario.settle_s,
        clickhouse=_snapshot(settings),
        unexpected_exits=list(supervisor.unexpected),
        tails=[observe.tail(settings, t, codec) for t in commands],
        release_commands=observe.release_commands(settings, suspects, codec),
        lag=lag,
        command_topics=commands,
    )


UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
ENVELOPE = frozenset(
    {
        "event_id",
        "occurred_at",
        "recorded_at",
        "correlation_id",
        "causation_id",
        "actor",
        "order_id",
        "channel",
        "external_id",
        "sequence",
    }
)


def _write_evidence(path: Path, result: Result, obs: Observation) -> None:
    """The histories of the orders the violations name, with their ledger events."""
    named = dict.fromkeys(UUID.findall("\n".join(e for v in result.violations for e in v.examples)))
    by_order = histories(obs.order_log)
    ledger: dict[str, list[StockEvent]] = {}
    for event in obs.ledger:
        order_id = getattr(event, "order_id", None)
        if isinstance(order_id, str) and order_id in named:
            ledger.setdefault(order_id, []).append(event)
    lines = []
    for order_id in named:
        if order_id not in by_order:
            continue
        lines.append(f"== order {order_id}")
        for order_event in by_order[order_id]:
            lines.append(
                f"  {order_event.sequence:3d} {order_event.event_type:<24} {_payload(order_event)}"
            )
        for stock_event in ledger.get(order_id, []):
            lines.append(
                f"  ledger {stock_event.aggregate_id} #{stock_event.sequence} "
                f"{stock_event.event_type} {_payload(stock_event)}"
            )
    path.write_text("\n".join(lines) + "\n")


def _payload(event: Event) -> str:
    fields = event.model_dump(mode="json", exclude=set(ENVELOPE | {"sku", "location"}))
    return json.dumps(fields, ensure_ascii=False)[:400]


def _snapshot(settings: Settings) -> observe.ClickHouseSnapshot | None:
    try:
        return observe.clickhouse_snapshot(settings)
    except Exception:  # noqa: BLE001 - the checker reports an unreadable ClickHouse
        return None


def _size(settings: Settings, topic: str) -> int:
    return sum(high - low for low, high in observe.end_offsets(settings, topic).values())


def _wait(check: Callable[[], bool], *, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise HarnessError(f"timed out waiting for {what}")
        time.sleep(0.5)


def _wait_for_ledger(settings: Settings, receipts: int, supervisor: Supervisor) -> None:
    """Until the inventory agent has taken the initial stock in (the worker is up)."""
    try:
        _wait(
            lambda: _size(settings, settings.topics.inventory) >= receipts,
            timeout_s=STARTUP_TIMEOUT_S,
            what="the initial stock on the ledger",
        )
    except HarnessError as exc:
        raise HarnessError(f"{exc}; unexpected exits: {supervisor.unexpected}") from exc
    time.sleep(2.0)  # the workers' stock views read the ledger too
