"""Durations, sizes and the effective memory limit, as they are written in YAML."""

from __future__ import annotations

import decimal
import functools
import math
import re
import sys
from fractions import Fraction
from pathlib import Path
from typing import Any

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
#: The longest duration: 100 years. Longer ones overflow the clocks and waits they feed.
MAX_SECONDS = 100 * 365.25 * 86400
#: The largest size: what a signed 64-bit byte count holds (8 EiB).
MAX_BYTES = 2**63 - 1


def shown(value: object, limit: int = 80) -> str:
    """``repr(value)`` for an error message: shortened, and never raising (huge ints do)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        return f"an integer of about {int(value.bit_length() * math.log10(2)) + 1} digits"
    try:
        text = repr(value)
    except Exception:  # a hostile __repr__, or one nested too deeply
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def parse_duration(value: object) -> float:
    """Seconds from ``30``, ``0.25``, ``"250ms"``, ``"5m"``, ``"PT5M"``; never negative."""
    if isinstance(value, bool):
        raise ValueError(f"expected {DURATION_HINT}, got {shown(value)}")
    if isinstance(value, int | float):
        # An int too large for a float is an OverflowError, which pydantic would not catch.
        seconds = float(value) if abs(value) <= MAX_SECONDS else math.inf
    elif isinstance(value, str):
        seconds = _parse_duration_text(value)
    else:
        raise ValueError(f"expected {DURATION_HINT}, got {shown(value)}")
    if not math.isfinite(seconds) or not 0 <= seconds <= MAX_SECONDS:
        raise ValueError(
            f"expected a finite duration from 0 to {MAX_SECONDS:.0f} seconds (100 years), "
            f"got {shown(value)}"
        )
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
    raise ValueError(f"expected {DURATION_HINT}, got {shown(text)}")


RATE_HINT = "a number from 0 to 1 or a percentage like '50%'"
_PER = re.compile(
    r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*/\s*(\d+(?:\.\d*)?|\.\d+)?\s*(ms|s|sec|second|m|min|minute|h|hour)\s*$",
    re.IGNORECASE,
)
_PER_UNITS = {
    "ms": 0.001,
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "h": 3600.0,
    "hour": 3600.0,
}
PER_SECOND_HINT = "a rate like '100/s', '600/min', '10/h' or '5/100ms'"


def parse_share(value: object) -> float:
    """A share in [0, 1] from ``0.25`` or ``"25%"``."""
    share: float
    if isinstance(value, bool):
        raise ValueError(f"expected {RATE_HINT}, got {shown(value)}")
    if isinstance(value, int | float):
        share = float(value)
    elif isinstance(value, str) and (m := _PERCENT.match(value)):
        share = float(m.group(1)) / 100.0
    else:
        raise ValueError(f"expected {RATE_HINT}, got {shown(value)}")
    if not 0.0 <= share <= 1.0:  # NaN fails this too
        raise ValueError(f"expected {RATE_HINT}, got {shown(value)}")
    return share


def parse_per_second(value: object) -> float:
    """Events per second from ``"100/s"``, ``"600/min"``, ``"5/100ms"``, or a number."""
    rate: float
    if isinstance(value, bool):
        raise ValueError(f"expected {PER_SECOND_HINT}, got {shown(value)}")
    if isinstance(value, int | float):
        rate = float(value)
    elif isinstance(value, str) and (m := _PER.match(value)):
        count, multiple, unit = m.groups()
        period = float(multiple or 1) * _PER_UNITS[unit.lower()]
        rate = float(count) / period if period > 0 else math.inf
    else:
        raise ValueError(f"expected {PER_SECOND_HINT}, got {shown(value)}")
    if not math.isfinite(rate) or rate <= 0:
        raise ValueError(
            f"expected a positive, finite rate ({PER_SECOND_HINT}), got {shown(value)}"
        )
    return rate


def parse_size(value: object, *, allow_percent: bool = False) -> int:
    """Bytes from ``1024``, ``"512MiB"``, ``"2GB"`` and, for memory, ``"80%"`` of the limit."""
    if isinstance(value, bool):
        raise ValueError(f"expected {SIZE_HINT}, got {shown(value)}")
    size: int | float
    if isinstance(value, int | float):
        size = value  # an int stays exact: float() of a huge one would raise OverflowError
    elif isinstance(value, str):
        if allow_percent and (m := _PERCENT.match(value)):
            percent = float(m.group(1))
            if not 0 < percent <= 100:
                raise ValueError(
                    f"expected a percentage above 0% and at most 100%, got {shown(value)}"
                )
            return int(effective_memory_limit() * percent / 100)
        m = _SIZE.match(value)
        if not m:
            hint = SIZE_HINT + (" or a percentage like '80%'" if allow_percent else "")
            raise ValueError(f"expected {hint}, got {shown(value)}")
        number, unit = m.groups()
        size = float(number) * _unit_factor(unit or "b")
    else:
        raise ValueError(f"expected {SIZE_HINT}, got {shown(value)}")
    if (isinstance(size, float) and not math.isfinite(size)) or not 0 <= size <= MAX_BYTES:
        raise ValueError(f"expected a finite size from 0 to 2**63-1 bytes, got {shown(value)}")
    return int(size)


def _unit_factor(unit: str) -> int:
    unit = unit.lower()
    if unit == "b":
        return 1
    base = 1024 if "i" in unit else 1000
    return int(base ** _SIZE_POWERS[unit[0]])


_CGROUP_ROOT = Path("/sys/fs/cgroup")
_CGROUP_MEMBERSHIP = Path("/proc/self/cgroup")
#: cgroup v1 writes "no limit" as the largest page-aligned 64-bit count (9223372036854771712
#: with 4 KiB pages, less with larger pages): a value this large is no limit.
_NO_LIMIT = 2**62


@functools.cache
def effective_memory_limit() -> int:
    """The smaller of the container's cgroup memory limit and the machine's physical memory."""
    return _memory_limit()


def _memory_limit(root: Path = _CGROUP_ROOT, membership: Path = _CGROUP_MEMBERSHIP) -> int:
    """``effective_memory_limit`` read afresh from a cgroup tree (a fake one in tests)."""
    import psutil

    return min([int(psutil.virtual_memory().total), *_cgroup_limits(root, membership)])


def _cgroup_limits(root: Path = _CGROUP_ROOT, membership: Path = _CGROUP_MEMBERSHIP) -> list[int]:
    """The memory limits over this process: its own cgroup's and every ancestor's, in cgroup
    v2 and in v1's memory hierarchy. ``max``, v1's "no limit" and unreadable files are none."""
    # The mount roots themselves come first: a container often has its own cgroup mounted
    # there, while /proc/self/cgroup names it by the host's path, which is not under the mount.
    files = [root / "memory.max", root / "memory" / "memory.limit_in_bytes"]
    for line in _read(membership).splitlines():
        # v2 is "0::/path"; v1 is "4:memory:/path", or "9:cpu,memory:/path" with controllers
        # mounted together (in a directory named after them, or linked from memory/).
        hierarchy, _, rest = line.partition(":")
        controllers, found_path, path = rest.partition(":")
        parts = [part for part in path.strip().split("/") if part not in ("", ".")]
        if not found_path or ".." in parts:  # never look outside the mount
            continue
        if hierarchy == "0" and not controllers:
            mounts, name = [root], "memory.max"
        elif "memory" in controllers.split(","):
            mounts, name = [root / "memory", root / controllers], "memory.limit_in_bytes"
        else:
            continue
        for mount in mounts:
            files += [mount.joinpath(*parts[:depth], name) for depth in range(len(parts), -1, -1)]
    limits = (_limit_in(file) for file in dict.fromkeys(files))
    return [limit for limit in limits if limit is not None]


def _read(file: Path) -> str:
    try:
        return file.read_bytes().decode(errors="surrogateescape")
    except OSError:
        return ""


def _limit_in(file: Path) -> int | None:
    """The limit a cgroup file states, or ``None`` for none (absent, ``max``, garbage)."""
    text = _read(file).strip()
    if not (text.isascii() and text.isdigit()):
        return None
    limit = int(text)
    return limit if 0 < limit < _NO_LIMIT else None


def bound_value(value: object) -> int | float:
    """A bound kept as given: an int stays an exact int (``2**53 + 1`` is not rounded to a
    float), a float stays a float; never a bool, a numeric string, a NaN, an infinity or an
    int past the largest float."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"Input should be a valid number, got {shown(value)}")
    if isinstance(value, int):
        if abs(value) > sys.float_info.max:  # a bound past any float is no use, only a cost
            raise ValueError(
                f"Input should be a number within ±{sys.float_info.max!r}, got {shown(value)}"
            )
        return int(value)
    if not math.isfinite(value):
        raise ValueError(f"Input should be a finite number, got {shown(value)}")
    return float(value)


def number_text(number: Any) -> str:
    """A number for a message: an int in full (or its size), a float as ``:g`` shows it
    when that is exact and in full when not, any other number as ``str()`` shows it."""
    if isinstance(number, float):
        short = f"{number:g}"
        return short if float(short) == number else repr(number)
    if isinstance(number, int):
        return int_text(number)
    if isinstance(number, Fraction):  # a Python Fraction, or a longdouble held exactly
        numerator, denominator = number.numerator, number.denominator
        if denominator == 1:
            return int_text(numerator)
        if float(number) == number:
            return number_text(float(number))
        if denominator & (denominator - 1) == 0:  # a binary fraction: 21 digits tell apart
            return str(decimal.Context(prec=21).divide(numerator, denominator))
    return str(number)


def int_text(value: int | float) -> str:
    """``repr(value)``, or the size of an int too long to read (or past Python's digit limit)."""
    if isinstance(value, int) and value.bit_length() > 96:  # 29 digits or more
        sign = "a negative" if value < 0 else "an"
        return f"{sign} int of about {int(value.bit_length() * 0.30103) + 1} digits"
    return repr(value)
