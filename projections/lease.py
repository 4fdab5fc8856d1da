"""One writer per read-model database: a host-local lease, and the hand-over for a rebuild's swap.

Two `flock` files under HOME/run, named after the ClickHouse URL:
- `.lock`: held by the projector that writes the live tables. A second `oms project` against
  the same database waits for it (a hot standby) instead of writing the same rows twice.
- `.swap`: held by a rebuild that wants to swap its tables in. The live projector checks it
  between batches; when it is held, the projector lets go of `.lock`, waits until the swap is
  done and resumes from what the new tables hold.

The kernel drops both locks when their process dies (even by SIGKILL), so a crash never leaves
a stale lease behind. The lease covers one host; projectors on different hosts must not write
the same database.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
from pathlib import Path
from typing import IO, TYPE_CHECKING
from urllib.parse import urlparse

if TYPE_CHECKING:
    from infra.settings import Settings
    from projections.store import ClickHouseStore

log = logging.getLogger(__name__)


def _open(path: Path) -> IO[bytes]:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.open("a+b")


class ProjectorLease:
    def __init__(self, *, home: Path, clickhouse_url: str) -> None:
        digest = hashlib.sha1(clickhouse_url.encode()).hexdigest()[:16]
        self.lock_path = home / "run" / f"projector-{digest}.lock"
        self.swap_path = home / "run" / f"projector-{digest}.swap"
        self._lock: IO[bytes] | None = None
        self._swap: IO[bytes] | None = None

    def acquire(self) -> None:
        """Take the writer's lease, waiting while another process holds it."""
        if self._lock is not None:
            return
        handle = _open(self.lock_path)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.warning("another projector writes this database; waiting for %s", self.lock_path)
            fcntl.flock(handle, fcntl.LOCK_EX)
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n".encode())
        handle.flush()
        self._lock = handle

    def release(self) -> None:
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    def swap_requested(self) -> bool:
        """True while a rebuild holds the swap lock (checked by the live projector)."""
        with _open(self.swap_path) as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(handle, fcntl.LOCK_UN)
            return False

    def wait_for_swap(self) -> None:
        """Let the rebuild swap: release the lease, wait for the swap to end, take it back."""
        self.release()
        log.warning("a rebuild is swapping in new tables; pausing until it is done")
        with _open(self.swap_path) as handle:
            fcntl.flock(handle, fcntl.LOCK_SH)
            fcntl.flock(handle, fcntl.LOCK_UN)
        self.acquire()

    def begin_swap(self) -> None:
        """For a rebuild: ask the live projector to step aside, then take the lease."""
        if self._swap is None:
            handle = _open(self.swap_path)
            fcntl.flock(handle, fcntl.LOCK_EX)
            self._swap = handle
        self.acquire()

    def end_swap(self) -> None:
        self.release()
        if self._swap is not None:
            fcntl.flock(self._swap, fcntl.LOCK_UN)
            self._swap.close()
            self._swap = None


def lease_key(settings: Settings, store: ClickHouseStore) -> str:
    """What names the database for the lease: the ClickHouse (server address or chDB path) and
    the database."""
    url = urlparse(settings.resolved_clickhouse_url)
    # The server's address without the user: every user of one database shares its lease.
    where = url.netloc.rsplit("@", 1)[-1] if url.scheme == "clickhouse" else url.path
    return f"{url.scheme}://{where}#{store.database}"
