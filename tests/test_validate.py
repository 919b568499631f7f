from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

import guardrails
from guardrails import (
    InputValidationError,
    OutputValidationError,
    PolicyConfigError,
    configure,
    guarded,
)


def validate_policy(**validate: Any) -> None:
    configure(
        {
            "policies": {
                "v": {
                    "validate": validate,
                    "retry": {
                        "max_attempts": 3,
                        "retry_on": ["Exception"],
                        "wait": {"initial": 0, "jitter": 0},
                    },
                }
            }
        }
    )


def test_input_model_validates_and_passes_validated_values() -> None:
    validate_policy(input="tests.schemas_for_tests:Order")
    received = []

    @guarded("v")
    def order(sku: str, quantity: Any, note: str = "") -> None:
        received.append((sku, quantity, note))

    order("ABC-1", "3", note="x")
    assert received == [("ABC-1", 3, "x")]  # the model's int, not the caller's str


def test_input_failures_list_every_field_and_never_run_or_retry() -> None:
    validate_policy(input="tests.schemas_for_tests:Order")
    calls = []

    @guarded("v")
    def order(sku: str, quantity: int) -> None:
        calls.append(1)

    with pytest.raises(InputValidationError) as exc:
        order("abc", 0)
    assert isinstance(exc.value, ValueError)
    fields = dict(exc.value.errors)
    assert set(fields) == {"sku", "quantity"}
    assert "greater than 0" in fields["quantity"]
    assert "policy 'v'" in str(exc.value)
    assert calls == []
    s = guardrails.stats()["v"]
    assert (s.rejected, s.failures, s.retries) == (1, 1, 0)


def test_array_checks() -> None:
    validate_policy(
        args={"x": {"dtype": "float64", "shape": [-1, 3], "finite": True, "min": 0, "max": 10}}
    )
    f = guarded("v")(lambda x: x.sum())
    assert f(np.ones((5, 3))) == 15
    cases = {
        "dtype float64, got float32": np.ones((2, 3), dtype=np.float32),
        "shape [-1, 3], got [2, 4]": np.ones((2, 4)),
        "shape [-1, 3], got [6]": np.ones(6),
        "1 NaN or infinite": np.array([[1.0, np.nan, 1.0]]),
        "values >= 0, found -1": np.array([[1.0, -1.0, 1.0]]),
        "values <= 10, found 11": np.array([[1.0, 11.0, 1.0]]),
        "expected a numpy array, got list": [[1.0, 2.0, 3.0]],
    }
    for expected, value in cases.items():
        with pytest.raises(
            InputValidationError, match=expected.replace("[", r"\[").replace("]", r"\]")
        ):
            f(value)


def test_array_checks_report_all_problems_of_all_arguments() -> None:
    validate_policy(args={"a": {"ndim": 2}, "b": {"dtype": "int64", "min": 0}})
    f = guarded("v")(lambda a, b: 1)
    with pytest.raises(InputValidationError) as exc:
        f(np.ones(3), np.array([-1.0]))
    assert [field for field, _ in exc.value.errors] == ["a", "b"]


def test_scalar_checks() -> None:
    validate_policy(args={"threshold": {"min": 0, "max": 1, "finite": True}})
    f = guarded("v")(lambda threshold=0.5: threshold)
    assert f() == 0.5
    with pytest.raises(InputValidationError, match="expected <= 1, got 2"):
        f(2)
    with pytest.raises(InputValidationError, match="finite"):
        f(float("nan"))
    with pytest.raises(InputValidationError, match="expected a number, got str"):
        f("0.5")


def test_numpy_scalars() -> None:
    validate_policy(args={"x": {"dtype": "float32", "finite": True}})
    f = guarded("v")(lambda x: x)
    assert f(np.float32(1)) == 1
    with pytest.raises(InputValidationError):
        f(np.float64(1))


