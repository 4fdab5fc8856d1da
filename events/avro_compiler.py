"""Avro encoders and decoders compiled to Python source, one pair per schema.

fastavro interprets the schema on every call (~30 µs for a 5-line order here); a function
written for one schema, reading model attributes directly and building models without
re-validating, does the same work several times faster. The bytes are identical to
fastavro's (a property test checks it); fastavro still handles schema resolution between
versions, where speed matters less.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from enum import Enum
from itertools import count
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel

Encoder = Callable[[Any, bytearray], None]
Decoder = Callable[[bytes, int], tuple[Any, int]]

_SMALL = 1 << 14
# Unsigned varints of 0.._SMALL, precomputed: most lengths and zigzagged values hit this table.
_RAW = []
for _value in range(_SMALL):
    _bytes = bytearray()
    while _value >= 0x80:
        _bytes.append((_value & 0x7F) | 0x80)
        _value >>= 7
    _bytes.append(_value)
    _RAW.append(bytes(_bytes))
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_DOUBLE = struct.Struct("<d")


class AvroDecodeError(ValueError):
    """The bytes do not match the schema."""


def _uvarint(value: int) -> bytes:
    if not 0 <= value < 1 << 64:  # a zigzagged long outside -2**63 .. 2**63-1
        raise OverflowError("integer does not fit Avro's 64-bit long")
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _read_long(buf: bytes, pos: int) -> tuple[int, int]:
    shift = 0
    result = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return (result >> 1) ^ -(result & 1), pos
        shift += 7
        if shift > 63:
            raise AvroDecodeError("varint longer than 10 bytes")


def _micros(value: datetime) -> int:
    delta = value - EPOCH
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


_new = object.__new__
# pydantic keeps these in slots; their descriptors set them without BaseModel.__setattr__.
_set_fields_set = vars(BaseModel)["__pydantic_fields_set__"].__set__
_set_extra = vars(BaseModel)["__pydantic_extra__"].__set__
_set_private = vars(BaseModel)["__pydantic_private__"].__set__
_set_dict = object.__setattr__


def _construct(model: type[BaseModel], values: dict[str, Any]) -> Any:
    """A model instance from already-typed values, skipping validation (the schema typed them).

    Frozen models never change their fields-set, so one shared set per model is safe.
    """
    instance = _new(model)
    _set_dict(instance, "__dict__", values)
    _set_fields_set(instance, _FIELDS_SET[model])
    _set_extra(instance, None)
    _set_private(instance, None)
    return instance


class _FieldsSets(dict[type[BaseModel], set[str]]):
    def __missing__(self, model: type[BaseModel]) -> set[str]:
        self[model] = fields = set(model.model_fields)
        return fields


_FIELDS_SET = _FieldsSets()


_RUNTIME = {
    "RAW": _RAW,
    "SMALL": _SMALL,
    "uvarint": _uvarint,
    "read_long": _read_long,
    "micros": _micros,
    "EPOCH": EPOCH,
    "EPOCH_ORDINAL": EPOCH_ORDINAL,
    "timedelta": timedelta,
    "date": date,
    "pack_double": _DOUBLE.pack,
    "unpack_double": _DOUBLE.unpack_from,
    "construct": _construct,
    "AvroDecodeError": AvroDecodeError,
}


class _Source:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.names = count()
        self.constants: dict[str, Any] = {}

    def var(self, prefix: str) -> str:
        return f"{prefix}{next(self.names)}"

    def const(self, value: Any) -> str:
        name = self.var("K")
        self.constants[name] = value
        return name

    def emit(self, indent: int, line: str) -> None:
        self.lines.append("    " * indent + line)


def _named(schema: Any, names: dict[str, Any]) -> Any:
    if isinstance(schema, str) and schema in names:
        return names[schema]
    if isinstance(schema, dict) and schema.get("type") in ("record", "enum"):
        names[schema["name"]] = schema
        names[f"{schema.get('namespace', '')}.{schema['name']}"] = schema
    return schema


def _model_for(model: type[BaseModel], field: str) -> Any:
    """The model or enum class inside a field's annotation (through Optional, list, Annotated)."""
    annotation = model.model_fields[field].annotation
    while get_origin(annotation) in (Union, UnionType, list, Annotated):
        annotation = [a for a in get_args(annotation) if a is not type(None)][0]
    return annotation


