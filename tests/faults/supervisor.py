"""The run's long-lived processes (`oms worker`, `oms project`), kept up as a supervisor would:
a process the nemesis killed comes back after the pause it chose; one that exits on its own is
written down (the checker reports it) and restarted after a short backoff."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

COMMANDS: dict[str, list[str]] = {
    "worker": ["worker", "--loglevel", "info"],
    "projector": ["project"],
}
BACKOFF_S = 2.0
WAIT_FOR_VICTIM_S = 60.0


@dataclass
class Managed:
    name: str
    kind: str
    log: Path
    process: subprocess.Popen[bytes]
    restart_at: float | None = None  # when it is down: when to start it again
    retired: bool = False  # stopped on purpose (a worker removed): not restarted
    exits: list[str] = field(default_factory=list)


class Supervisor:
    def __init__(
        self,
        *,
        env: dict[str, str],
        cwd: Path,
        logs: Path,
        clock: Callable[[], float],
        say: Callable[[str], None],
    ) -> None:
        self.env = env
        self.cwd = cwd
        self.logs = logs
        self.clock = clock  # seconds since the run began, for the record
        self.say = say
        self.unexpected: list[str] = []
        self._managed: list[Managed] = []
        self._numbers: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="supervisor", daemon=True)

    def _spawn(self, kind: str, log: Path) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            return subprocess.Popen(
                [sys.executable, "-m", "oms.cli", *COMMANDS[kind]],
                env=self.env,
                cwd=self.cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def start(self, kind: str) -> str:
        with self._lock:
            number = self._numbers[kind] = self._numbers.get(kind, 0) + 1
            name = f"{kind}#{number}"
            self.logs.mkdir(parents=True, exist_ok=True)
            log = self.logs / f"{kind}-{number}.log"
            self._managed.append(Managed(name, kind, log, self._spawn(kind, log)))
            return name

    def watch(self) -> None:
        self._thread.start()

    def live(self, kind: str) -> list[Managed]:
        return [m for m in self._managed if m.kind == kind and not m.retired]

    def kill(self, kind: str, *, rng: random.Random, pause_s: float) -> str:
        """kill -9 one process of `kind` (its whole process group); back after `pause_s`. If
        none runs just now (one is restarting), wait for one, so a planned kill happens."""
        deadline = time.monotonic() + WAIT_FOR_VICTIM_S
        while True:
            with self._lock:
                running = [
                    m for m in self.live(kind) if m.restart_at is None and m.process.poll() is None
                ]
                if running:
                    victim = rng.choice(sorted(running, key=lambda m: m.name))
                    _signal_group(victim.process, signal.SIGKILL)
                    victim.process.wait()
                    victim.restart_at = time.monotonic() + pause_s
                    return f"kill -9 {victim.name} (pid {victim.process.pid})"
            if time.monotonic() > deadline:
                return f"no {kind} came up within {WAIT_FOR_VICTIM_S:.0f} s to be killed"
            time.sleep(0.2)

    def retire(self, kind: str, *, rng: random.Random) -> str:
        """Stop one process of `kind` for good (SIGTERM), as when a worker is removed."""
        with self._lock:
            running = [m for m in self.live(kind) if m.restart_at is None]
            if len(running) < 2:
                return f"not removing the last {kind}"
            leaving = rng.choice(sorted(running, key=lambda m: m.name))
            leaving.retired = True
        _stop(leaving.process)
        return f"removed {leaving.name} (SIGTERM)"

    def all_up(self) -> bool:
        with self._lock:
            return all(
                m.restart_at is None and m.process.poll() is None
                for m in self._managed
                if not m.retired
            )

    def _watch(self) -> None:
        while not self._stop.wait(0.25):
            with self._lock:
                for managed in self._managed:
                    if not managed.retired:
                        self._tend(managed)

    def _tend(self, managed: Managed) -> None:
        if managed.restart_at is None:
            code = managed.process.poll()
            if code is None:
                return
            what = (
                f"{managed.name} exited on its own (rc={code}) at {self.clock():.1f} s: "
                f"{_last_words(managed.log)}"
            )
            self.unexpected.append(what)
            self.say(what)
            managed.restart_at = time.monotonic() + BACKOFF_S
        elif time.monotonic() >= managed.restart_at:
            managed.process = self._spawn(managed.kind, managed.log)
            managed.restart_at = None
            self.say(f"restarted {managed.name} (pid {managed.process.pid})")

    def stop(self, kind: str) -> None:
        """Stop every process of `kind` for good (SIGTERM, SIGKILL after 30 s)."""
        with self._lock:
            leaving = self.live(kind)
            for managed in leaving:
                managed.retired = True
        for managed in leaving:
            _stop(managed.process)

    def stop_all(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        for managed in self._managed:
            _stop(managed.process)


def _signal_group(process: subprocess.Popen[bytes], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # already gone
        os.killpg(process.pid, signum)


def _stop(process: subprocess.Popen[bytes], *, timeout_s: float = 30.0) -> None:
    if process.poll() is not None:
        return
    _signal_group(process, signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _signal_group(process, signal.SIGKILL)
        process.wait()


def _last_words(log: Path, *, size: int = 4000) -> str:
    """The last line of a process's log that says something (usually the exception)."""
    try:
        with log.open("rb") as f:
            f.seek(max(0, log.stat().st_size - size))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    said = [line.strip() for line in lines if line.strip()]
    return said[-1][:300] if said else "(empty log)"
