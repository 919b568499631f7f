from __future__ import annotations

import asyncio
from decimal import Decimal
from fractions import Fraction
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
from tests.twins import guard_as


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

    import guardrails.layers.validate as module

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


# --- values the numeric checks must not wave through ---------------------------------------

NAN, INF = float("nan"), float("inf")


class LyingArray(np.ndarray):
    """An ndarray whose min() and max() claim every value is 5."""

    def min(self, *args: Any, **kwargs: Any) -> Any:
        return 5.0

    def max(self, *args: Any, **kwargs: Any) -> Any:
        return 5.0


class LyingFloat(np.float64):
    """A numpy float whose min() and max() claim it is 0.5."""

    def min(self, *args: Any, **kwargs: Any) -> Any:
        return 0.5

    def max(self, *args: Any, **kwargs: Any) -> Any:
        return 0.5


BOUNDS = {"min": 0, "max": 10}


#: (checks, value, the problem expected, or None when the value passes)
class _Flattering(float):
    """A float whose own comparisons claim it is within any bound."""

    def __ge__(self, other: object) -> bool:
        return True

    def __le__(self, other: object) -> bool:
        return True


class _FlatteringInt(int):
    def __ge__(self, other: object) -> bool:
        return True

    def __le__(self, other: object) -> bool:
        return True