def test_output_validation_is_per_attempt_and_never_cached() -> None:
    configure(
        {
            "policies": {
                "v": {
                    "validate": {"output": "tests.schemas_for_tests:Prediction"},
                    "cache": {"ttl": 60},
                }
            }
        }
    )
    scores = iter([2.0, 0.5])

    @guarded("v")
    def predict(x: int) -> dict[str, Any]:
        return {"label": "cat", "score": next(scores)}

    with pytest.raises(OutputValidationError) as exc:
        predict(1)
    assert isinstance(exc.value, ValueError)
    assert exc.value.errors[0][0] == "return.score"
    result = predict(1)  # recomputed: the invalid result was not cached
    assert result.score == 0.5 and result.label == "cat"
    assert guardrails.stats()["v"].rejected == 1


def test_output_builtin_type() -> None:
    configure({"policies": {"v": {"validate": {"output": "float"}}}})
    f = guarded("v")(lambda x: x)
    assert f(1.5) == 1.5
    with pytest.raises(OutputValidationError, match="valid number"):
        f("lots")


def test_async_validation() -> None:
    validate_policy(args={"n": {"min": 0}}, output="int")

    @guarded("v")
    async def f(n: int) -> int:
        return n

    assert asyncio.run(f(3)) == 3
    with pytest.raises(InputValidationError):
        asyncio.run(f(-1))


def test_checks_naming_a_missing_parameter_are_config_errors() -> None:
    @guarded("v")
    def f(features: Any) -> None: ...

    with pytest.raises(PolicyConfigError, match="has no parameter 'feature'"):
        configure({"policies": {"v": {"validate": {"args": {"feature": {"ndim": 2}}}}}})


def test_bad_dtype_and_shape_are_config_errors() -> None:
    with pytest.raises(PolicyConfigError) as exc:
        configure(
            {
                "policies": {
                    "v": {"validate": {"args": {"x": {"dtype": "float65", "shape": [-2, 3]}}}}
                }
            }
        )
    found = dict(exc.value.problems)
    assert "not a numpy dtype" in found["guardrails.policies.v.validate.args.x.dtype"]
    assert "-1 for any size" in found["guardrails.policies.v.validate.args.x.shape"]


def test_one_field_model_in_every_calling_form() -> None:
    validate_policy(input="tests.schemas_for_tests:Threshold")
    received = []

    @guarded("v")
    def f(t: Any) -> None:
        received.append(t)

    f(1), f(t="2.5")
    assert received == [1.0, 2.5] and all(type(r) is float for r in received)
    with pytest.raises(InputValidationError, match="t: Input should be greater than or equal to 0"):
        f(-1)
    with pytest.raises(InputValidationError, match="t: Input should be greater than or equal to 0"):
        f(t=-1)
    with pytest.raises(TypeError):
        f(1, 2)


def test_model_whose_fields_are_the_parameters_in_order() -> None:
    validate_policy(input="tests.schemas_for_tests:Prediction")
    received = []

    @guarded("v")
    def record(label: str, score: Any) -> None:
        received.append((label, score))

    record("cat", "0.5")
    record(label="dog", score=1)
    assert received == [("cat", 0.5), ("dog", 1.0)]
    with pytest.raises(InputValidationError) as exc:
        record(3, 2)
    assert [field for field, _ in exc.value.errors] == ["label", "score"]


def test_a_model_with_no_fields_on_a_function_with_no_parameters() -> None:
    validate_policy(input="tests.schemas_for_tests:Nothing")
    assert guarded("v")(lambda: "ran")() == "ran"


# --- configuration errors found at configure() time --------------------------------------


def test_an_output_type_pydantic_cannot_validate_is_a_config_error() -> None:
    with pytest.raises(PolicyConfigError) as exc:
        configure({"policies": {"v": {"validate": {"output": "numpy:ndarray"}}}})
    message = dict(exc.value.problems)["guardrails.policies.v.validate.output"]
    assert "pydantic cannot validate a return value as numpy:ndarray" in message
    assert "PydanticSchemaGenerationError" in message


