"""Attacks on cache keys of data containers: values a call can tell apart must never share a
key (a shared key is a wrong cached value), and a value that cannot be keyed is refused with
the ``cache.key`` hint, never a crash from the data library."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pandas as pd
import polars as pl
import pytest

from guardrails import configure, guarded
from guardrails._keys import key_of

UTC = dt.UTC
PLUS_ONE = dt.timezone(dt.timedelta(hours=1))


def cached() -> Any:
    configure({"policies": {"frames": {"cache": {"ttl": 60}}}})
    calls: list[int] = []

    @guarded("frames")
    def read(value: Any) -> Any:
        calls.append(1)
        if isinstance(value, pl.Series):
            return repr(value.to_list())  # a result of its own, not the objects themselves
        return [x.hour for x in value]

    read.calls = calls  # type: ignore[attr-defined]
    return read


def test_a_polars_object_series_changed_in_place_is_not_served_its_old_result() -> None:
    read = cached()
    box = {"x": 1}
    series = pl.Series([box], dtype=pl.Object)
    assert read(series) == "[{'x': 1}]"
    box["x"] = 2  # Arrow carried the object's address: the key stayed, the value did not
    assert read(series) == "[{'x': 2}]"
    assert read(pl.Series([{"x": 2}], dtype=pl.Object)) == "[{'x': 2}]"
    assert len(read.calls) == 2  # equal contents share the key, as object columns do


def test_polars_dtypes_arrow_cannot_import_are_keyed_by_value_not_a_crash() -> None:
    read = cached()
    for dtype in (pl.Int128, pl.UInt128):
        assert read(pl.Series([1, 2], dtype=dtype)) == "[1, 2]"
        assert read(pl.Series([1, 3], dtype=dtype)) == "[1, 3]"
        assert read(pl.Series([1, 2], dtype=dtype)) == "[1, 2]"
    assert key_of(pl.DataFrame({"a": pl.Series([5], dtype=pl.Int128)})) != key_of(
        pl.DataFrame({"a": pl.Series([5], dtype=pl.Int64)})
    )
    assert len(read.calls) == 4


def test_polars_object_values_with_no_key_are_refused_with_the_hint() -> None:
    read = cached()

    class Opaque:
        __hash__ = None  # type: ignore[assignment]

    with pytest.raises(TypeError, match=r"polars Object.*guardrails\.policies\.frames\.cache\.key"):
        read(pl.Series([Opaque()], dtype=pl.Object))


def test_one_instant_in_two_zones_is_two_keys_in_an_object_column_and_alone() -> None:
    read = cached()
    noon = dt.datetime(2020, 1, 1, 12, tzinfo=UTC)
    one_pm = dt.datetime(2020, 1, 1, 13, tzinfo=PLUS_ONE)
    assert noon == one_pm  # == compares instants; a call reads the hour
    mixed = pd.Series([noon, one_pm])
    assert mixed.dtype == object
    assert read(mixed) == [12, 13]
    assert read(pd.Series([one_pm, noon])) == [13, 12]
    ts = pd.Timestamp("2020-01-01 12:00", tz="UTC")
    assert read(pd.Series([ts, one_pm])) == [12, 13]
    assert read(pd.Series([ts.tz_convert("Asia/Tokyo"), one_pm])) == [21, 13]
    assert read([ts]) == [12]
    assert read([ts.tz_convert("US/Eastern")]) == [7]
    assert len(read.calls) == 6


def test_pandas_scalar_keys_match_equal_values_and_tell_apart_what_a_call_reads() -> None:
    noon = dt.datetime(2020, 1, 1, 12, tzinfo=UTC)
    named = dt.timezone(dt.timedelta(hours=1), "CET")
    one_pm = dt.datetime(2020, 1, 1, 13, tzinfo=PLUS_ONE)
    assert key_of(pd.Series([noon])) != key_of(pd.Series([noon], dtype=object))
    assert key_of(pd.Series([noon, one_pm])) == key_of(pd.Series([noon, one_pm]))
    assert key_of(pd.Series([noon, one_pm])) != key_of(
        pd.Series([noon, one_pm.replace(tzinfo=named)])
    )
    folded = dt.datetime(2020, 11, 1, 1, 30, fold=1, tzinfo=UTC)
    assert key_of(pd.Series([folded, one_pm])) != key_of(
        pd.Series([folded.replace(fold=0), one_pm])
    )
    assert key_of(pd.Series([dt.time(12, tzinfo=UTC)])) != key_of(
        pd.Series([dt.time(13, tzinfo=PLUS_ONE)])
    )
    ts = pd.Timestamp("2020-01-01 12:00:00")
    assert ts.as_unit("s") == ts
    assert key_of(ts.as_unit("s")) != key_of(ts)
    assert key_of(ts) == key_of(pd.Timestamp("2020-01-01 12:00:00"))
    assert key_of(pd.Timedelta(1, "s").as_unit("s")) != key_of(pd.Timedelta(1, "s"))
    assert pd.Interval(0, 1) == pd.Interval(0.0, 1.0)
    assert key_of(pd.Interval(0, 1)) != key_of(pd.Interval(0.0, 1.0))
    assert key_of(pd.Interval(0, 1)) != key_of(pd.Interval(0, 1, closed="left"))
    assert key_of(pd.Interval(0, 1)) == key_of(pd.Interval(0, 1))


def test_a_tzinfo_that_raises_is_refused_not_a_crash() -> None:
    class Broken(dt.tzinfo):
        def utcoffset(self, d: dt.datetime | None) -> dt.timedelta:
            raise RuntimeError("no offset")

        def tzname(self, d: dt.datetime | None) -> str:
            return "broken"

        def dst(self, d: dt.datetime | None) -> dt.timedelta:
            return dt.timedelta(0)

    read = cached()
    mixed = pd.Series([dt.datetime(2020, 1, 1, tzinfo=Broken()), "text"])
    with pytest.raises(TypeError, match=r"tzinfo raised RuntimeError: no offset.*cache\.key"):
        read(mixed)
