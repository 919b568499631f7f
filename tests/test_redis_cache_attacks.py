"""Attacks on the cache's Redis level (``cache.backend: redis``) and ``stale_for``: a wrong
value from Redis, a hang, a call failed because of Redis. Real redis-server (the
``redis_url`` / ``start_redis`` fixtures), real threads, processes and event loops.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

import guardrails
from guardrails import configure, guarded
from tests.redis_servers import RedisProcess
from tests.twins import wait_until

DEADLINE = 30.0


def conf(url: str, policy: str = "p", extra: dict[str, Any] | None = None, **cache: Any) -> None:
    block: dict[str, Any] = {"cache": {"backend": "redis", **cache}, **(extra or {})}
    configure({"redis_url": url, "policies": {policy: block}})


def raw(url: str) -> Any:
    return redis.Redis.from_url(url)


def value_keys(url: str) -> list[bytes]:
    return sorted(k for k in raw(url).keys("guardrails:*") if not k.endswith(b":lock"))


# --- what a cached value depends on besides the arguments ----------------------------------


def test_a_changed_cache_key_never_answers_with_another_arguments_value(redis_url: str) -> None:
    """``cache.key: [a]`` then ``[b]``: the in-process store starts again (its settings
    changed); Redis must not answer f(a=5, b=1) with the value stored for a=1."""
    calls: list[tuple[int, int]] = []

    @guarded("p")
    def f(a: int, b: int) -> int:
        calls.append((a, b))
        return a * 10 + b

    conf(redis_url, key=["a"])
    assert f(1, 2) == 12
    conf(redis_url, key=["b"])
    assert f(5, 1) == 51  # b=1: never computed under key [b]
    assert calls == [(1, 2), (5, 1)]


def test_renamed_parameters_never_share_values(redis_url: str, tmp_path: Path) -> None:
    """A new release swaps a function's parameters (``f(a, b)`` -> ``f(b, a)``) while old
    workers still run: the positional key (1, 2) means other arguments now."""

    def old(a: int, b: int) -> int:
        return a - b

    def new(b: int, a: int) -> int:
        return a - b

    new.__qualname__ = old.__qualname__ = "swapped"
    conf(redis_url)
    f_old = guarded("p")(old)
    assert f_old(1, 2) == -1
    del f_old
    f_new = guarded("p")(new)
    assert f_new(1, 2) == 1


def test_a_changed_output_type_is_never_answered_with_values_validated_by_the_old(
    redis_url: str,
) -> None:
    """validate.output sits below the cache: what is cached is the coerced value. After
    ``output: float`` becomes ``output: str`` the old floats in Redis must not come back."""

    @guarded("p")
    def f(x: int) -> Any:
        return x  # an int: coerced to 3.0 by `float`, to "3"... by nothing (strict str?)

    conf(redis_url, extra={"validate": {"output": "float"}})
    assert f(3) == 3.0 and type(f(3)) is float
    conf(redis_url, extra={"validate": {"output": "int"}})
    got = f(3)
    assert type(got) is int, f"a value validated as float came back: {got!r}"


def test_a_subprocess_with_another_output_type_does_not_share_values(
    redis_url: str, tmp_path: Path
) -> None:
    module = tmp_path / "r2_out_fn.py"
    module.write_text(
        textwrap.dedent(
            """
            from guardrails import guarded

            @guarded("p")
            def f(x: int):
                return x
            """
        )
    )
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        import guardrails, r2_out_fn
        guardrails.configure({{"redis_url": {redis_url!r}, "policies": {{"p": {{
            "cache": {{"backend": "redis"}}, "validate": {{"output": "float"}}}}}}}})
        print(repr(r2_out_fn.f(4)))
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "GUARDRAILS_REDIS_URL"}
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "4.0"
    sys.path.insert(0, str(tmp_path))
    try:
        import r2_out_fn  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(tmp_path))
    try:
        conf(redis_url)  # no validate.output: the function's own value
        assert type(r2_out_fn.f(4)) is int
    finally:
        sys.modules.pop("r2_out_fn", None)


def test_two_functions_made_by_one_factory_never_answer_for_each_other(redis_url: str) -> None:
    """``make(1)`` and ``make(2)`` have one qualified name (``make.<locals>.f``) and one
    policy: their values must not be shared through Redis."""
    conf(redis_url)

    def make(n: int) -> Callable[[int], int]:
        @guarded("p")
        def f(x: int) -> int:
            return x + n

        return f

    plus1, plus2 = make(1), make(2)
    assert plus1(10) == 11
    assert plus2(10) == 12


def test_partials_and_lambdas_of_one_name_never_answer_for_each_other(redis_url: str) -> None:
    import functools

    conf(redis_url)

    def scale(x: int, by: int) -> int:
        return x * by

    double = guarded("p")(functools.partial(scale, by=2))
    triple = guarded("p")(functools.partial(scale, by=3))
    assert double(5) == 10
    assert triple(5) == 15
    plus = guarded("p")(lambda x: x + 1)
    minus = guarded("p")(lambda x: x - 1)
    assert plus(5) == 6
    assert minus(5) == 4


def test_the_same_closure_values_still_share_through_redis(redis_url: str) -> None:
    """What the fix must keep: one factory called with the same value (another process,
    another wrapper) shares its values."""
    conf(redis_url)
    calls: list[int] = []

    def make(n: int) -> Callable[[int], int]:
        def f(x: int) -> int:
            calls.append(x)
            return x + n

        return guarded("p")(f)

    assert make(1)(10) == 11
    assert make(1)(10) == 11
    assert calls == [10]
    assert guardrails.stats()["p"].shared_cache_hits == 1


# --- the level's own connections -------------------------------------------------------------


def _level(f: Any) -> Any:
    slot = f.__guardrails__
    if slot.store is None:
        f(-1)  # compile
    return slot.store.shared


def test_after_a_restart_the_idle_connections_broken_by_it_cost_one_error_not_one_each(
    start_redis: Callable[[], RedisProcess],
) -> None:
    """Four threads leave four idle connections; Redis restarts. The first command finds
    its socket dead: that is the outage. The probe that follows must not pick another dead
    socket from the same restart (each one another error and a doubled probe delay: 0.5 +
    1 + 2 + 4 s before values are shared again)."""
    import threading

    server = start_redis()
    conf(server.url, redis_timeout="2s")

    @guarded("p")
    def f(x: int) -> int:
        return x

    level = _level(f)
    barrier = threading.Barrier(4)

    def hold_a_connection() -> None:
        barrier.wait()
        level.call("BLPOP", "r2-nothing", "0.2")  # all four at once: four connections

    threads = [threading.Thread(target=hold_a_connection) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(level._idle) == 4
    server.stop()
    server.start()
    from guardrails.redis import client

    x = 0

    def shared_again() -> bool:
        nonlocal x
        x += 1
        assert f(x) == x
        return client.server(server.url).down_until == 0.0 and bool(
            raw(server.url).exists(level.key_for((int, x)))
        )

    wait_until(shared_again, "values shared again")
    assert guardrails.stats()["p"].redis_errors == 1
    # Four threads at once again: every idle connection is used; none may be a dead one
    # left from before the restart (each would be another outage: sharing off again).
    barrier = threading.Barrier(4)

    def miss(n: int) -> None:
        barrier.wait()
        for i in range(20):
            assert f(10_000 * (n + 1) + i) == 10_000 * (n + 1) + i

    threads = [threading.Thread(target=miss, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert guardrails.stats()["p"].redis_errors == 1
    assert client.server(server.url).outages == 1


# --- asyncio -----------------------------------------------------------------------------------


def test_a_leader_cancelled_while_storing_in_redis_never_leaves_its_waiters_hanging(
    start_redis: Callable[[], RedisProcess],
) -> None:
    """The leader computed its value and is storing it (Redis slow: paused) when it is
    cancelled. A waiter on the same loop must get the value (or compute), never wait
    forever, and the lock must not be left to expire."""
    import asyncio

    server = start_redis()
    conf(server.url, redis_timeout="10s")
    computed: list[int] = []

    @guarded("p")
    async def f(x: int) -> int:
        computed.append(x)
        await go.wait()
        return x * 2

    async def main() -> tuple[Any, list[bytes]]:
        leader = asyncio.create_task(f(1))
        while not computed:
            await asyncio.sleep(0.001)
        waiter = asyncio.create_task(f(1))
        await asyncio.sleep(0)  # the waiter awaits the leader's flight
        server.pause()
        try:
            go.set()

            def storing() -> bool:
                coro: Any = leader.get_coro()
                while coro is not None:  # the chain of awaits, outermost first
                    frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
                    if frame is not None and frame.f_code.co_name == "afinish":
                        return True
                    coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
                return False

            deadline = time.monotonic() + DEADLINE
            while not storing():
                assert time.monotonic() < deadline, "the leader never stored"
                await asyncio.sleep(0.001)
            leader.cancel()
        finally:
            server.resume()
        got = await asyncio.wait_for(waiter, DEADLINE)
        with pytest.raises(asyncio.CancelledError):
            await leader

        def lock_gone() -> bool:
            return not raw(server.url).keys("guardrails:*:lock")

        deadline = time.monotonic() + DEADLINE
        while not lock_gone():
            assert time.monotonic() < deadline, "the cancelled leader's lock was left"
            await asyncio.sleep(0.005)
        return got, raw(server.url).keys("guardrails:*:lock")

    go = asyncio.Event()
    got, locks = asyncio.run(main())
    assert got == 2
    assert locks == []


# --- stale_for ---------------------------------------------------------------------------------


def test_a_stale_value_from_redis_is_never_served_past_its_stale_window(
    redis_url: str, clock: Any
) -> None:
    """A stale value taken from Redis with the refresh lease has what is left of its stale
    window, not a whole ``stale_for`` from now: after a failed refresh it must not be served
    (to callers waiting on the next refresh) past ``ttl + stale_for`` of when it was made."""
    import threading

    conf(redis_url, ttl=10, stale_for=10)
    calls: list[int] = []
    gate = threading.Event()
    mode = {"fail": False, "hold": False}

    def compute(x: int) -> str:
        calls.append(x)
        if mode["hold"]:
            assert gate.wait(DEADLINE)
        if mode["fail"]:
            raise ConnectionError("feature store down")
        return f"v{len(calls)}"

    a, b = guarded("p")(compute), guarded("p")(compute)
    assert a(1) == "v1"  # at t0, fresh until t0 + 10, stale until t0 + 20
    clock.advance(19)
    mode["fail"] = True
    with pytest.raises(ConnectionError):
        b(1)  # b leads the refresh (the stale value goes to b's store), and fails
    clock.advance(5)  # t0 + 24: past the stale window
    mode.update(fail=False, hold=True)
    out: list[Any] = []
    leader = threading.Thread(target=lambda: out.append(b(1)))
    leader.start()
    wait_until(lambda: len(calls) == 3, "the leader computing")
    second: list[Any] = []
    other = threading.Thread(target=lambda: second.append(b(1)))
    other.start()
    store = b.__guardrails__.store  # type: ignore[attr-defined]

    def waiting_or_done() -> bool:
        flights = list(store.inflight.values())
        return bool(second) or any(f.waiters for f in flights)

    wait_until(waiting_or_done, "the second caller waiting or answered")
    gate.set()
    leader.join(DEADLINE)
    other.join(DEADLINE)
    assert out == ["v3"]
    assert second == ["v3"], "served a value past ttl + stale_for"


# --- keys that differ only in type ------------------------------------------------------------


@pytest.mark.parametrize("how", ["positional", "keyword", "two parameters"])
def test_keys_differing_only_in_type_or_sign_never_share_a_redis_value(
    redis_url: str, how: str
) -> None:
    conf(redis_url)
    values: list[Any] = [1, 1.0, True, "1", b"1", (1,), [1], 0.0, -0.0, 0, False, None, ""]

    def describe(x: Any, y: int = 0) -> str:
        return f"{type(x).__name__}:{x!r}"

    writer, reader = guarded("p")(describe), guarded("p")(describe)

    def call(f: Any, x: Any) -> str:
        if how == "positional":
            return str(f(x))
        if how == "keyword":
            return str(f(x=x))
        return str(f(x, 0))

    for x in values:
        assert call(writer, x) == describe(x)
    for x in values:
        assert call(reader, x) == describe(x), x
    assert guardrails.stats()["p"].shared_cache_hits == len(values)


def test_async_a_reply_late_after_a_timeout_is_never_read_as_the_next_commands(
    start_redis: Callable[[], RedisProcess],
) -> None:
    """The asyncio path's connections: a GET that timed out while Redis was paused leaves
    its reply on the way; the next command on that connection must not take it."""
    import asyncio

    server = start_redis()
    conf(server.url, redis_timeout="100ms")
    calls: list[int] = []

    async def compute(x: int) -> str:
        calls.append(x)
        return f"value of {x}"

    writer, reader = guarded("p")(compute), guarded("p")(compute)
    from guardrails.redis import client

    async def main() -> None:
        assert (await writer(1), await writer(2)) == ("value of 1", "value of 2")
        server.pause()
        try:
            assert await reader(1) == "value of 1"  # timed out: computed here
        finally:
            server.resume()
        x = 100
        deadline = time.monotonic() + DEADLINE
        while client.server(server.url).down_until != 0.0:
            assert time.monotonic() < deadline, "Redis never answered again"
            x += 1
            assert await reader(x) == f"value of {x}"
            await asyncio.sleep(0.01)
        for key in (2, *range(3, 30)):
            assert await reader(key) == f"value of {key}"

    asyncio.run(main())
    assert calls.count(2) == 1


# --- re-entry ----------------------------------------------------------------------------------


def mget_calls(url: str) -> int:
    stats = raw(url).info("commandstats")
    return int(stats.get("cmdstat_mget", {}).get("calls", 0))


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_re_entry_through_another_wrapper_never_waits_on_its_own_redis_lock(
    redis_url: str, mode: str
) -> None:
    """The call stack leading key k (holding k's Redis lock) calls k again through another
    wrapper of the function (another slot, or the chain a configure() compiled meanwhile):
    it must compute at once, not poll its own lock until it expires."""
    import asyncio

    conf(redis_url, lock_timeout="2s")
    wrappers: list[Any] = []
    calls: list[int] = []

    def h(x: int) -> int:
        calls.append(x)
        if len(calls) == 1:
            return int(wrappers[1](x)) + 1  # the same key, through the other wrapper
        return x

    async def ah(x: int) -> int:
        calls.append(x)
        if len(calls) == 1:
            return int(await wrappers[1](x)) + 1
        return x

    if mode == "sync":
        wrappers.extend([guarded("p")(h), guarded("p")(h)])
        before = mget_calls(redis_url)
        assert wrappers[0](5) == 6
    else:
        wrappers.extend([guarded("p")(ah), guarded("p")(ah)])
        before = mget_calls(redis_url)
        assert asyncio.run(wrappers[0](5)) == 6
    assert mget_calls(redis_url) == before, "a call waited on its own call stack's lock"
    assert raw(redis_url).keys("guardrails:*:lock") == []


# --- huge values -------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_large_value_is_stored_and_shared_not_an_outage(redis_url: str, mode: str) -> None:
    """A 32 MB array takes longer than ``redis_timeout`` (50 ms) to write: the store must
    not time out (an outage turning Redis off for every policy, the value never shared and
    the key's lock left for the other processes to wait on until it expires)."""
    import asyncio

    import numpy as np

    conf(redis_url)
    n = 32 * 2**20 // 8

    def big(n: int) -> Any:
        return np.arange(n, dtype=np.float64)

    async def abig(n: int) -> Any:
        return np.arange(n, dtype=np.float64)

    abig.__qualname__ = big.__qualname__  # one function to Redis: the same keys

    # Read back by the sync path: redis-py's asyncio client bounds a whole reply by the
    # socket timeout, so an async GET of 32 MB needs a redis_timeout that fits it.
    writer = guarded("p")(big if mode == "sync" else abig)
    reader = guarded("p")(big)
    a = writer(n) if mode == "sync" else asyncio.run(writer(n))
    b = reader(n)
    assert np.array_equal(a, b)
    s = guardrails.stats()["p"]
    assert (s.redis_errors, s.shared_cache_hits) == (0, 1)
    assert raw(redis_url).keys("guardrails:*:lock") == []
