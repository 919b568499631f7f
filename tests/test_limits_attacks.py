"""Attacks on the rate_limit and bulkhead layers: what an attacker's YAML or a 3 AM incident
would find (a reconfigure mid-incident, Ctrl-C, forks, closed loops, cancellation storms)."""

from __future__ import annotations

import asyncio
import gc
import itertools
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import guardrails
from guardrails import BulkheadFull, PolicyConfigError, RateLimitExceeded, configure, guarded
from guardrails._state import STATE
from guardrails.testing import FakeClock, fake_clock
from tests.twins import reap as _reap

pytestmark = pytest.mark.filterwarnings(
    # Python 3.12+ warns on any fork from a multi-threaded process: that is the point here.
    "ignore:This process .* is multi-threaded:DeprecationWarning"
)

LONG = 30.0


def policy(name: str = "p", **blocks: Any) -> None:
    configure({"policies": {name: {"log": None, **blocks}}})


def in_use(name: str = "p") -> int:
    found = STATE.shared.get((name, "bulkhead"))
    return 0 if found is None else int(found[1].slots.in_use)


def waiting(name: str = "p") -> int:
    found = STATE.shared.get((name, "bulkhead"))
    return 0 if found is None else len(found[1].slots.waiters)


def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll an observable condition (bounded): never a sleep hoping for timing."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the condition"
        time.sleep(0.001)


