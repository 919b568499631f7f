"""Every fail-fast layer at once, as one production policy: fallback, cache, memory, timeout
(total and attempt), retry (budget, Retry-After), breaker, rate_limit, bulkhead,
validate.output, chaos and log, on sync and async functions sharing the policy."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import weakref
from collections.abc import Iterator
from typing import Any

import pytest

from guardrails import configure, guarded


@pytest.fixture(params=["sync", "async"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def every_layer(log: Any = None, **changes: Any) -> dict[str, Any]:
    """The whole chain, with nothing that trips by itself (the breaker needs 1000 calls)."""
    policy: dict[str, Any] = {
        "fallback": {"value": "fallback", "catch": ["ConnectionError"]},
        "cache": {"ttl": "60s"},
        "memory": {"max_rss": "100%"},
        "timeout": {"total": "30s", "attempt": "20s"},
        "retry": {
            "max_attempts": 2,
            "retry_on": ["Exception"],
            "budget": {"ratio": 0.5, "min_per_second": 100},
            "wait": {"initial": 0, "max": "1ms", "retry_after": True},
        },
        "breaker": {"window": 1000, "min_calls": 1000, "open_for": "50ms"},
        "rate_limit": {"rate": "100000/s", "burst": 1000},
        "bulkhead": {"max_concurrent": 4, "max_wait": "10s"},
        "validate": {"output": "str"},
        "chaos": {"error_rate": 0.0, "seed": 1},
        "log": log,
    }
    policy.update(changes)
    return {"allow_chaos": True, "policies": {"p": policy}}


class Arg:
    """An argument the test can watch die (hashable, so the cache can key it)."""

    def __hash__(self) -> int:
        return 1

    def __eq__(self, other: object) -> bool:
        return self is other


class Boom(Exception):
    pass


class Formatting(logging.Handler):
    """Formats every record (traceback included) and keeps none of them."""

    def emit(self, record: logging.LogRecord) -> None:
        self.format(record)


@contextlib.contextmanager
def formatted_only() -> Iterator[None]:
    """Records are built and formatted, but not kept by pytest's capture (whose handlers,
    added for the test's call phase, would hold each failure's traceback and so its
    arguments)."""
    logger = logging.getLogger("guardrails")
    saved = logger.handlers, logger.propagate, logger.level
    logger.handlers, logger.propagate = [Formatting(logging.DEBUG)], False
    logger.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        logger.handlers, logger.propagate = saved[0], saved[1]
        logger.setLevel(saved[2])


# --- memory: a failed call's arguments are freed without the cyclic garbage collector -------


@pytest.mark.parametrize("log", [None, {"level": "INFO"}, {"enabled": False}])
@pytest.mark.parametrize("error", [Boom, ConnectionError])  # raised, answered by the fallback
def test_a_failed_call_through_every_layer_frees_its_arguments_without_gc(
    kind: str, log: Any, error: type[Exception]
) -> None:
    # The cache published its in-flight computation (which holds the outcome) in a context
    # variable; the sync timeout runs the attempt in a copy of the context, held by its frame
    # in the failure's traceback (an async task holds its own): exception -> traceback ->
    # frame -> context -> flight -> exception, a cycle only gc.collect() broke.
    configure(every_layer(log))

    @guarded("p")
    def f(x: Arg) -> str:
        raise error("down")

    @guarded("p")
    async def g(x: Arg) -> str:
        await asyncio.sleep(0)
        raise error("down")

    async def main(x: Arg) -> None:
        with contextlib.suppress(Exception):
            await g(x)

    for _ in range(2):  # the second call finds every piece of state already made
        gc.collect()
        gc.disable()
        try:
            with formatted_only():
                arg = Arg()
                watch = weakref.ref(arg)
                if kind == "sync":
                    with contextlib.suppress(Exception):
                        f(arg)
                else:
                    asyncio.run(main(arg))
                del arg
                assert watch() is None
        finally:
            gc.enable()


@pytest.mark.parametrize("layer", ["timeout", "cache"])
def test_cache_and_timeout_alone_each_free_a_failed_calls_arguments(kind: str, layer: str) -> None:
    # Control: each layer alone was already cycle-free; only the pair made the cycle.
    configure(
        {"policies": {"p": {"log": None, layer: {"timeout": {"total": "30s"}, "cache": {}}[layer]}}}
    )

    @guarded("p")
    def f(x: Arg) -> str:
        raise Boom("down")

    @guarded("p")
    async def g(x: Arg) -> str:
        raise Boom("down")

    async def main(x: Arg) -> None:
        with contextlib.suppress(Boom):
            await g(x)

    gc.collect()
    gc.disable()
    try:
        arg = Arg()
        watch = weakref.ref(arg)
        if kind == "sync":
            with pytest.raises(Boom):
                f(arg)
        else:
            asyncio.run(main(arg))
        del arg
        assert watch() is None
    finally:
        gc.enable()
