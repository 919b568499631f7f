"""The bulkhead layer: attempts of a policy running at once, sync and async calls together."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import guardrails
from guardrails import BulkheadFull, PolicyConfigError, configure, guarded
from guardrails._state import STATE
from guardrails.layers.bulkhead import Slots
from tests.twins import reap as _reap

pytestmark = pytest.mark.filterwarnings(
    # Python 3.12+ warns on any fork from a multi-threaded process: that is the point here.
    "ignore:This process .* is multi-threaded:DeprecationWarning"
)


def bulkhead(name: str = "p", **block: Any) -> None:
    configure({"policies": {name: {"log": None, "bulkhead": block}}})


def slots(name: str = "p") -> Slots:
    found: Slots = STATE.shared[(name, "bulkhead")][1].slots
    return found


def in_use(name: str = "p") -> int:
    """Slots in use; 0 before the policy's first call made its bulkhead."""
    found = STATE.shared.get((name, "bulkhead"))
    return 0 if found is None else int(found[1].slots.in_use)


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


class InFlight:
    """Counts the attempts inside the function, and the most at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = 0
        self.peak = 0
        self.runs = 0

    def enter(self) -> None:
        with self.lock:
            self.now += 1
            self.runs += 1
            self.peak = max(self.peak, self.now)

    def leave(self) -> None:
        with self.lock:
            self.now -= 1


@pytest.fixture
def inflight() -> InFlight:
    return InFlight()


def run_threads(target: Callable[[], Any], n: int) -> None:
    threads = [threading.Thread(target=target) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
        assert not t.is_alive()


def test_sixteen_threads_never_run_more_than_four_at_once(inflight: InFlight) -> None:
    bulkhead(max_concurrent=4, max_wait="30s")
    # Four inside meet at the barrier and leave together; a fifth inside would be counted
    # (and wait for the next group), so the peak shows any overshoot.
    meet = threading.Barrier(4)

    def work() -> None:
        inflight.enter()
        try:
            meet.wait(10)
        finally:
            inflight.leave()

    call = guarded("p")(work)
    run_threads(call, 16)
    assert inflight.peak == 4
    assert inflight.runs == 16
    assert slots().in_use == 0
    assert guardrails.stats()["p"].bulkhead_rejected == 0


def test_two_hundred_tasks_never_run_more_than_four_at_once(inflight: InFlight) -> None:
    bulkhead(max_concurrent=4, max_wait="30s")

    async def main() -> None:
        meet = asyncio.Barrier(4)

        async def work() -> None:
            inflight.enter()
            try:
                await asyncio.wait_for(meet.wait(), 10)
            finally:
                inflight.leave()

        call = guarded("p")(work)
        await asyncio.gather(*(call() for _ in range(200)))

    asyncio.run(main())
    assert inflight.peak == 4
    assert inflight.runs == 200
    assert slots().in_use == 0


def test_a_full_bulkhead_refuses_at_once_and_counts_exactly(inflight: InFlight) -> None:
    bulkhead(max_concurrent=4)
    release = threading.Event()
    refused: list[BulkheadFull] = []

    def work() -> None:
        inflight.enter()
        try:
            release.wait(30)
        finally:
            inflight.leave()

    call = guarded("p")(work)

    def attempt() -> None:
        try:
            call()
        except BulkheadFull as exc:
            refused.append(exc)
            if len(refused) == 12:
                release.set()

    run_threads(attempt, 16)
    assert inflight.peak == 4
    assert inflight.runs == 4
    assert len(refused) == 12
    assert refused[0].max_concurrent == 4
    assert refused[0].policy == "p"
    stats = guardrails.stats()["p"]
    assert stats.bulkhead_rejected == 12
    assert stats.successes == 4
    assert slots().in_use == 0


def test_sync_and_async_calls_share_the_cap() -> None:
    bulkhead(max_concurrent=4)
    release = threading.Event()
    entered = threading.Semaphore(0)

    def work() -> str:
        entered.release()
        release.wait(30)
        return "sync"

    async def awork() -> str:
        entered.release()
        await asyncio.get_running_loop().run_in_executor(None, release.wait, 30)
        return "async"

    sync_call, async_call = guarded("p")(work), guarded("p")(awork)

    async def main() -> list[Any]:
        tasks = [asyncio.create_task(async_call()) for _ in range(2)]
        await until_async(lambda: in_use() == 4)
        with pytest.raises(BulkheadFull):
            await async_call()
        with pytest.raises(BulkheadFull):
            sync_call()  # from the loop's thread, on purpose: refused without waiting
        release.set()
        return list(await asyncio.gather(*tasks))

    threads = [threading.Thread(target=sync_call) for _ in range(2)]
    for t in threads:
        t.start()
    for _ in range(2):
        assert entered.acquire(timeout=10)
    assert asyncio.run(main()) == ["async", "async"]
    for t in threads:
        t.join(10)
    assert slots().in_use == 0
    assert guardrails.stats()["p"].bulkhead_rejected == 2


def test_a_waiting_thread_gets_the_slot_freed_and_a_late_one_is_refused() -> None:
    bulkhead(max_concurrent=1, max_wait="10s")
    release, entered = threading.Event(), threading.Event()

    def hold() -> str:
        entered.set()
        release.wait(30)
        return "held"

    holder, call = guarded("p")(hold), guarded("p")(lambda: "waited")
    results: list[str] = []
    first = threading.Thread(target=lambda: results.append(holder()))
    first.start()
    assert entered.wait(10)
    waiter = threading.Thread(target=lambda: results.append(call()))
    waiter.start()
    until(lambda: len(slots().waiters) == 1)
    release.set()
    first.join(10)
    waiter.join(10)
    assert results == ["held", "waited"]
    assert slots().in_use == 0

    bulkhead(max_concurrent=1, max_wait="50ms")  # real time: a slot is freed by another thread
    release.clear()
    entered.clear()
    first = threading.Thread(target=holder)
    first.start()
    assert entered.wait(10)
    with pytest.raises(BulkheadFull):
        call()
    assert len(slots().waiters) == 0
    release.set()
    first.join(10)
    assert slots().in_use == 0
    assert guardrails.stats()["p"].bulkhead_rejected == 1


def test_waiters_are_served_in_order() -> None:
    bulkhead(max_concurrent=1, max_wait="10s")
    release, entered = threading.Event(), threading.Event()
    order: list[int] = []

    def hold() -> None:
        entered.set()
        release.wait(30)

    holder, record = guarded("p")(hold), guarded("p")(order.append)
    first = threading.Thread(target=holder)
    first.start()
    assert entered.wait(10)
    waiters = []
    for i in range(5):
        waiters.append(threading.Thread(target=record, args=(i,)))
        waiters[-1].start()
        until(lambda n=i + 1: len(slots().waiters) == n)  # type: ignore[misc]
    release.set()
    for t in [first, *waiters]:
        t.join(10)
    assert order == [0, 1, 2, 3, 4]


def test_a_slot_freed_by_a_thread_wakes_a_waiting_task() -> None:
    bulkhead(max_concurrent=1, max_wait="10s")
    release, entered = threading.Event(), threading.Event()

    def hold() -> str:
        entered.set()
        release.wait(30)
        return "thread"

    async def awork() -> str:
        return "task"

    holder, async_call = guarded("p")(hold), guarded("p")(awork)
    first = threading.Thread(target=holder)
    first.start()
    assert entered.wait(10)

    async def main() -> str:
        task = asyncio.create_task(async_call())
        await until_async(lambda: len(slots().waiters) == 1)
        release.set()  # the thread frees its slot; the loop is not blocked meanwhile
        return await asyncio.wait_for(task, 10)

    assert asyncio.run(main()) == "task"
    first.join(10)
    assert slots().in_use == 0


def test_a_slot_freed_by_a_task_wakes_a_waiting_thread() -> None:
    results: list[str] = []
    call = guarded("p")(lambda: "thread")
    gates: list[asyncio.Event] = []

    async def hold() -> str:
        await gates[0].wait()
        return "task"

    async_hold = guarded("p")(hold)
    bulkhead(max_concurrent=1, max_wait="10s")  # compiles both: the state exists from here

    async def main() -> None:
        gate = asyncio.Event()
        gates.append(gate)
        held = asyncio.create_task(async_hold())
        await until_async(lambda: in_use() == 1)
        waiter = threading.Thread(target=lambda: results.append(call()))
        waiter.start()
        await until_async(lambda: len(slots().waiters) == 1)
        gate.set()
        results.append(await held)
        await asyncio.get_running_loop().run_in_executor(None, waiter.join, 10)

    asyncio.run(main())
    assert results == ["task", "thread"]
    assert slots().in_use == 0


def test_a_waiting_task_cancelled_leaves_no_slot_taken() -> None:
    bulkhead(max_concurrent=1, max_wait="10s")

    async def main() -> None:
        gate = asyncio.Event()

        async def hold() -> str:
            await gate.wait()
            return "held"

        call = guarded("p")(hold)
        first = asyncio.create_task(call())
        await until_async(lambda: in_use() == 1)
        second = asyncio.create_task(call())
        await until_async(lambda: len(slots().waiters) == 1)
        second.cancel()
        with pytest.raises(asyncio.CancelledError):
            await second
        assert len(slots().waiters) == 0
        gate.set()
        assert await first == "held"
        assert slots().in_use == 0
        assert await call() == "held"  # the gate is open: runs at once

    asyncio.run(main())
    assert slots().in_use == 0


def test_a_task_cancelled_as_a_thread_hands_it_the_slot_passes_the_slot_on() -> None:
    bulkhead(max_concurrent=1, max_wait="10s")
    release, entered = threading.Event(), threading.Event()

    def hold() -> None:
        entered.set()
        release.wait(30)

    async def awork() -> str:
        return "task"

    holder, async_call = guarded("p")(hold), guarded("p")(awork)
    first = threading.Thread(target=holder)
    first.start()
    assert entered.wait(10)

    async def main() -> None:
        handed = asyncio.create_task(async_call())
        await until_async(lambda: len(slots().waiters) == 1)
        after = asyncio.create_task(async_call())
        await until_async(lambda: len(slots().waiters) == 2)
        # The thread hands its slot to the first waiting task (blocking the loop here on
        # purpose, so the task has not run since) and the task is cancelled at that moment.
        release.set()
        first.join(10)
        assert len(slots().waiters) == 1
        handed.cancel()
        with pytest.raises(asyncio.CancelledError):
            await handed
        assert await asyncio.wait_for(after, 10) == "task"  # the slot went on to the next

    asyncio.run(main())
    assert slots().in_use == 0


def test_a_running_attempt_cancelled_or_raising_frees_its_slot() -> None:
    bulkhead(max_concurrent=1)

    async def main() -> None:
        started = asyncio.Event()

        async def forever() -> None:
            started.set()
            await asyncio.Event().wait()

        task = asyncio.create_task(guarded("p")(forever)())
        await started.wait()
        assert slots().in_use == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert slots().in_use == 0

    asyncio.run(main())

    def fail() -> None:
        raise ConnectionError("down")

    with pytest.raises(ConnectionError):
        guarded("p")(fail)()
    assert slots().in_use == 0


def test_threads_and_two_loops_with_cancellations_never_overshoot_nor_leak(
    inflight: InFlight,
) -> None:
    # Short waits, so that timeouts race hand-overs; cancellations race them too.
    bulkhead(max_concurrent=3, max_wait="1ms")
    refusals = [0]
    count = threading.Lock()

    def work() -> None:
        inflight.enter()
        try:
            sum(range(500))
        finally:
            inflight.leave()

    async def awork() -> None:
        inflight.enter()
        try:
            await asyncio.sleep(0.0005)
        finally:
            inflight.leave()

    sync_call, async_call = guarded("p")(work), guarded("p")(awork)

    def refused() -> None:
        with count:
            refusals[0] += 1

    def thread() -> None:
        for _ in range(100):
            try:
                sync_call()
            except BulkheadFull:
                refused()

    async def tasks() -> None:
        async def one() -> None:
            try:
                await async_call()
            except BulkheadFull:
                refused()

        for i in range(10):
            batch = [asyncio.create_task(one()) for _ in range(20)]
            await asyncio.sleep(0.001)
            for task in batch[i % 3 :: 3]:
                task.cancel()
            await asyncio.gather(*batch, return_exceptions=True)

    threads = [threading.Thread(target=thread) for _ in range(4)]
    threads += [threading.Thread(target=asyncio.run, args=(tasks(),)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
        assert not t.is_alive()
    assert inflight.peak <= 3
    assert slots().in_use == 0
    assert not slots().waiters
    assert guardrails.stats()["p"].bulkhead_rejected == refusals[0]


def test_the_bulkhead_is_kept_across_an_unchanged_configure_and_resized_on_a_change() -> None:
    bulkhead(max_concurrent=1)
    release, entered = threading.Event(), threading.Event()

    def hold() -> None:
        entered.set()
        release.wait(30)

    holder, other = guarded("p")(hold), guarded("p")(lambda: "other")
    first = threading.Thread(target=holder)
    first.start()
    assert entered.wait(10)
    try:
        with pytest.raises(BulkheadFull):
            other()  # another function of the policy: the same slots
        kept = slots()
        bulkhead(max_concurrent=1)
        assert slots() is kept
        with pytest.raises(BulkheadFull):
            other()
        bulkhead(max_concurrent=2)
        assert slots() is kept  # the same pool, one slot more: the attempt in flight holds one
        assert kept.capacity == 2
        assert kept.in_use == 1
        assert other() == "other"
    finally:
        release.set()
        first.join(10)
    assert slots().in_use == 0


class Running:
    """Attempts inside ``hold`` now, and the most seen at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = self.peak = 0
        self.release = threading.Event()

    def hold(self) -> str:
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)
        try:
            self.release.wait(30)
            return "held"
        finally:
            with self.lock:
                self.now -= 1


