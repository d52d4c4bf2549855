"""``selfupdate.json``: what the app's own updates did (blocked versions, the last check,
result and error), kept apart from ``state.json``, which belongs to the child's updates.

Another build may have written it, or a hand edit: each field of the wrong type falls back
to its default, since a crash here would end self-update for good.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trayupdater.store import MAX_TIMESTAMP, atomic_write_text, read_json_file

log = logging.getLogger(__name__)

STATE_FILE = "selfupdate.json"


@dataclass
class SelfUpdateState:
    blocked: list[str] = field(default_factory=list)
    last_error: str | None = None
    last_check: float | None = None
    last_result: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> SelfUpdateState:
        try:
            data = read_json_file(path)
        except FileNotFoundError:
            return cls()
        except (OSError, ValueError) as exc:
            log.warning("%s unreadable (%s); starting afresh", path.name, exc)
            return cls()
        if not isinstance(data, dict):
            return cls()
        # Another build or a hand edit: a field of the wrong type falls back to its default
        # (a crash here would end self-update for good). Each check answers None if wrong.
        state = cls()
        wrong: list[str] = []
        for name, convert in (
            ("blocked", lambda v: [str(x) for x in v] if isinstance(v, list) else None),
            ("last_error", lambda v: v if isinstance(v, str) else None),
            ("last_check", _finite_time),
            ("last_result", lambda v: v if isinstance(v, dict) else None),
        ):
            if data.get(name) is None:
                continue
            value = convert(data[name])
            if value is None:
                wrong.append(name)
            else:
                setattr(state, name, value)
        if wrong:
            log.warning("%s: ignoring %s (wrong type)", path.name, ", ".join(wrong))
        return state

    def save(self, path: Path) -> None:
        atomic_write_text(path, json.dumps(self.__dict__, indent=2, sort_keys=True))


def _finite_time(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    # NaN fails the comparison; a huge int is compared exactly (float() would overflow).
    return float(value) if 0 <= value <= MAX_TIMESTAMP else None
