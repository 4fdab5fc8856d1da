"""Avro codec with Confluent wire framing: magic byte 0, 4-byte big-endian schema id, Avro body.

Standard Kafka tooling and schema registries understand the framing; a consumer with only the
.avsc files and fastavro decodes every message. Schema ids come from `schemas/registry.json`
(the local registry); a Confluent-compatible registry can be plugged in through `SchemaIds`.
"""

from __future__ import annotations

import io
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from pydantic import BaseModel, ValidationError

from events.avro_schema import CONTRACT, SCHEMA_DIR
from events.models import DeadLetter, Event

MAGIC = 0
_HEADER = struct.Struct(">bI")


class CodecError(ValueError):
    """Bytes that cannot be decoded, with where they came from (topic/partition/offset)."""

    def __init__(self, reason: str, *, where: str = "") -> None:
        self.reason = reason
        self.where = where
        super().__init__(f"{reason} ({where})" if where else reason)


class UnknownSchemaId(CodecError):
    """The message names a schema id this codec does not know."""


@dataclass(frozen=True)
class RegisteredSchema:
    schema_id: int
    name: str
    version: int
    parsed: Any


class SchemaIds(Protocol):
    """Where schema ids come from: the local registry file or a schema registry service."""

    def latest(self, name: str) -> RegisteredSchema: ...

    def by_id(self, schema_id: int) -> RegisteredSchema: ...


class LocalSchemaIds:
    """Stable ids recorded in `schemas/registry.json`, schemas read from the .avsc files."""

    def __init__(self, directory: Path = SCHEMA_DIR) -> None:
        index = json.loads((directory / "registry.json").read_text())
        self._by_id: dict[int, RegisteredSchema] = {}
        self._latest: dict[str, RegisteredSchema] = {}
        for raw_id, entry in index["schemas"].items():
            schema = json.loads((directory / entry["file"]).read_text())
            registered = RegisteredSchema(
                int(raw_id), entry["name"], entry["version"], parse_schema(schema)
            )
            self._by_id[registered.schema_id] = registered
            current = self._latest.get(registered.name)
            if current is None or current.version < registered.version:
                self._latest[registered.name] = registered

    def latest(self, name: str) -> RegisteredSchema:
        return self._latest[name]

    def by_id(self, schema_id: int) -> RegisteredSchema:
        try:
            return self._by_id[schema_id]
        except KeyError:
            raise UnknownSchemaId(f"unknown schema id {schema_id}") from None


_MODELS: dict[str, type[BaseModel]] = {model.__name__: model for model in CONTRACT}
_ENVELOPE_ONLY = ("event_type", "schema_version")


class AvroCodec:
    """Encodes contract models to framed Avro and back."""

    def __init__(self, schema_ids: SchemaIds | None = None) -> None:
        self.schema_ids = schema_ids or LocalSchemaIds()

    def encode(self, value: Event | DeadLetter) -> bytes:
        registered = self.schema_ids.latest(type(value).__name__)
        record = value.model_dump()
        record["event_type"] = type(value).__name__
        record["schema_version"] = registered.version
        out = io.BytesIO()
        out.write(_HEADER.pack(MAGIC, registered.schema_id))
        schemaless_writer(out, registered.parsed, record)
        return out.getvalue()

    def decode(self, data: bytes, *, where: str = "") -> Event | DeadLetter:
        if len(data) < _HEADER.size:
            raise CodecError(
                f"message of {len(data)} bytes is too short for the wire header", where=where
            )
        magic, schema_id = _HEADER.unpack_from(data)
        if magic != MAGIC:
            raise CodecError(
                f"magic byte {magic} is not the Confluent wire format's 0", where=where
            )
        try:
            registered = self.schema_ids.by_id(schema_id)
        except UnknownSchemaId as exc:
            raise UnknownSchemaId(exc.reason, where=where) from None
        try:
            record = schemaless_reader(io.BytesIO(data[_HEADER.size :]), registered.parsed, None)
        except Exception as exc:  # fastavro raises EOFError, UnicodeDecodeError, ValueError...
            raise CodecError(
                f"corrupt Avro body for {registered.name}: {exc!r}", where=where
            ) from exc
        if not isinstance(record, dict):
            raise CodecError(f"{registered.name} did not decode to a record", where=where)
        for key in _ENVELOPE_ONLY:
            record.pop(key, None)
        try:
            return _MODELS[registered.name].model_validate(record)  # type: ignore[return-value]
        except ValidationError as exc:
            raise CodecError(
                f"{registered.name} is not valid: {exc.errors()[0]['msg']}", where=where
            ) from exc
