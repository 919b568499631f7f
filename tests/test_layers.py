"""The one test of the layer-order table, and of the order as behaviour."""

from __future__ import annotations

from typing import Any

import pytest

import guardrails
from guardrails import (
    InputValidationError,
    MemoryBudgetExceeded,
    OutputValidationError,
    configure,
    guarded,
)
from guardrails._layers import ORDER
from guardrails.testing import FakeClock


def test_the_order_table() -> None:
    assert guardrails.LAYER_NAMES == (
        "log",
        "validate.input",
        "cache",
        "memory",
        "retry",
        "validate.output",
    )
    assert [(layer.name, layer.per) for layer in ORDER] == [
        ("validate.input", "call"),
        ("cache", "call"),
        ("memory", "call"),
        ("retry", "call"),
        ("validate.output", "attempt"),
    ]


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


def test_input_validation_runs_before_cache_and_is_never_retried(clock: FakeClock) -> None:
    full()
    calls = []
    f = guarded("p")(lambda x: calls.append(x) or x)
    with pytest.raises(InputValidationError):
        f(-1)
    s = guardrails.stats()["p"]
    assert calls == [] and (s.cache_misses, s.retries, s.rejected) == (0, 0, 1)


def test_a_cache_hit_skips_memory_retry_and_output(clock: FakeClock) -> None:
    full()
    f = guarded("p")(lambda x: x)
    f(1)
    configure({"policies": {"p": {"cache": {"ttl": 60}, "memory": {"max_rss": 1024}}}})
    assert f(1) == 1  # the hit is served although memory is now over budget
    with pytest.raises(MemoryBudgetExceeded):
        f(2)


def test_memory_refusal_is_not_retried(clock: FakeClock) -> None:
    full(memory={"max_rss": 1024}, retry={"max_attempts": 3, "retry_on": ["MemoryError"]})
    with pytest.raises(MemoryBudgetExceeded):
        guarded("p")(lambda x: x)(1)
    assert guardrails.stats()["p"].retries == 0
    assert clock.sleeps == []


def test_output_validation_is_inside_retry(clock: FakeClock) -> None:
    full()
    results = iter(["not an int", 7])
    f = guarded("p")(lambda x: next(results))
    assert f(1) == 7  # OutputValidationError (a ValueError) was retried per attempt
    assert guardrails.stats()["p"].retries == 1


def test_output_failure_after_all_attempts(clock: FakeClock) -> None:
    full(retry={"max_attempts": 2, "retry_on": ["ConnectionError"]})
    with pytest.raises(OutputValidationError):
        guarded("p")(lambda x: "never an int")(1)
    assert guardrails.stats()["p"].cache_misses == 1


def test_retries_happen_below_the_cache(clock: FakeClock) -> None:
    full()
    failures = [ConnectionError()]

    def flaky(x: int) -> int:
        if failures:
            raise failures.pop()
        return x

    f = guarded("p")(flaky)
    assert f(3) == 3 and f(3) == 3
    s = guardrails.stats()["p"]
    assert (s.cache_misses, s.cache_hits, s.retries) == (1, 1, 1)


def test_the_whole_chain_async(clock: FakeClock) -> None:
    import asyncio

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
