"""The published schemas: current .avsc files, every earlier version, and their stable ids.

Layout of schemas/:
- `<Event>.avsc`: the current schema, generated from the pydantic model;
- `history/<Event>/v<N>.avsc`: every version ever registered (the newest equals the current);
- `registry.json`: schema id → name, version, file. Ids are never reused or renumbered.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from events.avro_schema import CONTRACT, SCHEMA_DIR, avro_schema, render
from events.compatibility import incompatibilities

REGISTRY_ABOUT = (
    "Stable schema ids for the local registry (used when OMS_SCHEMA_REGISTRY_URL is not set). "
    "Never reuse or renumber an id; `oms schemas write` gives a new version the next free id."
)


@dataclass(frozen=True)
class SchemaVersion:
    schema_id: int
    name: str
    version: int
    file: str

    def load(self, directory: Path) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads((directory / self.file).read_text())
        return loaded


@dataclass
class SchemaReport:
    name: str
    versions: int
    problems: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        return "ok" if not self.problems else "FAILED"


class Catalog:
    """registry.json and the history folder of one schemas/ directory."""

    def __init__(self, directory: Path = SCHEMA_DIR) -> None:
        self.directory = directory
        path = directory / "registry.json"
        entries = json.loads(path.read_text())["schemas"] if path.exists() else {}
        self.versions = [
            SchemaVersion(int(i), e["name"], e["version"], e["file"]) for i, e in entries.items()
        ]

    def history(self, name: str) -> list[SchemaVersion]:
        return sorted((v for v in self.versions if v.name == name), key=lambda v: v.version)

    def register(self, name: str, schema: dict[str, Any]) -> SchemaVersion | None:
        """Record `schema` as the next version of `name` unless it equals the newest one."""
        history = self.history(name)
        if history and history[-1].load(self.directory) == schema:
            return None
        version = history[-1].version + 1 if history else 1
        file = f"history/{name}/v{version}.avsc"
        target = self.directory / file
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(schema, indent=2, ensure_ascii=False) + "\n")
        added = SchemaVersion(
            max((v.schema_id for v in self.versions), default=0) + 1, name, version, file
        )
        self.versions.append(added)
        return added

    def save(self) -> None:
        entries = {
            str(v.schema_id): {"name": v.name, "version": v.version, "file": v.file}
            for v in sorted(self.versions, key=lambda v: v.schema_id)
        }
        text = json.dumps({"about": REGISTRY_ABOUT, "schemas": entries}, indent=2)
        (self.directory / "registry.json").write_text(text + "\n")


def write_schemas(
    directory: Path = SCHEMA_DIR, models: tuple[type[BaseModel], ...] = CONTRACT
) -> list[SchemaVersion]:
    """Regenerate every .avsc from its model and register what changed; returns new versions."""
    catalog = Catalog(directory)
    added = []
    for model in models:
        (directory / f"{model.__name__}.avsc").write_text(render(model))
        registered = catalog.register(model.__name__, avro_schema(model))
        if registered is not None:
            added.append(registered)
    catalog.save()
    return added


def check_schemas(
    directory: Path = SCHEMA_DIR, models: tuple[type[BaseModel], ...] = CONTRACT
) -> list[SchemaReport]:
    """BACKWARD_TRANSITIVE: each current schema must read data of all its earlier versions."""
    catalog = Catalog(directory)
    reports = []
    for model in models:
        name = model.__name__
        history = catalog.history(name)
        report = SchemaReport(name, len(history))
        current_file = directory / f"{name}.avsc"
        if not current_file.exists() or current_file.read_text() != render(model):
            report.problems.append(
                f"schemas/{name}.avsc differs from the model: run `oms schemas write`"
            )
        current = avro_schema(model)
        if not history or history[-1].load(directory) != current:
            report.problems.append(
                "the model's schema is not registered as a version: run `oms schemas write`"
            )
        for earlier in history:
            for problem in incompatibilities(current, earlier.load(directory)):
                report.problems.append(f"cannot read v{earlier.version}: {problem}")
        reports.append(report)
    return reports