class _EncoderWriter:
    def __init__(self) -> None:
        self.src = _Source()
        self.names: dict[str, Any] = {}

    def long(self, ind: int, expr: str) -> None:
        z = self.src.var("z")
        self.src.emit(ind, f"{z} = ({expr} << 1) ^ ({expr} >> 63)")
        self.src.emit(ind, f"out += RAW[{z}] if 0 <= {z} < SMALL else uvarint({z})")

    def length(self, ind: int, expr: str) -> None:
        z = self.src.var("n")
        self.src.emit(ind, f"{z} = {expr} << 1")
        self.src.emit(ind, f"out += RAW[{z}] if {z} < SMALL else uvarint({z})")

    def value(self, ind: int, schema: Any, expr: str, model: Any) -> None:
        schema = _named(schema, self.names)
        if isinstance(schema, list):
            inner = [s for s in schema if s != "null"][0]
            v = self.src.var("u")
            self.src.emit(ind, f"{v} = {expr}")
            self.src.emit(ind, f"if {v} is None:")
            self.src.emit(ind + 1, 'out += b"\\x00"')
            self.src.emit(ind, "else:")
            self.src.emit(ind + 1, 'out += b"\\x02"')
            self.value(ind + 1, inner, v, model)
            return
        kind = schema if isinstance(schema, str) else schema["type"]
        logical = schema.get("logicalType") if isinstance(schema, dict) else None
        if logical == "timestamp-micros":
            self.long(ind, f"micros({expr})")
        elif logical == "date":
            self.long(ind, f"({expr}.toordinal() - EPOCH_ORDINAL)")
        elif kind in ("long", "int"):
            v = self.src.var("i")
            self.src.emit(ind, f"{v} = {expr}")
            self.long(ind, v)
        elif kind == "string":
            b = self.src.var("s")
            self.src.emit(ind, f"{b} = {expr}.encode()")
            self.length(ind, f"len({b})")
            self.src.emit(ind, f"out += {b}")
        elif kind == "bytes":
            b = self.src.var("b")
            self.src.emit(ind, f"{b} = {expr}")
            self.length(ind, f"len({b})")
            self.src.emit(ind, f"out += {b}")
        elif kind == "boolean":
            self.src.emit(ind, f'out += b"\\x01" if {expr} else b"\\x00"')
        elif kind == "double":
            self.src.emit(ind, f"out += pack_double({expr})")
        elif kind == "enum":
            table = self.src.const({s: _RAW[i << 1] for i, s in enumerate(schema["symbols"])})
            self.src.emit(ind, f"out += {table}[{expr}]")
        elif kind == "array":
            items = self.src.var("a")
            item = self.src.var("it")
            self.src.emit(ind, f"{items} = {expr}")
            self.src.emit(ind, f"if {items}:")
            self.long(ind + 1, f"len({items})")
            self.src.emit(ind + 1, f"for {item} in {items}:")
            self.value(ind + 2, schema["items"], item, model)
            self.src.emit(ind, 'out += b"\\x00"')
        elif kind == "record":
            self.record(ind, schema, expr, model)
        else:
            raise TypeError(f"no compiled encoder for {schema!r}")

    def record(self, ind: int, schema: dict[str, Any], expr: str, model: Any) -> None:
        obj = self.src.var("o")
        self.src.emit(ind, f"{obj} = {expr}")
        for field in schema["fields"]:
            name = field["name"]
            if name == "event_type":
                self.value(ind, "string", self.src.const(schema["name"]), model)
            elif name == "schema_version":
                self.src.emit(ind, "out += RAW[version << 1]")
            else:
                self.value(ind, field["type"], f"{obj}.{name}", _model_for(model, name))


