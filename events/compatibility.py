"""Schema evolution checks with Avro's schema-resolution rules.

`incompatibilities(new, old)` lists what stops a reader holding `new` from reading data written
with `old` (BACKWARD). OrderStream adds one rule of its own: a field without a default may not be
removed (renaming it with an alias is fine), because downstream systems still decoding with an
older schema would break on it — Avro's BACKWARD rule alone would allow the removal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}
PROMOTIONS = {
    ("int", "long"),
    ("int", "float"),
    ("int", "double"),
    ("long", "float"),
    ("long", "double"),
    ("float", "double"),
    ("string", "bytes"),
    ("bytes", "string"),
}
NAMED = {"record", "enum", "fixed"}


@dataclass(frozen=True)
class Incompatibility:
    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


def _short(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def _named_types(schema: Any, table: dict[str, Any]) -> dict[str, Any]:
    """Every named type defined in `schema`, by short name (references use either form)."""
    if isinstance(schema, list):
        for branch in schema:
            _named_types(branch, table)
    elif isinstance(schema, dict):
        kind = schema.get("type")
        if kind in NAMED:
            table[_short(schema["name"])] = schema
        if kind == "record":
            for field in schema["fields"]:
                _named_types(field["type"], table)
        elif kind == "array":
            _named_types(schema["items"], table)
        elif kind == "map":
            _named_types(schema["values"], table)
        elif isinstance(kind, dict | list):
            _named_types(kind, table)
    return table


class _Checker:
    def __init__(self, new: Any, old: Any) -> None:
        self.new_names = _named_types(new, {})
        self.old_names = _named_types(old, {})
        self.found: list[Incompatibility] = []
        self.visiting: set[tuple[str, str]] = set()

    def resolve(self, schema: Any, names: dict[str, Any]) -> Any:
        if isinstance(schema, str) and schema not in PRIMITIVES:
            return names[_short(schema)]
        if isinstance(schema, dict) and schema.get("type") in PRIMITIVES:
            return schema["type"]  # a primitive with a logical type resolves like the primitive
        if (
            isinstance(schema, dict)
            and isinstance(schema.get("type"), dict | list | str)
            and (schema.get("type") not in NAMED | {"array", "map"})
        ):
            return self.resolve(schema["type"], names)
        return schema

    def kind(self, schema: Any) -> str:
        if isinstance(schema, list):
            return "union"
        if isinstance(schema, str):
            return schema
        return str(schema["type"])

    def fail(self, path: str, reason: str) -> None:
        self.found.append(Incompatibility(path, reason))

    def matches(self, reader: Any, writer: Any) -> bool:
        """Would `writer` resolve to `reader` (checked quietly)?"""
        saved = self.found
        self.found = []
        self.check(reader, writer, "")
        ok = not self.found
        self.found = saved
        return ok

    def check(self, reader: Any, writer: Any, path: str) -> None:
        reader = self.resolve(reader, self.new_names)
        writer = self.resolve(writer, self.old_names)
        if isinstance(writer, list):
            for branch in writer:
                target = (
                    reader if not isinstance(reader, list) else self._branch_for(reader, branch)
                )
                if target is None:
                    self.fail(path, f"union branch {self._describe(branch)} is no longer accepted")
                else:
                    self.check(target, branch, path)
            return
        if isinstance(reader, list):
            if self._branch_for(reader, writer) is None:
                self.fail(path, f"{self._describe(writer)} is not in the new union")
            return
        r_kind, w_kind = self.kind(reader), self.kind(writer)
        if r_kind in PRIMITIVES or w_kind in PRIMITIVES:
            if r_kind != w_kind and (w_kind, r_kind) not in PROMOTIONS:
                self.fail(path, f"type changed from {w_kind} to {r_kind}")
            return
        if r_kind != w_kind:
            self.fail(path, f"type changed from {w_kind} to {r_kind}")
            return
        if r_kind in NAMED:
            aliases = {_short(a) for a in reader.get("aliases", [])}
            if _short(reader["name"]) != _short(writer["name"]) and (
                _short(writer["name"]) not in aliases
            ):
                self.fail(path, f"{r_kind} renamed from {writer['name']} to {reader['name']}")
                return
        if r_kind == "record":
            self._record(reader, writer, path or _short(reader["name"]))
        elif r_kind == "enum":
            missing = [s for s in writer["symbols"] if s not in reader["symbols"]]
            if missing and "default" not in reader:
                self.fail(path, f"enum symbols {missing} removed (and no default symbol)")
        elif r_kind == "fixed":
            if reader["size"] != writer["size"]:
                self.fail(path, f"fixed size changed from {writer['size']} to {reader['size']}")
        elif r_kind == "array":
            self.check(reader["items"], writer["items"], f"{path}[]")
        elif r_kind == "map":
            self.check(reader["values"], writer["values"], f"{path}{{}}")

    def _record(self, reader: dict[str, Any], writer: dict[str, Any], path: str) -> None:
        key = (_short(reader["name"]), _short(writer["name"]))
        if key in self.visiting:
            return
        self.visiting.add(key)
        old_fields = {f["name"]: f for f in writer["fields"]}
        matched: set[str] = set()
        for field in reader["fields"]:
            candidates = [field["name"], *field.get("aliases", [])]
            source = next((old_fields[n] for n in candidates if n in old_fields), None)
            if source is None:
                if "default" not in field:
                    self.fail(f"{path}.{field['name']}", "new field without a default")
                continue
            matched.add(source["name"])
            self.check(field["type"], source["type"], f"{path}.{field['name']}")
        for name, field in old_fields.items():
            if name not in matched and "default" not in field:
                self.fail(f"{path}.{name}", "field without a default was removed")
        self.visiting.discard(key)

    def _branch_for(self, union: list[Any], writer: Any) -> Any | None:
        for branch in union:
            if self.matches(branch, writer):
                return branch
        return None

    def _describe(self, schema: Any) -> str:
        schema = self.resolve(schema, self.old_names)
        if isinstance(schema, dict) and "name" in schema:
            return str(schema["name"])
        return self.kind(schema)


def incompatibilities(new: Any, old: Any) -> list[Incompatibility]:
    """Why a reader with schema `new` cannot read data written with `old` (empty: it can)."""
    checker = _Checker(new, old)
    checker.check(new, old, "")
    return checker.found