def test_a_bulkhead_shrunk_mid_incident_retires_slots_as_attempts_end() -> None:
    # A new, empty pool of the new size let the attempts of the old one run beside it: 4
    # running, max_concurrent lowered to 2 (to protect the dependency), and 2 more started.
    bulkhead(max_concurrent=4)
    running = Running()
    call = guarded("p")(running.hold)
    threads = [threading.Thread(target=call) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        until(lambda: running.now == 4)
        bulkhead(max_concurrent=2)
        with pytest.raises(BulkheadFull):
            call()
        assert slots().in_use == 4  # 2 slots owed: the next two that end are retired
    finally:
        running.release.set()
        for t in threads:
            t.join(10)
            assert not t.is_alive()
    assert slots().in_use == 0
    assert running.peak == 4
    running.release.clear()
    threads = [threading.Thread(target=call) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        until(lambda: running.now == 2)
        with pytest.raises(BulkheadFull):
            call()  # two now, not four
    finally:
        running.release.set()
        for t in threads:
            t.join(10)
    bulkhead(max_concurrent=3)  # and grown again: three
    assert slots().in_use == 0
    assert len(slots().free) == 3


def test_a_configure_flapping_between_two_sizes_never_lets_more_than_the_larger_run() -> None:
    # Each change made a new, empty pool: alternating 3 and 2 while attempts ran let
    # 3 + 2 + 3 + ... run at once.
    bulkhead(max_concurrent=3)
    running = Running()
    call = guarded("p")(running.hold)
    threads: list[threading.Thread] = []

    def attempt() -> None:
        with contextlib.suppress(BulkheadFull):
            call()

    try:
        for size in (2, 3, 2, 3, 2, 3):
            bulkhead(max_concurrent=size)
            for _ in range(3):
                before = running.now
                t = threading.Thread(target=attempt)
                t.start()
                threads.append(t)
                until(lambda t=t, n=before: not t.is_alive() or running.now > n)  # in or refused
    finally:
        running.release.set()
        for t in threads:
            t.join(10)
            assert not t.is_alive()
    assert running.peak <= 3
    assert slots().in_use == 0
    assert len(slots().free) == 3


def test_a_shrunk_bulkhead_retires_its_owed_slots_before_serving_a_waiter() -> None:
    bulkhead(max_concurrent=2, max_wait="30s")
    running = Running()

    @guarded("p")
    async def hold() -> str:
        with running.lock:
            running.now += 1
            running.peak = max(running.peak, running.now)
        try:
            await gate.wait()
            return "held"
        finally:
            with running.lock:
                running.now -= 1

    async def main() -> list[str]:
        holders = [asyncio.ensure_future(hold()) for _ in range(2)]
        await until_async(lambda: running.now == 2)
        bulkhead(max_concurrent=1, max_wait="30s")
        waiter = asyncio.ensure_future(hold())
        await until_async(lambda: len(slots().waiters) == 2)  # the debt, then the waiter
        gate.set()
        return list(await asyncio.wait_for(asyncio.gather(*holders, waiter), 30))

    gate = asyncio.Event()
    assert asyncio.run(main()) == ["held"] * 3
    assert running.peak == 2  # the waiter ran after both holders ended, alone
    assert slots().in_use == 0
    assert len(slots().free) == 1


def test_a_child_forked_while_threads_hold_every_slot_starts_free() -> None:
    bulkhead(max_concurrent=2)
    release = threading.Event()
    entered = threading.Semaphore(0)

    def hold() -> None:
        entered.release()
        release.wait(30)

    holder, call = guarded("p")(hold), guarded("p")(lambda: "ok")
    threads = [threading.Thread(target=holder) for _ in range(2)]
    for t in threads:
        t.start()
    for _ in range(2):
        assert entered.acquire(timeout=10)
    try:
        with pytest.raises(BulkheadFull):
            call()
        with slots().lock:  # a waiter's lock held too, by this thread, at the fork
            pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports through its exit status
            code = 1
            try:
                fresh = slots()
                code = 0 if fresh.in_use == 0 and call() == "ok" and fresh.in_use == 0 else 2
            finally:
                os._exit(code)
        assert _reap(pid) == 0
    finally:
        release.set()
        for t in threads:
            t.join(10)
    assert slots().in_use == 0


def test_a_child_forked_inside_an_attempt_starts_free() -> None:
    bulkhead(max_concurrent=1)
    call = guarded("p")(lambda: "ok")

    def fork_inside() -> int:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports through its exit status
            code = 1
            try:
                code = 0 if call() == "ok" and call() == "ok" else 2
            finally:
                os._exit(code)
        return pid

    pid = guarded("p")(fork_inside)()
    assert _reap(pid) == 0
    assert slots().in_use == 0


@pytest.mark.parametrize(
    ("block", "path", "message"),
    [
        ({"max_concurrent": 0}, "max_concurrent", "greater than or equal to 1"),
        ({"max_concurrent": "8"}, "max_concurrent", "valid integer"),
        ({"max_concurrent": 8, "max_wait": -1}, "max_wait", "expected a finite duration"),
        ({"max_concurrent": 8, "max_wait": "-1s"}, "max_wait", "seconds"),
        ({"max_wait": 1}, "max_concurrent", "Field required"),
    ],
)
def test_config_errors_name_the_key(block: dict[str, Any], path: str, message: str) -> None:
    with pytest.raises(PolicyConfigError) as error:
        configure({"policies": {"p": {"bulkhead": block}}})
    assert error.value.problems[0][0] == f"guardrails.policies.p.bulkhead.{path}"
    assert message in error.value.problems[0][1]


@pytest.fixture(autouse=True)
def _no_threads_left_behind() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    left = [t for t in threading.enumerate() if t not in before and t.is_alive()]
    for t in left:
        t.join(10)
    assert not any(t.is_alive() for t in left)
