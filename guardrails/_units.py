"""Durations, sizes and the effective memory limit, as they are written in YAML."""

from __future__ import annotations

import functools
import math
import re
from pathlib import Path

_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h|d|us|µs)?\s*$", re.IGNORECASE)
_DURATION_UNITS = {
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
}
_ISO = re.compile(
    r"^P(?:(?P<d>\d+(?:\.\d+)?)D)?(?:T(?:(?P<h>\d+(?:\.\d+)?)H)?(?:(?P<m>\d+(?:\.\d+)?)M)?"
    r"(?:(?P<s>\d+(?:\.\d+)?)S)?)?$",
    re.IGNORECASE,
)
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgtp]i?b?|b)?\s*$", re.IGNORECASE)
_SIZE_POWERS = {"k": 1, "m": 2, "g": 3, "t": 4, "p": 5}
_PERCENT = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*%\s*$")

DURATION_HINT = "a number of seconds or a string like '250ms', '30s', '5m', '1h' or 'PT5M'"
SIZE_HINT = "a number of bytes or a string like '512MiB', '2GiB' or '2GB'"


def parse_duration(value: object) -> float:
    """Seconds from ``30``, ``0.25``, ``"250ms"``, ``"5m"``, ``"PT5M"``; never negative."""
    if isinstance(value, bool):
        raise ValueError(f"expected {DURATION_HINT}, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = _parse_duration_text(value)
    else:
        raise ValueError(f"expected {DURATION_HINT}, got {value!r}")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"expected a finite duration of zero or more, got {value!r}")
    return seconds


def _parse_duration_text(text: str) -> float:
    if m := _DURATION.match(text):
        number, unit = m.groups()
        return float(number) * _DURATION_UNITS[(unit or "s").lower()]
    if (m := _ISO.match(text.strip())) and text.strip().upper() not in ("P", "PT"):
        parts = {k: float(v) for k, v in m.groupdict().items() if v is not None}
        if parts:
            return (
                parts.get("d", 0) * 86400
                + parts.get("h", 0) * 3600
                + parts.get("m", 0) * 60
                + parts.get("s", 0)
            )
    raise ValueError(f"expected {DURATION_HINT}, got {text!r}")


def parse_size(value: object, *, allow_percent: bool = False) -> int:
    """Bytes from ``1024``, ``"512MiB"``, ``"2GB"`` and, for memory, ``"80%"`` of the limit."""
    if isinstance(value, bool):
        raise ValueError(f"expected {SIZE_HINT}, got {value!r}")
    if isinstance(value, int):
        size = float(value)
    elif isinstance(value, float):
        size = value
    elif isinstance(value, str):
        if allow_percent and (m := _PERCENT.match(value)):
            percent = float(m.group(1))
            if not 0 < percent <= 100:
                raise ValueError(f"expected a percentage above 0% and at most 100%, got {value!r}")
            return int(effective_memory_limit() * percent / 100)
        m = _SIZE.match(value)
        if not m:
            hint = SIZE_HINT + (" or a percentage like '80%'" if allow_percent else "")
            raise ValueError(f"expected {hint}, got {value!r}")
        number, unit = m.groups()
        size = float(number) * _unit_factor(unit or "b")
    else:
        raise ValueError(f"expected {SIZE_HINT}, got {value!r}")
    if not math.isfinite(size) or size < 0:
        raise ValueError(f"expected a size of zero or more, got {value!r}")
    return int(size)


def _unit_factor(unit: str) -> int:
    unit = unit.lower()
    if unit == "b":
        return 1
    base = 1024 if "i" in unit else 1000
    return int(base ** _SIZE_POWERS[unit[0]])


@functools.cache
def effective_memory_limit() -> int:
    """The smaller of the container's cgroup memory limit and the machine's physical memory."""
    import psutil

    limit = int(psutil.virtual_memory().total)
    for cgroup_limit in _cgroup_limits():
        if 0 < cgroup_limit < limit:
            limit = cgroup_limit
    return limit


def _cgroup_limits(
    root: Path = Path("/sys/fs/cgroup"), membership: Path = Path("/proc/self/cgroup")
) -> list[int]:
    """The memory limits of this process's cgroups (v1 and v2); ``max`` means none."""
    candidates = [root / "memory.max", root / "memory" / "memory.limit_in_bytes"]
    try:
        own = membership.read_text().splitlines()
    except OSError:
        own = []
    for line in own:
        # cgroup v2 is "0::/path"; every ancestor's limit applies too.
        if line.startswith("0::"):
            path = root / line[3:].strip().lstrip("/")
            while path != root and root in path.parents:
                candidates.append(path / "memory.max")
                path = path.parent
    found: list[int] = []
    for candidate in candidates:
        try:
            text = candidate.read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            found.append(int(text))
    return found