async def until_async(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the condition"
        await asyncio.sleep(0.001)


class Holders:
    """``n`` threads each inside a call of ``call`` until ``release``."""

    def __init__(self, n: int, name: str = "p") -> None:
        self.release = threading.Event()
        entered = threading.Semaphore(0)

        def hold() -> str:
            entered.release()
            self.release.wait(LONG)
            return "held"

        self.call = guarded(name)(hold)
        self.threads = [threading.Thread(target=self.call) for _ in range(n)]
        for t in self.threads:
            t.start()
        for _ in range(n):
            assert entered.acquire(timeout=10)

    def done(self) -> None:
        self.release.set()
        for t in self.threads:
            t.join(10)
            assert not t.is_alive()


# --- rate_limit -----------------------------------------------------------------------------


class ManualClock(FakeClock):
    """A fake clock that moves only when the test advances it; an async sleep really waits
    (yielding to the loop) until the clock reaches its end, so waiters overlap in time."""

    async def async_sleep(self, seconds: float) -> None:
        with self._lock:
            self.sleeps.append(seconds)
            end = self._now + seconds
        for _ in range(100_000):  # bounded: a clock never advanced fails, not hangs
            if self._now >= end - 1e-9:
                return
            await asyncio.sleep(0)
        raise AssertionError("the clock never reached the end of the sleep")


def test_a_waiter_giving_up_before_later_ones_never_lets_two_through_at_once() -> None:
    # Burst 1 at 1/s: waiters A, B, C reserve the tokens due at 1, 2 and 3 s. A gives up at
    # 0.5 s. Giving A's token back used to pull the bucket back by one token, so newcomer D
    # got the token due at 3 s as well: C and D ran at the same instant, twice the rate.
    with fake_clock(ManualClock(0.0)) as clock:
        policy(rate_limit={"rate": "1/s", "burst": 1, "max_wait": "10s"})
        ran: list[float] = []

        async def work() -> None:
            ran.append(clock.monotonic())

        call = guarded("p")(work)

        async def main() -> None:
            await call()  # X, at 0
            a, b, c = (asyncio.create_task(call()) for _ in range(3))
            await until_async(lambda: len(clock.sleeps) == 3)
            clock.advance(0.5)
            a.cancel()
            with pytest.raises(asyncio.CancelledError):
                await a
            d = asyncio.create_task(call())
            await until_async(lambda: len(clock.sleeps) == 4)
            for _ in range(24):  # to 6 s in steps of 0.25 s
                clock.advance(0.25)
                for _ in range(5):
                    await asyncio.sleep(0)
            await asyncio.wait_for(asyncio.gather(b, c, d), 10)

        asyncio.run(main())
    assert len(ran) == 4
    gaps = [later - earlier for earlier, later in itertools.pairwise(ran)]
    assert all(gap >= 1.0 - 1e-6 for gap in gaps), ran


def test_the_last_waiter_giving_up_gives_its_token_back() -> None:
    # The other side of the rule above: a token reserved last is given back whole.
    with fake_clock(ManualClock(0.0)) as clock:
        policy(rate_limit={"rate": "1/s", "burst": 1, "max_wait": "10s"})
        call = guarded("p")(lambda: "ok")

        async def aok() -> str:
            return "ok"

        acall = guarded("p")(aok)
        assert call() == "ok"

        async def main() -> None:
            waiter = asyncio.create_task(acall())
            await until_async(lambda: len(clock.sleeps) == 1)
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter

        asyncio.run(main())
        clock.advance(1.0)
        assert call() == "ok"  # the token due at 1 s was given back: taken without a wait
        assert clock.sleeps == [1.0]  # only the cancelled waiter's


@pytest.mark.parametrize(
    ("block", "path", "message"),
    [
        # 1/rate overflowed to inf and the bucket's arithmetic to NaN: every call admitted.
        ({"rate": 1e-320}, "rate", "at least one per 100 years"),
        ({"rate": 1e-12}, "rate", "at least one per 100 years"),
        # int * float raised OverflowError out of configure().
        ({"rate": "1/s", "burst": 10**400}, "burst", "less than or equal to 1000000000"),
        ({"rate": "1/s", "burst": True}, "burst", "valid integer"),
        ({"rate": "1/s", "burst": 1e10}, "burst", "valid integer"),
        ({"rate": "0/s"}, "rate", "positive, finite rate"),
        ({"rate": "-1/s"}, "rate", "a rate like"),
        ({"rate": "1/0s"}, "rate", "positive, finite rate"),
        ({"rate": 1e400}, "rate", "positive, finite rate"),
        ({"rate": float("nan")}, "rate", "positive, finite rate"),
        ({"rate": "nan/s"}, "rate", "a rate like"),
        ({"rate": "100/fortnight"}, "rate", "a rate like"),
        ({"rate": True}, "rate", "a rate like"),
        ({"rate": "1/s", "max_wait": "-1s"}, "max_wait", "seconds"),
        ({"rate": "1/s", "max_wait": "1e400s"}, "max_wait", "seconds"),
        ({"rate": "1/s", "refill": 2}, "refill", "unknown key 'refill'"),
    ],
)
def test_hostile_rate_limit_blocks_are_refused_at_their_key(
    block: dict[str, Any], path: str, message: str
) -> None:
    with pytest.raises(PolicyConfigError) as error:
        configure({"policies": {"p": {"rate_limit": block}}})
    assert error.value.problems[0][0] == f"guardrails.policies.p.rate_limit.{path}"
    assert message in error.value.problems[0][1]


def test_extreme_rates_still_count(clock: FakeClock) -> None:
    policy(rate_limit={"rate": 1e-9})  # one per 31.7 years: the smallest kind of sane
    call = guarded("p")(lambda: "ok")
    assert call() == "ok"
    with pytest.raises(RateLimitExceeded) as refused:
        call()
    assert refused.value.retry_after == pytest.approx(1e9)

    policy(rate_limit={"rate": "1/h", "max_wait": "2h"})
    assert [call(), call(), call()] == ["ok"] * 3  # at once, then one an hour
    assert clock.sleeps == [pytest.approx(3600.0)] * 2

    policy(rate_limit={"rate": 1e6, "burst": 5})
    admitted = 0
    for _ in range(10):
        try:
            call()
            admitted += 1
        except RateLimitExceeded as exc:
            assert 0 < exc.retry_after <= 1.001e-6  # float rounding at t = 8200 s
    assert admitted == 5


def test_a_changed_max_wait_keeps_the_tokens_taken(clock: FakeClock) -> None:
    # An operator raises max_wait mid-incident: the bucket must not refill (a second burst
    # at the dependency that is already struggling).
    policy(rate_limit={"rate": "1/min", "burst": 3})
    call = guarded("p")(lambda: "ok")
    assert [call(), call(), call()] == ["ok"] * 3
    policy(rate_limit={"rate": "1/min", "burst": 3, "max_wait": "1s"})
    with pytest.raises(RateLimitExceeded):
        call()
    assert guardrails.stats()["p"].rate_limited == 1


def test_retry_above_honours_a_rate_limits_retry_after(clock: FakeClock) -> None:
    policy(
        rate_limit={"rate": "2/s", "burst": 1},
        retry={
            "max_attempts": 3,
            "retry_on": ["Exception"],
            "wait": {"retry_after": True, "initial": "1ms", "max": "10s"},
        },
    )
    call = guarded("p")(lambda: "ok")
    assert call() == call() == "ok"  # the second waited for its token: retry_after, 0.5 s
    assert clock.sleeps == [pytest.approx(0.5)]
    stats = guardrails.stats()["p"]
    assert (stats.rate_limited, stats.successes) == (1, 2)


def test_a_rate_limit_under_a_breaker_never_opens_it(clock: FakeClock) -> None:
    policy(
        breaker={"failure_rate": 0.5, "window": 4, "min_calls": 2, "open_for": "1m"},
        rate_limit={"rate": "1/min", "burst": 1},
    )
    call = guarded("p")(lambda: "ok")
    assert call() == "ok"
    for _ in range(10):
        with pytest.raises(RateLimitExceeded):
            call()
    assert guardrails.stats()["p"].breaker_state == "closed"


# --- bulkhead -------------------------------------------------------------------------------


def test_a_changed_max_wait_never_lets_more_than_max_concurrent_run() -> None:
    # The bulkhead was replaced by a new, empty one on any change of its block: raising
    # max_wait mid-incident let twice max_concurrent attempts run at the dependency.
    policy(bulkhead={"max_concurrent": 2})
    holders = Holders(2)
    try:
        call = guarded("p")(lambda: "ran")
        policy(bulkhead={"max_concurrent": 2, "max_wait": "10ms"})
        with pytest.raises(BulkheadFull):
            call()
        policy(bulkhead={"max_concurrent": 2})  # and back
        with pytest.raises(BulkheadFull):
            call()
    finally:
        holders.done()
    assert in_use() == 0
    assert call() == "ran"
    assert guardrails.stats()["p"].bulkhead_rejected == 2


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (2**63, "less than or equal to 1000000"),  # raised OverflowError out of configure()
        (1_000_001, "less than or equal to 1000000"),  # 10**9 allocated 8 GB at configure()
        (True, "valid integer"),
        (1.5, "valid integer"),
        (-1, "greater than or equal to 1"),
    ],
)
def test_hostile_max_concurrent_is_refused_at_its_key(value: Any, message: str) -> None:
    with pytest.raises(PolicyConfigError) as error:
        configure({"policies": {"p": {"bulkhead": {"max_concurrent": value}}}})
    assert error.value.problems[0][0] == "guardrails.policies.p.bulkhead.max_concurrent"
    assert message in error.value.problems[0][1]


