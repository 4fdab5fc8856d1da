"""A connector in its own package: installed, listed by `oms connectors list`, conformant."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from events.codec import AvroCodec
from infra.settings import Settings
from tests.conftest import read_topic, settings_env

EXAMPLE = Path(__file__).parent.parent / "example_connector"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The example package installed into a folder of its own, put on PYTHONPATH."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
         "--target", str(target), str(EXAMPLE)],
        check=True, capture_output=True,
    )  # fmt: skip
    return os.environ | {"PYTHONPATH": str(target)}


def test_an_installed_connector_package_is_listed(installed: dict[str, str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "oms.cli", "connectors", "list"],
        env=installed, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    fax = [line for line in result.stdout.splitlines() if line.startswith("fax ")]
    assert (
        fax and "orderstream-fax-connector" in fax[0] and "orderstream_fax:FaxConnector" in fax[0]
    )
    assert any(line.startswith("webshop ") for line in result.stdout.splitlines())


def test_the_installed_connector_passes_the_conformance_kit(installed: dict[str, str]) -> None:
    kit = EXAMPLE / "test_fax_conformance.py"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(kit)],
        env=installed, capture_output=True, text=True, cwd=EXAMPLE,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:]
    assert "passed" in result.stdout


@pytest.mark.integration
def test_oms_connect_publishes_with_the_installed_connector(
    installed: dict[str, str], isolated_settings: Settings, tmp_path: Path
) -> None:
    orders = tmp_path / "faxes.jsonl"
    orders.write_bytes(
        b"".join((EXAMPLE / "fixtures" / f"fax{n}.json").read_bytes() for n in (1, 2, 3))
    )
    result = subprocess.run(
        [sys.executable, "-m", "oms.cli", "connect", "fax", str(orders), "--no-progress"],
        env=settings_env(isolated_settings) | {"PYTHONPATH": installed["PYTHONPATH"]},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "3 of 3 lines acknowledged" in result.stdout
    events = read_topic(isolated_settings, isolated_settings.topics.intake, expect=3)
    assert {AvroCodec().decode(m.value()).external_id for m in events} == {  # type: ignore[union-attr]
        "FX-0001", "FX-0002", "FX-0003"}  # fmt: skip