NUMERIC_CASES: list[tuple[dict[str, Any], Any, str | None]] = [
    # A number's own comparison operators never judge it: its base value does.
    ({"max": 1}, _Flattering(1e9), "expected <= 1, got 1000000000.0"),
    ({"min": 0}, _FlatteringInt(-5), "expected >= 0, got -5"),
    # A NaN makes min()/max() NaN, and `nan < 0` is False: it must still fail a bound.
    (BOUNDS, np.array([1.0, NAN, 2.0, NAN]), "expected values >= 0, found 2 NaN"),
    ({"max": 10}, np.array([[1.0], [NAN]]), "expected values <= 10, found 1 NaN"),
    (BOUNDS, np.array([NAN, -1.0, 3.0]), "expected values >= 0, found -1 and 1 NaN"),
    ({"max": 10}, np.array([NAN, 11.0], dtype=np.float32), "<= 10, found 11 and 1 NaN"),
    (BOUNDS, np.float64(NAN), "expected values >= 0, found 1 NaN"),
    (BOUNDS, np.float16(NAN), "found 1 NaN"),
    (BOUNDS, NAN, "expected >= 0, got nan"),
    ({"max": 10}, NAN, "expected <= 10, got nan"),
    # With `finite`, the NaN is reported once, by it; a value past a bound is still found.
    (
        {**BOUNDS, "finite": True},
        np.array([NAN, -1.0]),
        "expected finite values, found 1 NaN or infinite; expected values >= 0, found -1",
    ),
    # Complex: `finite` looks at both parts; a bound on a complex number makes no sense.
    ({"finite": True}, np.array([1 + 1j, complex(1, INF)]), "found 1 NaN or infinite"),
    ({"finite": True}, np.complex64(complex(NAN, 0)), "found 1 NaN or infinite"),
    ({"finite": True}, 1 + 2j, None),
    ({"finite": True}, complex(0, NAN), "expected a finite number, got nanj"),
    ({"min": 0}, np.array([1 + 0j]), "expected real numbers, got complex128"),
    ({"max": 1}, np.complex64(0), "expected real numbers, got complex64"),
    ({"min": 0}, 1j, "expected a real number, got complex"),
    # Dtypes no numeric check can judge are refused, not passed unchecked.
    ({"finite": True}, np.array([1.0, None]), "expected a numeric array, got dtype object"),
    ({"min": 0}, np.array([], dtype=object), "expected a numeric array, got dtype object"),
    ({"min": 0}, np.array(["2024-01-01"], dtype="datetime64[D]"), "got dtype datetime64[D]"),
    ({"max": 5}, np.array([1], dtype="timedelta64[s]"), "got dtype timedelta64[s]"),
    ({"finite": True}, np.array(["1.0"]), "expected a numeric array, got dtype <U3"),
    ({"min": 0}, np.datetime64("2024-01-01"), "expected a numeric numpy scalar, got dtype"),
    ({"finite": True}, np.str_("1"), "expected a numeric numpy scalar, got dtype <U1"),
    # A Python int is always finite, however large; one past a bound is named by its size.
    ({"finite": True}, 10**400, None),
    ({"finite": True, "min": 0}, -(10**400), "expected >= 0, got a negative int of about 401"),
    ({"max": 10}, 10**5000, "expected <= 10, got an int of about 5001 digits"),
    # Integers are compared exactly: neither the value nor an int bound is rounded to a float.
    (
        {"max": 2**53},
        np.array([2**53 + 1]),
        "expected values <= 9007199254740992, found 9007199254740993",
    ),
    (
        {"max": 2**53},
        np.int64(2**53 + 1),
        "expected values <= 9007199254740992, found 9007199254740993",
    ),
    ({"max": 2**63 - 2}, np.array([1, 2**63 - 1]), "found 9223372036854775807"),
    ({"max": 2**64 - 2}, np.array([2**64 - 1], dtype=np.uint64), "found 18446744073709551615"),
    (
        {"max": float(2**64 - 4096)},
        np.uint64(2**64 - 1),
        "<= 1.8446744073709548e+19, found 18446744073709551615",
    ),
    ({"max": 2**53 + 1}, 2**53 + 1, None),
    ({"min": 2**53 + 1}, 2**53, "expected >= 9007199254740993, got 9007199254740992"),
    (
        {"min": 2**53 + 1},
        np.array([2.0**53]),
        "expected values >= 9007199254740993, found 9007199254740992.0",
    ),
    # ...and floats by their exact value, not with the bound rounded to the array's precision.
    ({"max": 0.1}, np.float32(0.1), "expected values <= 0.1, found 0.10000000149011612"),
    # An ndarray subclass is judged by its values, not by its own min() and max().
    ({"min": 0}, np.array([-5.0, 1.0]).view(LyingArray), "expected values >= 0, found -5"),
    ({"max": 1}, LyingFloat(5.0), "expected values <= 1, found 5"),
    # Other real numbers are compared exactly; a Decimal NaN or infinity is not finite.
    ({"min": 0, "max": 1}, Fraction(1, 2), None),
    ({"min": 0, "max": 1}, Fraction(-1, 3), "expected >= 0, got -1/3"),
    ({"min": 0, "max": 1}, Decimal("0.5"), None),
    ({"max": 2**53}, Decimal(2**53 + 1), "expected <= 9007199254740992, got 9007199254740993"),
    ({"finite": True}, Decimal("NaN"), "expected a finite number, got NaN"),
    ({"finite": True}, Decimal("-Infinity"), "expected a finite number, got -Infinity"),
    ({"min": 0, "max": 1}, Decimal("sNaN"), "expected >= 0, got sNaN"),
    ({"finite": True, "max": 1}, Decimal("Infinity"), "finite number, got Infinity; expected <= 1"),
]


def _case_id(case: tuple[dict[str, Any], Any, str | None]) -> str:
    checks, value, _ = case
    shown = f"{type(value).__name__}[{getattr(value, 'dtype', '')}]"
    return f"{'+'.join(checks)}-{shown}"


@pytest.mark.parametrize(
    ("checks", "value", "expected"), NUMERIC_CASES, ids=[_case_id(c) for c in NUMERIC_CASES]
)
def test_numeric_checks_refuse_what_they_cannot_pass(
    checks: dict[str, Any], value: Any, expected: str | None
) -> None:
    validate_policy(args={"x": checks})
    calls = []

    @guarded("v")
    def f(x: Any) -> str:
        calls.append(x)
        return "ran"

    if expected is None:
        assert f(value) == "ran"
        assert f(x=value) == "ran"
        return
    for call in (lambda: f(value), lambda: f(x=value)):
        with pytest.raises(InputValidationError) as exc:
            call()
        assert {field for field, _ in exc.value.errors} == {"x"}
        detail = "; ".join(problem for _, problem in exc.value.errors)
        assert expected in detail
        assert detail.count("NaN") == expected.count("NaN")  # each NaN reported once
    assert calls == []
    assert guardrails.stats()["v"].rejected == 2


