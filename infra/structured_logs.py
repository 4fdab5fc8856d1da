"""Log lines as JSON objects that carry the ids of what was being done (`OMS_LOG_FORMAT=json`).

The ids live in a context variable: the worker sets them for each input it decides
(`use_log_ids`), the API around each request (`log_context`), so every line logged meanwhile —
ours, Faust's, aiohttp's — carries the correlation id, order id and event id (or request id)
it belongs to.
A context variable rather than a thread-local: each asyncio task sees its own. With the
default `text` format nothing changes: the processes log as they always did.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from infra.settings import Settings

_IDS: ContextVar[Mapping[str, str] | None] = ContextVar("oms_log_ids", default=None)


@contextmanager
def log_context(**ids: str | None) -> Iterator[None]:
    """Lines logged within carry these ids (those given as None or empty are left out), with
    any the enclosing context set."""
    token = _IDS.set({**current_ids(), **{name: value for name, value in ids.items() if value}})
    try:
        yield
    finally:
        _IDS.reset(token)


def current_ids() -> Mapping[str, str]:
    return _IDS.get() or {}


def use_log_ids(**ids: str | None) -> None:
    """From here on in this task (or thread), lines carry these ids and no others: for a loop
    that handles one input after another (the worker's agents), where a `with` per input
    would indent the whole loop. `use_log_ids()` clears them."""
    _IDS.set({name: value for name, value in ids.items() if value})


def event_ids(event: object) -> dict[str, str | None]:
    """The ids an event's lines carry: its correlation id, order id (if it has one) and id."""
    return {name: getattr(event, name, None) for name in ("correlation_id", "order_id", "event_id")}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, process (which
    `oms` process), pid, the ids of `log_context`, and a traceback when there is one."""

    def __init__(self, process: str = "") -> None:
        super().__init__()
        self.process = process

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": self.process,
            "pid": record.process,
            **current_ids(),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def configure_logging(settings: Settings, *, process: str) -> None:
    """With `OMS_LOG_FORMAT=json`, the root logger writes JSON lines to stderr (its level
    unchanged); with `text`, logging is left as it is."""
    if settings.log_format != "json":
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(process))
    logging.root.handlers = [handler]


def faust_logging_config(settings: Settings, *, process: str) -> dict[str, Any] | None:
    """What the Faust worker, which sets logging up itself when it starts (mode's
    `setup_logging`), is given as `logging_config`: its formatters replaced by the JSON one,
    its handlers and levels kept. None with the `text` format."""
    if settings.log_format != "json":
        return None
    json_lines = {"()": JsonFormatter, "process": process}
    return {"merge": True, "formatters": {"colored": json_lines, "default": json_lines}}