def test_a_million_slots_is_fine() -> None:
    policy(bulkhead={"max_concurrent": 1_000_000})
    assert guarded("p")(lambda: "ok")() == "ok"
    assert in_use() == 0


def test_a_child_forked_in_an_attempt_while_a_thread_waits_and_one_holds_the_lock() -> None:
    # The forking thread's attempt releases, in the child, into the pool it took its slot
    # from. That pool had a waiter (a thread of the parent), so the release took its lock,
    # which another parent thread held at the fork: the child hung forever.
    policy(bulkhead={"max_concurrent": 1, "max_wait": "30s"})
    call = guarded("p")(lambda: "ok")
    locked, unlock = threading.Event(), threading.Event()

    def hold_the_lock() -> None:
        slots = STATE.shared[("p", "bulkhead")][1].slots
        with slots.lock:
            locked.set()
            unlock.wait(LONG)

    def attempt() -> int:
        waiter = threading.Thread(target=call)
        waiter.start()
        until(lambda: waiting() == 1)
        holder = threading.Thread(target=hold_the_lock)
        holder.start()
        assert locked.wait(10)
        pid = os.fork()
        if pid == 0:
            return 0  # the child: its attempt ends here, releasing into the old pool
        unlock.set()
        holder.join(10)
        waiters.append(waiter)
        return pid

    waiters: list[threading.Thread] = []
    pid = guarded("p")(attempt)()
    if pid == 0:  # pragma: no cover - the child reports through its exit status
        code = 1
        try:
            code = 0 if call() == "ok" and in_use() == 0 else 2
        finally:
            os._exit(code)
    waiters[0].join(10)  # the parent's waiter got the slot the attempt freed
    assert not waiters[0].is_alive()
    assert _reap(pid) == 0
    assert in_use() == 0
    assert waiting() == 0


