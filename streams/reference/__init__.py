"""Reference data files and reading them: the catalogue (products and locations; `demo.json`
is the demo's) and the fraud rules. The decisions get what these return, never a path."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from streams.catalogue import Catalogue, CatalogueError, parse_catalogue
from streams.fraud import FraudRules, FraudRulesError, parse_rules

DEFAULT_FILE = Path(__file__).resolve().parent / "demo.json"


def load_catalogue(path: Path | None = None) -> Catalogue:
    """The catalogue in `path` (the demo's when None); errors name the file and the field."""
    path = path or DEFAULT_FILE
    try:
        document: Any = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CatalogueError(f"{path}: {exc}") from exc
    return parse_catalogue(document, source=str(path))


def load_rules(path: Path | None = None) -> FraudRules:
    """The fraud rules in `path`; the defaults when None. Errors name the file and the field."""
    if path is None:
        return FraudRules()
    try:
        document: Any = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise FraudRulesError(path, None, str(exc)) from exc
    return parse_rules(document, source=path)
