from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from guardrails._units import (
    MAX_BYTES,
    MAX_SECONDS,
    effective_memory_limit,
    parse_duration,
    parse_size,
    shown,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        (30, 30.0),
        (0.25, 0.25),
        ("250ms", 0.25),
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1.5h", 5400.0),
        ("PT5M", 300.0),
        ("PT1H30M", 5400.0),
        ("P1DT2S", 86402.0),
        ("pt0.5s", 0.5),
        (" 10 s ", 10.0),
        ("100us", 1e-4),
    ],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "bad", ["3 parsecs", "", "P", "PT", "-1s", "ms", True, None, [1], -5, "nan"]
)
def test_bad_durations_say_what_is_expected(bad: object) -> None:
    with pytest.raises(ValueError, match=r"expected"):
        parse_duration(bad)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        (1024, 1024),
        ("512MiB", 512 * 2**20),
        ("2GiB", 2 * 2**30),
        ("2GB", 2 * 10**9),
        ("1.5KiB", 1536),
        ("10k", 10_000),
        ("7b", 7),
    ],
)
def test_sizes(text: object, size: int) -> None:
    assert parse_size(text) == size


def test_percent_is_of_the_effective_limit() -> None:
    assert parse_size("50%", allow_percent=True) == effective_memory_limit() // 2


@pytest.mark.parametrize("bad", ["80%", "2 gallons", "-1GiB", False, "GiB"])
def test_bad_sizes(bad: object) -> None:
    with pytest.raises(ValueError, match="expected"):
        parse_size(bad)


@pytest.mark.parametrize("bad", ["0%", "101%", "abc%"])
def test_bad_percentages(bad: str) -> None:
    with pytest.raises(ValueError, match="expected"):
        parse_size(bad, allow_percent=True)


@pytest.mark.parametrize(
    "bad",
    [10**400, -(10**400), 10**38, MAX_SECONDS + 1, "101000000000000000000d"],
    ids=["10**400", "-10**400", "10**38", "100 years and a second", "10**20 days"],
)
def test_durations_too_long_for_a_float_or_a_clock(bad: object) -> None:
    with pytest.raises(ValueError, match="finite duration from 0 to 3155760000 seconds"):
        parse_duration(bad)


@pytest.mark.parametrize(
    "bad",
    [10**400, 2**63, float("inf"), float("nan"), 1e300, "9" * 400, "9000000PiB"],
    ids=["10**400", "2**63", "inf", "nan", "1e300", "400 nines", "9000000PiB"],
)
def test_sizes_too_large_or_not_finite(bad: object) -> None:
    with pytest.raises(ValueError, match=r"finite size from 0 to 2\*\*63-1 bytes"):
        parse_size(bad)
    assert parse_size(MAX_BYTES) == MAX_BYTES


@given(
    st.integers()
    | st.integers(min_value=-(10**500), max_value=10**500)
    | st.floats()
    | st.text(max_size=40)
    | st.booleans()
    | st.none()
)
@example(10**400)
def test_any_number_parses_or_says_expected(value: object) -> None:
    # Never OverflowError (pydantic would not turn it into a configuration problem).
    for parse in (parse_duration, parse_size):
        try:
            parse(value)
        except ValueError as exc:
            assert "expected" in str(exc)
            assert len(str(exc)) < 250


def test_shown_never_raises_and_stays_short() -> None:
    assert shown(10**5000) == "an integer of about 5001 digits"
    assert shown("x" * 1000) == "'" + "x" * 78 + "…"

    class Hostile:
        def __repr__(self) -> str:
            raise RuntimeError("no")

    assert shown(Hostile()) == "<Hostile>"


def test_effective_limit_is_positive_and_at_most_physical_memory() -> None:
    import psutil

    assert 0 < effective_memory_limit() <= psutil.virtual_memory().total


_UNITS = {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_SIZE_UNITS = {
    "B": 1,
    "KiB": 1024,
    "MiB": 2**20,
    "GiB": 2**30,
    "KB": 1000,
    "MB": 10**6,
    "GB": 10**9,
}


@given(st.integers(min_value=0, max_value=10**6), st.sampled_from(sorted(_UNITS)))
def test_duration_units_scale(number: int, unit: str) -> None:
    seconds = number * _UNITS[unit]
    if seconds <= MAX_SECONDS:
        assert parse_duration(f"{number}{unit}") == pytest.approx(seconds)
    else:
        with pytest.raises(ValueError, match="100 years"):
            parse_duration(f"{number}{unit}")


@given(st.floats(min_value=0, max_value=1e9, allow_nan=False))
def test_numbers_are_seconds(seconds: float) -> None:
    assert parse_duration(seconds) == seconds


@given(
    st.integers(min_value=0, max_value=99),
    st.integers(min_value=0, max_value=59),
    st.integers(min_value=0, max_value=59),
)
def test_iso_durations(h: int, m: int, s: int) -> None:
    assert parse_duration(f"PT{h}H{m}M{s}S") == h * 3600 + m * 60 + s


@given(st.integers(min_value=0, max_value=2**20), st.sampled_from(sorted(_SIZE_UNITS)))
def test_size_units_scale(number: int, unit: str) -> None:
    assert parse_size(f"{number}{unit}") == number * _SIZE_UNITS[unit]


@given(st.text(max_size=12))
def test_any_text_parses_or_says_expected(text: str) -> None:
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        assert "expected" in str(exc)
    else:
        assert seconds >= 0 and math.isfinite(seconds)


def test_cgroup_limits_v2_nested_and_v1(tmp_path: Path) -> None:
    from guardrails._units import _cgroup_limits

    root = tmp_path / "cgroup"
    (root / "kubepods" / "pod1").mkdir(parents=True)
    (root / "memory.max").write_text("max\n")
    (root / "kubepods" / "memory.max").write_text("8589934592\n")
    (root / "kubepods" / "pod1" / "memory.max").write_text("2147483648\n")
    membership = tmp_path / "self-cgroup"
    membership.write_text("0::/kubepods/pod1\n")
    assert sorted(_cgroup_limits(root, membership)) == [2147483648, 8589934592]

    v1 = tmp_path / "v1"
    (v1 / "memory").mkdir(parents=True)
    (v1 / "memory" / "memory.limit_in_bytes").write_text("1073741824\n")
    assert _cgroup_limits(v1, tmp_path / "missing") == [1073741824]