def test_ctrl_c_into_a_thread_waiting_for_a_slot_leaves_no_slot_nor_waiter() -> None:
    policy(bulkhead={"max_concurrent": 1, "max_wait": "30s"})
    holders = Holders(1)
    handled = threading.Event()

    def handler(signum: int, frame: Any) -> None:
        if not handled.is_set():
            handled.set()
            raise KeyboardInterrupt

    def interrupt() -> None:
        until(lambda: waiting() == 1, LONG)
        # A signal that lands just before the caller blocks is only seen when the wait
        # ends: send it again until the caller has seen one.
        while not handled.wait(0.01):
            signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGUSR1)

    previous = signal.signal(signal.SIGUSR1, handler)
    interrupter = threading.Thread(target=interrupt)
    call = guarded("p")(lambda: "ran")
    try:
        interrupter.start()
        with pytest.raises(KeyboardInterrupt):
            call()
    finally:
        handled.set()
        interrupter.join(LONG)
        signal.signal(signal.SIGUSR1, previous)
        holders.done()
    assert waiting() == 0
    assert in_use() == 0
    assert call() == "ran"
    assert guardrails.stats()["p"].bulkhead_rejected == 0


def test_a_slot_offered_to_a_task_of_a_closed_loop_goes_on_and_nothing_raises_later() -> None:
    # A loop closed with a task still waiting (run_until_complete, then close): the slot
    # freed by a thread is offered to it, call_soon_threadsafe raises RuntimeError, the slot
    # goes back. When the task was collected later, its wait tried to leave the queue it had
    # already left: ValueError, reported as unraisable.
    policy(bulkhead={"max_concurrent": 1, "max_wait": "30s"})
    holders = Holders(1)

    async def awork() -> str:
        return "task"

    loop = asyncio.new_event_loop()
    task = loop.create_task(guarded("p")(awork)())
    loop.run_until_complete(until_async(lambda: waiting() == 1))
    loop.close()
    unraisable: list[Any] = []
    previous = sys.unraisablehook
    sys.unraisablehook = unraisable.append
    try:
        holders.done()  # the releasing thread does not crash
        assert waiting() == 0
        assert in_use() == 0
        del task
        gc.collect()
    finally:
        sys.unraisablehook = previous
    assert [u.exc_value for u in unraisable] == []
    assert in_use() == 0
    assert guarded("p")(lambda: "ok")() == "ok"


def test_a_task_waiter_on_a_loop_blocked_by_a_sync_waiter_is_bounded_by_max_wait() -> None:
    # A sync call from a coroutine blocks its loop; a slot handed to a task of that loop
    # waits for it. No deadlock: the sync call is refused after max_wait, then the task runs.
    policy(bulkhead={"max_concurrent": 1, "max_wait": "200ms"})
    holders = Holders(1)

    async def awork() -> str:
        return "task"

    sync_call, async_call = guarded("p")(lambda: "sync"), guarded("p")(awork)

    def release_when_both_wait() -> None:
        until(lambda: waiting() == 2, LONG)
        holders.done()

    async def main() -> str:
        task = asyncio.create_task(async_call())
        await until_async(lambda: waiting() == 1)
        releaser = threading.Thread(target=release_when_both_wait)
        releaser.start()
        try:
            with pytest.raises(BulkheadFull):
                sync_call()  # blocks the loop: the task it queued behind cannot take its slot
        finally:
            releaser.join(LONG)
        return await asyncio.wait_for(task, 10)

    assert asyncio.run(main()) == "task"
    assert in_use() == 0
    assert waiting() == 0


