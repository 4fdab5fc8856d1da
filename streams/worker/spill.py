"""Where the order agent keeps the orders it holds no more in memory (`SpilledOrders`, see
streams/partitions.py): an SQLite file per partition and worker, a cache of the order log.

The file is this process's alone — in the process's own directory (`claim_directory`), named
with a token of its own, made empty when the partition is rebuilt and deleted when it is
forgotten — so nothing depends on it across processes or hosts: a worker that takes the
partition over rebuilds from the log, as always. It is written without a journal or fsync (a
crash loses nothing the log does not hold). A process killed leaves its directory behind
(nobody deleted its files): the next process to claim a directory under the same base removes
every directory whose process is gone, known by its lock (held for the process's life, freed
by the kernel however it ends).

States are pickled (they are this version's own objects, read back by the same process) by
a `Sealer` when given one: every event in a state, the order's receipt first, is then stored
as its sealed Avro encoding, so the file holds no personal data in clear — and a snapshot
(streams/worker/snapshots.py) carries the file itself (`image`, SQLite's serialisation), which
a restore writes back as the file (`load_image`): no order is decoded, no row inserted.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pickle
import shutil
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from streams.orders import OrderState

if TYPE_CHECKING:
    from streams.worker.snapshots import Sealer


LOCK = "owner.lock"
ABANDONED_AFTER_S = 60.0  # a directory with no lock yet, so old, was left by a process that died
_claimed: dict[Path, tuple[int, int, Path]] = {}  # base -> (pid, lock's fd, its directory)


def claim_directory(base: Path) -> Path:
    """This process's own directory for its spill files under `base` (the same one each time
    it asks), locked for the process's life; first, the directories of processes that are gone
    are removed, and files left directly in `base` by versions that kept no directory."""
    claimed = _claimed.get(base)
    if claimed is not None and claimed[0] == os.getpid():
        return claimed[2]
    base.mkdir(parents=True, exist_ok=True)
    sweep(base)
    directory = base / f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    directory.mkdir()
    fd = os.open(directory / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # new: nobody else can hold it
    _claimed[base] = (os.getpid(), fd, directory)
    return directory


def sweep(base: Path) -> list[Path]:
    """Remove what dead processes left under `base`: each directory whose lock nobody holds
    (its process ended without deleting its files: SIGKILL, a crash, a power cut); what it
    removed."""
    removed: list[Path] = []
    for entry in sorted(base.iterdir()):
        if entry.is_file() and entry.name.startswith("orders-p") and entry.suffix == ".sqlite":
            entry.unlink(missing_ok=True)  # an older version's (an open file stays readable)
            removed.append(entry)
        elif entry.is_dir() and _abandoned(entry):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def _abandoned(directory: Path) -> bool:
    try:
        fd = os.open(directory / LOCK, os.O_RDWR)
    except FileNotFoundError:
        # Being made this moment (the lock comes right after the directory), or its process
        # died in between: a minute tells them apart.
        return time.time() - directory.stat().st_mtime > ABANDONED_AFTER_S
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False  # its process is alive
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)  # closing drops the lock this probe took
    return True


EVICT_AT_ONCE = 5_000  # rows an `evict` deletes at most (a timer's tick, on the event loop)
# Rows an INSERT writes at most: 3 parameters each, under SQLite's 32,766 a statement (3.32+).
ROWS_A_STATEMENT = 3_000


class SpillFile:
    def __init__(
        self,
        directory: Path,
        partition: int,
        *,
        sealer: Sealer | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._dumps = sealer.dumps if sealer else _dumps
        self._loads = sealer.loads if sealer else pickle.loads
        self._clock = clock
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"orders-p{partition}-{uuid.uuid4().hex[:12]}.sqlite"
        self._db = _open(self.path)
        # A rowid table: the states (kilobytes each) sit in its own B-tree, and the order ids
        # in a small index that stays in the page cache. (WITHOUT ROWID kept each state in the
        # key's B-tree: a few rows a page, so a lookup — every new order asks — read pages
        # off the file as it grew: 78 µs a miss and 134 µs a row written at 100,000 rows,
        # against 14 and 12; docs/benchmarks.md, "The day".)
        # `put_at`: when the row was last written (seconds since the epoch), for `evict`.
        self._db.execute(
            "CREATE TABLE orders (order_id TEXT PRIMARY KEY, state BLOB, put_at INTEGER)"
        )
        self._db.execute("CREATE INDEX orders_put_at ON orders (put_at)")
        self.count = 0  # states written (a state written again counts again)

    def get(self, order_id: str) -> OrderState | None:
        if not self.count:
            return None  # nothing spilled yet: every new order asks, and the answer is known
        query = "SELECT state FROM orders WHERE order_id = ?"
        row = self._db.execute(query, (order_id,)).fetchone()
        return None if row is None else self._loads(row[0])  # our own bytes

    def put(self, states: Mapping[str, OrderState]) -> None:
        self.put_rows([(oid, self._dumps(s)) for oid, s in states.items()])

    def put_rows(self, rows: Iterable[tuple[str, bytes]]) -> None:
        """Write `rows` (order id, sealed state), `ROWS_A_STATEMENT` to a statement.

        Not `executemany`: Python's sqlite3 lets go of the GIL around each row's step, and
        takes it back only when the thread holding it lets go, up to the switch interval (5
        ms) later while another thread computes (the shared views' reader, the sink's
        poller, the other partitions' rebuilds). 5,000 rows took 16.6 s beside one busy
        thread here against 0.07 s in statements of many rows (docs/benchmarks.md,
        "Recovery")."""
        rows = list(rows)
        if not rows:
            return
        now = int(self._clock())
        self._db.execute("BEGIN")
        for start in range(0, len(rows), ROWS_A_STATEMENT):
            chunk = rows[start : start + ROWS_A_STATEMENT]
            self._db.execute(
                "INSERT OR REPLACE INTO orders VALUES " + ",".join(["(?, ?, ?)"] * len(chunk)),
                [value for order_id, state in chunk for value in (order_id, state, now)],
            )
        self._db.execute("COMMIT")
        self.count += len(rows)

    def evict(self, before: float, *, at_most: int = EVICT_AT_ONCE) -> int:
        """Delete the rows last written before `before` (seconds since the epoch), at most
        `at_most` of them, oldest first; how many went. Their pages are reused by later rows,
        so a file whose orders are evicted as fast as they come stops growing."""
        deleted = self._db.execute(
            "DELETE FROM orders WHERE rowid IN "
            "(SELECT rowid FROM orders WHERE put_at < ? ORDER BY put_at LIMIT ?)",
            (int(before), at_most),
        ).rowcount
        return max(deleted, 0)

    def image(self) -> bytes:
        """The file as it is now (a consistent copy: taken between two writes)."""
        return self._db.serialize()

    def load_image(self, image: bytes | memoryview) -> None:
        """Become the file `image` was taken of (this one empty, as after a rebuild's start)."""
        self._db.close()
        write_around_the_cache(self.path, image)
        self._db = _open(self.path)
        # Rows written into it, at most (rowids grow; a replaced row gets a new one): looked
        # up in the table's B-tree, where count(*) walked every page of an index.
        self.count = self._db.execute("SELECT coalesce(max(rowid), 0) FROM orders").fetchone()[0]

    def close(self) -> None:
        self._db.close()
        self.path.unlink(missing_ok=True)


def write_around_the_cache(path: Path, data: bytes | memoryview) -> str:
    """Write `data` as the file at `path`, with O_DIRECT where the data allows it (page-aligned
    in memory, whole pages) and the file system takes it; else through the page cache. How it
    was written ("direct" or "cached").

    A restart writes every partition's spill image back, ~100 MB a partition at a million
    orders. Through the page cache each 4 KiB page of it was allocated, zeroed and copied on
    the CPU the other partitions' rebuilds need (~0.2-0.4 s per 100 MB here, under load);
    O_DIRECT hands the pages to the disk from where they are (~0.08 s, mostly waiting). The
    rows are read back a few pages at a time, when an input touches their order."""
    view = memoryview(data).cast("B")
    direct = getattr(os, "O_DIRECT", 0)
    if direct and view.nbytes and view.nbytes % 4096 == 0:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | direct, 0o600)
            try:
                written = 0
                while written < view.nbytes:
                    written += os.write(fd, view[written:])
            finally:
                os.close(fd)
            return "direct"
        except OSError:
            pass  # misaligned in memory, or a file system without O_DIRECT (tmpfs): cached
    path.write_bytes(view)
    return "cached"


def image_rows(image: bytes | memoryview) -> list[tuple[str, bytes]]:
    """The rows of a spill file's `image`, for a partition that keeps no file."""
    db = sqlite3.connect(":memory:")
    try:
        db.deserialize(image)
        return db.execute("SELECT order_id, state FROM orders").fetchall()
    finally:
        db.close()


def _open(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode = OFF")
    db.execute("PRAGMA synchronous = OFF")
    return db


def _dumps(state: OrderState) -> bytes:
    return pickle.dumps(state, pickle.HIGHEST_PROTOCOL)
