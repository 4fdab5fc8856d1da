"""What a dead letter says about an input whose processing raised: the exception and the
innermost frame of OrderStream's own code it came from, so whoever reads the dead-letter topic
can tell a bug (and where it is) from bad input, without the worker's logs.

A poison message is one input that fails the same way every time it is read: it is
dead-lettered and its partition goes on. Failures of the systems around (Kafka, ClickHouse)
are not poison; they are waited out (docs/operations.md).
"""

from __future__ import annotations

import traceback
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
_SHOWN = 300  # characters of the exception's message kept in the reason


def describe(exc: BaseException) -> str:
    """`OverflowError: date value out of range (at streams/priority.py:64 in promised_at)`."""
    message = str(exc)
    if len(message) > _SHOWN:
        message = f"{message[: _SHOWN - 1]}… ({len(message):,} characters)"
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    frame = _innermost_own_frame(exc)
    return f"{text} (at {frame})" if frame else text


def _innermost_own_frame(exc: BaseException) -> str | None:
    found = None
    for frame in traceback.extract_tb(exc.__traceback__):
        path = Path(frame.filename)
        if path.is_relative_to(_ROOT) and ".venv" not in path.parts:
            found = f"{path.relative_to(_ROOT)}:{frame.lineno} in {frame.name}"
    return found
