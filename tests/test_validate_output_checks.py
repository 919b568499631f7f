"""validate.output as a mapping of checks: arrays, numbers, frames, Series; pandera schemas;
torch tensors (run where torch is installed)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any

import numpy as np
import pandas as pd
import pandera.pandas as pa
import pytest

import guardrails
from guardrails import OutputValidationError, PolicyConfigError, configure, guarded

SCORES = {"dtype": "float64", "min": 0, "max": 1, "finite": True}


class Batch(pa.DataFrameModel):
    """What the inline checks don't cover: a check between two columns."""

    low: float = pa.Field(ge=0)
    high: float

    @pa.dataframe_check
    def ordered(cls, df: pd.DataFrame) -> pd.Series:
        return df["low"] <= df["high"]


BATCH_SCHEMA = pa.DataFrameSchema({"low": pa.Column(float, pa.Check.ge(0))})


def output_policy(output: Any, retries: int = 1) -> None:
    policy: dict[str, Any] = {"validate": {"output": output}}
    if retries > 1:
        policy["retry"] = {
            "max_attempts": retries,
            "retry_on": ["Exception"],
            "wait": {"initial": 0, "jitter": 0},
        }
    configure({"policies": {"p": policy}})


def test_scores_are_checked_on_the_way_out_and_returned_as_they_are() -> None:
    output_policy(SCORES)
    result = np.array([0.0, 0.5, 1.0])
    returned: list[Any] = [result]
    f = guarded("p")(lambda: returned[0])
    assert f() is result  # checks never convert: the very object comes back
    returned[0] = np.array([0.2, 1.5, np.nan, -1.0])
    with pytest.raises(OutputValidationError) as exc:
        f()
    assert exc.value.errors == (
        ("return", "expected finite values, found 1 NaN or infinite"),
        ("return", "expected values >= 0, found -1"),
        ("return", "expected values <= 1, found 1.5"),
    )
    returned[0] = np.array([0.5], dtype=np.float32)
    with pytest.raises(OutputValidationError, match="expected dtype float64, got float32"):
        f()
    s = guardrails.stats()["p"]
    assert (s.rejected_output, s.successes) == (2, 1)


def test_an_output_refusal_is_retried_per_attempt() -> None:
    output_policy({"min": 0}, retries=3)
    answers = iter([-1, -2, 5])
    f = guarded("p")(lambda: next(answers))
    assert f() == 5
    assert guardrails.stats()["p"].retries == 2


def test_frame_and_series_outputs() -> None:
    output_policy(
        {"columns": {"score": {"min": 0, "max": 1, "nullable": False}}, "rows": {"min": 1}}
    )
    frame: list[Any] = [pd.DataFrame({"score": [0.1, 0.9]})]
    f = guarded("p")(lambda: frame[0])
    assert f() is frame[0]
    frame[0] = pd.DataFrame({"score": [0.1, np.nan, 3.0]}, index=[7, 8, 9])
    with pytest.raises(OutputValidationError) as exc:
        f()
    assert exc.value.errors == (
        ("return.score", "expected no nulls, found 1 row (8)"),
        ("return.score", "expected values <= 1, found 1 row (9) outside"),
    )
    frame[0] = np.zeros(3)
    with pytest.raises(
        OutputValidationError, match="return: expected a pandas DataFrame, got ndarray"
    ):
        f()
    output_policy({"dtype": "float64", "isin": [0.0, 1.0]})
    frame[0] = pd.Series([0.0, 1.0, 0.5])
    with pytest.raises(OutputValidationError) as exc:
        f()
    assert exc.value.errors == (
        ("return", "expected values in [0.0, 1.0], found 1 row (2) outside"),
    )


def test_async_output_checks() -> None:
    output_policy({"min": 0, "max": 1, "finite": True})

    @guarded("p")
    async def score(x: float) -> float:
        return x

    assert asyncio.run(score(0.25)) == 0.25
    with pytest.raises(OutputValidationError, match=r"return: expected <= 1, got 2.0"):
        asyncio.run(score(2.0))


def test_output_check_config_errors_name_the_key_without_a_tag() -> None:
    for output, key in (
        ({"min": "zero"}, "min"),
        ({"dtyp": "float64"}, "dtyp"),
        ({"dtype": "float65"}, "dtype"),
        ({"columns": {"a": {"max": [1]}}}, "columns.a.max"),
    ):
        with pytest.raises(PolicyConfigError) as exc:
            output_policy(output)
        assert list(dict(exc.value.problems)) == [f"guardrails.policies.p.validate.output.{key}"]


def test_an_output_type_still_works_and_show_writes_checks_back() -> None:
    output_policy("list[int]")
    assert guarded("p")(lambda: ["1"])() == [1]
    output_policy(SCORES)
    written = guardrails.policy("p").validate.model_dump(mode="json", exclude_none=True)
    assert written["output"] == {"dtype": "float64", "min": 0, "max": 1, "finite": True} | {
        k: v for k, v in written["output"].items() if k not in SCORES
    }
    configure({"policies": {"p": {"validate": {"output": written["output"]}}}})  # loads back


