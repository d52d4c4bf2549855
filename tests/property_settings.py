"""hypothesis settings shared by the property tests.

By default a property runs a fixed, derandomized set of examples (the same in every CI run,
so a failure is reproducible). Setting the property's environment variable to N runs N random
examples instead: the way to hunt for new failures on a quiet machine, e.g.
``TRAYUPDATER_EXTRACT_EXAMPLES=5000 pytest tests/test_extract_properties.py``.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable

from hypothesis import HealthCheck, settings


def examples_from(variable: str) -> int:
    """The count asked for in ``variable`` (0: none asked, run the derandomized default)."""
    return int(os.environ.get(variable, "0"))


def property_settings(variable: str, default_examples: int, *, fixtures: bool = False) -> settings:
    """``default_examples`` derandomized, or as many random examples as ``variable`` asks.

    ``fixtures``: the test takes a function-scoped fixture that holds no per-example state
    (a server, a guard that is reset in the test).
    """
    asked = examples_from(variable)
    health_checks = [HealthCheck.too_slow, HealthCheck.data_too_large]
    if fixtures:
        health_checks.append(HealthCheck.function_scoped_fixture)
    return settings(
        max_examples=asked or default_examples,
        derandomize=not asked,
        database=None,
        deadline=None,
        suppress_health_check=health_checks,
    )


def assert_reached(stats: Counter[str], situations: Iterable[str], variable: str) -> None:
    """Fail unless every one of ``situations`` was counted in ``stats``: a property whose
    examples never reach what its invariants are about passes without testing anything.
    Not judged when fewer than 100 random examples were asked with ``variable``."""
    asked = examples_from(variable)
    if asked and asked < 100:
        return
    missing = [name for name in situations if not stats[name]]
    assert not missing, f"no example reached {missing}: {dict(stats)}"
