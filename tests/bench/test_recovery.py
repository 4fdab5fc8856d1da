"""The restart bench on the real broker, small: the restart runs in a new process, replays
exactly the tail written after the snapshots, and reports the worker ready only once both
its partitions and its shared views are back."""

from __future__ import annotations

from bench import recovery
from infra.settings import Settings


def test_the_restart_is_measured_in_a_new_process_over_the_tail_alone(
    isolated_settings: Settings,
) -> None:
    figures = recovery.run(isolated_settings, orders=200, tail=20, in_flight=0.05)
    assert figures["tail_events"] > 20 * 4 - 1
    assert figures["replayed_events"] == figures["tail_events"]
    ready = figures["restart_s"]
    assert ready >= figures["restart_partitions_s"] > 0
    assert ready >= figures["restart_views_s"] > 0
    assert figures["partitions_alone_s"] > 0
    assert any("ready in" in line for line in recovery.report(figures))
