"""validate.args on pandas DataFrames and Series, pandera schemas, and torch tensors."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import pandas as pd
import pytest

import guardrails
from guardrails import InputValidationError, PolicyConfigError, configure, guarded
from guardrails.layers.validate import ValidateConfig, _arg_checker

FEATURES = {
    "columns": {
        "age": {"dtype": "int64", "min": 0, "max": 130, "nullable": False},
        "score": {"dtype": "float64", "min": 0, "max": 1},
        "country": {"isin": ["FR", "DE", "US"]},
    },
    "required": ["id"],
    "rows": {"min": 1, "max": 1000},
    "unique": ["id"],
}


def frame_policy(check: dict[str, Any], **log: Any) -> None:
    policy: dict[str, Any] = {"validate": {"args": {"df": check}}}
    if log:
        policy["log"] = log
    configure({"policies": {"p": policy}})


def good() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": [1, 2, 3, 4],
            "age": [30, 40, 50, 60],
            "score": [0.1, 0.5, np.nan, 1.0],
            "country": ["FR", "DE", None, "US"],
        },
        index=["a", "b", "c", "d"],
    )


@pytest.fixture
def predict() -> Any:
    calls: list[int] = []

    @guarded("p")
    def predict(df: Any) -> int:
        calls.append(1)
        return len(df)

    predict.calls = calls  # type: ignore[attr-defined]
    return predict


def refusal(fn: Any, *args: Any) -> dict[str, str]:
    with pytest.raises(InputValidationError) as exc:
        fn(*args)
    return dict(exc.value.errors)


def test_a_good_frame_passes_and_nulls_are_judged_by_nullable_alone(predict: Any) -> None:
    frame_policy(FEATURES)
    # score's NaN and country's None are nulls: nullable defaults to true, and a null is
    # never counted against min, max or isin.
    assert predict(good()) == 4
    assert predict.calls == [1]


def test_each_failing_column_names_the_check_the_count_and_the_first_labels(
    predict: Any,
) -> None:
    frame_policy(FEATURES)
    df = good()
    df.loc["b", "age"] = -3
    df.loc["d", "age"] = 200
    df["score"] = [1.5, -0.1, 2.0, 0.5]
    df.loc["a", "country"] = "XX"
    problems = _all_errors(predict, df)
    assert problems == [
        ("df.age", "expected values >= 0, found 1 row ('b') outside"),
        ("df.age", "expected values <= 130, found 1 row ('d') outside"),
        ("df.score", "expected values >= 0, found 1 row ('b') outside"),
        ("df.score", "expected values <= 1, found 2 rows ('a', 'c') outside"),
        ("df.country", "expected values in ['FR', 'DE', 'US'], found 1 row ('a') outside"),
    ]
    assert "-3" not in str(problems) and "200" not in str(problems)  # never the values
    assert predict.calls == []
    assert guardrails.stats()["p"].rejected_input == 1


def _all_errors(fn: Any, *args: Any) -> list[tuple[str, str]]:
    with pytest.raises(InputValidationError) as exc:
        fn(*args)
    return list(exc.value.errors)


def test_first_five_labels_of_many(predict: Any) -> None:
    frame_policy({"columns": {"x": {"min": 0}}})
    df = pd.DataFrame({"x": -np.arange(1, 1001, dtype=np.float64)}, index=np.arange(1000) * 10)
    assert refusal(predict, df) == {
        "df.x": "expected values >= 0, found 1000 rows (first: 0, 10, 20, 30, 40) outside"
    }


def test_values_are_shown_only_when_asked() -> None:
    check = ValidateConfig.model_validate({"args": {"df": FEATURES}}).args["df"]
    df = good()
    df.loc["b", "age"] = -3
    hidden = _arg_checker(check, show_values=False)(df)
    shown = _arg_checker(check, show_values=True)(df)
    assert hidden == [(".age", "expected values >= 0, found 1 row ('b') outside")]
    assert shown == [(".age", "expected values >= 0, found 1 row ('b') with values -3 outside")]


def test_structure_missing_extra_rows_unique_and_nulls(predict: Any) -> None:
    frame_policy(FEATURES | {"extra_columns": "forbid"})
    df = good().drop(columns=["score"]).assign(leak=1)
    df["id"] = [1, 2, 1, 2]
    df.loc["c", "age"] = None  # int64 becomes float64 with a NaN
    found = _all_errors(predict, df)
    assert found == [
        ("df", "expected column 'score': missing"),
        ("df", "expected no columns but the ones listed, found 'leak'"),
        ("df.age", "expected dtype int64, got float64"),
        ("df.age", "expected no nulls, found 1 row ('c')"),
        ("df", "expected unique values of 'id', found 2 rows ('c', 'd') repeating an earlier row"),
    ]
    assert refusal(predict, good().iloc[:0]) == {"df": "expected at least 1 rows, got 0"}


def test_pandas_dtypes_by_name(predict: Any) -> None:
    frame_policy(
        {
            "columns": {
                "n": {"dtype": "Int64", "min": 0},
                "s": {"dtype": "string", "nullable": False},
                "c": {"dtype": "category", "isin": ["x", "y"]},
                "t": {"dtype": "datetime64[ns]"},
                "b": {"dtype": "bool"},
            }
        }
    )
    df = pd.DataFrame(
        {
            "n": pd.array([1, None, 3], dtype="Int64"),
            "s": pd.array(["a", "b", "c"], dtype="string"),
            "c": pd.Categorical(["x", "y", None]),
            "t": pd.to_datetime(["2024-01-01"] * 3).astype("datetime64[ns]"),
            "b": [True, False, True],
        }
    )
    assert predict(df) == 3
    df["s"] = df["s"].astype(str)  # pandas 3's default str dtype is a string dtype too
    assert predict(df) == 3
    df["n"] = pd.array([1, -1, None], dtype="Int64")
    df["s"] = pd.array(["a", None, "c"], dtype="string")
    df["c"] = pd.Categorical(["x", "z", None])
    assert refusal(predict, df) == {
        "df.n": "expected values >= 0, found 1 row (1) outside",
        "df.s": "expected no nulls, found 1 row (1)",
        "df.c": "expected values in ['x', 'y'], found 1 row (1) outside",
    }


def test_a_series_takes_the_column_checks(predict: Any) -> None:
    frame_policy({"dtype": "float64", "min": 0, "max": 1, "nullable": False, "rows": {"max": 3}})
    assert predict(pd.Series([0.0, 1.0])) == 2
    found = _all_errors(predict, pd.Series([0.5, np.nan, 7.0, -1.0], index=list("wxyz")))
    assert found == [
        ("df", "expected no nulls, found 1 row ('x')"),
        ("df", "expected values >= 0, found 1 row ('z') outside"),
        ("df", "expected values <= 1, found 1 row ('y') outside"),
        ("df", "expected at most 3 rows, got 4"),
    ]


def test_exact_bounds_on_int64_and_float32_columns(predict: Any) -> None:
    big = 2**53 + 1
    frame_policy({"columns": {"i": {"max": big}, "f": {"max": 0.1}, "g": {"min": 0.5}}})
    ok = pd.DataFrame(
        {
            "i": np.array([big, 0], dtype=np.int64),
            "f": np.array([0.0, 0.0], dtype=np.float32),
            "g": np.array([1, 2], dtype=np.int64),
        }
    )
    assert predict(ok) == 2
    bad = pd.DataFrame(
        {
            # 2**53 + 2 rounds to 2**53 as a float: compared exactly, it fails
            "i": np.array([big + 1, 0], dtype=np.int64),
            # float32(0.1) is 0.100000001...: above the float 0.1
            "f": np.array([0.1, 0.0], dtype=np.float32),
            "g": np.array([0, 1], dtype=np.int64),
        }
    )
    assert refusal(predict, bad) == {
        "df.i": "expected values <= 9007199254740993, found 1 row (0) outside",
        "df.f": "expected values <= 0.1, found 1 row (0) outside",
        "df.g": "expected values >= 0.5, found 1 row (0) outside",
    }


def test_finite_counts_infinities_and_leaves_nulls_to_nullable(predict: Any) -> None:
    frame_policy({"columns": {"x": {"finite": True}}})
    assert predict(pd.DataFrame({"x": [1.0, np.nan]})) == 2
    assert refusal(predict, pd.DataFrame({"x": [np.inf, np.nan, -np.inf]})) == {
        "df.x": "expected finite values, found 2 rows (0, 2) infinite"
    }


def test_checks_that_cannot_apply_say_what_was_expected(predict: Any) -> None:
    frame_policy(FEATURES)
    assert refusal(predict, np.ones((3, 3))) == {"df": "expected a pandas DataFrame, got ndarray"}
    assert refusal(predict, pd.Series([1])) == {"df": "expected a pandas DataFrame, got Series"}
    frame_policy({"min": 0})
    assert refusal(predict, pd.DataFrame({"x": [1]})) == {
        "df": "expected a Series, array or number for min, got DataFrame: a column's checks "
        "go under columns.<name>"
    }
    frame_policy({"columns": {"name": {"min": 0}}})
    assert refusal(predict, pd.DataFrame({"name": ["a"]})) == {
        "df.name": "expected a numeric column, got dtype str"
    }
    frame_policy({"isin": [1, 2]})
    assert refusal(predict, [1, 2]) == {"df": "expected a pandas Series, got list"}


def test_duplicate_column_labels_are_refused_not_misread(predict: Any) -> None:
    frame_policy({"columns": {"x": {"min": 0}}})
    df = pd.DataFrame([[1, 2]], columns=["x", "x"])
    assert refusal(predict, df) == {"df.x": "expected one column 'x', found 2"}


def test_config_errors_name_the_key_and_what_was_expected() -> None:
    cases = {
        "columns.age.min": {"columns": {"age": {"min": "zero"}}},
        "columns.age.dtype": {"columns": {"age": {"dtype": "int65"}}},
        "columns.age.nulable": {"columns": {"age": {"nulable": False}}},
        "columns.age.isin": {"columns": {"age": {"isin": []}}},
        "extra_columns": {"extra_columns": "deny"},
        "rows": {"rows": {"min": 5, "max": 2}},
        "rows.min": {"rows": {"min": -1}},
        "device": {"device": "gpu"},
        "schema": {"schema": "tests.schemas_for_tests:Order"},
        "": {"columns": {"a": {}}, "dtype": "float64"},
    }
    for key, check in cases.items():
        with pytest.raises(PolicyConfigError) as exc:
            configure({"policies": {"p": {"validate": {"args": {"df": check}}}}})
        path = "guardrails.policies.p.validate.args.df" + (f".{key}" if key else "")
        found = dict(exc.value.problems)
        assert path in found, (key, found)
    with pytest.raises(PolicyConfigError) as exc:
        configure(
            {"policies": {"p": {"validate": {"args": {"df": {"columns": {"a": {}}, "min": 0}}}}}}
        )
    (message,) = dict(exc.value.problems).values()
    assert "columns checks a DataFrame and min checks a Series" in message
    assert "go under columns.<name>" in message


def test_a_bad_frame_config_never_replaces_the_good_one(predict: Any) -> None:
    frame_policy(FEATURES)
    with pytest.raises(PolicyConfigError):
        frame_policy({"columns": {"age": {"max": "old"}}})
    df = good()
    df.loc["a", "age"] = -1
    assert "df.age" in refusal(predict, df)


def test_polars_is_refused_with_the_conversion_to_use(predict: Any) -> None:
    pl = pytest.importorskip("polars", reason="polars is in the test extra")
    frame_policy(FEATURES)
    assert "convert it with .to_pandas()" in refusal(predict, pl.DataFrame({"a": [1]}))["df"]


def test_async_frames() -> None:
    import asyncio

    frame_policy(FEATURES)

    @guarded("p")
    async def score(df: Any) -> int:
        return len(df)

    assert asyncio.run(score(good())) == 4
    df = good()
    df.loc["c", "age"] = 999
    with pytest.raises(InputValidationError, match=r"df.age: expected values <= 130"):
        asyncio.run(score(df))


def test_frames_do_not_import_pandas_for_numpy_checks() -> None:
    # A numpy-only policy works whether or not pandas was imported; pandas is never
    # imported by the checks themselves (sys.modules is how frames are recognised).
    import subprocess

    code = (
        "import sys, numpy as np, guardrails\n"
        "guardrails.configure({'policies': {'p': {'validate': {'args': {'x': {'min': 0}}}}}})\n"
        "f = guardrails.guarded('p')(lambda x: x)\n"
        "f(np.ones(3)); f(1)\n"
        "assert 'pandas' not in sys.modules, 'pandas imported'\n"
        "assert 'pandera' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("args", ["values", "shapes", "none"])
def test_failing_values_are_shown_only_when_the_policy_logs_values(args: str) -> None:
    import pandas as pd

    configure(
        {
            "policies": {
                "frames": {
                    "validate": {"args": {"df": {"columns": {"age": {"min": 0}}}}},
                    "log": {"args": args},
                }
            }
        }
    )
    f = guarded("frames")(lambda df: len(df))
    with pytest.raises(guardrails.InputValidationError) as exc:
        f(pd.DataFrame({"age": [5, -7, 9]}, index=["a", "b", "c"]))
    ((field, message),) = exc.value.errors
    assert field == "df.age" and "'b'" in message
    assert ("-7" in message) == (args == "values"), message


@pytest.mark.parametrize(
    ("column", "dtype", "passes"),
    [
        ("us", "datetime64", True),
        ("ns", "datetime64", True),
        ("utc", "datetime64", False),  # a zoned column names its zone
        ("utc", "datetime64[us, UTC]", True),
        ("ns", "datetime64[ns]", True),
        ("us", "datetime64[ns]", False),  # a unit written is the unit checked
        ("span", "timedelta64", True),
        ("us", "timedelta64", False),
        ("span", "datetime64", False),
    ],
)
def test_datetime64_without_a_unit_is_any_unit(column: str, dtype: str, passes: bool) -> None:
    # pandas 3 makes microsecond datetimes where pandas 2 made nanoseconds: a YAML that
    # names no unit holds for both.
    stamps = pd.to_datetime(["2024-01-01", "2024-01-02"])
    df = pd.DataFrame(
        {
            "us": stamps.astype("datetime64[us]"),
            "ns": stamps.astype("datetime64[ns]"),
            "utc": stamps.astype("datetime64[us]").tz_localize("UTC"),
            "span": pd.to_timedelta([1, 2], unit="s"),
        }
    )
    configure(
        {"policies": {"t": {"validate": {"args": {"df": {"columns": {column: {"dtype": dtype}}}}}}}}
    )
    f = guarded("t")(lambda df: len(df))
    if passes:
        assert f(df) == 2
    else:
        with pytest.raises(InputValidationError, match=f"df.{column}: expected dtype"):
            f(df)
