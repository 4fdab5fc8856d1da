"""The cyclic garbage collector paused while a process builds a large state at once.

Folding a batch (the projector) or restoring a partition's snapshot and the shared views (a
worker's restart) allocates hundreds of thousands to millions of containers. With the
collector on, those allocations set off collections, and each full one walks everything alive
in the process, the state being built included: a restart after 1,000,000 orders spent about
40 % of its time in them (docs/benchmarks.md, "Recovery"). The states hold no cycles, and the
garbage of such a step is freed by reference counting as it goes.

`paused()` is counted across threads: the collector is off while any holder runs and back on
(if it was on) when the last one leaves. A holder that built something long-lived asks for
`freeze=True`: when the last holder leaves, everything alive is moved out of the collector's
sight (`gc.freeze`, as the worker does every second) before it is switched on again, so the
first collection afterwards does not walk what was just built. Cyclic garbage made meanwhile
is frozen with it and never collected (as with the worker's freeze each second): the worker
makes little — 260 objects in cycles over a 25,000-order `oms bench pipeline` run, counted
with `gc.callbacks`.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_holders = 0
_was_enabled = False
_freeze = False


@contextmanager
def paused(*, freeze: bool = False) -> Iterator[None]:
    """The collector off while the block runs (and while any other holder's does)."""
    global _holders, _was_enabled, _freeze
    with _lock:
        if _holders == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _holders += 1
        _freeze = _freeze or freeze
    try:
        yield
    finally:
        with _lock:
            _holders -= 1
            if _holders == 0:
                if _freeze:
                    gc.freeze()
                _freeze = False
                if _was_enabled:
                    gc.enable()


def holders() -> int:
    """Blocks running with the collector paused now (for tests)."""
    return _holders