def test_the_output_adapter_is_built_once_at_configure_and_reused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import pydantic

    import guardrails._validate as module

    class Counted(pydantic.BaseModel):
        score: float

    built: list[Any] = []

    class CountingAdapter(pydantic.TypeAdapter[Any]):
        def __init__(self, tp: Any) -> None:
            built.append(tp)
            super().__init__(tp)

    monkeypatch.setattr(module, "TypeAdapter", CountingAdapter)
    first = configure({"policies": {"v": {"validate": {"output": Counted}}}})
    assert built == [Counted]  # at validation, before any function exists
    f = guarded("v")(lambda: {"score": "0.5"})
    assert f().score == 0.5
    second = configure({"policies": {"v": {"validate": {"output": Counted}}}})
    assert built == [Counted]
    assert first.policies["v"] == second.policies["v"]


def test_arg_bounds_are_strict_finite_numbers() -> None:
    with pytest.raises(PolicyConfigError) as exc:
        configure(
            {
                "policies": {
                    "v": {
                        "validate": {
                            "args": {
                                "a": {"min": True},
                                "b": {"max": "5"},
                                "c": {"min": float("-inf")},
                                "d": {"max": float("nan")},
                            }
                        }
                    }
                }
            }
        )
    found = dict(exc.value.problems)
    prefix = "guardrails.policies.v.validate.args"
    assert "valid number, got True" in found[f"{prefix}.a.min"]
    assert "valid number, got '5'" in found[f"{prefix}.b.max"]
    assert "finite number" in found[f"{prefix}.c.min"]
    assert "finite number" in found[f"{prefix}.d.max"]
    configure({"policies": {"v": {"validate": {"args": {"a": {"min": 0, "max": 2.5}}}}}})


# --- async twins of the behaviour tests above --------------------------------------------


def test_async_input_model_validates_and_passes_validated_values() -> None:
    validate_policy(input="tests.schemas_for_tests:Order")
    received = []

    @guarded("v")
    async def order(sku: str, quantity: Any, note: str = "") -> None:
        received.append((sku, quantity, note))

    asyncio.run(order("ABC-1", "3", note="x"))
    assert received == [("ABC-1", 3, "x")]


def test_async_input_failures_list_every_field_and_never_run_or_retry() -> None:
    validate_policy(input="tests.schemas_for_tests:Order")
    calls = []

    @guarded("v")
    async def order(sku: str, quantity: int) -> None:
        calls.append(1)

    with pytest.raises(InputValidationError) as exc:
        asyncio.run(order("abc", 0))
    assert set(dict(exc.value.errors)) == {"sku", "quantity"}
    assert calls == []
    s = guardrails.stats()["v"]
    assert (s.rejected, s.failures, s.retries) == (1, 1, 0)


def test_async_array_checks() -> None:
    validate_policy(
        args={"x": {"dtype": "float64", "shape": [-1, 3], "finite": True, "min": 0, "max": 10}}
    )

    @guarded("v")
    async def f(x: Any) -> Any:
        return x.sum()

    assert asyncio.run(f(np.ones((5, 3)))) == 15
    cases = {
        "dtype float64, got float32": np.ones((2, 3), dtype=np.float32),
        "shape [-1, 3], got [2, 4]": np.ones((2, 4)),
        "1 NaN or infinite": np.array([[1.0, np.nan, 1.0]]),
        "values >= 0, found -1": np.array([[1.0, -1.0, 1.0]]),
        "values <= 10, found 11": np.array([[1.0, 11.0, 1.0]]),
        "expected a numpy array, got list": [[1.0, 2.0, 3.0]],
    }
    for expected, value in cases.items():
        with pytest.raises(
            InputValidationError, match=expected.replace("[", r"\[").replace("]", r"\]")
        ):
            asyncio.run(f(value))


def test_async_array_checks_report_all_problems_of_all_arguments() -> None:
    validate_policy(args={"a": {"ndim": 2}, "b": {"dtype": "int64", "min": 0}})

    @guarded("v")
    async def f(a: Any, b: Any) -> int:
        return 1

    with pytest.raises(InputValidationError) as exc:
        asyncio.run(f(np.ones(3), np.array([-1.0])))
    assert [field for field, _ in exc.value.errors] == ["a", "b"]


