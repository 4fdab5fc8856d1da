from __future__ import annotations

from events.lifecycle import lifecycle_markdown
from infra.settings import PROJECT_ROOT


def test_the_documented_table_and_diagram_match_the_code() -> None:
    text = (PROJECT_ROOT / "docs" / "order-lifecycle.md").read_text()
    start = text.index("<!-- generated: events.lifecycle.lifecycle_markdown -->\n")
    end = text.index("<!-- end generated -->")
    documented = text[start:end].split("\n", 1)[1]
    assert documented == lifecycle_markdown(), (
        "docs/order-lifecycle.md is out of date: regenerate it with python -m events.lifecycle"
    )
