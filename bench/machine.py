"""What machine a figure came from, recorded next to every benchmark result."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

CLUTTERED_BROKER = 1000  # partitions: past this many a broker on 2 cores is measurably slower


def broker_partitions(bootstrap: str) -> int | None:
    """How many partitions the broker holds (None if it does not answer). Leftover test topics
    by the thousand once halved the pass-through figure: a result says what it ran beside."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    from infra.kafka import admin_config

    try:
        topics = AdminClient(admin_config(bootstrap)).list_topics(timeout=5).topics
    except KafkaException:
        return None
    return sum(len(topic.partitions) for topic in topics.values())


def describe(bootstrap: str | None = None) -> dict[str, Any]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_kb = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                memory_kb = int(line.split()[1])
    except OSError:
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gib": round(memory_kb / 2**20, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_1min": round(os.getloadavg()[0], 2),
        "broker_partitions": broker_partitions(bootstrap) if bootstrap else None,
    }


def write_result(
    home: Path, name: str, figures: dict[str, Any], machine: dict[str, Any] | None = None
) -> Path:
    """Write figures + machine + time to HOME/bench/NAME.json; returns the path."""
    target = home / "bench" / f"{name}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "bench": name,
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine or describe(),
        "figures": figures,
    }
    target.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    return target
