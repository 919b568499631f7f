"""``cache.stale_for``: past ``ttl`` and within ``stale_for`` an entry is served stale to
every caller but the one that recomputes it (per key; across processes with Redis); past
``ttl + stale_for`` it is a plain miss. On the fake clock."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest

import guardrails
from guardrails import configure, guarded
from guardrails.testing import FakeClock
from tests.twins import wait_until

DEADLINE = 30.0


class Source:
    """A function whose next computation can be held (``hold``) and then let go or failed."""

    def __init__(self) -> None:
        self.version = 0
        self.calls = 0
        self.gate: threading.Event | None = None
        self.fail = False

    def __call__(self, x: int) -> str:
        self.calls += 1
        if self.gate is not None:
            assert self.gate.wait(DEADLINE)
        if self.fail:
            raise ConnectionError("feature store down")
        self.version += 1
        return f"{x}-v{self.version}"


def in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []

    def body() -> None:
        try:
            out.append(fn())
        except BaseException as exc:
            out.append(exc)

    t = threading.Thread(target=body)
    t.start()
    return t, out


def test_memory_stale_value_served_while_one_caller_recomputes(clock: FakeClock) -> None:
    configure({"policies": {"p": {"cache": {"ttl": 10, "stale_for": 5}}}})
    source = Source()
    f = guarded("p")(source)
    assert f(1) == "1-v1"
    clock.advance(9)
    assert f(1) == "1-v1" and source.calls == 1  # fresh
    clock.advance(2)  # past ttl, within stale_for
    source.gate = threading.Event()
    leader, out = in_thread(lambda: f(1))
    wait_until(lambda: f.__guardrails__.store.inflight, "the recompute")  # type: ignore[attr-defined]
    assert [f(1), f(1)] == ["1-v1", "1-v1"]  # stale, at once, to everyone else
    source.gate.set()
    leader.join(DEADLINE)
    assert out == ["1-v2"]  # the recomputing caller waited for its value
    assert f(1) == "1-v2"
    s = guardrails.stats()["p"]
    assert (s.cache_misses, s.cache_hits) == (2, 4)


def test_memory_past_ttl_plus_stale_for_is_a_miss(clock: FakeClock) -> None:
    configure({"policies": {"p": {"cache": {"ttl": 10, "stale_for": 5}}}})
    source = Source()
    f = guarded("p")(source)
    assert f(1) == "1-v1"
    clock.advance(15)
    source.gate = threading.Event()
    leader, out = in_thread(lambda: f(1))
    wait_until(lambda: f.__guardrails__.store.inflight, "the recompute")  # type: ignore[attr-defined]
    waiter, out2 = in_thread(lambda: f(1))
    wait_until(
        lambda: next(iter(f.__guardrails__.store.inflight.values())).waiters,  # type: ignore[attr-defined]
        "the waiter",
    )
    source.gate.set()
    leader.join(DEADLINE)
    waiter.join(DEADLINE)
    assert out == out2 == ["1-v2"]  # the waiter waited: nothing stale to serve
    assert source.calls == 2


def test_memory_a_failed_recompute_leaves_the_stale_value_to_serve(clock: FakeClock) -> None:
    configure({"policies": {"p": {"cache": {"ttl": 10, "stale_for": 5}}}})
    source = Source()
    f = guarded("p")(source)
    assert f(1) == "1-v1"
    clock.advance(11)
    source.fail = True
    with pytest.raises(ConnectionError):
        f(1)  # this caller recomputed, and sees its failure
    source.gate = threading.Event()
    leader, out = in_thread(lambda: f(1))  # the next caller tries again ...
    wait_until(lambda: f.__guardrails__.store.inflight, "the recompute")  # type: ignore[attr-defined]
    assert f(1) == "1-v1"  # ... while the stale value is still served
    source.fail = False
    source.gate.set()
    leader.join(DEADLINE)
    assert out == ["1-v2"]
    assert f(1) == "1-v2"


def test_stale_for_zero_keeps_todays_behaviour(clock: FakeClock) -> None:
    configure({"policies": {"p": {"cache": {"ttl": 10}}}})
    source = Source()
    f = guarded("p")(source)
    assert f(1) == "1-v1"
    clock.advance(10)
    assert f(1) == "1-v2"


def test_async_memory_stale_served_while_one_task_recomputes(clock: FakeClock) -> None:
    configure({"policies": {"p": {"cache": {"ttl": 10, "stale_for": 5}}}})
    version = 0

    async def main() -> None:
        gate = asyncio.Event()

        async def g(x: int) -> str:
            nonlocal version
            if version:
                await gate.wait()
            version += 1
            return f"{x}-v{version}"

        f = guarded("p")(g)
        assert await f(1) == "1-v1"
        clock.advance(11)
        leader = asyncio.create_task(f(1))
        while not f.__guardrails__.store.inflight:  # type: ignore[attr-defined]
            await asyncio.sleep(0)
        assert [await f(1), await f(1)] == ["1-v1", "1-v1"]
        gate.set()
        assert await leader == "1-v2"
        assert await f(1) == "1-v2"

    asyncio.run(main())


def test_redis_stale_served_by_other_processes_while_one_recomputes(
    redis_url: str, clock: FakeClock
) -> None:
    import redis

    configure(
        {
            "redis_url": redis_url,
            "policies": {"p": {"cache": {"backend": "redis", "ttl": 10, "stale_for": 5}}},
        }
    )
    source = Source()
    first, second = guarded("p")(source), guarded("p")(source)
    assert first(1) == "1-v1"
    key: Any
    (key,) = redis.Redis.from_url(redis_url).keys("guardrails:p:*")
    assert 14_000 < redis.Redis.from_url(redis_url).pttl(key) <= 15_000
    clock.advance(11)  # stale for every process (the fake clock is their wall clock here)
    source.gate = threading.Event()
    leader, out = in_thread(lambda: first(1))  # leads the recompute, across processes
    wait_until(lambda: redis.Redis.from_url(redis_url).exists(key + b":lock"), "the leader's lock")
    assert second(1) == "1-v1"  # another process: stale from Redis, at once
    source.gate.set()
    leader.join(DEADLINE)
    assert out == ["1-v2"]
    assert second(1) == "1-v2"  # the new value, from Redis
    assert source.calls == 2
    s = guardrails.stats()["p"]
    assert s.shared_cache_hits == 2 and s.redis_errors == 0


def test_redis_a_failed_recompute_leaves_the_stale_value_for_the_next(
    redis_url: str, clock: FakeClock
) -> None:
    configure(
        {
            "redis_url": redis_url,
            "policies": {"p": {"cache": {"backend": "redis", "ttl": 10, "stale_for": 5}}},
        }
    )
    source = Source()
    first, second = guarded("p")(source), guarded("p")(source)
    assert first(1) == "1-v1"
    clock.advance(11)
    source.fail = True
    with pytest.raises(ConnectionError):
        first(1)
    source.fail = False
    assert second(1) == "1-v2"  # the lock was released: the next process leads at once
    assert source.calls == 3
