"""What machine a figure came from, recorded next to every benchmark result."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any


def describe() -> dict[str, Any]:
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
    }


def write_result(home: Path, name: str, figures: dict[str, Any]) -> Path:
    """Write figures + machine + time to HOME/bench/NAME.json; returns the path."""
    target = home / "bench" / f"{name}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "bench": name,
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": describe(),
        "figures": figures,
    }
    target.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    return target
