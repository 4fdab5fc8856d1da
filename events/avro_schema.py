"""Avro schemas derived from the pydantic event models, so the two cannot drift apart.

`schemas/*.avsc` are this module's output, committed as the published contract; a test
regenerates them and fails on any difference.
"""

from __future__ import annotations

import json
import types
from datetime import date, datetime
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import AwareDatetime, BaseModel
from pydantic.fields import FieldInfo

from events.models import (
    CATALOGUE_EVENTS,
    ORDER_EVENTS,
    STOCK_COMMANDS,
    STOCK_EVENTS,
    DeadLetter,
    Event,
)

NAMESPACE = "io.orderstream.events"
SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"
CONTRACT: tuple[type[BaseModel], ...] = (
    *ORDER_EVENTS,
    *STOCK_EVENTS,
    *STOCK_COMMANDS,
    *CATALOGUE_EVENTS,
    DeadLetter,
)

_PRIMITIVES: dict[Any, Any] = {
    str: "string",
    int: "long",
    float: "double",
    bool: "boolean",
    bytes: "bytes",
}
_TIMESTAMP = {"type": "long", "logicalType": "timestamp-micros"}
_DATE = {"type": "int", "logicalType": "date"}


class _Builder:
    """Builds one schema; a named type is defined at its first use and referenced after."""

    def __init__(self) -> None:
        self.defined: set[str] = set()

    def record(self, model: type[BaseModel]) -> dict[str, Any] | str:
        name = f"{NAMESPACE}.{model.__name__}"
        if name in self.defined:
            return name
        self.defined.add(name)
        fields: list[dict[str, Any]] = []
        if isinstance(model, type) and issubclass(model, Event):
            fields.append({"name": "event_type", "type": "string", "default": model.__name__})
        if "schema_version" in getattr(model, "__class_vars__", set()):
            version = model.schema_version  # type: ignore[attr-defined]
            fields.append({"name": "schema_version", "type": "int", "default": version})
        fields.extend(self.field(name, info) for name, info in model.model_fields.items())
        schema: dict[str, Any] = {
            "type": "record",
            "name": model.__name__,
            "namespace": NAMESPACE,
            "fields": fields,
        }
        doc = (model.__doc__ or "").strip().splitlines()
        if doc:
            schema["doc"] = doc[0]
        return schema

    def field(self, name: str, info: FieldInfo) -> dict[str, Any]:
        avro_type = self.type_of(info.annotation)
        field: dict[str, Any] = {"name": name, "type": avro_type}
        if info.description:
            field["doc"] = info.description
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        aliases = extra.get("avro_aliases")
        if isinstance(aliases, list) and aliases:
            field["aliases"] = [str(a) for a in aliases]  # former names: a rename
        if extra.get("pii"):
            field["pii"] = True  # personal data: sealed on the log (events/privacy.py)
        if not info.is_required():
            default = info.get_default(call_default_factory=True)
            if isinstance(avro_type, list):  # nullable: null comes first, default must be null
                field["default"] = None
            elif isinstance(default, Enum):
                field["default"] = default.value
            elif isinstance(default, int | str | bool | float | list):
                field["default"] = default
        return field

    def type_of(self, annotation: Any) -> Any:
        origin = get_origin(annotation)
        if origin is Annotated:  # validators (e.g. UtcDatetime) do not change the wire type
            return self.type_of(get_args(annotation)[0])
        if origin in (Union, types.UnionType):
            members = [a for a in get_args(annotation) if a is not type(None)]
            if len(members) != 1:
                raise TypeError(f"only `X | None` unions are supported, got {annotation}")
            return ["null", self.type_of(members[0])]
        if origin is list:
            (item,) = get_args(annotation)
            return {"type": "array", "items": self.type_of(item)}
        if annotation in (datetime, AwareDatetime):
            return dict(_TIMESTAMP)
        if annotation is date:
            return dict(_DATE)
        if isinstance(annotation, type) and issubclass(annotation, Enum):
            name = f"{NAMESPACE}.{annotation.__name__}"
            if name in self.defined:
                return name
            self.defined.add(name)
            return {
                "type": "enum",
                "name": annotation.__name__,
                "namespace": NAMESPACE,
                "symbols": [m.value for m in annotation],
            }
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            return self.record(annotation)
        if annotation in _PRIMITIVES:
            return _PRIMITIVES[annotation]
        raise TypeError(f"no Avro mapping for {annotation!r}")


def avro_schema(model: type[BaseModel]) -> dict[str, Any]:
    schema = _Builder().record(model)
    assert isinstance(schema, dict)
    return schema


def render(model: type[BaseModel]) -> str:
    return json.dumps(avro_schema(model), indent=2, ensure_ascii=False) + "\n"
