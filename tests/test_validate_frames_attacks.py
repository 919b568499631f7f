"""Attacks on the frame checks of validate.args: every frame gets a verdict (an
InputValidationError naming the column and check, or the call), never a crash from pandas,
and no check passes a frame it could not read."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from guardrails import InputValidationError, configure, guarded


def checked(check: dict[str, Any], **log: Any) -> Any:
    policy: dict[str, Any] = {"validate": {"args": {"df": check}}}
    if log:
        policy["log"] = log
    configure({"policies": {"p": policy}})

    @guarded("p")
    def predict(df: Any) -> int:
        return len(df)

    return predict


def refused(fn: Any, df: Any) -> str:
    with pytest.raises(InputValidationError) as info:
        fn(df)
    return str(info.value)


def test_a_column_name_heading_multiindex_columns_is_a_problem_not_an_attribute_error() -> None:
    fn = checked({"columns": {"a": {"min": 0}}})
    df = pd.DataFrame([[-1, -2]], columns=pd.MultiIndex.from_tuples([("a", "x"), ("a", "y")]))
    text = refused(fn, df)
    assert "df.a: expected one column 'a', found a group of 2 under it" in text


def test_unique_over_multiindex_columns_is_a_problem_not_a_key_error() -> None:
    fn = checked({"unique": ["a"]})
    df = pd.DataFrame([[1, 2], [1, 3]], columns=pd.MultiIndex.from_tuples([("a", "x"), ("a", "y")]))
    assert "df.a: expected one column 'a', found a group of 2" in refused(fn, df)


def test_unique_over_a_duplicated_column_name_is_named_not_judged_on_both() -> None:
    fn = checked({"unique": ["a"]})
    assert "df.a: expected one column 'a', found 2" in refused(
        fn, pd.DataFrame([[1, 2], [1, 3]], columns=["a", "a"])
    )
    fn = checked({"unique": ["a"], "columns": {"a": {"min": 0}}})
    text = refused(fn, pd.DataFrame([[1, 2], [1, 3]], columns=["a", "a"]))
    assert text.count("expected one column 'a'") == 1  # told once


def test_a_column_unique_names_must_exist() -> None:
    fn = checked({"unique": ["id"]})
    assert "df: expected column 'id': missing" in refused(fn, pd.DataFrame({"a": [1, 1]}))
    assert fn(pd.DataFrame({"id": [1, 2]})) == 2
    forbid = checked({"unique": ["id"], "extra_columns": "forbid"})
    assert forbid(pd.DataFrame({"id": [1, 2]})) == 2  # a unique column is no extra column


def test_bounds_on_sparse_columns_are_judged_not_a_numpy_type_error() -> None:
    fn = checked({"columns": {"a": {"min": 0, "max": 5}}}, args="values")
    df = pd.DataFrame({"a": pd.Series([-1, 0, 7, 0], dtype="Sparse[int64]")})
    text = refused(fn, df)
    assert "df.a: expected values >= 0, found 1 row (0) with values -1 outside" in text
    assert "expected values <= 5, found 1 row (2) with values 7 outside" in text
    floats = pd.DataFrame({"a": pd.Series([np.nan, 0.5, -0.5], dtype="Sparse[float64]")})
    assert "found 1 row (2) with values -0.5 outside" in refused(fn, floats)
    assert fn(pd.DataFrame({"a": pd.Series([0, 0, 3], dtype="Sparse[int64]")})) == 3