class _DecoderWriter:
    def __init__(self) -> None:
        self.src = _Source()
        self.names: dict[str, Any] = {}

    def long(self, ind: int, target: str) -> None:
        b = self.src.var("c")
        self.src.emit(ind, f"{b} = buf[pos]")
        self.src.emit(ind, f"if {b} < 128:")
        self.src.emit(ind + 1, "pos += 1")
        self.src.emit(ind + 1, f"{target} = ({b} >> 1) ^ -({b} & 1)")
        self.src.emit(ind, "else:")
        self.src.emit(ind + 1, f"{target}, pos = read_long(buf, pos)")

    def value(self, ind: int, schema: Any, target: str, model: Any) -> None:
        schema = _named(schema, self.names)
        if isinstance(schema, list):
            inner = [s for s in schema if s != "null"][0]
            branch = self.src.var("br")
            self.long(ind, branch)
            self.src.emit(ind, f"if {branch} == 0:")
            self.src.emit(ind + 1, f"{target} = None")
            self.src.emit(ind, f"elif {branch} == 1:")
            self.value(ind + 1, inner, target, model)
            self.src.emit(ind, "else:")
            self.src.emit(ind + 1, f'raise AvroDecodeError("union branch " + str({branch}))')
            return
        kind = schema if isinstance(schema, str) else schema["type"]
        logical = schema.get("logicalType") if isinstance(schema, dict) else None
        if logical == "timestamp-micros":
            v = self.src.var("t")
            self.long(ind, v)
            self.src.emit(ind, f"{target} = EPOCH + timedelta(microseconds={v})")
        elif logical == "date":
            v = self.src.var("d")
            self.long(ind, v)
            self.src.emit(ind, f"{target} = date.fromordinal(EPOCH_ORDINAL + {v})")
        elif kind in ("long", "int"):
            self.long(ind, target)
        elif kind in ("string", "bytes"):
            n = self.src.var("n")
            self.long(ind, n)
            self.src.emit(ind, f"if {n} < 0 or pos + {n} > end:")
            self.src.emit(ind + 1, 'raise AvroDecodeError("length past the end")')
            suffix = ".decode()" if kind == "string" else ""
            self.src.emit(ind, f"{target} = buf[pos:pos + {n}]{suffix}")
            self.src.emit(ind, f"pos += {n}")
        elif kind == "boolean":
            self.src.emit(ind, f"{target} = buf[pos] == 1")
            self.src.emit(ind, "pos += 1")
        elif kind == "double":
            self.src.emit(ind, f"{target} = unpack_double(buf, pos)[0]")
            self.src.emit(ind, "pos += 8")
        elif kind == "enum":
            members = (
                [model(s) for s in schema["symbols"]]
                if isinstance(model, type) and issubclass(model, Enum)
                else list(schema["symbols"])
            )
            table = self.src.const(members)
            i = self.src.var("e")
            self.long(ind, i)
            self.src.emit(ind, f"{target} = {table}[{i}]")
        elif kind == "array":
            items, n, size = self.src.var("a"), self.src.var("k"), self.src.var("z")
            item = self.src.var("it")
            self.src.emit(ind, f"{items} = []")
            self.src.emit(ind, "while True:")
            self.long(ind + 1, n)
            self.src.emit(ind + 1, f"if {n} == 0:")
            self.src.emit(ind + 2, "break")
            self.src.emit(ind + 1, f"if {n} < 0:")
            self.src.emit(ind + 2, f"{n} = -{n}")
            self.long(ind + 2, size)
            self.src.emit(ind + 1, f"for _ in range({n}):")
            self.value(ind + 2, schema["items"], item, model)
            self.src.emit(ind + 2, f"{items}.append({item})")
            self.src.emit(ind, f"{target} = {items}")
        elif kind == "record":
            self.record(ind, schema, target, model)
        else:
            raise TypeError(f"no compiled decoder for {schema!r}")

    def record(self, ind: int, schema: dict[str, Any], target: str, model: Any) -> None:
        values = self.src.var("r")
        self.src.emit(ind, f"{values} = {{}}")
        for field in schema["fields"]:
            name = field["name"]
            if name in ("event_type", "schema_version"):
                skip = self.src.var("skip")
                self.value(ind, field["type"], skip, None)
            else:
                slot = self.src.var("f")
                self.value(ind, field["type"], slot, _model_for(model, name))
                self.src.emit(ind, f"{values}[{name!r}] = {slot}")
        self.src.emit(ind, f"{target} = construct({self.src.const(model)}, {values})")


def native_plan(schema: Any, model: Any, names: dict[str, Any] | None = None) -> tuple[Any, ...]:
    """The schema as nested tuples, models and enum members resolved, for the native codec."""
    names = {} if names is None else names
    schema = _named(schema, names)
    if isinstance(schema, list):
        inner = [s for s in schema if s != "null"][0]
        return ("optional", native_plan(inner, model, names))
    kind = schema if isinstance(schema, str) else schema["type"]
    logical = schema.get("logicalType") if isinstance(schema, dict) else None
    if logical in ("timestamp-micros", "date"):
        return (logical,)
    if kind in ("long", "int"):
        return ("long",)
    if kind in ("boolean", "double", "string", "bytes"):
        return (kind,)
    if kind == "enum":
        members = [model(s) for s in schema["symbols"]] if isinstance(model, type) else []
        return ("enum", list(schema["symbols"]), members or list(schema["symbols"]))
    if kind == "array":
        return ("array", native_plan(schema["items"], model, names))
    if kind == "record":
        fields = []
        for field in schema["fields"]:
            name = field["name"]
            if name == "event_type":
                fields.append((name, "event_type", ("string",), schema["name"]))
            elif name == "schema_version":
                fields.append((name, "schema_version", ("long",), None))
            else:
                plan = native_plan(field["type"], _model_for(model, name), names)
                fields.append((name, "value", plan, None))
        return ("record", model, fields, _FIELDS_SET[model])
    raise TypeError(f"no native plan for {schema!r}")


def compile_encoder(schema: dict[str, Any], model: type[BaseModel]) -> Callable[..., None]:
    """`encode(value, out: bytearray, version: int)` for `model` instances under `schema`."""
    writer = _EncoderWriter()
    writer.record(1, schema, "value", model)
    body = "\n".join(writer.src.lines)
    source = f"def encode(value, out, version):\n{body}\n"
    namespace: dict[str, Any] = dict(_RUNTIME) | writer.src.constants
    exec(compile(source, f"<avro encoder {schema['name']}>", "exec"), namespace)  # noqa: S102
    encode: Callable[..., None] = namespace["encode"]
    return encode


def compile_decoder(schema: dict[str, Any], model: type[BaseModel]) -> Decoder:
    """`decode(buf, pos) -> (model instance, end position)`; raises on malformed bytes."""
    writer = _DecoderWriter()
    writer.record(1, schema, "result", model)
    body = "\n".join(writer.src.lines)
    source = f"def decode(buf, pos):\n    end = len(buf)\n{body}\n    return result, pos\n"
    namespace: dict[str, Any] = dict(_RUNTIME) | writer.src.constants
    exec(compile(source, f"<avro decoder {schema['name']}>", "exec"), namespace)  # noqa: S102
    decode: Decoder = namespace["decode"]
    return decode
