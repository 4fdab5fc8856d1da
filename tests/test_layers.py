"""The floors of docs/architecture.md: every import runs down a floor or stays on its own
package; the three sides (connectors, streams, projections) never import each other; `bench`
may use `oms` (to start the local stack and run the processes it measures). Read from the code's
own import statements, including those inside functions."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FLOOR = {"events": 1, "infra": 2, "connectors": 3, "streams": 3, "projections": 3, "bench": 4,
         "oms": 5}  # fmt: skip
ALLOWED_UP = {("bench", "oms")}


def imports_of(path: Path) -> list[tuple[str, int]]:
    """Every project module `path` imports, with the line."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, node.lineno))
    return [(name, line) for name, line in found if name.split(".")[0] in FLOOR]


def crossing(package: str, imported: str) -> str | None:
    """Why `package` may not import `imported`, or None when it may."""
    target = imported.split(".")[0]
    if target == package:
        return None
    if (package, target) in ALLOWED_UP:
        return None
    if FLOOR[target] > FLOOR[package]:
        return f"runs up from floor {FLOOR[package]} to {FLOOR[target]}"
    if FLOOR[target] == FLOOR[package]:
        return "runs sideways between two sides of one floor"
    return None


MODULES = sorted(p for package in FLOOR for p in (ROOT / package).rglob("*.py"))


def test_every_package_of_the_floors_is_there() -> None:
    assert {p.relative_to(ROOT).parts[0] for p in MODULES} == set(FLOOR)


@pytest.mark.parametrize("module", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_run_down_the_floors(module: Path) -> None:
    package = module.relative_to(ROOT).parts[0]
    wrong = [
        f"line {line}: {name} ({why})"
        for name, line in imports_of(module)
        if (why := crossing(package, name)) is not None
    ]
    assert not wrong, f"{module.relative_to(ROOT)}: " + "; ".join(wrong)


def test_the_check_sees_an_import_that_runs_up() -> None:
    assert crossing("connectors", "oms.settings") is not None
    assert crossing("projections", "connectors.webhooks") is not None
    assert crossing("streams", "bench.pipeline") is not None
    assert crossing("oms", "projections.store") is None
    assert crossing("bench", "oms.stack") is None


def private_names_imported(path: Path) -> list[str]:
    """`from project.module import _name` in `path`: a module's private names are its own."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] not in FLOOR:
                continue
            found += [
                f"line {node.lineno}: {node.module}.{alias.name}"
                for alias in node.names
                if alias.name.startswith("_") and not alias.name.startswith("__")
            ]
    return found


def test_no_module_imports_another_ones_private_names() -> None:
    wrong = {
        str(module.relative_to(ROOT)): private_names_imported(module)
        for module in MODULES
        if private_names_imported(module)
    }
    assert not wrong, wrong


def test_the_private_name_check_sees_one(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("from oms.stack import _hidden, Public\nfrom os import _exit\n")
    assert private_names_imported(module) == ["line 1: oms.stack._hidden"]
