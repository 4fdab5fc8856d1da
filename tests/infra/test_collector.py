"""The collector paused while states are built: counted across threads, restored as it was,
and what was built frozen only when the last holder that asked for it leaves."""

from __future__ import annotations

import gc
import threading

from infra import collector


def test_the_collector_is_back_on_only_when_the_last_holder_of_any_thread_leaves() -> None:
    entered, leave = threading.Event(), threading.Event()

    def other() -> None:
        with collector.paused():
            entered.set()
            leave.wait(10)

    thread = threading.Thread(target=other)
    frozen = gc.get_freeze_count()
    try:
        with collector.paused(freeze=True):
            thread.start()
            assert entered.wait(10)
            assert not gc.isenabled()
        assert not gc.isenabled(), "switched on while another thread still builds"
        assert gc.get_freeze_count() == frozen, "frozen before the last holder left"
        leave.set()
        thread.join(10)
        assert gc.isenabled()
        assert gc.get_freeze_count() > frozen, "the freeze asked for was not done"
        assert collector.holders() == 0
    finally:
        leave.set()
        gc.unfreeze()


def test_a_collector_that_was_off_stays_off() -> None:
    gc.disable()
    try:
        with collector.paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
