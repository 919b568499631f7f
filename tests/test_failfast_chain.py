"""Every fail-fast layer at once, as one production policy: fallback, cache, memory, timeout
(total and attempt), retry (budget, Retry-After), breaker, rate_limit, bulkhead,
validate.output, chaos and log, on sync and async functions sharing the policy."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import random
import threading
import time
import weakref
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

import guardrails
from guardrails import configure, guarded
from guardrails._state import STATE


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


# --- everything at once: threads, event loops, chaos, cancellations, configure(), fork ------


def answer_for(x: int) -> int:
    return -1 - x  # the fallback's answer: never 2 * x


def production(size: int) -> dict[str, Any]:
    """The policy of an incident drill; ``size`` changes the breaker, the rate limit and
    the bulkhead together."""
    return every_layer(
        {"level": "DEBUG"},
        fallback={
            "function": f"{__name__}:answer_for",
            "catch": ["ConnectionError", "guardrails.CircuitOpenError", "TimeoutError"],
        },
        cache={"ttl": "20ms"},
        retry={
            "max_attempts": 3,
            "budget": {"ratio": 0.5, "min_per_second": 100},
            "wait": {"initial": "1ms", "max": "5ms", "retry_after": True},
        },
        breaker={
            "failure_rate": f"{70 + 10 * size}%",
            "window": 20,
            "min_calls": 10,
            "open_for": "20ms",
            "half_open_calls": 2,
        },
        rate_limit={"rate": f"{1000 * size}/s", "burst": 50, "max_wait": "5ms"},
        bulkhead={"max_concurrent": size, "max_wait": "20ms"},
        validate={"output": "int"},
        chaos={"error_rate": 0.3, "latency": "1ms", "latency_rate": 0.2, "seed": 7},
    )


def test_the_whole_chain_under_load_reconfigured_and_forked_keeps_its_promises() -> None:
    lock = threading.Lock()
    running = [0, 0]  # now, peak

    def enter() -> None:
        with lock:
            running[0] += 1
            running[1] = max(running[1], running[0])

    def leave() -> None:
        with lock:
            running[0] -= 1

    @guarded("p")
    def f(x: int) -> int:
        enter()
        try:
            return 2 * x
        finally:
            leave()

    @guarded("p")
    async def g(x: int) -> int:
        enter()
        try:
            await asyncio.sleep(0)
            return 2 * x
        finally:
            leave()

    configure(production(3))
    seen: Counter[str] = Counter()
    stop = threading.Event()
    problems: list[str] = []

    def check(x: int, result: int) -> None:
        if result == 2 * x:
            seen["ok"] += 1
        elif result == answer_for(x):
            seen["fallback"] += 1
        else:
            problems.append(f"f({x}) = {result}")

    def threads_calling(seed: int) -> None:
        rnd = random.Random(seed)
        while not stop.is_set():
            x = rnd.randrange(50)
            try:
                check(x, f(x))
            except Exception as exc:
                seen[type(exc).__name__] += 1

    async def tasks_calling(seed: int) -> None:
        rnd = random.Random(seed)

        async def one() -> None:
            x = rnd.randrange(50)
            try:
                if rnd.random() < 0.2:
                    check(x, await asyncio.wait_for(g(x), rnd.random() * 0.003))
                else:
                    check(x, await g(x))
            except BaseException as exc:  # cancelled, timed out, refused
                seen[type(exc).__name__] += 1

        while not stop.is_set():
            tasks = [asyncio.ensure_future(one()) for _ in range(10)]
            await asyncio.sleep(0.001)
            for task in tasks:
                if rnd.random() < 0.1:
                    task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def reconfiguring() -> None:
        sizes = (2, 3, 3)  # one change, then one identical
        i = 0
        while not stop.is_set():
            configure(production(sizes[i % 3]))
            i += 1
            stop.wait(0.003)
        seen["configures"] = i

    def forking() -> None:
        for _ in range(5):  # then the drill ends
            stop.wait(0.1)
            pid = os.fork()
            if pid == 0:
                code = 0
                try:
                    for x in range(10):
                        if f(x) not in (2 * x, answer_for(x)):
                            code = 3
                        if asyncio.run(g(x)) not in (2 * x, answer_for(x)):
                            code = 4
                    configure(production(2))
                    f(99)
                except BaseException:
                    code = 5
                os._exit(code)
            deadline = time.monotonic() + 30
            while True:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    seen[f"child exit {os.waitstatus_to_exitcode(status)}"] += 1
                    break
                if time.monotonic() > deadline:
                    os.kill(pid, 9)
                    os.waitpid(pid, 0)
                    problems.append("a forked child hung")
                    break
                time.sleep(0.005)
        stop.set()

    callers = [threading.Thread(target=threads_calling, args=(i,)) for i in range(4)]
    callers += [
        threading.Thread(target=lambda i=i: asyncio.run(tasks_calling(i))) for i in range(2)
    ]
    helpers = [threading.Thread(target=reconfiguring), threading.Thread(target=forking)]
    for t in [*callers, *helpers]:
        t.start()
    for t in [*helpers, *callers]:
        t.join(120)
    stop.set()
    assert not any(t.is_alive() for t in [*callers, *helpers]), "hung"
    assert problems == []
    assert running[1] <= 3  # never more than the larger max_concurrent
    assert seen.pop("child exit 0") == 5
    assert seen.pop("configures") > 10
    assert seen["ok"] and seen["fallback"] and seen["CancelledError"] and seen["TimeoutError"]
    stats = guardrails.stats()["p"]
    made = sum(seen.values())
    assert stats.calls == made
    assert stats.successes == seen["ok"]
    assert stats.fallbacks == seen["fallback"]
    assert stats.failures == made - seen["ok"] - seen["fallback"]

    # The drill ends: no chaos, the same cache. After open_for, every answer is the real one
    # (a fallback answer was never cached) and every slot is free again.
    configure(production(3) | {"policies": {"p": production(3)["policies"]["p"] | {"chaos": None}}})
    bulkhead = STATE.shared[("p", "bulkhead")][1]
    deadline = time.monotonic() + 30
    while bulkhead.slots.in_use and time.monotonic() < deadline:
        time.sleep(0.001)
    assert bulkhead.slots.in_use == 0
    assert not bulkhead.slots.waiters
    while guardrails.stats()["p"].breaker_state == "open" and time.monotonic() < deadline:
        time.sleep(0.001)  # open_for (20 ms) passes, on the real clock the breaker reads
    assert [f(x) for x in range(50)] == [2 * x for x in range(50)]
    assert asyncio.run(_all(g, range(50))) == [2 * x for x in range(50)]
    assert guardrails.stats()["p"].breaker_state == "closed"


async def _all(fn: Any, xs: Any) -> list[int]:
    return [await fn(x) for x in xs]
