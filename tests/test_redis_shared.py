"""``shared: true`` breaker, rate limit and bulkhead: one state in a real redis-server for every
process (real subprocesses, threads and event loops; Redis killed and paused for real)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

import guardrails
from guardrails import (
    BulkheadFull,
    CircuitOpenError,
    PolicyConfigError,
    RateLimitExceeded,
    guarded,
)
from tests.redis_servers import RedisProcess
from tests.twins import wait_until

ROOT = Path(__file__).resolve().parent.parent
DEADLINE = 30.0


def configure(url: str | None, **policies: dict[str, Any]) -> None:
    node: dict[str, Any] = {
        "policies": {k: {"log": {"enabled": False}, **v} for k, v in policies.items()}
    }
    if url is not None:
        node["redis_url"] = url
    guardrails.configure(node)


#: A child process: configures the policy given as JSON, then runs ``ACTION``.
CHILD = textwrap.dedent(
    """
    import json, sys, time
    import guardrails
    from guardrails import guarded
    url, policy, action = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
    guardrails.configure({"redis_url": url, "policies": {"dep": policy}})

    @guarded("dep")
    def call(fail=False, block=False):
        if block:
            print("holding", flush=True)
            sys.stdin.readline()
        if fail:
            raise ConnectionError("dependency down")
        return 1

    if action == "fail":
        n = int(sys.argv[4])
        for _ in range(n):
            try:
                call(fail=True)
            except Exception as exc:
                print(type(exc).__name__, flush=True)
    elif action == "once":
        try:
            call()
            print("ok", flush=True)
        except Exception as exc:
            print(type(exc).__name__, flush=True)
    elif action == "hold":
        call(block=True)
        print("released", flush=True)
    elif action == "hammer":
        end = time.monotonic() + float(sys.argv[4])
        admitted = refused = 0
        while time.monotonic() < end:
            try:
                call()
                admitted += 1
            except guardrails.RateLimitExceeded:
                refused += 1
        print(json.dumps([admitted, refused]), flush=True)
    """
)


_CHILDREN: list[subprocess.Popen[str]] = []


@pytest.fixture(autouse=True)
def _no_child_left() -> Iterator[None]:
    """Every child a test started is ended and its pipes closed, whatever the test did."""
    yield
    while _CHILDREN:
        proc = _CHILDREN.pop()
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=DEADLINE)


def child(url: str, policy: dict[str, Any], action: str, *more: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != "GUARDRAILS_REDIS_URL"}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, url, json.dumps(policy), action, *more],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    _CHILDREN.append(proc)
    return proc


def finish(proc: subprocess.Popen[str]) -> list[str]:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return out.split()


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


# --- configuration -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "block",
    [
        {"breaker": {"shared": True}},
        {"rate_limit": {"rate": "5/s", "shared": True}},
        {"bulkhead": {"max_concurrent": 2, "shared": True}},
    ],
)
def test_shared_without_a_url_is_a_configuration_error(
    block: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GUARDRAILS_REDIS_URL", raising=False)
    configure(None, p={})

    @guarded("p")
    def f() -> int:
        return 1

    with pytest.raises(PolicyConfigError) as caught:
        configure(None, p=block)
    kind = next(iter(block))
    text = str(caught.value)
    assert f"guardrails.policies.p.{kind}.shared" in text
    assert "redis_url" in text and "$GUARDRAILS_REDIS_URL" in text
    assert f() == 1  # the configuration in force stays
    assert "redis" not in guardrails.policy("p").model_dump_json()


def test_the_environment_gives_the_url(
    redis_url: str, raw: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GUARDRAILS_REDIS_URL", redis_url)
    configure(None, p={"rate_limit": {"rate": "1/h", "burst": 1, "shared": True}})

    @guarded("p")
    def f() -> int:
        return 1

    assert f() == 1
    with pytest.raises(RateLimitExceeded):
        f()
    assert raw.exists("guardrails:p:rate_limit")


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("namespace", "a b", "letters, digits"),
        ("namespace", "", "letters, digits"),
        ("namespace", "x:y", "letters, digits"),
        ("redis_timeout", "0s", "greater than 0"),
        ("redis_timeout", "5m", "less than or equal to 60"),
        ("shared", "yes", "valid boolean"),
    ],
)
def test_bad_shared_settings_name_the_key(key: str, value: Any, expected: str) -> None:
    for block, base in (
        ("breaker", {}),
        ("rate_limit", {"rate": "5/s"}),
        ("bulkhead", {"max_concurrent": 1}),
    ):
        with pytest.raises(PolicyConfigError) as caught:
            configure("redis://127.0.0.1:1/0", p={block: {**base, key: value}})
        assert f"guardrails.policies.p.{block}.{key}" in str(caught.value)
        assert expected in str(caught.value)


def test_configure_and_stats_never_connect(logs: pytest.LogCaptureFixture) -> None:
    @guarded("p")
    def f() -> int:
        return 1

    # Nothing listens on port 1: configure() compiles f's chain all the same.
    configure(
        "redis://127.0.0.1:1/0",
        p={
            "breaker": {"shared": True},
            "rate_limit": {"rate": "5/s", "shared": True},
            "bulkhead": {"max_concurrent": 1, "shared": True},
        },
    )
    assert guardrails.stats()["p"].redis_errors == 0
    assert not [r for r in logs.records if r.levelno >= logging.WARNING]
    assert f() == 1  # and the first call falls back
    assert guardrails.stats()["p"].redis_errors == 1


def test_import_guardrails_does_not_import_redis() -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, guardrails; guardrails.configure({'policies': {'p': "
            "{'breaker': {}, 'bulkhead': {'max_concurrent': 1}}}}); "
            "print('redis' in sys.modules, 'guardrails.redis.shared' in sys.modules)",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    assert out.stdout.split() == ["False", "False"]


# --- the breaker -------------------------------------------------------------------------

BREAKER = {"shared": True, "window": 10, "min_calls": 4, "open_for": "30s", "half_open_calls": 1}


def test_two_policies_on_one_namespace_see_one_breaker(redis_url: str, raw: redis.Redis) -> None:
    shared = {**BREAKER, "namespace": "feature-store"}
    configure(redis_url, a={"breaker": shared}, b={"breaker": shared})

    @guarded("a")
    def a() -> int:
        raise ConnectionError("down")

    @guarded("b")
    def b() -> int:
        return 2

    for _ in range(4):
        with pytest.raises(ConnectionError):
            a()
    with pytest.raises(CircuitOpenError) as caught:
        b()
    assert 0 < caught.value.retry_after <= 30
    assert guardrails.stats()["b"].breaker_state == "open"
    assert guardrails.stats()["b"].short_circuited == 1
    assert raw.hget("guardrails:feature-store:breaker", "state") == b"open"


def test_a_breaker_opened_by_another_process_short_circuits_this_one(
    redis_url: str, logs: pytest.LogCaptureFixture
) -> None:
    configure(redis_url, dep={"breaker": BREAKER})

    @guarded("dep")
    def call() -> int:
        return 1

    assert call() == 1
    out = finish(child(redis_url, {"breaker": BREAKER}, "fail", "6"))
    assert out == ["ConnectionError"] * 4 + ["CircuitOpenError"] * 2
    with pytest.raises(CircuitOpenError):
        call()
    assert guardrails.stats()["dep"].breaker_state == "open"
    # The transition was logged by the process that made it, not here.
    assert not [r for r in logs.records if "circuit breaker" in r.getMessage()]


def test_half_open_trials_are_limited_across_processes(redis_url: str, raw: redis.Redis) -> None:
    policy = {**BREAKER, "open_for": "300ms"}
    configure(redis_url, dep={"breaker": policy})
    entered, release = threading.Event(), threading.Event()
    fail = [True]

    @guarded("dep")
    def call() -> int:
        if fail[0]:
            raise ConnectionError("down")
        entered.set()
        assert release.wait(DEADLINE)
        return 1

    for _ in range(4):
        with pytest.raises(ConnectionError):
            call()
    wait_until(lambda: guardrails.stats()["dep"].breaker_state == "half_open", "half-open")
    fail[0] = False
    results: list[Any] = []
    trial = threading.Thread(target=lambda: results.append(call()))
    trial.start()
    assert entered.wait(DEADLINE)
    # This process holds the one trial permit: another process is refused.
    assert finish(child(redis_url, {"breaker": policy}, "once")) == ["CircuitOpenError"]
    release.set()
    trial.join(DEADLINE)
    assert results == [1]
    assert raw.hget("guardrails:dep:breaker", "state") == b"closed"
    assert finish(child(redis_url, {"breaker": policy}, "once")) == ["ok"]


def test_a_failed_trial_opens_it_again_and_a_killed_trial_holder_frees_its_permit(
    redis_url: str, raw: redis.Redis
) -> None:
    # A trial permit's lease: the attempt's timeout plus a second (here 3 s), else a minute.
    policy = {"breaker": {**BREAKER, "open_for": "300ms"}, "timeout": {"attempt": "2s"}}
    configure(redis_url, dep=policy)

    @guarded("dep")
    def call(fail: bool = True) -> int:
        if fail:
            raise ConnectionError("down")
        return 1

    for _ in range(4):
        with pytest.raises(ConnectionError):
            call()
    wait_until(lambda: guardrails.stats()["dep"].breaker_state == "half_open", "half-open")
    with pytest.raises(ConnectionError):
        call()  # the trial fails
    assert guardrails.stats()["dep"].breaker_state == "open"
    wait_until(lambda: guardrails.stats()["dep"].breaker_state == "half_open", "half-open again")
    holder = child(redis_url, policy, "hold")
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == "holding"  # it has the one trial permit
    holder.kill()
    holder.communicate(timeout=DEADLINE)
    with pytest.raises(CircuitOpenError):
        call(fail=False)
    # The permit's lease runs out: a trial is let through.
    wait_until(lambda: _succeeds(lambda: call(fail=False)), "the killed holder's permit back")
    assert raw.hget("guardrails:dep:breaker", "state") == b"closed"


def _succeeds(fn: Callable[[], Any]) -> bool:
    try:
        fn()
    except (CircuitOpenError, BulkheadFull):
        return False
    return True


def test_slow_calls_and_a_time_window(redis_url: str, raw: redis.Redis) -> None:
    gate = threading.Event()
    policy = {
        "shared": True,
        "window": "60s",
        "min_calls": 3,
        "slow_call": "20ms",
        "slow_rate": "50%",
        "failure_on": ["KeyError"],
    }
    configure(redis_url, dep={"breaker": policy})

    @guarded("dep")
    def call(slow: bool = False, error: type[Exception] | None = None) -> int:
        if slow:
            gate.wait(0.05)  # an Event nobody sets: the call takes 50 ms
        if error is not None:
            raise error("x")
        return 1

    call()
    with pytest.raises(ValueError):
        call(error=ValueError)  # not in failure_on: the dependency answered
    call(slow=True)
    assert raw.hget("guardrails:dep:breaker", "state") in (None, b"closed")
    call(slow=True)
    with pytest.raises(CircuitOpenError):
        call()
    assert raw.hget("guardrails:dep:breaker", "state") == b"open"


def test_guardrails_own_refusals_never_count(redis_url: str, raw: redis.Redis) -> None:
    configure(
        redis_url,
        dep={"breaker": BREAKER, "rate_limit": {"rate": "1/h", "burst": 1}},
    )

    @guarded("dep")
    def call() -> int:
        return 1

    call()
    for _ in range(10):
        with pytest.raises(RateLimitExceeded):
            call()
    assert guardrails.stats()["dep"].breaker_state == "closed"
    assert raw.hget("guardrails:dep:breaker", "bad") in (None, b"0")


def test_counts_in_redis_equal_the_calls_made_under_many_threads(
    redis_url: str, raw: redis.Redis
) -> None:
    policy = {"shared": True, "window": 100_000, "min_calls": 100_000}
    configure(redis_url, dep={"breaker": policy})

    @guarded("dep")
    def call(i: int) -> int:
        if i % 7 == 0:
            raise ConnectionError("down")
        return i

    threads, per_thread = 12, 60
    start = threading.Barrier(threads)

    def work() -> None:
        start.wait()
        for i in range(per_thread):
            with contextlib.suppress(ConnectionError):
                call(i)

    pool = [threading.Thread(target=work) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(DEADLINE)
    failures = threads * sum(1 for i in range(per_thread) if i % 7 == 0)
    from guardrails._state import STATE

    held = STATE.shared[("dep", "breaker")][1]
    seq = int(raw.hget("guardrails:dep:breaker", "seq") or 0)
    assert seq + held.pending == threads * per_thread
    assert raw.llen("guardrails:dep:breaker:fails") == failures


def test_async_calls_share_the_breaker(redis_url: str) -> None:
    configure(redis_url, dep={"breaker": BREAKER})

    @guarded("dep")
    async def call(fail: bool) -> int:
        if fail:
            raise ConnectionError("down")
        return 1

    @guarded("dep")
    def sync_call() -> int:
        return 1

    async def main() -> None:
        assert await call(False) == 1
        for _ in range(3):  # 3 of 4 calls failed: open
            with pytest.raises(ConnectionError):
                await call(True)
        with pytest.raises(CircuitOpenError):
            await call(False)

    asyncio.run(main())
    with pytest.raises(CircuitOpenError):
        sync_call()


# --- the rate limit ----------------------------------------------------------------------


def test_one_quota_across_processes(redis_url: str, raw: redis.Redis) -> None:
    rate, burst, seconds = 40.0, 5, 1.5
    policy = {"rate_limit": {"rate": f"{rate:g}/s", "burst": burst, "shared": True}}
    t0 = time.monotonic()
    procs = [child(redis_url, policy, "hammer", str(seconds)) for _ in range(3)]
    results = [json.loads(" ".join(finish(p))) for p in procs]
    elapsed = time.monotonic() - t0  # encloses every child's hammering
    admitted = sum(r[0] for r in results)
    assert sum(r[1] for r in results) > 0  # the quota was reached
    assert admitted <= rate * elapsed + burst
    # Each alone would have been allowed about rate × seconds: three share one quota.
    assert admitted < 3 * rate * seconds


def test_max_wait_reserves_a_token_and_waits(redis_url: str) -> None:
    configure(
        redis_url,
        dep={"rate_limit": {"rate": "20/s", "burst": 1, "max_wait": "1s", "shared": True}},
    )

    @guarded("dep")
    def call() -> int:
        return 1

    t0 = time.monotonic()
    assert [call() for _ in range(4)] == [1] * 4
    # Three tokens after the first: at least 3 intervals of 50 ms waited (Redis's clock).
    assert time.monotonic() - t0 >= 0.14
    configure(
        redis_url,
        slow={"rate_limit": {"rate": "1/h", "burst": 1, "max_wait": "10ms", "shared": True}},
    )

    @guarded("slow")
    def slow() -> int:
        return 1

    slow()
    with pytest.raises(RateLimitExceeded) as caught:
        slow()
    assert caught.value.retry_after > 3000


def test_async_rate_limit_cancelled_waiter_gives_its_token_back(
    redis_url: str, raw: redis.Redis
) -> None:
    configure(
        redis_url,
        dep={"rate_limit": {"rate": "1/s", "burst": 1, "max_wait": "5s", "shared": True}},
    )

    @guarded("dep")
    async def call() -> int:
        return 1

    async def main() -> None:
        assert await call() == 1
        before = raw.get("guardrails:dep:rate_limit")
        waiter = asyncio.ensure_future(call())
        for _ in range(1000):
            await asyncio.sleep(0.005)
            if raw.get("guardrails:dep:rate_limit") != before:
                break
        assert raw.get("guardrails:dep:rate_limit") != before  # it reserved a token
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert raw.get("guardrails:dep:rate_limit") == before  # and gave it back

    asyncio.run(main())


def test_rate_limit_is_exact_under_many_threads(redis_url: str) -> None:
    configure(redis_url, dep={"rate_limit": {"rate": "1/h", "burst": 50, "shared": True}})

    @guarded("dep")
    def call() -> int:
        return 1

    admitted: list[int] = []
    start = threading.Barrier(10)

    def work() -> None:
        start.wait()
        n = 0
        for _ in range(20):
            with contextlib.suppress(RateLimitExceeded):
                n += call()
        admitted.append(n)

    pool = [threading.Thread(target=work) for _ in range(10)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(DEADLINE)
    assert sum(admitted) == 50
    assert guardrails.stats()["dep"].rate_limited == 150


# --- the bulkhead ------------------------------------------------------------------------


def test_bulkhead_limit_across_processes_and_a_killed_holders_lease(
    redis_url: str, raw: redis.Redis
) -> None:
    policy = {"bulkhead": {"max_concurrent": 1, "shared": True, "lease": "500ms"}}
    configure(redis_url, dep=policy)

    @guarded("dep")
    def call() -> int:
        return 1

    holder = child(redis_url, policy, "hold")
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == "holding"
    assert raw.zcard("guardrails:dep:bulkhead") == 1
    with pytest.raises(BulkheadFull):
        call()
    holder.kill()
    holder.communicate(timeout=DEADLINE)
    wait_until(lambda: _succeeds(call), "the killed holder's lease expires")
    assert raw.zcard("guardrails:dep:bulkhead") == 0
    assert guardrails.stats()["dep"].bulkhead_rejected >= 1


def test_a_released_slot_goes_to_a_waiter_in_another_process(redis_url: str) -> None:
    policy = {"bulkhead": {"max_concurrent": 1, "shared": True, "max_wait": "20s"}}
    configure(redis_url, dep=policy)
    holder = child(redis_url, policy, "hold")
    assert holder.stdout is not None and holder.stdin is not None
    assert holder.stdout.readline().strip() == "holding"
    done: list[int] = []

    @guarded("dep")
    def call() -> int:
        return 1

    waiter = threading.Thread(target=lambda: done.append(call()))
    waiter.start()
    holder.stdin.write("\n")
    holder.stdin.flush()
    assert holder.stdout.readline().strip() == "released"
    waiter.join(DEADLINE)
    assert done == [1]
    holder.communicate(timeout=DEADLINE)


def test_bulkhead_holds_under_many_threads(redis_url: str, raw: redis.Redis) -> None:
    configure(redis_url, dep={"bulkhead": {"max_concurrent": 3, "max_wait": "20s", "shared": True}})
    lock = threading.Lock()
    running = [0, 0]  # now, most

    @guarded("dep")
    def call() -> int:
        with lock:
            running[0] += 1
            running[1] = max(running)
        time.sleep(0.002)  # holds the slot a moment (not a timing assertion)
        with lock:
            running[0] -= 1
        return 1

    results: list[int] = []

    def work() -> None:
        results.extend(call() for _ in range(5))

    pool = [threading.Thread(target=work) for _ in range(8)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(DEADLINE)
    assert results == [1] * 40
    assert running[1] <= 3
    assert raw.zcard("guardrails:dep:bulkhead") == 0


def test_async_cancellation_releases_the_lease(redis_url: str, raw: redis.Redis) -> None:
    configure(redis_url, dep={"bulkhead": {"max_concurrent": 1, "shared": True}})

    @guarded("dep")
    async def call(hold: asyncio.Event | None = None) -> int:
        if hold is not None:
            await hold.wait()
        return 1

    async def main() -> None:
        entered = asyncio.Event()
        never = asyncio.Event()

        async def holder() -> int:
            entered.set()
            return await call(never)

        task = asyncio.ensure_future(holder())
        await entered.wait()
        for _ in range(2000):
            if raw.zcard("guardrails:dep:bulkhead"):
                break
            await asyncio.sleep(0.005)
        assert raw.zcard("guardrails:dep:bulkhead") == 1
        with pytest.raises(BulkheadFull):
            await call()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert raw.zcard("guardrails:dep:bulkhead") == 0
        assert await call() == 1

    asyncio.run(main())


# --- Redis away --------------------------------------------------------------------------

ALL_SHARED = {
    "breaker": BREAKER,
    "rate_limit": {"rate": "1000/s", "burst": 1000, "shared": True},
    "bulkhead": {"max_concurrent": 4, "shared": True},
}


def test_redis_killed_then_restarted(
    start_redis: Callable[[], RedisProcess], logs: pytest.LogCaptureFixture
) -> None:
    server = start_redis()
    configure(server.url, dep=ALL_SHARED)

    @guarded("dep")
    def call() -> int:
        return 1

    assert call() == 1
    server.stop()
    assert [call() for _ in range(20)] == [1] * 20  # no call fails
    warnings = [r for r in logs.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "in this process only" in warnings[0].getMessage()
    assert guardrails.stats()["dep"].redis_errors >= 1
    server.start()  # empty: the scripts are loaded again
    client = redis.Redis.from_url(server.url)
    try:
        wait_until(
            lambda: call() == 1 and client.exists("guardrails:dep:rate_limit") == 1,
            "shared state again after the restart",
        )
    finally:
        client.close()
    assert any("answers again" in r.getMessage() for r in logs.records)


def test_redis_paused_calls_fall_back_after_the_timeout(
    start_redis: Callable[[], RedisProcess], logs: pytest.LogCaptureFixture
) -> None:
    server = start_redis()
    configure(server.url, dep=ALL_SHARED)

    @guarded("dep")
    def call(fail: bool = False) -> int:
        if fail:
            raise ConnectionError("down")
        return 1

    assert call() == 1
    server.pause()
    try:
        assert [call() for _ in range(3)] == [1] * 3
        # The per-process breaker takes over: 3 failures of 6 calls open it in this process.
        for _ in range(3):
            with pytest.raises(ConnectionError):
                call(fail=True)
        with pytest.raises(CircuitOpenError):
            call()
        assert guardrails.stats()["dep"].breaker_state == "open"
    finally:
        server.resume()
    assert (
        len([r for r in logs.records if r.levelno == logging.WARNING and "Redis" in r.getMessage()])
        == 1
    )
    assert guardrails.stats()["dep"].redis_errors >= 1


def test_forked_child_uses_the_shared_state(redis_url: str, raw: redis.Redis) -> None:
    if not hasattr(os, "fork"):
        pytest.fail("needs fork")
    configure(redis_url, dep={"breaker": BREAKER})

    @guarded("dep")
    def call(fail: bool) -> int:
        if fail:
            raise ConnectionError("down")
        return 1

    assert call(False) == 1  # the parent's connection and a pending success
    pid = os.fork()
    if pid == 0:  # the child: fails four times through its own connection
        code = 0
        try:
            for _ in range(4):
                with contextlib.suppress(ConnectionError):
                    call(True)
        except BaseException:
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert raw.hget("guardrails:dep:breaker", "state") == b"open"
    with pytest.raises(CircuitOpenError):
        call(False)


def test_a_key_overwritten_by_something_else_never_fails_a_call(
    redis_url: str, raw: redis.Redis, logs: pytest.LogCaptureFixture
) -> None:
    configure(redis_url, dep=ALL_SHARED)

    @guarded("dep")
    def call() -> int:
        return 1

    assert call() == 1
    for kind in ("breaker", "rate_limit", "bulkhead"):
        raw.delete(f"guardrails:dep:{kind}")
        raw.lpush(f"guardrails:dep:{kind}", "not ours")  # WRONGTYPE for every script
    assert [call() for _ in range(5)] == [1] * 5
    assert guardrails.stats()["dep"].redis_errors >= 1
    assert any("WRONGTYPE" in r.getMessage() for r in logs.records if r.levelno == logging.WARNING)