def test_async_scalar_checks() -> None:
    validate_policy(args={"threshold": {"min": 0, "max": 1, "finite": True}})

    @guarded("v")
    async def f(threshold: Any = 0.5) -> Any:
        return threshold

    assert asyncio.run(f()) == 0.5
    with pytest.raises(InputValidationError, match="expected <= 1, got 2"):
        asyncio.run(f(2))
    with pytest.raises(InputValidationError, match="finite"):
        asyncio.run(f(float("nan")))
    with pytest.raises(InputValidationError, match="expected a number, got str"):
        asyncio.run(f("0.5"))


def test_async_numpy_scalars() -> None:
    validate_policy(args={"x": {"dtype": "float32", "finite": True}})

    @guarded("v")
    async def f(x: Any) -> Any:
        return x

    assert asyncio.run(f(np.float32(1))) == 1
    with pytest.raises(InputValidationError):
        asyncio.run(f(np.float64(1)))


def test_async_output_validation_is_per_attempt_and_never_cached() -> None:
    configure(
        {
            "policies": {
                "v": {
                    "validate": {"output": "tests.schemas_for_tests:Prediction"},
                    "cache": {"ttl": 60},
                }
            }
        }
    )
    scores = iter([2.0, 0.5])

    @guarded("v")
    async def predict(x: int) -> dict[str, Any]:
        return {"label": "cat", "score": next(scores)}

    with pytest.raises(OutputValidationError) as exc:
        asyncio.run(predict(1))
    assert exc.value.errors[0][0] == "return.score"
    result = asyncio.run(predict(1))
    assert result.score == 0.5 and result.label == "cat"
    assert guardrails.stats()["v"].rejected == 1


def test_async_output_is_validated_on_each_attempt_inside_retry() -> None:
    validate_policy(output="tests.schemas_for_tests:Prediction")
    results = iter([{"label": "cat", "score": 2.0}, {"label": "cat", "score": 0.5}])

    @guarded("v")
    async def predict() -> Any:
        return next(results)

    # The first attempt's invalid result is an error retry retries (retry_on: Exception).
    assert asyncio.run(predict()).score == 0.5
    assert guardrails.stats()["v"].retries == 1


def test_async_output_builtin_type() -> None:
    configure({"policies": {"v": {"validate": {"output": "float"}}}})

    @guarded("v")
    async def f(x: Any) -> Any:
        return x

    assert asyncio.run(f(1.5)) == 1.5
    with pytest.raises(OutputValidationError, match="valid number"):
        asyncio.run(f("lots"))


def test_async_one_field_model_in_every_calling_form() -> None:
    validate_policy(input="tests.schemas_for_tests:Threshold")
    received = []

    @guarded("v")
    async def f(t: Any) -> None:
        received.append(t)

    asyncio.run(f(1)), asyncio.run(f(t="2.5"))
    assert received == [1.0, 2.5] and all(type(r) is float for r in received)
    with pytest.raises(InputValidationError, match="t: Input should be greater than or equal to 0"):
        asyncio.run(f(-1))
    with pytest.raises(InputValidationError, match="t: Input should be greater than or equal to 0"):
        asyncio.run(f(t=-1))
    with pytest.raises(TypeError):
        asyncio.run(f(1, 2))  # type: ignore[call-arg]


def test_async_model_whose_fields_are_the_parameters_in_order() -> None:
    validate_policy(input="tests.schemas_for_tests:Prediction")
    received = []

    @guarded("v")
    async def record(label: str, score: Any) -> None:
        received.append((label, score))

    asyncio.run(record("cat", "0.5"))
    asyncio.run(record(label="dog", score=1))
    assert received == [("cat", 0.5), ("dog", 1.0)]
    with pytest.raises(InputValidationError) as exc:
        asyncio.run(record(3, 2))  # type: ignore[arg-type]
    assert [field for field, _ in exc.value.errors] == ["label", "score"]


def test_async_a_model_with_no_fields_on_a_function_with_no_parameters() -> None:
    validate_policy(input="tests.schemas_for_tests:Nothing")

    @guarded("v")
    async def f() -> str:
        return "ran"

    assert asyncio.run(f()) == "ran"
