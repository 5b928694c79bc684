"""Durations as users write them in a config (trainer.time_limit=20m): 20m, 1h30m, 90s, 1.5h, or seconds. Plain
arithmetic, so the config check reads them before anything heavy loads."""
from __future__ import annotations

import math
import re

_UNITS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600, "d": 86400}
_PART = re.compile(r"(\d+(?:\.\d+)?)(sec|min|hr|s|m|h|d)")


def parse_duration(value) -> float | None:
    """Seconds from 20m, 1h30m, 90s, 1.5h or a plain number of seconds; None for null. ValueError otherwise."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = str(value).strip().lower().replace(" ", "")
        if re.fullmatch(r"\d+(\.\d+)?", text):
            seconds = float(text)
        else:
            parts = _PART.findall(text)
            if not parts or "".join(n + u for n, u in parts) != text:
                raise ValueError(value)
            seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(value)
    return seconds


def is_duration(value) -> bool:
    try:
        return parse_duration(value) is not None
    except ValueError:
        return False
