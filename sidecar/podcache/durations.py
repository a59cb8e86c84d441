"""Go-style durations ("300ms", "1h30m") and plain seconds, parsed into float seconds.

The seed was a Go package whose users wrote ``defaultTTL: "5m"``; CacheConfigs and
socket requests keep that spelling. A bare number (int, float or numeric string)
means seconds. Negative durations are refused here because no caller wants one.
"""

from __future__ import annotations

import functools
import math
import re

_UNIT_SECONDS: dict[str, float] = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_NUMBER = re.compile(r"[+]?(\d+(?:\.\d*)?|\.\d+)")


def parse_duration(value: object, *, field: str = "duration") -> float:
    """Return ``value`` as seconds, or raise ``ValueError`` naming ``field``.

    Accepts ints/floats (seconds), numeric strings (seconds) and Go durations.
    """
    if isinstance(value, bool):
        raise ValueError(f"{field}: expected a duration like '30s' or seconds, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = _parse_text(value.strip(), field)
    else:
        raise ValueError(f"{field}: expected a duration like '30s' or seconds, got {value!r}")
    if math.isnan(seconds) or math.isinf(seconds):
        raise ValueError(f"{field}: duration must be finite, got {value!r}")
    if seconds < 0:
        raise ValueError(f"{field}: duration must not be negative, got {value!r}")
    return seconds


@functools.lru_cache(maxsize=512)
def _parse_text(text: str, field: str) -> float:
    # Cached: a lock acquire parses its ttl on every request, and clients send the same
    # few texts ("10s"); a bad text raises and is not cached.
    if not text:
        raise ValueError(f"{field}: empty duration")
    if text.startswith("-"):
        raise ValueError(f"{field}: duration must not be negative, got {text!r}")
    if _NUMBER.fullmatch(text):
        return float(text)
    body = text[1:] if text.startswith("+") else text
    if body == "0":
        return 0.0
    total = 0.0
    position = 0
    for match in _PART.finditer(body):
        if match.start() != position:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        position = match.end()
    if position != len(body) or position == 0:
        raise ValueError(
            f"{field}: invalid duration {text!r}"
            " (use e.g. '300ms', '30s', '5m', '1h30m' or seconds)"
        )
    return total


def format_duration(seconds: float) -> str:
    """Render seconds as a short Go-style duration ("1m30s", "250ms") for configs and logs."""
    if seconds < 0:
        raise ValueError(f"duration must not be negative, got {seconds!r}")
    millis = round(seconds * 1000)
    if millis == 0:
        return "0s"
    if millis % 1000:
        return f"{millis}ms"
    whole = millis // 1000
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [
        f"{hours}h" if hours else "",
        f"{minutes}m" if minutes else "",
        f"{secs}s" if secs else "",
    ]
    return "".join(parts)
