"""The timeout layers: ``timeout.attempt`` (inside retry) and ``timeout.total`` (outside it).

Sync timeouts leave the work running on a worker thread; async ones cancel it. Deadlines
here are real (timeouts never read the fake clock). Work that must outlive a deadline
blocks on an event the test releases (sync) or sleeps ``LONG`` until cancelled (async), so
no test depends on how fast anything runs. ``LONG`` (30 s) is a deadline that must never
fire: ample for the slowest machine, and a broken layer fails the test instead of hanging it.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, cast

import pytest

import guardrails
from guardrails import CallTimeout, OutputValidationError, PolicyConfigError, configure, guarded
from guardrails.layers import timeout as timeout_layer
from guardrails.testing import FakeClock, fake_clock
from tests.twins import guard_as
from tests.twins import reap as _reap

SHORT = 0.05  # a deadline that is meant to pass
LONG = 30.0  # a deadline that must never pass

pytestmark = pytest.mark.filterwarnings(
    # Python 3.12+ warns on any fork from a multi-threaded process: the fork tests do that.
    "ignore:This process .* is multi-threaded:DeprecationWarning"
)


def policies(**named: dict[str, Any]) -> None:
    configure({"policies": {name: {"log": None, **block} for name, block in named.items()}})


def stats(name: str = "p") -> Any:
    return guardrails.stats()[name]


def wait_until(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    """Poll an observable condition, failing (not hanging) if it never holds."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.001)


@pytest.fixture
def gate() -> Iterator[threading.Event]:
    """An event that blocked work waits on; set at the end of the test whatever happens."""
    event = threading.Event()
    yield event
    event.set()


def debug_records(logs: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in logs.records if "abandoned after" in r.getMessage()]


# --- configuration ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("block", "path", "message"),
    [
        ({}, "timeout", "set attempt, total or both"),
        ({"attempt": -1}, "timeout.attempt", "finite duration"),
        ({"attempt": 0}, "timeout.attempt", "greater than 0"),
        ({"total": "0ms"}, "timeout.total", "greater than 0"),
        ({"attempt": "abc"}, "timeout.attempt", "expected a number of seconds"),
        ({"total": float("nan")}, "timeout.total", "finite duration"),
        ({"total": True}, "timeout.total", "expected a number of seconds"),
        ({"atempt": "1s"}, "timeout.atempt", "did you mean 'attempt'"),
    ],
)
def test_config_errors_name_their_dotted_path(
    block: dict[str, Any], path: str, message: str
) -> None:
    with pytest.raises(PolicyConfigError) as exc:
        configure({"policies": {"p": {"timeout": block}}})
    found = dict(exc.value.problems)
    assert message in found[f"guardrails.policies.p.{path}"], found


def test_durations_are_parsed() -> None:
    configure({"policies": {"p": {"timeout": {"attempt": "250ms", "total": "PT1M"}}}})
    got = guardrails.policy("p").timeout
    assert got is not None
    assert (got.attempt, got.total) == (0.25, 60.0)


def test_an_unset_scope_costs_nothing() -> None:
    def inner(args: Any, kwargs: Any, info: Any) -> Any:
        return None

    async def ainner(args: Any, kwargs: Any, info: Any) -> Any:
        return None

    only_total = timeout_layer.TimeoutConfig(total=1.0)
    only_attempt = timeout_layer.TimeoutConfig(attempt=1.0)
    no_ctx = cast(Any, None)  # never looked at when the layer is not built
    assert timeout_layer.build_attempt(only_total, inner, no_ctx) is inner
    assert timeout_layer.build_attempt_async(only_total, ainner, no_ctx) is ainner
    assert timeout_layer.build_total(only_attempt, inner, no_ctx) is inner
    assert timeout_layer.build_total_async(only_attempt, ainner, no_ctx) is ainner


# --- sync: the work goes on after the deadline ------------------------------------------