def test_changing_output_checks_renews_the_cache() -> None:
    configure({"policies": {"p": {"cache": {"ttl": 60}, "validate": {"output": {"min": 0}}}}})
    values = iter([3, 4])
    f = guarded("p")(lambda: next(values))
    assert f() == 3
    assert f() == 3  # cached
    configure({"policies": {"p": {"cache": {"ttl": 60}, "validate": {"output": {"min": 1}}}}})
    assert f() == 4  # the new checks never answer with what the old ones passed


# --- pandera ---------------------------------------------------------------------------------


def test_pandera_model_by_import_path_as_input_check() -> None:
    configure(
        {
            "policies": {
                "p": {
                    "validate": {
                        "args": {"df": {"schema": "tests.test_validate_output_checks:Batch"}}
                    }
                }
            }
        }
    )
    f = guarded("p")(lambda df: len(df))
    assert f(pd.DataFrame({"low": [0.0, 1.0], "high": [1.0, 2.0]})) == 2
    bad = pd.DataFrame({"low": [-1.0, 3.0, 0.0], "high": [1.0, 2.0, 1.0]}, index=["a", "b", "c"])
    with pytest.raises(guardrails.InputValidationError) as exc:
        f(bad)
    errors = dict(exc.value.errors)
    assert errors["df.low"] == "pandera check greater_than_or_equal_to(0) failed for 1 row ('a')"
    assert errors["df"] == "pandera check ordered failed for 1 row ('b')"
    assert "-1" not in str(exc.value)  # never the values


def test_pandera_schema_beside_inline_checks_and_as_output() -> None:
    configure(
        {
            "policies": {
                "p": {
                    "validate": {
                        "output": {
                            "schema": "tests.test_validate_output_checks:BATCH_SCHEMA",
                            "rows": {"max": 2},
                        }
                    }
                }
            }
        }
    )
    out: list[Any] = [pd.DataFrame({"low": [1.0]})]
    f = guarded("p")(lambda: out[0])
    assert f() is out[0]
    out[0] = pd.DataFrame({"low": [-1.0, 1.0, -2.0]})
    with pytest.raises(OutputValidationError) as exc:
        f()
    assert exc.value.errors == (
        ("return", "expected at most 2 rows, got 3"),
        (
            "return.low",
            "pandera check greater_than_or_equal_to(0) failed for 2 rows (0, 2)",
        ),
    )
    out[0] = pd.DataFrame({"other": [1.0]})
    with pytest.raises(OutputValidationError) as exc:
        f()
    assert "column_in_dataframe" in str(exc.value) and "low" in str(exc.value)


def test_a_schema_path_naming_something_else_is_a_config_error() -> None:
    with pytest.raises(PolicyConfigError) as exc:
        output_policy({"schema": "tests.test_validate_output_checks:SCORES"})
    ((key, message),) = exc.value.problems
    assert key == "guardrails.policies.p.validate.output.schema"
    assert "not a pandera DataFrameModel, DataFrameSchema or SeriesSchema" in message


# --- torch -----------------------------------------------------------------------------------


def test_tensor_checks() -> None:
    torch = pytest.importorskip("torch", reason="torch is not installed here (gigabytes of CUDA)")
    output_policy(SCORES | {"dtype": "float32", "device": "cpu", "shape": [-1]})
    out: list[Any] = [torch.tensor([0.0, 1.0])]
    f = guarded("p")(lambda: out[0])
    assert f() is out[0]
    out[0] = torch.tensor([0.5, 1.5, float("nan")])
    with pytest.raises(OutputValidationError) as exc:
        f()
    assert exc.value.errors == (
        ("return", "expected finite values, found 1 element (flat positions 2) NaN or infinite"),
        ("return", "expected values <= 1, found 1 element (flat positions 1) outside"),
    )
    out[0] = torch.zeros(2, dtype=torch.float64)
    with pytest.raises(OutputValidationError, match="expected dtype float32, got float64"):
        f()
    output_policy({"device": "cuda"})
    out[0] = torch.zeros(1)
    with pytest.raises(OutputValidationError, match="expected device cuda, got cpu"):
        f()


def test_a_device_check_on_an_array_says_a_tensor_was_expected() -> None:
    output_policy({"device": "cpu"})
    with pytest.raises(OutputValidationError, match="return: expected a torch tensor, got ndarray"):
        guarded("p")(lambda: np.zeros(1))()
    code = (
        "import sys, guardrails\n"
        "guardrails.configure({'policies': {'p': {'validate': {'output': {'device': 'cpu'}}}}})\n"
        "assert 'torch' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
