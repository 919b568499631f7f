"""The rate_limit layer: a token bucket per policy on guardrails' clock, sync and async."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import guardrails
from guardrails import PolicyConfigError, RateLimitExceeded, configure, guarded
from guardrails._state import STATE
from guardrails.layers.rate_limit import Bucket, RateLimitConfig
from guardrails.testing import FakeClock, fake_clock
from tests.twins import guard_as
from tests.twins import reap as _reap


@pytest.fixture(params=["sync", "async"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def limit(name: str = "p", **rate_limit: Any) -> None:
    configure({"policies": {name: {"log": None, "rate_limit": rate_limit}}})


def ok() -> str:
    return "ok"


def drain(call: Callable[[], Any]) -> int:
    """Call until refused; how many calls were admitted (never more than 1000: a limit that
    never refuses fails the test instead of hanging it)."""
    for admitted in range(1000):
        try:
            call()
        except RateLimitExceeded:
            return admitted
    raise AssertionError("1000 calls in a row were admitted")


def bucket(name: str = "p") -> Bucket:
    found: Bucket = STATE.shared[(name, "rate_limit")][1]
    return found


def test_fifty_per_second_over_two_seconds_admits_burst_plus_a_hundred(
    clock: FakeClock, kind: str
) -> None:
    limit(rate="50/s", burst=10)
    call = guard_as(kind, ok, "p")
    admitted = drain(call)  # the bucket starts full
    assert admitted == 10
    # 2 s in steps of 1/128 s (exact binary fractions): 50/s refills 2 * 50 tokens, the last
    # one due at exactly 2 s; nothing is left over between two steps.
    for _ in range(256):
        clock.advance(1 / 128)
        admitted += drain(call)
    assert admitted == 10 + 2 * 50  # exactly burst + 2 * rate
    stats = guardrails.stats()["p"]
    assert stats.rate_limited == 257  # each drain ended with one refusal
    assert stats.successes == 110
    assert stats.failures == 257


def test_retry_after_is_the_time_until_the_next_token(clock: FakeClock, kind: str) -> None:
    limit(rate="10/s", burst=2)
    call = guard_as(kind, ok, "p")
    assert call() == call() == "ok"
    with pytest.raises(RateLimitExceeded) as refused:
        call()
    assert refused.value.retry_after == pytest.approx(0.1)
    assert refused.value.policy == "p"
    assert "next token in 0.1 s" in str(refused.value)
    clock.advance(0.04)
    with pytest.raises(RateLimitExceeded) as refused:
        call()
    assert refused.value.retry_after == pytest.approx(0.06)
    clock.advance(0.06)
    assert call() == "ok"
    with pytest.raises(RateLimitExceeded):
        call()
    assert guardrails.stats()["p"].rate_limited == 3


def test_a_full_bucket_holds_burst_tokens_however_long_it_was_idle(clock: FakeClock) -> None:
    limit(rate="10/s", burst=3)
    call = guarded("p")(ok)
    clock.advance(3600)
    assert drain(call) == 3


def test_max_wait_waits_on_the_clock_for_the_next_token(clock: FakeClock, kind: str) -> None:
    limit(rate="10/s", burst=1, max_wait="150ms")
    call = guard_as(kind, ok, "p")
    assert call() == "ok"
    assert clock.sleeps == []
    assert call() == "ok"  # waited for the token due 0.1 s later
    assert call() == "ok"
    assert clock.sleeps == [pytest.approx(0.1), pytest.approx(0.1)]
    assert clock.monotonic() == pytest.approx(1000.2)
    assert guardrails.stats()["p"].rate_limited == 0


class StillClock(FakeClock):
    """A fake clock whose sleeps record the wait but do not move time, so several calls wait
    at the same moment; ``hold`` makes async sleeps block until cancelled."""

    def __init__(self) -> None:
        super().__init__()
        self.hold = False
        self.interrupt: BaseException | None = None

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.sleeps.append(seconds)
        if self.interrupt is not None:
            raise self.interrupt

    async def async_sleep(self, seconds: float) -> None:
        self.sleep(seconds)
        if self.hold:
            await asyncio.Event().wait()
        await asyncio.sleep(0)


@pytest.fixture
def still() -> Iterator[StillClock]:
    with fake_clock(StillClock()) as clock:
        yield clock  # type: ignore[misc]


def test_waiters_reserve_their_tokens_in_order_and_never_overshoot(still: StillClock) -> None:
    limit(rate="10/s", burst=1, max_wait="250ms")
    call = guarded("p")(ok)
    assert [call(), call(), call()] == ["ok"] * 3
    assert still.sleeps == [pytest.approx(0.1), pytest.approx(0.2)]  # each its own token
    with pytest.raises(RateLimitExceeded) as refused:
        call()  # the next free token is 0.3 s away
    assert refused.value.retry_after == pytest.approx(0.3)


def test_async_waiters_reserve_their_tokens_in_order(still: StillClock) -> None:
    limit(rate="10/s", burst=1, max_wait="250ms")

    async def aok() -> str:
        return "ok"

    call = guarded("p")(aok)

    async def main() -> list[Any]:
        return await asyncio.gather(*(call() for _ in range(4)), return_exceptions=True)

    results = asyncio.run(main())
    assert results[:3] == ["ok"] * 3
    assert isinstance(results[3], RateLimitExceeded)
    assert results[3].retry_after == pytest.approx(0.3)
    assert still.sleeps == [pytest.approx(0.1), pytest.approx(0.2)]


def test_a_waiter_cancelled_before_its_token_gives_it_back(still: StillClock) -> None:
    limit(rate="10/s", burst=1, max_wait="1s")

    async def aok() -> str:
        return "ok"

    acall, call = guarded("p")(aok), guarded("p")(ok)
    assert call() == "ok"
    still.hold = True

    async def main() -> None:
        waiter = asyncio.create_task(acall())
        for _ in range(100):  # the waiter reserves its token and sleeps at its first step
            if still.sleeps:
                break
            await asyncio.sleep(0)
        assert still.sleeps
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter

    asyncio.run(main())
    assert call() == "ok"  # the cancelled waiter's token, not the one after it
    assert still.sleeps == [pytest.approx(0.1), pytest.approx(0.1)]
    assert guardrails.stats()["p"].rate_limited == 0


def test_a_waiter_cancelled_after_its_token_was_due_does_not_give_it_back(
    still: StillClock,
) -> None:
    limit(rate="10/s", burst=1, max_wait="1s")

    async def aok() -> str:
        return "ok"

    acall, call = guarded("p")(aok), guarded("p")(ok)
    assert call() == "ok"
    still.hold = True

    async def main() -> None:
        waiter = asyncio.create_task(acall())
        for _ in range(100):  # the waiter reserves its token and sleeps at its first step
            if still.sleeps:
                break
            await asyncio.sleep(0)
        assert still.sleeps
        # A burst-of-one bucket: another call reserves the token after the waiter's, then
        # the waiter's token comes due; giving it back now would let two calls through at
        # once, so it is spent.
        still.hold = False
        assert await acall() == "ok"
        still.advance(0.15)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter

    asyncio.run(main())
    assert call() == "ok"
    assert still.sleeps == [pytest.approx(x) for x in (0.1, 0.2, 0.15)]


class Interrupted(BaseException):
    pass


def test_a_sync_wait_interrupted_gives_the_token_back(still: StillClock) -> None:
    limit(rate="10/s", burst=1, max_wait="1s")
    call = guarded("p")(ok)
    assert call() == "ok"
    still.interrupt = Interrupted()
    with pytest.raises(Interrupted):
        call()
    still.interrupt = None
    assert call() == "ok"
    assert still.sleeps == [pytest.approx(0.1), pytest.approx(0.1)]


def test_functions_of_one_policy_share_the_bucket(clock: FakeClock) -> None:
    limit(rate="1/s", burst=3)
    f, g = guarded("p")(ok), guarded("p")(lambda: "g")
    assert [f(), g(), f()] == ["ok", "g", "ok"]
    with pytest.raises(RateLimitExceeded):
        g()
    other = guarded("q")(ok)
    configure(
        {
            "policies": {
                "p": {"log": None, "rate_limit": {"rate": "1/s", "burst": 3}},
                "q": {"log": None, "rate_limit": {"rate": "1/s", "burst": 3}},
            }
        }
    )
    with pytest.raises(RateLimitExceeded):
        f()  # p's bucket was kept: the block did not change
    assert other() == "ok"  # another policy, another bucket


def test_sync_and_async_calls_share_the_bucket_across_threads(clock: FakeClock) -> None:
    limit(rate="1/s", burst=20)

    async def aok() -> str:
        return "ok"

    sync_call, async_call = guarded("p")(ok), guarded("p")(aok)
    start = threading.Barrier(5)
    admitted: list[int] = []

    def thread() -> None:
        start.wait(10)
        admitted.append(drain(sync_call))

    async def tasks() -> int:
        start.wait(10)

        async def one() -> bool:
            try:
                await async_call()
            except RateLimitExceeded:
                return False
            return True

        return sum(await asyncio.gather(*(one() for _ in range(30))))

    threads = [threading.Thread(target=thread) for _ in range(4)]
    for t in threads:
        t.start()
    from_tasks = asyncio.run(tasks())
    for t in threads:
        t.join(10)
    assert sum(admitted) + from_tasks == 20  # never more than the bucket held
    assert guardrails.stats()["p"].successes == 20


def test_the_bucket_is_kept_across_a_configure_of_the_same_rate_and_burst_only(
    clock: FakeClock,
) -> None:
    limit(rate="1/s", burst=2)
    call = guarded("p")(ok)
    assert drain(call) == 2
    kept = bucket()
    limit(rate="1/s", burst=2)
    assert bucket() is kept
    assert drain(call) == 0
    # A changed max_wait keeps the bucket and its tokens taken: a new one would start full
    # and let a second burst through at once, in the middle of an incident.
    limit(rate="1/s", burst=2, max_wait=0.5)
    assert bucket() is kept
    assert drain(call) == 0
    limit(rate="1/s", burst=3, max_wait=0.5)
    assert bucket() is not kept
    assert drain(call) == 3  # a new bucket (another burst) starts full


def test_default_burst_is_one_seconds_worth_and_at_least_one() -> None:
    assert RateLimitConfig.model_validate({"rate": "100/s"}).capacity == 100
    assert RateLimitConfig.model_validate({"rate": "5/100ms"}).capacity == 50
    assert RateLimitConfig.model_validate({"rate": "2.5/s"}).capacity == 2
    assert RateLimitConfig.model_validate({"rate": "10/min"}).capacity == 1
    assert RateLimitConfig.model_validate({"rate": "100/s", "burst": 20}).capacity == 20


def test_a_refusal_is_logged_as_rejected(clock: FakeClock, logs: pytest.LogCaptureFixture) -> None:
    configure({"policies": {"p": {"log": {"level": "INFO"}, "rate_limit": {"rate": "1/h"}}}})
    call = guarded("p")(ok)
    call()
    with pytest.raises(RateLimitExceeded):
        call()
    outcomes = [getattr(r, "outcome", None) for r in logs.records]
    assert outcomes[-1] == "rejected"


def test_a_child_forked_while_a_thread_holds_the_bucket_lock_can_call(clock: FakeClock) -> None:
    limit(rate="1/s", burst=5)
    call = guarded("p")(ok)
    call()
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with bucket().lock:
            held.set()
            release.wait(30)

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    assert held.wait(10)
    try:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports through its exit status
            code = 1
            try:
                code = 0 if drain(call) == 4 else 2
            finally:
                os._exit(code)
        code = _reap(pid)
    finally:
        release.set()
        holder.join(10)
    assert code == 0


@pytest.mark.parametrize(
    ("block", "path", "message"),
    [
        ({"rate": "0/s"}, "rate", "expected a positive, finite rate"),
        ({"rate": "abc"}, "rate", "a rate like '100/s'"),
        ({"rate": "1/s", "burst": 0}, "burst", "greater than or equal to 1"),
        ({"rate": "1/s", "burst": 2.5}, "burst", "valid integer"),
        ({"rate": "1/s", "max_wait": -1}, "max_wait", "expected a finite duration"),
        ({"burst": 3}, "rate", "Field required"),
        ({"rate": "1/s", "wait": 1}, "wait", "did you mean 'max_wait'"),
    ],
)
def test_config_errors_name_the_key(block: dict[str, Any], path: str, message: str) -> None:
    with pytest.raises(PolicyConfigError) as error:
        configure({"policies": {"p": {"rate_limit": block}}})
    assert error.value.problems[0][0] == f"guardrails.policies.p.rate_limit.{path}"
    assert message in error.value.problems[0][1]