@pytest.mark.parametrize("scope", ["attempt", "total"])
def test_sync_timeout_returns_at_the_deadline_and_the_work_goes_on(
    scope: str, gate: threading.Event, logs: pytest.LogCaptureFixture
) -> None:
    policies(p={"timeout": {scope: SHORT}})
    started, finished = threading.Event(), threading.Event()
    ran_on: list[threading.Thread] = []

    @guarded("p")
    def f(x: int) -> int:
        ran_on.append(threading.current_thread())
        started.set()
        gate.wait(LONG)
        finished.set()
        return x

    with pytest.raises(CallTimeout) as exc:
        f(1)
    err = exc.value
    assert (err.policy, err.scope, err.timeout) == ("p", scope, SHORT)
    assert isinstance(err, TimeoutError)
    assert started.is_set()
    (worker,) = ran_on
    assert worker is not threading.current_thread()
    assert worker.daemon
    assert worker.is_alive() and not finished.is_set()  # still running after the timeout
    s = stats()
    assert (s.timeouts, s.abandoned, s.failures, s.successes) == (1, 1, 1, 0)

    gate.set()
    assert finished.wait(LONG)
    wait_until(lambda: len(debug_records(logs)) == 1)
    (record,) = debug_records(logs)
    assert record.levelno == logging.DEBUG
    assert "finished with a result (dropped)" in record.getMessage()
    assert record.exc_info is None
    assert (record.policy, record.function) == ("p", err.function)  # type: ignore[attr-defined]
    s = stats()
    assert (s.timeouts, s.abandoned, s.failures, s.successes) == (1, 1, 1, 0)  # counted once


def test_an_abandoned_exception_is_logged_at_debug_not_unhandled(
    gate: threading.Event, logs: pytest.LogCaptureFixture
) -> None:
    # An exception escaping a thread would reach threading.excepthook, which pytest turns
    # into a warning, an error under this project's filterwarnings.
    policies(p={"timeout": {"attempt": SHORT}})
    boom = RuntimeError("late failure")

    @guarded("p")
    def f() -> None:
        gate.wait(LONG)
        raise boom

    with pytest.raises(CallTimeout):
        f()
    gate.set()
    wait_until(lambda: len(debug_records(logs)) == 1)
    (record,) = debug_records(logs)
    assert "finished with an exception (dropped)" in record.getMessage()
    assert record.exc_info is not None and record.exc_info[1] is boom
    assert stats().abandoned == 1


def test_results_exceptions_and_control_flow_come_back_from_the_worker() -> None:
    policies(p={"timeout": {"attempt": LONG}})

    class Stop(BaseException):
        pass

    @guarded("p")
    def f(kind: str) -> Any:
        if kind == "error":
            raise KeyError("k")
        if kind == "base":
            raise Stop
        return [kind]

    assert f("ok") == ["ok"]
    with pytest.raises(KeyError):
        f("error")
    with pytest.raises(Stop):
        f("base")
    s = stats()
    assert (s.successes, s.failures, s.timeouts, s.abandoned) == (1, 2, 0, 0)


def test_context_variables_reach_the_worker_and_stay_there() -> None:
    policies(p={"timeout": {"attempt": LONG, "total": LONG}})
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")
    seen: list[tuple[str, bool]] = []

    @guarded("p")
    def f() -> None:
        seen.append((var.get(), threading.current_thread() is threading.main_thread()))
        var.set("set by the work")

    token = var.set("the caller's")
    try:
        f()
        assert var.get() == "the caller's"  # the work ran in a copy
    finally:
        var.reset(token)
    assert seen == [("the caller's", False)]


def test_the_info_list_reaches_the_layers_on_the_worker(
    clock: FakeClock, logs: pytest.LogCaptureFixture
) -> None:
    # retry (on the total's worker) writes the attempt count into the log layer's info.
    configure(
        {
            "policies": {
                "p": {
                    "log": {"level": "INFO"},
                    "timeout": {"total": LONG, "attempt": LONG},
                    "retry": {"max_attempts": 3},
                }
            }
        }
    )
    failures = iter([ConnectionError("a"), ConnectionError("b")])

    @guarded("p")
    def f() -> str:
        err = next(failures, None)
        if err is not None:
            raise err
        return "ok"

    assert f() == "ok"
    (record,) = [r for r in logs.records if getattr(r, "outcome", None) == "ok"]
    assert record.attempts == 3  # type: ignore[attr-defined]
    assert stats().retries == 2


# --- sync: the pool ------------------------------------------------------------------------