@pytest.mark.parametrize(
    ("checks", "value", "expected"), NUMERIC_CASES, ids=[_case_id(c) for c in NUMERIC_CASES]
)
def test_async_numeric_checks_refuse_what_they_cannot_pass(
    checks: dict[str, Any], value: Any, expected: str | None
) -> None:
    validate_policy(args={"x": checks})
    calls = []

    @guarded("v")
    async def f(x: Any) -> str:
        calls.append(x)
        return "ran"

    if expected is None:
        assert asyncio.run(f(value)) == "ran"
        assert asyncio.run(f(x=value)) == "ran"
        return
    for call in (lambda: f(value), lambda: f(x=value)):
        with pytest.raises(InputValidationError) as exc:
            asyncio.run(call())
        assert {field for field, _ in exc.value.errors} == {"x"}
        detail = "; ".join(problem for _, problem in exc.value.errors)
        assert expected in detail
        assert detail.count("NaN") == expected.count("NaN")  # each NaN reported once
    assert calls == []
    assert guardrails.stats()["v"].rejected == 2


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_masked_arrays_are_judged_by_their_unmasked_values(kind: str) -> None:
    validate_policy(args={"x": {"finite": True, "min": 0, "max": 10}})
    f = guard_as(kind, lambda x: "ran", "v")
    # A masked NaN, or a masked value past a bound, is no value to judge...
    assert f(np.ma.array([1.0, NAN, -5.0, 11.0], mask=[False, True, True, True])) == "ran"
    assert f(np.ma.array([[1, -5], [2, 3]], mask=[[False, True], [False, False]])) == "ran"
    # ...and a fully masked array has none to fail (numpy warned, or raised, on these).
    assert f(np.ma.masked_all((3,))) == "ran"
    assert f(x=np.ma.array([NAN, -5.0], mask=[True, True])) == "ran"
    assert f(np.ma.masked_all((2, 2), dtype=np.int64)) == "ran"
    assert f(np.ma.masked) == "ran"
    # The unmasked values are judged as any array's are.
    with pytest.raises(InputValidationError) as exc:
        f(np.ma.array([NAN, -1.0, 20.0, -9.0], mask=[False, False, False, True]))
    assert [problem for _, problem in exc.value.errors] == [
        "expected finite values, found 1 NaN or infinite",
        "expected values >= 0, found -1",
        "expected values <= 10, found 20",
    ]
    assert guardrails.stats()["v"].rejected == 1


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_integer_bounds_stay_exact_integers(kind: str) -> None:
    validate_policy(args={"x": {"min": -(2**53) - 1, "max": 2**53 + 1}, "y": {"max": 2.5}})
    f = guard_as(kind, lambda x, y=0: "ran", "v")
    assert f(2**53 + 1, 2.5) == "ran"
    assert f(np.array([-(2**53) - 1, 2**53 + 1]), y=np.int8(2)) == "ran"
    with pytest.raises(InputValidationError) as exc:
        f(np.array([-(2**53) - 2, 2**53 + 2]), y=np.array([3], dtype=np.uint64))
    assert [problem for _, problem in exc.value.errors] == [
        "expected values >= -9007199254740993, found -9007199254740994",
        "expected values <= 9007199254740993, found 9007199254740994",
        "expected values <= 2.5, found 3",
    ]


@pytest.mark.parametrize("arity", [1, 2])
def test_an_input_refusal_is_not_shown_as_raised_while_handling_pydantic_s_error(
    arity: int,
) -> None:
    # The model fast path catches pydantic's ValidationError and looks again: the refusal
    # must not read as a crash "during handling" of it.
    import traceback

    model = "tests.schemas_for_tests:Threshold" if arity == 1 else "tests.schemas_for_tests:Order"
    configure({"policies": {"v": {"validate": {"input": model}, "log": None}}})
    f = guarded("v")((lambda t: t) if arity == 1 else (lambda quantity, sku: sku))
    with pytest.raises(InputValidationError) as exc:
        f(*([-1.0] if arity == 1 else [0, "bad"]))
    shown = "".join(traceback.format_exception(exc.value))
    assert "During handling" not in shown and "pydantic_core" not in shown, shown
