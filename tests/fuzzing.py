"""How much the fuzz tests (marker `fuzz`) try: a fixed seed and `FEW` examples in `make test`,
so a run is repeatable and short; `make fuzz` sets OMS_FUZZ_EXAMPLES (many) and
OMS_FUZZ_RANDOM=1 (a new seed each run, printed by hypothesis when an example fails).

    @pytest.mark.fuzz
    @fuzz_settings()
    @given(...)
    def test_...
"""

from __future__ import annotations

import os
from typing import Any

from hypothesis import HealthCheck, settings

FEW = 200


def examples(default: int = FEW) -> int:
    return int(os.environ.get("OMS_FUZZ_EXAMPLES", default))


def fuzz_settings(default: int = FEW, **overrides: Any) -> settings:
    fields: dict[str, Any] = dict(
        max_examples=examples(default),
        derandomize=not os.environ.get("OMS_FUZZ_RANDOM"),
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    fields.update(overrides)
    return settings(**fields)
