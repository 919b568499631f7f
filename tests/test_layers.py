"""The one test of the layer-order table, and of the order as behaviour, sync and async."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict, field_validator

import guardrails
from guardrails import (
    InputValidationError,
    MemoryBudgetExceeded,
    OutputValidationError,
    configure,
    guarded,
)
from guardrails._chain import ORDER
from guardrails.layers.memory import PROBE
from guardrails.testing import FakeClock
from tests.twins import guard_as


@pytest.fixture(params=["sync", "async"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def guard(kind: str, fn: Callable[..., Any], name: str = "p") -> Callable[..., Any]:
    return guard_as(kind, fn, name)


def test_the_order_table() -> None:
    assert guardrails.LAYER_NAMES == (
        "log",
        "validate.input",
        "fallback",
        "cache",
        "memory",
        "timeout.total",
        "retry",
        "breaker",
        "rate_limit",
        "bulkhead",
        "timeout.attempt",
        "validate.output",
        "chaos",
    )
    assert [(layer.name, layer.per) for layer in ORDER] == [
        ("validate.input", "call"),
        ("fallback", "call"),
        ("cache", "call"),
        ("memory", "call"),
        ("timeout.total", "call"),
        ("retry", "call"),
        ("breaker", "attempt"),
        ("rate_limit", "attempt"),
        ("bulkhead", "attempt"),
        ("timeout.attempt", "attempt"),
        ("validate.output", "attempt"),
        ("chaos", "attempt"),
    ]


# The order observed while a call runs: every layer notes into `trace` when it acts.
trace: list[str] = []


class Arg:
    """Hashed by the cache layer (and by nothing else on the way in)."""

    def __hash__(self) -> int:
        trace.append("cache")
        return 7

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Arg)


class Input(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)
    x: Any

    @field_validator("x", mode="before")
    @classmethod
    def _seen(cls, value: Any) -> Any:
        trace.append("validate.input")
        return value


class Output(BaseModel):
    y: int

    @field_validator("y", mode="before")
    @classmethod
    def _seen(cls, value: Any) -> Any:
        trace.append("validate.output")
        return value


class _NoteLog(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "outcome", None) is not None:
            trace.append("log")


@pytest.fixture
def traced(logs: pytest.LogCaptureFixture) -> Iterator[None]:
    real = PROBE.rss

    def rss() -> int:
        trace.append("memory")
        return real()

    # Before configure(): the memory layer binds the probe's reader when it is built.
    vars(PROBE)["rss"] = rss
    handler = _NoteLog()
    logging.getLogger("guardrails").addHandler(handler)
    trace.clear()
    try:
        yield
    finally:
        logging.getLogger("guardrails").removeHandler(handler)
        del vars(PROBE)["rss"]
        trace.clear()


def steps() -> list[str]:
    """The trace with runs of "cache" folded into one (a key is hashed several times)."""
    folded = [s for i, s in enumerate(trace) if not (s == "cache" and trace[i - 1 : i] == [s])]
    trace.clear()
    return folded


@pytest.mark.usefixtures("traced")
def test_the_layers_act_in_table_order(kind: str, clock: FakeClock) -> None:
    configure(
        {
            "policies": {
                "p": {
                    "log": {},
                    "validate": {"input": Input, "output": Output},
                    "cache": {"ttl": 60},
                    "memory": {"max_rss": "100%"},
                    "retry": {
                        "max_attempts": 3,
                        "retry_on": ["ConnectionError", "ValueError"],
                        "wait": {"initial": 1, "jitter": 0},
                    },
                }
            }
        }
    )
    results: list[Any] = [ConnectionError(), {"y": "not an int"}, {"y": 1}]

    def f(x: Arg) -> Any:
        trace.append("function")
        result = results.pop(0)
        if isinstance(result, Exception):
            raise result
        return result

    g = guard(kind, f)
    first = g(Arg())
    assert isinstance(first, Output) and first.y == 1
    # Outermost first on the way in, innermost first on the way out; retry re-runs the
    # function and output validation per attempt, below memory and the cache.
    assert steps() == [
        "validate.input",
        "cache",
        "memory",
        "function",
        "function",
        "validate.output",
        "function",
        "validate.output",
        "memory",
        "cache",
        "log",
    ]
    assert g(Arg()) is first
    assert steps() == ["validate.input", "cache", "log"]  # a hit skips everything below
    assert clock.sleeps == [1, 2]


def full(**over: Any) -> None:
    policy: dict[str, Any] = {
        "log": {"level": "INFO"},
        "validate": {"args": {"x": {"min": 0}}, "output": "int"},
        "cache": {"ttl": 60},
        "memory": {"max_rss": "100%"},
        "retry": {
            "max_attempts": 3,
            "retry_on": ["ConnectionError", "ValueError"],
            "wait": {"initial": 1, "jitter": 0},
        },
    }
    policy.update(over)
    configure({"policies": {"p": policy}})


def test_input_validation_runs_before_cache_and_is_never_retried(
    kind: str, clock: FakeClock
) -> None:
    full()
    calls: list[int] = []
    f = guard(kind, lambda x: calls.append(x) or x)
    with pytest.raises(InputValidationError):
        f(-1)
    s = guardrails.stats()["p"]
    assert calls == [] and (s.cache_misses, s.retries, s.rejected, s.failures) == (0, 0, 1, 1)
    assert clock.sleeps == []


def test_a_cache_hit_skips_memory_retry_and_output(kind: str, clock: FakeClock) -> None:
    full()
    f = guard(kind, lambda x: x)
    f(1)
    full(memory={"max_rss": 1024})  # the cache is kept: its settings and output type stay
    assert f(1) == 1  # the hit is served although memory is now over budget
    with pytest.raises(MemoryBudgetExceeded):
        f(2)
    s = guardrails.stats()["p"]
    # The refusal happens below the cache: it was a miss first.
    assert (s.cache_hits, s.cache_misses, s.rejected) == (1, 2, 1)


def test_memory_refusal_is_not_retried(kind: str, clock: FakeClock) -> None:
    full(memory={"max_rss": 1024}, retry={"max_attempts": 3, "retry_on": ["MemoryError"]})
    calls: list[int] = []
    with pytest.raises(MemoryBudgetExceeded):
        guard(kind, lambda x: calls.append(x))(1)
    s = guardrails.stats()["p"]
    assert calls == [] and (s.retries, s.rejected) == (0, 1)
    assert clock.sleeps == []


def test_output_validation_is_inside_retry(kind: str, clock: FakeClock) -> None:
    full()
    results = iter(["not an int", 7])
    f = guard(kind, lambda x: next(results))
    assert f(1) == 7  # OutputValidationError (a ValueError) was retried per attempt
    s = guardrails.stats()["p"]
    assert (s.retries, s.rejected, s.successes, s.failures) == (1, 1, 1, 0)


def test_output_failure_after_all_attempts(kind: str, clock: FakeClock) -> None:
    full(retry={"max_attempts": 2, "retry_on": ["ConnectionError"]})
    with pytest.raises(OutputValidationError):
        guard(kind, lambda x: "never an int")(1)
    f = guard(kind, lambda x: "never an int")
    with pytest.raises(OutputValidationError):
        f(1)
    with pytest.raises(OutputValidationError):
        f(1)  # a refused result is never cached
    s = guardrails.stats()["p"]
    assert (s.cache_misses, s.cache_hits, s.retries, s.rejected) == (3, 0, 0, 3)


def test_retries_happen_below_the_cache(kind: str, clock: FakeClock) -> None:
    full()
    failures = [ConnectionError()]

    def flaky(x: int) -> int:
        if failures:
            raise failures.pop()
        return x

    f = guard(kind, flaky)
    assert f(3) == 3 and f(3) == 3
    s = guardrails.stats()["p"]
    assert (s.cache_misses, s.cache_hits, s.retries) == (1, 1, 1)
    assert clock.sleeps == [1]


def test_the_whole_chain_in_one_event_loop(clock: FakeClock) -> None:
    full()
    failures = [ConnectionError()]

    @guarded("p")
    async def f(x: int) -> int:
        await asyncio.sleep(0)
        if failures:
            raise failures.pop()
        return x

    async def main() -> list[Any]:
        first = await f(3)
        second = await f(3)
        try:
            await f(-1)
        except InputValidationError as exc:
            return [first, second, exc]
        return [first, second, None]

    first, second, refused = asyncio.run(main())
    assert (first, second) == (3, 3) and isinstance(refused, InputValidationError)
    s = guardrails.stats()["p"]
    assert (s.calls, s.successes, s.retries, s.cache_hits, s.cache_misses, s.rejected) == (
        3,
        2,
        1,
        1,
        1,
        1,
    )
    assert clock.sleeps == [1]
