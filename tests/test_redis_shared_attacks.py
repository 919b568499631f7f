"""Attacks on ``shared: true`` (breaker, rate limit, bulkhead in a real redis-server): a Redis
that is paused and goes on, hostile settings, threads, cancellation, reloads."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

import guardrails
from guardrails import CircuitOpenError, guarded
from guardrails.redis.client import server as redis_server_of
from tests.redis_servers import RedisProcess
from tests.twins import wait_until

DEADLINE = 30.0


def configure(url: str | None, **policies: dict[str, Any]) -> None:
    node: dict[str, Any] = {
        "policies": {k: {"log": {"enabled": False}, **v} for k, v in policies.items()}
    }
    if url is not None:
        node["redis_url"] = url
    guardrails.configure(node)


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def redis_now(client: redis.Redis) -> int:
    """Redis's clock, in microseconds (what the scripts read)."""
    seconds, micros = client.time()
    return int(seconds) * 1_000_000 + int(micros)


def answering(url: str) -> bool:
    """Whether this process uses Redis again (its outage over)."""
    return redis_server_of(url).down_until == 0.0


# --- a Redis that was paused runs the commands it had received: leases for nobody -------


def _hold_together(call: Callable[..., Any], n: int) -> None:
    """``n`` calls at once, each holding its slot until all have one (so ``n`` pooled
    connections exist afterwards, as in a busy service)."""
    barrier = threading.Barrier(n)
    threads = [threading.Thread(target=call, args=(barrier,)) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(DEADLINE)
        assert not t.is_alive()


def test_slots_taken_by_acquires_that_timed_out_are_given_back(
    start_redis: Callable[[], RedisProcess],
) -> None:
    """Paused Redis (SIGSTOP): four acquires time out and the calls run on this process's
    own bulkhead; when Redis goes on it runs the four scripts it had received, four leases
    for nobody. They used to stay a whole lease (60 s): every call of every process refused
    with BulkheadFull after Redis came back."""
    server = start_redis()
    configure(server.url, dep={"bulkhead": {"max_concurrent": 4, "shared": True}})

    @guarded("dep")
    def call(barrier: threading.Barrier | None = None) -> int:
        if barrier is not None:
            barrier.wait(DEADLINE)
        return 1

    _hold_together(call, 4)  # four pooled connections
    client = redis.Redis.from_url(server.url)
    try:
        assert client.zcard("guardrails:dep:bulkhead") == 0
        server.pause()
        try:
            _hold_together(call, 4)  # each times out and runs on the local bulkhead
        finally:
            server.resume()
        wait_until(
            lambda: client.zcard("guardrails:dep:bulkhead") >= 1,
            "Redis ran an acquire the caller had given up on",
        )
        wait_until(lambda: call() == 1 and answering(server.url), "Redis in use again", 10)
        assert client.zcard("guardrails:dep:bulkhead") == 0
        _hold_together(call, 4)  # the whole bulkhead is there again
        assert guardrails.stats()["dep"].bulkhead_rejected == 0
    finally:
        client.close()


def test_async_slots_taken_by_acquires_that_timed_out_are_given_back(
    start_redis: Callable[[], RedisProcess],
) -> None:
    server = start_redis()
    configure(server.url, dep={"bulkhead": {"max_concurrent": 3, "shared": True}})

    @guarded("dep")
    async def call(gate: asyncio.Event | None = None) -> int:
        if gate is not None:
            await gate.wait()
        return 1

    async def together(n: int) -> None:
        gate = asyncio.Event()
        tasks = [asyncio.create_task(call(gate)) for _ in range(n)]
        await asyncio.sleep(0)
        gate.set()
        assert await asyncio.gather(*tasks) == [1] * n

    client = redis.Redis.from_url(server.url)

    async def main() -> None:
        await together(3)  # three pooled connections of this loop
        server.pause()
        try:
            await together(3)
        finally:
            server.resume()
        end = time.monotonic() + DEADLINE
        while client.zcard("guardrails:dep:bulkhead") < 1:
            assert time.monotonic() < end, "Redis never ran the acquires it had received"
            await asyncio.sleep(0.01)
        end = time.monotonic() + 10
        while not (await call() == 1 and answering(server.url)):
            assert time.monotonic() < end, "Redis not in use again"
            await asyncio.sleep(0.01)
        assert client.zcard("guardrails:dep:bulkhead") == 0
        await together(3)

    try:
        asyncio.run(main())
        assert guardrails.stats()["dep"].bulkhead_rejected == 0
    finally:
        client.close()


def test_a_trial_permit_taken_by_an_admit_that_timed_out_is_given_back(
    start_redis: Callable[[], RedisProcess],
) -> None:
    """Half-open with one trial call: the admit that took the permit timed out (Redis
    paused), so the call ran on the local breaker. The permit used to stay taken for its
    lease (60 s): half-open and refusing every call everywhere (retry_after 0)."""
    server = start_redis()
    configure(
        server.url,
        dep={
            "breaker": {
                "shared": True,
                "window": 2,
                "min_calls": 2,
                "open_for": "200ms",
                "half_open_calls": 1,
            }
        },
    )

    @guarded("dep")
    def call(fail: bool = False) -> int:
        if fail:
            raise ConnectionError("down")
        return 1

    for _ in range(2):
        with pytest.raises(ConnectionError):
            call(fail=True)
    with pytest.raises(CircuitOpenError):
        call()
    client = redis.Redis.from_url(server.url)
    try:
        key = "guardrails:dep:breaker"
        wait_until(
            lambda: float(client.hget(key, "until") or 0) < redis_now(client), "open_for over"
        )
        server.pause()
        try:
            assert call() == 1  # the admit times out: the local (closed) breaker serves it
        finally:
            server.resume()
        wait_until(
            lambda: client.zcard(key + ":trials") >= 1, "Redis ran the admit it had received"
        )

        def closed_again() -> bool:
            try:
                call()
            except CircuitOpenError:
                return False
            return answering(server.url) and client.hget(key, "state") == b"closed"

        wait_until(closed_again, "a trial call closed the breaker", 20)
    finally:
        client.close()


# --- hostile settings ---------------------------------------------------------------------


def test_a_bucket_full_again_in_a_million_years_keeps_its_quota_in_redis(
    redis_url: str, raw: redis.Redis
) -> None:
    """One token a century and a bucket of a billion: after ~31,700 tokens the bucket is full
    again more than 1e17 ms away, which Lua sent to Redis as '1e+17' (not an integer): every
    call a script error, a WARNING, and each process with its own quota from then on."""
    configure(
        redis_url,
        dep={"rate_limit": {"rate": "1/876600h", "burst": 1_000_000_000, "shared": True}},
    )

    @guarded("dep")
    def call() -> int:
        return 1

    for _ in range(32_000):
        call()
    assert guardrails.stats()["dep"].redis_errors == 0
    assert raw.pttl("guardrails:dep:rate_limit") > 10**14
    assert guardrails.stats()["dep"].rate_limited == 0


# --- reloads while calls run ----------------------------------------------------------------


def test_sharing_toggled_by_configure_while_threads_call(redis_url: str, raw: redis.Redis) -> None:
    """configure() flips shared on and off (and changes the sizes) while 6 threads call: no
    call fails but for guardrails' own refusals, none hangs, every lease taken in Redis is
    given back and nothing is counted as a Redis error."""

    def settings(i: int) -> dict[str, Any]:
        shared = i % 2 == 0
        return {
            "breaker": {"shared": shared, "window": 10 + i % 3, "min_calls": 5},
            "rate_limit": {"shared": shared, "rate": "1000000/s", "burst": 100_000 + i % 5},
            "bulkhead": {"shared": shared, "max_concurrent": 3 + i % 4, "max_wait": "1s"},
        }

    configure(redis_url, dep=settings(0))

    @guarded("dep")
    def call(i: int) -> int:
        return i

    stop = threading.Event()
    problems: list[BaseException] = []
    done = [0] * 6

    def hammer(n: int) -> None:
        while not stop.is_set():
            try:
                assert call(n) == n
            except BaseException as exc:  # collected: the test names them
                problems.append(exc)
                return
            done[n] += 1

    threads = [threading.Thread(target=hammer, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    try:
        for i in range(1, 41):
            configure(redis_url, dep=settings(i))
            start = sum(done)
            wait_until(lambda start=start: sum(done) > start + 20 or bool(problems), "calls go on")
    finally:
        stop.set()
        for t in threads:
            t.join(DEADLINE)
    assert not any(t.is_alive() for t in threads)
    assert problems == []
    assert raw.zcard("guardrails:dep:bulkhead") == 0
    stats = guardrails.stats()["dep"]
    assert stats.redis_errors == 0
    assert stats.failures == 0
    assert raw.hget("guardrails:dep:breaker", "state") in (None, b"closed")


def test_a_forked_child_never_hands_out_its_parents_lease_tokens() -> None:
    """A lease token names its process: a forked child (same counter, same memory) must not
    make the parent's next token, or one's release would give back the other's slot."""
    import os

    from guardrails.redis import shared

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        code = 1
        try:
            os.write(write, shared._token().encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    with os.fdopen(read, "rb") as pipe:
        theirs = pipe.read().decode()
    ours = shared._token()
    assert theirs.rsplit(".", 1)[1] == ours.rsplit(".", 1)[1]  # the same counter value
    assert theirs != ours
