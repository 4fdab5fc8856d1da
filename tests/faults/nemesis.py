"""The nemesis: a seeded schedule of faults and the thread that carries it out.

Faults: kill -9 of a worker or of the projector (the supervisor starts it again after the
fault's pause), a broker restart and a ClickHouse server restart (stopped, data kept, started
again after the pause), a worker added or removed (one consumer group of one or two workers).
A schedule is a pure function of its seed and shape (`plan`), printed before the run; faults
are applied in order, each at its time or, when the one before took longer, right after it.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from tests.faults.supervisor import Supervisor

KILL_WORKER = "kill-worker"
KILL_PROJECTOR = "kill-projector"
RESTART_BROKER = "restart-broker"
RESTART_CLICKHOUSE = "restart-clickhouse"
ADD_WORKER = "add-worker"
REMOVE_WORKER = "remove-worker"
RESIZE = "resize-workers"  # in a plan's making: add or remove, whichever the count allows
KINDS = (KILL_WORKER, KILL_PROJECTOR, RESTART_BROKER, RESTART_CLICKHOUSE, ADD_WORKER, REMOVE_WORKER)
# How likely each kind is among the random faults of a long schedule.
WEIGHTS = {KILL_WORKER: 4, KILL_PROJECTOR: 3, RESTART_BROKER: 1, RESTART_CLICKHOUSE: 2, RESIZE: 2}
PAUSE_S = {
    KILL_WORKER: (0.5, 3.0),
    KILL_PROJECTOR: (0.5, 3.0),
    RESTART_BROKER: (1.0, 5.0),
    RESTART_CLICKHOUSE: (1.0, 5.0),
    ADD_WORKER: (0, 0),
    REMOVE_WORKER: (0, 0),
}
MIN_GAP_S = 2.0


@dataclass(frozen=True)
class Fault:
    at_s: float  # after the load starts
    kind: str
    pause_s: float  # how long the process or server stays down

    def describe(self) -> str:
        what = {
            KILL_WORKER: f"kill -9 a worker; the supervisor restarts it {self.pause_s:.1f} s later",
            KILL_PROJECTOR: f"kill -9 the projector; restarted {self.pause_s:.1f} s later",
            RESTART_BROKER: f"restart the broker (stop, data kept, {self.pause_s:.1f} s down)",
            RESTART_CLICKHOUSE: f"restart ClickHouse (stop, data kept, {self.pause_s:.1f} s down)",
            ADD_WORKER: "add a worker to the group",
            REMOVE_WORKER: "remove a worker from the group (SIGTERM)",
        }[self.kind]
        return f"{self.at_s:6.1f} s  {what}"


def plan(
    seed: int,
    *,
    duration_s: float,
    required: Sequence[str] = (),
    mean_gap_s: float | None = None,
    workers: int = 1,
) -> list[Fault]:
    """The schedule for `seed`: every kind in `required` once, at random points of the load's
    first three quarters, plus (with `mean_gap_s`) random faults about that far apart."""
    rng = random.Random(f"{seed}:nemesis")
    kinds = list(required)
    rng.shuffle(kinds)
    times = sorted(rng.uniform(0.1, 0.75) * duration_s for _ in kinds)
    timed = list(zip(times, kinds, strict=True))
    if mean_gap_s:
        at = rng.expovariate(1 / mean_gap_s)
        while at < 0.9 * duration_s:
            kind = rng.choices(list(WEIGHTS), weights=list(WEIGHTS.values()))[0]
            timed.append((at, kind))
            at += rng.expovariate(1 / mean_gap_s)
    faults = []
    last = -MIN_GAP_S
    for at, kind in sorted(timed):
        if kind == RESIZE:
            kind = ADD_WORKER if workers == 1 else REMOVE_WORKER
        if kind in (ADD_WORKER, REMOVE_WORKER):
            workers += 1 if kind == ADD_WORKER else -1
        at = max(at, last + MIN_GAP_S)
        low, high = PAUSE_S[kind]
        faults.append(Fault(round(at, 1), kind, round(rng.uniform(low, high), 1)))
        last = at
    return faults


class Restartable(Protocol):
    def restart_broker(self, pause_s: float) -> None: ...

    def restart_clickhouse(self, pause_s: float) -> None: ...


class Nemesis:
    """Carries out a schedule on a thread; `applied` records what happened when."""

    def __init__(
        self,
        faults: Sequence[Fault],
        *,
        seed: int,
        supervisor: Supervisor,
        stack: Restartable,
        say: Callable[[str], None],
    ) -> None:
        self.faults = list(faults)
        self.rng = random.Random(f"{seed}:victims")
        self.supervisor = supervisor
        self.stack = stack
        self.say = say
        self.applied: list[str] = []
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="nemesis", daemon=True)
        self._began = 0.0

    def start(self, began: float) -> None:
        self._began = began
        self._thread.start()

    def join(self) -> None:
        self._thread.join()
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        try:
            for fault in self.faults:
                delay = self._began + fault.at_s - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                started = time.monotonic() - self._began
                outcome = self._apply(fault)
                took = time.monotonic() - self._began - started
                line = f"{started:6.1f} s  {outcome} ({took:.1f} s)"
                self.applied.append(line)
                self.say("nemesis: " + line.strip())
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread by join()
            self.error = exc

    def _apply(self, fault: Fault) -> str:
        supervisor = self.supervisor
        match fault.kind:
            case "kill-worker":
                return supervisor.kill("worker", rng=self.rng, pause_s=fault.pause_s)
            case "kill-projector":
                return supervisor.kill("projector", rng=self.rng, pause_s=fault.pause_s)
            case "restart-broker":
                self.stack.restart_broker(fault.pause_s)
                return "restarted the broker"
            case "restart-clickhouse":
                self.stack.restart_clickhouse(fault.pause_s)
                return "restarted ClickHouse"
            case "add-worker":
                return f"added {supervisor.start('worker')}"
            case "remove-worker":
                return supervisor.retire("worker", rng=self.rng)
        raise ValueError(f"unknown fault {fault.kind!r}")
