"""The decision modules of `streams/` do no I/O and read no clock: Kafka, files, threads, the
time and randomness stay in `streams/worker/` (and reading reference files in
`streams/reference/`); the decisions get them as values. An AST check, so it cannot be
fooled by a name bound at run time only in the obvious ways."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

STREAMS = Path(__file__).resolve().parents[2] / "streams"
DECISIONS = sorted(p for p in STREAMS.glob("*.py") if p.name != "__init__.py")
FORBIDDEN_MODULES = {
    "aiohttp", "aiokafka", "asyncio", "chdb", "clickhouse_driver", "confluent_kafka", "faust",
    "mode", "os", "random", "requests", "secrets", "socket", "subprocess", "threading", "time",
    "urllib", "uuid",
}  # fmt: skip
FORBIDDEN_CALLS = {"utc_now", "now", "utcnow", "today", "time", "open", "read_text",
                   "read_bytes", "write_text", "write_bytes", "sleep"}  # fmt: skip


def test_there_are_decision_modules_to_check() -> None:
    assert {"orders.py", "inventory.py", "routing.py", "partitions.py"} <= {
        p.name for p in DECISIONS
    }


@pytest.mark.parametrize("module", DECISIONS, ids=lambda p: p.name)
def test_a_decision_module_imports_no_io_and_calls_no_clock(module: Path) -> None:
    tree = ast.parse(module.read_text(encoding="utf-8"))
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] in FORBIDDEN_MODULES]
        elif isinstance(node, ast.ImportFrom) and node.module:
            top = node.module.split(".")[0]
            below = node.module.startswith(("streams.worker", "streams.reference"))
            if top in FORBIDDEN_MODULES or below:
                found.append(node.module)
            found += [f"{node.module}.{a.name}" for a in node.names if a.name == "utc_now"]
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in FORBIDDEN_CALLS:
                found.append(f"{name}() at line {node.lineno}")
    assert not found, f"{module.name} does I/O or reads the clock: {found}"
