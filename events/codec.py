"""Avro codec with Confluent wire framing: magic byte 0, 4-byte big-endian schema id, Avro body.

Standard Kafka tooling and schema registries understand the framing; a consumer with only the
.avsc files and fastavro decodes every message. Schema ids come from `schemas/registry.json`
(the local registry) or, when `OMS_SCHEMA_REGISTRY_URL` is set, from a Confluent-compatible
schema registry. Data written with an older schema version is resolved to the current one.
"""

from __future__ import annotations

import io
import json
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from fastavro import parse_schema, schemaless_reader
from pydantic import BaseModel, ValidationError

from events.avro_compiler import compile_decoder, compile_encoder, native_plan
from events.avro_schema import CONTRACT, NAMESPACE, SCHEMA_DIR
from events.models import DeadLetter, Event
from events.schema_catalog import Catalog

MAGIC = 0
_HEADER = struct.Struct(">bI")


def message_ref(topic: str, partition: int, offset: int) -> str:
    """How a Kafka message is named in errors and dead letters."""
    return f"topic {topic} partition {partition} offset {offset}"


class CodecError(ValueError):
    """Bytes that cannot be decoded, with where they came from (topic, partition, offset)."""

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
    source: str = field(repr=False)
    parsed: Any = field(repr=False)


try:  # the native codec (native/avro_codec, Rust); the compiled-Python one is the fallback
    from orderstream_avro import CompiledSchema as _NativeSchema
except ImportError:  # pragma: no cover - exercised where the extension is not built
    _NativeSchema = None

NATIVE = _NativeSchema is not None


class _Compiled:
    """The compiled encoder and decoder of the current schema of one model."""

    def __init__(self, registered: RegisteredSchema, model: type[BaseModel], native: bool) -> None:
        schema = json.loads(registered.source)
        self.registered = registered
        self.header = _HEADER.pack(MAGIC, registered.schema_id)
        if native and _NativeSchema is not None:
            compiled = _NativeSchema(native_plan(schema, model))
            header, version = self.header, registered.version
            self.encode: Callable[[Any], bytes] = lambda value: compiled.encode(
                value, version, header
            )
            self.decode: Callable[[bytes, int], tuple[Any, int]] = compiled.decode
        else:
            encoder = compile_encoder(schema, model)
            header, version = self.header, registered.version

            def encode(value: Any) -> bytes:
                out = bytearray(header)
                encoder(value, out, version)
                return bytes(out)

            self.encode = encode
            self.decode = compile_decoder(schema, model)


class SchemaIds(Protocol):
    """Where schema ids come from: the local registry file or a schema registry service."""

    def latest(self, name: str) -> RegisteredSchema: ...

    def by_id(self, schema_id: int) -> RegisteredSchema: ...