def test_sixteen_threads_with_timeouts_at_once(gate: threading.Event) -> None:
    policies(quick={"timeout": {"attempt": LONG}}, slow={"timeout": {"attempt": SHORT}})

    @guarded("quick")
    def quick(i: int) -> int:
        return i * 2

    @guarded("slow")
    def slow(i: int) -> int:
        gate.wait(LONG)
        return i

    barrier = threading.Barrier(16)
    results: dict[int, object] = {}

    def call(i: int) -> None:
        barrier.wait()
        try:
            results[i] = quick(i) if i % 2 == 0 else slow(i)
        except CallTimeout as exc:
            results[i] = exc.scope

    threads = [threading.Thread(target=call, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(LONG)
    assert results == {i: i * 2 if i % 2 == 0 else "attempt" for i in range(16)}
    q, s = stats("quick"), stats("slow")
    assert (q.successes, q.timeouts, q.abandoned) == (8, 0, 0)
    assert (s.failures, s.timeouts, s.abandoned) == (8, 8, 8)


def test_a_pool_full_of_abandoned_work_still_serves_new_calls(gate: threading.Event) -> None:
    policies(p={"timeout": {"attempt": SHORT}}, fresh={"timeout": {"attempt": LONG}})
    stuck = threading.Semaphore(0)

    @guarded("p")
    def hang() -> None:
        stuck.release()
        gate.wait(LONG)

    @guarded("fresh")
    def fine(x: int) -> int:
        return x + 1

    for _ in range(8):
        with pytest.raises(CallTimeout):
            hang()
    for _ in range(8):
        assert stuck.acquire(timeout=LONG)  # eight workers are busy with abandoned work
    assert [fine(i) for i in range(20)] == list(range(1, 21))
    assert (stats().abandoned, stats("fresh").successes) == (8, 20)


def test_finished_workers_are_reused_and_idle_ones_end(
    monkeypatch: pytest.MonkeyPatch, gate: threading.Event
) -> None:
    policies(p={"timeout": {"attempt": LONG}})
    used: list[threading.Thread] = []

    @guarded("p")
    def f() -> None:
        used.append(threading.current_thread())

    for _ in range(5):
        f()
    assert len(set(used)) == 1  # one caller, one worker reused

    # Idle workers end: more callers at once than idle workers start fresh threads, and
    # those wait a short while for work once they are done.
    monkeypatch.setattr(timeout_layer, "IDLE_SECONDS", 0.01)
    n = len(timeout_layer._POOL.idle) + 2
    barrier = threading.Barrier(n)
    fresh: list[threading.Thread] = []

    @guarded("p")
    def together() -> None:
        fresh.append(threading.current_thread())
        barrier.wait(LONG)

    callers = [threading.Thread(target=together) for _ in range(n)]
    for t in callers:
        t.start()
    for t in callers:
        t.join(LONG)
    assert len(set(fresh)) == n
    wait_until(lambda: not any(t.is_alive() for t in fresh if t.name.startswith("guardrails")))


def test_nested_timeouts_from_a_worker_thread(gate: threading.Event) -> None:
    policies(
        outer={"timeout": {"attempt": LONG}},
        inner={"timeout": {"attempt": SHORT}},
        outer_short={"timeout": {"attempt": SHORT}},
        inner_long={"timeout": {"attempt": LONG}},
    )
    released = threading.Event()

    @guarded("inner")
    def stuck() -> str:
        gate.wait(LONG)
        return "late"

    @guarded("outer")
    def outer() -> str:
        try:
            return stuck()
        except CallTimeout as exc:
            return f"{exc.policy} timed out"

    assert outer() == "inner timed out"

    @guarded("inner_long")
    def slow_inner() -> str:
        gate.wait(LONG)
        released.set()
        return "late"

    @guarded("outer_short")
    def impatient() -> str:
        return slow_inner()

    with pytest.raises(CallTimeout) as exc:
        impatient()
    assert exc.value.policy == "outer_short"
    gate.set()
    assert released.wait(LONG)
    wait_until(lambda: stats("inner_long").successes == 1)  # the nested call ends in time
    assert (stats("outer").successes, stats("inner").timeouts) == (1, 1)
    assert (stats("outer_short").abandoned, stats("inner_long").timeouts) == (1, 0)


def test_an_interrupted_caller_leaves_the_work(gate: threading.Event) -> None:
    policies(p={"timeout": {"attempt": LONG}})
    started, handled = threading.Event(), threading.Event()

    class Interrupted(BaseException):
        pass

    def handler(signum: int, frame: Any) -> None:
        if not handled.is_set():
            handled.set()
            raise Interrupted

    @guarded("p")
    def f() -> None:
        started.set()
        gate.wait(LONG)

    def interrupt() -> None:
        # A signal that lands just before the caller blocks is only seen when the wait
        # ends: send it again until the caller has seen one.
        started.wait(LONG)
        while not handled.wait(0.01):
            signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGUSR1)

    previous = signal.signal(signal.SIGUSR1, handler)
    interrupter = threading.Thread(target=interrupt)
    try:
        interrupter.start()
        with pytest.raises(Interrupted):
            f()
    finally:
        handled.set()
        interrupter.join(LONG)
        signal.signal(signal.SIGUSR1, previous)
    s = stats()
    assert (s.abandoned, s.timeouts, s.failures) == (1, 0, 1)


def test_an_abandoned_endless_call_does_not_hold_up_interpreter_exit() -> None:
    script = textwrap.dedent(
        """
        import threading
        import guardrails
        from guardrails import CallTimeout, guarded

        guardrails.configure({"policies": {"p": {"timeout": {"attempt": 0.05}}}})

        @guarded("p")
        def forever():
            threading.Event().wait()

        try:
            forever()
        except CallTimeout:
            print("timed out")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert (done.returncode, done.stdout.strip()) == (0, "timed out"), done.stderr


# --- sync: fork ----------------------------------------------------------------------------


def test_a_forked_child_gets_a_fresh_pool(gate: threading.Event) -> None:
    policies(p={"timeout": {"attempt": SHORT}}, ok={"timeout": {"attempt": LONG}})
    threads: list[threading.Thread] = []

    @guarded("p")
    def hang() -> None:
        gate.wait(LONG)

    @guarded("ok")
    def fine(x: int) -> int:
        threads.append(threading.current_thread())
        return x

    fine(1)
    with pytest.raises(CallTimeout):
        hang()  # a parent worker is busy, another idle, at the fork
    assert timeout_layer._POOL.idle
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            code = 3 if timeout_layer._POOL.idle else 2  # the parent's workers are gone
            if code == 2 and fine(2) == 2 and threads[-1].ident != threads[0].ident:
                code = 4
                try:
                    hang()
                except CallTimeout:
                    code = 0
        finally:
            os._exit(code)
    assert _reap(pid) == 0


def test_a_worker_thread_that_forks(gate: threading.Event) -> None:
    policies(p={"timeout": {"attempt": LONG}}, q={"timeout": {"attempt": SHORT}})

    @guarded("q")
    def hang() -> None:
        gate.wait(LONG)

    @guarded("p")
    def fork_here() -> int:
        pid = os.fork()
        if pid == 0:  # the child, on what was a worker thread in the parent
            code = 1
            try:
                try:
                    hang()
                except CallTimeout:
                    code = 0
            finally:
                os._exit(code)
        return pid

    assert _reap(fork_here()) == 0


# --- async ---------------------------------------------------------------------------------


@pytest.mark.parametrize("scope", ["attempt", "total"])
def test_async_timeout_cancels_the_work(scope: str) -> None:
    policies(p={"timeout": {scope: SHORT}})
    seen: list[str] = []

    @guarded("p")
    async def f() -> None:
        try:
            await asyncio.sleep(LONG)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise
        finally:
            seen.append("finally")

    async def main() -> None:
        with pytest.raises(CallTimeout) as exc:
            await f()
        assert (exc.value.scope, exc.value.timeout) == (scope, SHORT)
        task = asyncio.current_task()
        assert task is not None and task.cancelling() == 0  # our cancellation is undone

    asyncio.run(main())
    assert seen == ["cancelled", "finally"]
    s = stats()
    assert (s.timeouts, s.abandoned, s.failures) == (1, 0, 1)


def test_async_work_that_catches_the_cancellation_still_times_out() -> None:
    policies(p={"timeout": {"attempt": SHORT}})

    @guarded("p")
    async def swallow(mode: str) -> str:
        try:
            await asyncio.sleep(LONG)
        except asyncio.CancelledError:
            if mode == "raise":
                raise ValueError("cleanup failed") from None
        return "partial"

    async def main() -> None:
        with pytest.raises(CallTimeout) as exc:
            await swallow("return")
        assert exc.value.__cause__ is None
        with pytest.raises(CallTimeout) as exc:
            await swallow("raise")
        assert isinstance(exc.value.__cause__, ValueError)

    asyncio.run(main())
    assert stats().timeouts == 2


def test_an_outer_cancel_is_not_turned_into_a_timeout() -> None:
    policies(p={"timeout": {"attempt": LONG, "total": LONG}})
    started = asyncio.Event

    @guarded("p")
    async def f(ready: asyncio.Event) -> None:
        ready.set()
        await asyncio.sleep(LONG)

    async def main() -> None:
        ready = started()
        task = asyncio.create_task(f(ready))
        await ready.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert (stats().timeouts, stats().failures) == (0, 1)


@pytest.mark.parametrize("scope", ["attempt", "total"])
def test_an_outer_cancel_racing_the_deadline_stays_a_cancellation(scope: str) -> None:
    # The deadline's timer and an outer cancel() both run before the task resumes: the
    # outer one must win, whichever of the two ran first.
    policies(p={"timeout": {scope: SHORT}})

    @guarded("p")
    async def f(ready: asyncio.Event) -> None:
        ready.set()
        await asyncio.sleep(LONG)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        ready = asyncio.Event()
        task = asyncio.create_task(f(ready))
        await ready.wait()
        when = loop.time() + SHORT  # not before the layer's own deadline
        loop.call_at(when, task.cancel)
        while loop.time() <= when:  # hold the loop until both timers are due together
            pass
        with pytest.raises(asyncio.CancelledError):
            await task
        assert task.cancelling() == 1  # the outer request stands; ours is taken back

    asyncio.run(main())
    assert (stats().timeouts, stats().failures) == (0, 1)


def test_async_nested_timeouts_tell_whose_deadline_passed() -> None:
    policies(
        outer={"timeout": {"attempt": LONG}},
        inner={"timeout": {"attempt": SHORT}},
        outer_short={"timeout": {"attempt": SHORT}},
        inner_long={"timeout": {"attempt": LONG}},
    )

    @guarded("inner")
    async def stuck() -> None:
        await asyncio.sleep(LONG)

    @guarded("outer")
    async def outer() -> str:
        try:
            await stuck()
        except CallTimeout as exc:
            return f"{exc.policy} timed out"
        return "no"

    @guarded("inner_long")
    async def slow_inner() -> None:
        await asyncio.sleep(LONG)

    @guarded("outer_short")
    async def impatient() -> None:
        await slow_inner()

    async def main() -> None:
        assert await outer() == "inner timed out"
        with pytest.raises(CallTimeout) as exc:
            await impatient()
        assert exc.value.policy == "outer_short"

    asyncio.run(main())
    assert (stats("inner").timeouts, stats("outer").successes) == (1, 1)
    assert (stats("outer_short").timeouts, stats("inner_long").timeouts) == (1, 0)
    assert stats("inner_long").failures == 1  # it saw the outer deadline's cancellation


def test_async_timeout_outside_a_task_says_so() -> None:
    policies(p={"timeout": {"attempt": LONG}})

    @guarded("p")
    async def f() -> int:
        return 1

    async def main() -> None:
        coro = f()
        failure: list[BaseException] = []

        def drive() -> None:  # on the loop, but in no task
            try:
                coro.send(None)
            except BaseException as exc:
                failure.append(exc)

        asyncio.get_running_loop().call_soon(drive)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        coro.close()
        (exc,) = failure
        assert isinstance(exc, RuntimeError) and "inside an asyncio task" in str(exc)

    asyncio.run(main())


# --- with the other layers (sync and async twins) ------------------------------------------


@pytest.fixture(params=["sync", "async"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def blocking(kind: str, name: str, block_first: int, gate: threading.Event) -> Any:
    """A guarded function whose first ``block_first`` calls never finish in time (sync: wait
    on ``gate``; async: sleep ``LONG``, to be cancelled); the later ones return ``x``."""
    calls = [0]
    if kind == "sync":

        def f(x: int) -> int:
            calls[0] += 1
            if calls[0] <= block_first:
                gate.wait(LONG)
            return x

        return guarded(name)(f)

    async def af(x: int) -> int:
        calls[0] += 1
        if calls[0] <= block_first:
            await asyncio.sleep(LONG)
        return x

    g = guarded(name)(af)
    return lambda *a: asyncio.run(g(*a))


def test_retry_retries_an_attempt_timeout(
    kind: str, clock: FakeClock, gate: threading.Event
) -> None:
    policies(p={"timeout": {"attempt": SHORT}, "retry": {"max_attempts": 3}})
    f = blocking(kind, "p", 1, gate)
    assert f(7) == 7
    s = stats()
    assert (s.timeouts, s.retries, s.successes, s.failures) == (1, 1, 1, 0)
    assert s.abandoned == (1 if kind == "sync" else 0)


def test_attempt_timeouts_until_retry_gives_up(
    kind: str, clock: FakeClock, gate: threading.Event
) -> None:
    policies(p={"timeout": {"attempt": SHORT}, "retry": {"max_attempts": 2}})
    f = blocking(kind, "p", 2, gate)
    with pytest.raises(CallTimeout) as exc:
        f(7)
    assert exc.value.scope == "attempt"
    assert any("gave up after 2 attempts" in n for n in exc.value.__notes__)
    s = stats()
    assert (s.timeouts, s.retries, s.failures) == (2, 1, 1)


class BlockingClock(FakeClock):
    """A fake clock whose waits block (until ``release``), so a test can hold retry in a
    wait and see that ``timeout.total`` fires during it."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting = threading.Event()
        self.release = threading.Event()

    def sleep(self, seconds: float) -> None:
        self.waiting.set()
        self.release.wait(LONG)
        super().sleep(seconds)

    async def async_sleep(self, seconds: float) -> None:
        self.waiting.set()
        await asyncio.sleep(LONG)


def test_total_fires_during_a_retry_wait(kind: str, logs: pytest.LogCaptureFixture) -> None:
    policies(p={"timeout": {"total": SHORT}, "retry": {"max_attempts": 3, "wait": {"initial": 1}}})
    attempts = [0]

    def fail() -> None:
        attempts[0] += 1
        raise ConnectionError("down")

    f = guard_as(kind, fail, "p")
    blocking_clock = BlockingClock()
    try:
        with fake_clock(blocking_clock):
            with pytest.raises(CallTimeout) as exc:
                f()
            assert exc.value.scope == "total"
            assert blocking_clock.waiting.is_set()
            s = stats()
            assert (s.timeouts, s.retries, s.failures) == (1, 0, 1)
            assert s.abandoned == (1 if kind == "sync" else 0)
    finally:
        blocking_clock.release.set()
    if kind == "sync":
        # The abandoned call finishes the attempt it had begun waiting for, then stops: its
        # caller has left, so retrying on (max_attempts=3) would load the dependency for nobody.
        wait_until(lambda: len(debug_records(logs)) == 1)
        assert stats().retries == 1 and attempts[0] == 2
        (record,) = debug_records(logs)
        assert record.exc_info is not None
        notes = getattr(record.exc_info[1], "__notes__", [])
        assert any("timeout.total passed; the caller left" in n for n in notes), notes
    else:
        assert stats().retries == 0 and attempts[0] == 1


def test_a_cached_function_that_re_enters_its_key_from_the_worker(kind: str) -> None:
    # The cache's leader runs on the caller's thread; the work re-enters the same key on
    # the worker thread. The copied context tells the cache it is a re-entry: it computes.
    policies(
        cached={"cache": {"ttl": 60, "key": ["n"]}, "timeout": {"total": LONG, "attempt": LONG}}
    )
    calls: list[tuple[int, bool]] = []
    holder: dict[str, Callable[..., Any]] = {}

    def body(n: int, nested: bool = False) -> int:
        calls.append((n, nested))
        return n if nested else holder["f"](n, True) + 1

    if kind == "sync":
        f = guarded("cached")(body)
        holder["f"] = f
        assert f(3) == 4
        assert f(3) == 4  # cached
    else:

        async def abody(n: int, nested: bool = False) -> int:
            calls.append((n, nested))
            return n if nested else await holder["f"](n, True) + 1

        g = guarded("cached")(abody)
        holder["f"] = g
        assert asyncio.run(g(3)) == 4
        assert asyncio.run(g(3)) == 4
    assert calls == [(3, False), (3, True)]
    assert stats("cached").timeouts == 0


def test_output_validation_runs_below_the_attempt_timeout(kind: str) -> None:
    policies(p={"timeout": {"attempt": LONG}, "validate": {"output": "int"}})
    f = guard_as(kind, lambda x: x, "p")
    assert f(1) == 1
    with pytest.raises(OutputValidationError):
        f("not an int")
    s = stats()
    assert (s.successes, s.rejected, s.timeouts) == (1, 1, 0)


def test_a_timeout_is_logged_as_failed(
    kind: str, gate: threading.Event, logs: pytest.LogCaptureFixture
) -> None:
    configure({"policies": {"p": {"log": {"level": "INFO"}, "timeout": {"attempt": SHORT}}}})
    f = blocking(kind, "p", 1, gate)
    with pytest.raises(CallTimeout):
        f(1)
    (record,) = [r for r in logs.records if hasattr(r, "outcome")]
    assert (record.outcome, record.levelno) == ("failed", logging.ERROR)  # type: ignore[attr-defined]
    assert record.exc_info is not None and isinstance(record.exc_info[1], CallTimeout)
    assert "timeout.attempt of 0.05 s passed" in record.getMessage()