class InFlight:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = self.peak = self.runs = 0

    def enter(self) -> None:
        with self.lock:
            self.now += 1
            self.runs += 1
            self.peak = max(self.peak, self.now)

    def leave(self) -> None:
        with self.lock:
            self.now -= 1


class Boom(Exception):
    pass


def test_hammer_threads_and_three_loops_with_cancellations_failures_and_reconfigures() -> None:
    cap = 3
    policy(bulkhead={"max_concurrent": cap, "max_wait": "2ms"})
    inflight = InFlight()
    refusals = [0]
    count = threading.Lock()

    def refused() -> None:
        with count:
            refusals[0] += 1

    def work(fail: bool) -> None:
        inflight.enter()
        try:
            sum(range(300))
            if fail:
                raise Boom
        finally:
            inflight.leave()

    async def awork(fail: bool) -> None:
        inflight.enter()
        try:
            await asyncio.sleep(0.0005)
            if fail:
                raise Boom
        finally:
            inflight.leave()

    sync_call, async_call = guarded("p")(work), guarded("p")(awork)

    def thread(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(150):
            try:
                sync_call(rng.random() < 0.2)
            except BulkheadFull:
                refused()
            except Boom:
                pass

    async def one(rng: random.Random) -> None:
        try:
            if rng.random() < 0.3:
                await asyncio.wait_for(async_call(rng.random() < 0.2), rng.choice([0, 1e-4]))
            else:
                await async_call(rng.random() < 0.2)
        except BulkheadFull:
            refused()
        except (Boom, TimeoutError):
            pass

    async def tasks(seed: int) -> None:
        rng = random.Random(seed)
        for i in range(12):
            batch = [asyncio.create_task(one(rng)) for _ in range(15)]
            await asyncio.sleep(rng.choice([0, 0.0005, 0.001]))
            for task in batch[i % 4 :: 4]:
                task.cancel()
            await asyncio.gather(*batch, return_exceptions=True)
            if i % 3 == 0:  # a TaskGroup whose failure cancels the others, waiting or not

                async def fails() -> None:
                    await asyncio.sleep(0.0005)
                    raise Boom

                with pytest.raises(ExceptionGroup):
                    async with asyncio.TaskGroup() as group:
                        for _ in range(6):
                            group.create_task(one(rng))
                        group.create_task(fails())

    def reconfigure() -> None:
        for i in range(30):
            policy(bulkhead={"max_concurrent": cap, "max_wait": ["2ms", "0", "5ms"][i % 3]})
            time.sleep(0.002)

    threads = [threading.Thread(target=thread, args=(n,)) for n in range(3)]
    threads += [threading.Thread(target=asyncio.run, args=(tasks(10 + n),)) for n in range(2)]
    threads.append(threading.Thread(target=reconfigure))
    for t in threads:
        t.start()
    asyncio.run(tasks(99))  # and the main thread's loop
    for t in threads:
        t.join(120)
        assert not t.is_alive()
    assert inflight.now == 0
    assert inflight.peak <= cap
    assert in_use() == 0
    assert waiting() == 0
    stats = guardrails.stats()["p"]
    assert stats.bulkhead_rejected == refusals[0]


def test_a_fallback_above_answers_for_a_full_bulkhead() -> None:
    policy(
        bulkhead={"max_concurrent": 1},
        fallback={"value": "busy", "catch": ["guardrails:BulkheadFull"]},
    )
    holders = Holders(1)
    try:
        assert guarded("p")(lambda: "ran")() == "busy"
    finally:
        holders.done()
    stats = guardrails.stats()["p"]
    assert (stats.bulkhead_rejected, stats.fallbacks) == (1, 1)


@pytest.fixture(autouse=True)
def _no_threads_left_behind() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    left = [t for t in threading.enumerate() if t not in before and t.is_alive()]
    for t in left:
        t.join(10)
    assert not any(t.is_alive() for t in left)