class LocalSchemaIds:
    """Stable ids recorded in `schemas/registry.json`, schemas read from `schemas/history/`."""

    def __init__(self, directory: Path = SCHEMA_DIR) -> None:
        self._by_id: dict[int, RegisteredSchema] = {}
        self._latest: dict[str, RegisteredSchema] = {}
        for entry in Catalog(directory).versions:
            schema = entry.load(directory)
            registered = RegisteredSchema(
                entry.schema_id, entry.name, entry.version, json.dumps(schema), parse_schema(schema)
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


class RegistrySchemaIds:
    """A Confluent-compatible schema registry; subjects follow RecordNameStrategy.

    The current schemas are registered on first use (the registry applies its own
    compatibility level); schemas met by id are fetched once and cached.
    """

    def __init__(self, url: str, *, directory: Path = SCHEMA_DIR) -> None:
        from confluent_kafka.schema_registry import SchemaRegistryClient

        self._client = SchemaRegistryClient({"url": url})
        self._local = LocalSchemaIds(directory)
        self._latest: dict[str, RegisteredSchema] = {}
        self._by_id: dict[int, RegisteredSchema] = {}
        self._lock = threading.Lock()

    def latest(self, name: str) -> RegisteredSchema:
        from confluent_kafka.schema_registry import Schema

        with self._lock:
            if name not in self._latest:
                local = self._local.latest(name)
                schema_id = self._client.register_schema(
                    f"{NAMESPACE}.{name}", Schema(local.source, "AVRO")
                )
                registered = RegisteredSchema(
                    schema_id, name, local.version, local.source, local.parsed
                )
                self._latest[name] = self._by_id[schema_id] = registered
            return self._latest[name]

    def by_id(self, schema_id: int) -> RegisteredSchema:
        from confluent_kafka.schema_registry.error import SchemaRegistryError

        with self._lock:
            if schema_id not in self._by_id:
                try:
                    schema = self._client.get_schema(schema_id)
                except SchemaRegistryError as exc:
                    raise UnknownSchemaId(f"unknown schema id {schema_id}: {exc}") from None
                source = schema.schema_str or "{}"
                parsed = json.loads(source)
                name = str(parsed["name"]).rsplit(".", 1)[-1]
                self._by_id[schema_id] = RegisteredSchema(
                    schema_id, name, 0, source, parse_schema(parsed)
                )
            return self._by_id[schema_id]


_MODELS: dict[str, type[BaseModel]] = {model.__name__: model for model in CONTRACT}
_ENVELOPE_ONLY = ("event_type", "schema_version")


_LONG_MIN, _LONG_MAX = -(2**63), 2**63 - 1


def _unencodable(value: Any, path: str = "") -> str | None:
    """The first field of `value` Avro cannot carry, and why — an int beyond 64 bits, text
    that is not UTF-8 — as "lines[0].quantity: ..."; None if none is found. Only called once an
    encode has failed, so that its error names the field (the encoders do not know it)."""
    if isinstance(value, BaseModel):
        for name in type(value).model_fields:
            found = _unencodable(getattr(value, name), f"{path}.{name}" if path else name)
            if found is not None:
                return found
    elif isinstance(value, list | tuple):
        for n, item in enumerate(value):
            found = _unencodable(item, f"{path}[{n}]")
            if found is not None:
                return found
    elif isinstance(value, int) and not _LONG_MIN <= value <= _LONG_MAX:
        return f"{path}: {value} does not fit in 64 bits"
    elif isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError as exc:
            return f"{path}: not UTF-8 text ({exc.reason} at {exc.start})"
    return None


class AvroCodec:
    """Encodes contract models to framed Avro and back."""

    def __init__(self, schema_ids: SchemaIds | None = None, *, native: bool = NATIVE) -> None:
        self.schema_ids = schema_ids or LocalSchemaIds()
        self.native = native and NATIVE
        self._by_model: dict[type[BaseModel], _Compiled] = {}
        self._by_id: dict[int, _Compiled] = {}

    def _compiled(self, model: type[BaseModel]) -> _Compiled:
        compiled = self._by_model.get(model)
        if compiled is None:
            compiled = _Compiled(self.schema_ids.latest(model.__name__), model, self.native)
            self._by_model[model] = compiled
            self._by_id[compiled.registered.schema_id] = compiled
        return compiled

    @classmethod
    def for_registry(cls, registry_url: str | None) -> AvroCodec:
        """Ids from the schema registry at `registry_url`, or the local registry file."""
        return cls(RegistrySchemaIds(registry_url) if registry_url else LocalSchemaIds())

    def encode(self, value: Event | DeadLetter) -> bytes:
        try:
            return self._compiled(type(value)).encode(value)
        except (TypeError, ValueError, OverflowError) as exc:
            reason = _unencodable(value) or str(exc)
            raise CodecError(f"cannot encode {type(value).__name__}: {reason}") from exc

    def current_schema(self, model: type[BaseModel]) -> tuple[int, tuple[Any, ...]]:
        """The model's current schema id and its plan for the native decoders
        (`events.avro_compiler.native_plan`)."""
        registered = self._compiled(model).registered
        return registered.schema_id, native_plan(json.loads(registered.source), model)

    def event_type_of(self, data: bytes) -> str | None:
        """The type the wire header names, without decoding the body (None: not known here
        as a current schema — decode to find out)."""
        if len(data) < _HEADER.size:
            return None
        magic, schema_id = _HEADER.unpack_from(data)
        if magic != MAGIC:
            return None
        compiled = self._by_id.get(schema_id) or self._compile_for(schema_id, "")
        return None if compiled is None else compiled.registered.name

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
        compiled = self._by_id.get(schema_id)
        if compiled is None:
            compiled = self._compile_for(schema_id, where)
        if compiled is not None:
            try:
                value, end = compiled.decode(data, _HEADER.size)
            except Exception as exc:  # IndexError, UnicodeDecodeError, KeyError, AvroDecodeError
                raise CodecError(
                    f"corrupt Avro body for {compiled.registered.name}: {exc!r}", where=where
                ) from exc
            if end != len(data):
                raise CodecError(
                    f"corrupt Avro body for {compiled.registered.name}: "
                    f"{len(data) - end} bytes left over",
                    where=where,
                )
            return value
        return self._decode_older(data, schema_id, where)

    def _compile_for(self, schema_id: int, where: str) -> _Compiled | None:
        """The compiled codec when `schema_id` is a model's current schema, else None."""
        try:
            writer = self.schema_ids.by_id(schema_id)
        except UnknownSchemaId as exc:
            raise UnknownSchemaId(exc.reason, where=where) from None
        model = _MODELS.get(writer.name)
        if model is None:
            raise CodecError(f"schema id {schema_id} is {writer.name}, not an event", where=where)
        compiled = self._compiled(model)
        return compiled if compiled.registered.schema_id == schema_id else None

    def _decode_older(self, data: bytes, schema_id: int, where: str) -> Event | DeadLetter:
        """Data written with an earlier version: fastavro resolves it to the current schema."""
        writer = self.schema_ids.by_id(schema_id)
        model = _MODELS[writer.name]
        reader = self.schema_ids.latest(writer.name)
        try:
            record = schemaless_reader(
                io.BytesIO(data[_HEADER.size :]), writer.parsed, reader.parsed
            )
        except Exception as exc:  # fastavro raises EOFError, UnicodeDecodeError, ValueError...
            raise CodecError(f"corrupt Avro body for {writer.name}: {exc!r}", where=where) from exc
        if not isinstance(record, dict):
            raise CodecError(f"{writer.name} did not decode to a record", where=where)
        for key in _ENVELOPE_ONLY:
            record.pop(key, None)
        try:
            return model.model_validate(record)  # type: ignore[return-value]
        except ValidationError as exc:
            raise CodecError(
                f"{writer.name} is not valid: {exc.errors()[0]['msg']}", where=where
            ) from exc
