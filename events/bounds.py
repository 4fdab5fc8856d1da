"""The ranges OrderStream stores, checked wherever an event is read from Kafka.

The contract's types are wider than what the read models keep: a time is an Avro timestamp
(any year from 1 to 9999), a quantity an Avro long. ClickHouse keeps times as `DateTime`
(unsigned 32-bit seconds: 1970 to 2106), line quantities as `Int32` and their sum per order as
`UInt32`, sequences as `UInt32`, line numbers as `UInt16`. An event outside these ranges passes
the codec, so each reader checks it with `out_of_bounds` and dead-letters it with the reason —
the worker before deciding (where such times would overflow date arithmetic), both projector
folds before folding (where they would wrap silently). The channel edge is stricter
(connectors: times near receipt, sane quantities), so only events written past it get here.

The native fold (native/avro_codec/src/projection/decode.rs, `out_of_bounds`) checks the same
ranges; tests fold the same events both ways (tests/projections/test_native_fold.py).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import AwareDatetime, BaseModel

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
TIME_MAX_S = 2**32 - 1  # ClickHouse DateTime: 2106-02-07 06:28:15 UTC
TIME_LOW = EPOCH
TIME_HIGH = EPOCH + timedelta(seconds=TIME_MAX_S + 1)  # exclusive
SEQUENCE_MAX = 2**32 - 1
LINES_MAX = 4_000  # so that a sum of line quantities fits UInt32 (and line numbers UInt16)
LINE_QUANTITY_MAX = 1_000_000  # per line, either sign


def out_of_bounds(event: BaseModel) -> str | None:
    """Why `event` cannot be stored as it is, or None."""
    sequence = getattr(event, "sequence", 0)
    if not 0 <= sequence <= SEQUENCE_MAX:
        return f"sequence {sequence} is outside 0..{SEQUENCE_MAX}"
    lines = getattr(event, "lines", None)
    if isinstance(lines, list):
        if len(lines) > LINES_MAX:
            return f"{len(lines)} lines: at most {LINES_MAX} are stored"
        for n, line in enumerate(lines):
            quantity = getattr(line, "quantity", 0)
            if isinstance(quantity, int) and abs(quantity) > LINE_QUANTITY_MAX:
                return f"lines[{n}].quantity {quantity} is outside ±{LINE_QUANTITY_MAX}"
    return _times_out_of_bounds(event, "")


def _times_out_of_bounds(model: BaseModel, path: str) -> str | None:
    for name, kind in _time_fields(type(model)):
        value = getattr(model, name)
        if value is None:
            continue
        where = f"{path}.{name}" if path else name
        if kind is _TIME:
            if not TIME_LOW <= value < TIME_HIGH:
                return f"{where} is outside the times stored (1970 to 2106)"
        elif kind is _MODEL:
            found = _times_out_of_bounds(value, where)
            if found:
                return found
        else:
            for n, item in enumerate(value):
                found = _times_out_of_bounds(item, f"{where}[{n}]")
                if found:
                    return found
    return None


_TIME, _MODEL, _MODELS = "time", "model", "models"
_TIME_TYPES = (datetime, AwareDatetime)
_FIELDS: dict[type, tuple[tuple[str, str], ...]] = {}


def _time_fields(model: type[BaseModel]) -> tuple[tuple[str, str], ...]:
    """The fields of `model` that hold times, or models that may (found once per class)."""
    fields = _FIELDS.get(model)
    if fields is None:
        found = []
        for name, info in model.model_fields.items():
            kind = _kind(info.annotation)
            if kind is not None and (kind is _TIME or _has_times(_inner(info.annotation))):
                found.append((name, kind))
        fields = _FIELDS[model] = tuple(found)
    return fields


def _kind(annotation: Any) -> str | None:
    inner = _inner(annotation)
    if inner in _TIME_TYPES:
        return _TIME
    if isinstance(inner, type) and issubclass(inner, BaseModel):
        return _MODELS if get_origin(_strip_optional(annotation)) is list else _MODEL
    return None


def _has_times(model: Any) -> bool:
    return isinstance(model, type) and issubclass(model, BaseModel) and bool(_time_fields(model))


def _strip_optional(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else annotation
    return annotation


def _inner(annotation: Any) -> Any:
    """`datetime` for `datetime | None`, `OrderLine` for `list[OrderLine]`."""
    annotation = _strip_optional(annotation)
    if get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    if get_origin(annotation) is list:
        (annotation,) = get_args(annotation)
    annotation = _strip_optional(annotation)
    if get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    return annotation
