"""Schema evolution under BACKWARD_TRANSITIVE, checked with Avro's resolution rules."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from fastavro import parse_schema, schemaless_reader, schemaless_writer
from pydantic import Field

from events.avro_schema import avro_schema
from events.compatibility import incompatibilities
from events.models import Frozen
from events.schema_catalog import Catalog, check_schemas, write_schemas


def sample_v1() -> type[Frozen]:
    class Sample(Frozen):
        sku: str
        quantity: int
        note: str | None = None

    return Sample


def evolve(change: str) -> type[Frozen]:
    if change == "add optional field":

        class Sample(Frozen):
            sku: str
            quantity: int
            note: str | None = None
            colour: str | None = None

    elif change == "add field with default":

        class Sample(Frozen):  # type: ignore[no-redef]
            sku: str
            quantity: int
            note: str | None = None
            unit: str = "piece"

    elif change == "remove field without default":

        class Sample(Frozen):  # type: ignore[no-redef]
            sku: str
            note: str | None = None

    elif change == "change a type":

        class Sample(Frozen):  # type: ignore[no-redef]
            sku: str
            quantity: str
            note: str | None = None

    elif change == "rename without alias":

        class Sample(Frozen):  # type: ignore[no-redef]
            sku: str
            units: int
            note: str | None = None

    elif change == "add required field":

        class Sample(Frozen):  # type: ignore[no-redef]
            sku: str
            quantity: int
            note: str | None = None
            warehouse: str

    else:
        raise AssertionError(change)
    return Sample


@pytest.mark.parametrize(
    ("change", "offending"),
    [
        ("add optional field", None),
        ("add field with default", None),
        ("remove field without default", "Sample.quantity"),
        ("change a type", "Sample.quantity"),
        ("rename without alias", "Sample.units"),
        ("add required field", "Sample.warehouse"),
    ],
)
def test_evolution_is_judged_by_avro_resolution(
    tmp_path: Path, change: str, offending: str | None
) -> None:
    write_schemas(tmp_path, models=(sample_v1(),))
    v2 = evolve(change)
    write_schemas(tmp_path, models=(v2,))
    (report,) = check_schemas(tmp_path, models=(v2,))
    assert report.versions == 2
    if offending is None:
        assert report.problems == []
    else:
        assert report.status == "FAILED"
        assert any(offending in problem for problem in report.problems), report.problems


def test_renaming_with_an_alias_passes_and_fastavro_agrees() -> None:
    old = avro_schema(sample_v1())
    new = json.loads(json.dumps(old))
    quantity = next(f for f in new["fields"] if f["name"] == "quantity")
    quantity.update(name="units", aliases=["quantity"])
    assert incompatibilities(new, old) == []
    body = io.BytesIO()
    schemaless_writer(body, parse_schema(old), {"sku": "A", "quantity": 3, "note": None})
    body.seek(0)
    assert schemaless_reader(body, parse_schema(old), parse_schema(new))["units"] == 3


def test_a_model_field_renamed_with_avro_aliases_passes_the_check(tmp_path: Path) -> None:
    write_schemas(tmp_path, models=(sample_v1(),))

    class Sample(Frozen):
        sku: str
        units: int = Field(json_schema_extra={"avro_aliases": ["quantity"]})
        note: str | None = None

    write_schemas(tmp_path, models=(Sample,))
    (report,) = check_schemas(tmp_path, models=(Sample,))
    assert (report.versions, report.problems) == (2, [])


def test_every_earlier_version_is_checked_not_just_the_last(tmp_path: Path) -> None:
    write_schemas(tmp_path, models=(sample_v1(),))
    write_schemas(tmp_path, models=(evolve("add field with default"),))

    class Sample(Frozen):
        sku: str
        quantity: int
        unit: str = "piece"  # `note` had a default, so removing it is fine for v2 -> v3 ...
        note: str | None = None
        colour: str = Field(description="... but v1 and v2 lack this field and it has no default")

    write_schemas(tmp_path, models=(Sample,))
    (report,) = check_schemas(tmp_path, models=(Sample,))
    assert report.versions == 3
    assert [p.split(":")[0] for p in report.problems] == [
        "cannot read v1",
        "cannot read v2",
    ]


def test_unchanged_models_register_no_new_version(tmp_path: Path) -> None:
    assert len(write_schemas(tmp_path, models=(sample_v1(),))) == 1
    assert write_schemas(tmp_path, models=(sample_v1(),)) == []
    assert [v.schema_id for v in Catalog(tmp_path).versions] == [1]


def test_a_model_changed_without_writing_its_schema_is_reported(tmp_path: Path) -> None:
    write_schemas(tmp_path, models=(sample_v1(),))
    (report,) = check_schemas(tmp_path, models=(evolve("add optional field"),))
    assert any("oms schemas write" in p for p in report.problems)


def test_the_committed_contract_passes_the_check() -> None:
    failed = [r for r in check_schemas() if r.problems]
    assert failed == [], failed


def test_oms_schemas_check_prints_a_table_and_exits_zero_on_the_committed_contract() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "oms.cli", "schemas", "check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OrderReceived" in result.stdout and "StockReserved" in result.stdout
    assert "ok" in result.stdout


def test_oms_schemas_check_names_the_offending_field(tmp_path: Path) -> None:
    write_schemas(tmp_path)
    history = tmp_path / "history" / "OrderAccepted" / "v1.avsc"
    old = json.loads(history.read_text())
    old["fields"].append({"name": "legacy_code", "type": "string"})
    history.write_text(json.dumps(old))
    result = subprocess.run(
        [sys.executable, "-m", "oms.cli", "schemas", "check", "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert "OrderAccepted.legacy_code" in result.stdout
    assert "field without a default was removed" in result.stdout
