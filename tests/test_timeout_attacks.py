"""Attacks on the timeout layers: deadline races, interrupts between any two steps, runaway
recursion, memory held by failed or abandoned calls, outer cancellations at every moment.

Work that must outlive a deadline blocks on an event the test releases (sync) or sleeps
``LONG`` until cancelled (async); every wait is bounded, so a broken layer fails a test
instead of hanging it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import linecache
import logging
import multiprocessing
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

import numpy as np
import pytest

import guardrails
from guardrails import CallTimeout, configure, guarded
from guardrails.layers import timeout as timeout_layer
from tests.twins import reap as _reap

SHORT = 0.05  # a deadline that is meant to pass
LONG = 30.0  # a deadline that must never pass

pytestmark = pytest.mark.filterwarnings(
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


def pool_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("guardrails-timeout")]


def every_worker_idle() -> bool:
    """No pool thread is lost: each one alive is in the idle pool (none waits forever)."""
    return len(pool_threads()) == len(timeout_layer._POOL.idle)


@pytest.fixture
def gate() -> Iterator[threading.Event]:
    event = threading.Event()
    yield event
    event.set()


class Big:
    """A result or argument whose lifetime the tests watch."""


# --- memory ---------------------------------------------------------------------------------


@pytest.mark.parametrize("scope", ["attempt", "total"])
def test_a_failed_call_frees_its_arguments_without_the_cycle_collector(scope: str) -> None:
    # The caller's frame bound the work's exception while raising it: a cycle through the
    # traceback kept the exception, its frames and the call's arguments until gc ran.
    policies(p={"timeout": {scope: LONG}})

    @guarded("p")
    def fails(features: Any) -> None:
        raise ValueError("bad features")

    features = np.ones((1000, 4))
    alive = weakref.ref(features)
    gc.disable()
    try:
        with pytest.raises(ValueError, match="bad features"):
            fails(features)
        del features
        assert alive() is None, "the failed call's argument outlived it: a reference cycle"
    finally:
        gc.enable()


def test_an_abandoned_call_frees_its_arguments_and_result_when_it_ends(
    gate: threading.Event,
) -> None:
    policies(p={"timeout": {"attempt": SHORT}})
    results: list[weakref.ref[Any]] = []

    @guarded("p")
    def slow(features: Any) -> Any:
        gate.wait(LONG)
        result = np.ones((1000, 100))
        results.append(weakref.ref(result))
        return result

    features = np.ones((1000, 4))
    argument = weakref.ref(features)
    gc.disable()
    try:
        with pytest.raises(CallTimeout):
            slow(features)
        del features
        gate.set()
        wait_until(lambda: len(results) == 1 and results[0]() is None and argument() is None)
    finally:
        gc.enable()


def test_a_finished_worker_keeps_nothing_of_its_last_call() -> None:
    policies(p={"timeout": {"attempt": LONG}})
    results: list[weakref.ref[Any]] = []

    @guarded("p")
    def work(features: Any) -> Big:
        result = Big()
        results.append(weakref.ref(result))
        return result

    features = Big()
    argument = weakref.ref(features)
    gc.disable()
    try:
        work(features)  # the result is dropped at once
        del features
        assert argument() is None and results[0]() is None
    finally:
        gc.enable()


def test_a_kept_exception_does_not_show_another_callers_arguments() -> None:
    # The worker's own frame was in the traceback handed to the caller. That frame runs
    # on: error reporters that read a traceback's locals (Sentry's default) saw the job of
    # whichever caller the worker served next.
    policies(p={"timeout": {"attempt": LONG}})
    started, release = threading.Event(), threading.Event()

    @guarded("p")
    def work(secret: str) -> str:
        if secret == "alice":
            raise ValueError("alice's call failed")
        started.set()
        release.wait(LONG)
        return secret

    with pytest.raises(ValueError) as kept:
        work("alice")
    bob = threading.Thread(target=work, args=("bob's password",))
    bob.start()
    try:
        assert started.wait(LONG)  # bob's call runs on the worker alice's call used
        tb = kept.value.__traceback__
        tb = None if tb is None else tb.tb_next  # past this test's own frame
        while tb is not None:
            assert "bob's password" not in repr(tb.tb_frame.f_locals), tb.tb_frame
            tb = tb.tb_next
    finally:
        release.set()
        bob.join(LONG)


# --- interrupts between any two steps -------------------------------------------------------


class Interrupt(BaseException):
    """Stands for Ctrl-C: a signal's handler raises between two steps of the caller."""


def interrupt_at(step: int) -> Callable[[FrameType, str, Any], Any]:
    """A trace function that raises ``Interrupt`` at the ``step``-th line the caller runs in
    the timeout module (where a signal handler may run), counting from 1."""
    seen = [0]
    module_file = timeout_layer.__file__

    def local(frame: FrameType, event: str, arg: Any) -> Any:
        if event == "line":
            seen[0] += 1
            if seen[0] == step:
                raise Interrupt(f"{frame.f_code.co_name}:{frame.f_lineno}")
        return local

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        return local if frame.f_code.co_filename == module_file else None

    return tracer


@pytest.mark.parametrize("ends", ["in time", "after the deadline"])
def test_an_interrupt_between_any_two_steps_leaves_no_worker_behind(
    ends: str, gate: threading.Event, hand_off: str
) -> None:
    # A caller interrupted after taking a worker and before handing it a job, or after the
    # work finished and before returning the worker, left that thread waiting for a job
    # forever, holding the finished call's result.
    policies(p={"timeout": {"attempt": LONG if ends == "in time" else SHORT}})
    made: list[weakref.ref[Big]] = []

    @guarded("p")
    def work(release: threading.Event | None) -> Big:
        if release is not None:
            release.wait(LONG)
        result = Big()
        made.append(weakref.ref(result))
        return result

    assert work(None) is not None  # the chain is compiled: only the layer's steps are traced
    previous = sys.gettrace()
    interrupted_at: list[str] = []
    for step in range(1, 200):
        release = threading.Event() if ends != "in time" else None
        sys.settrace(interrupt_at(step))
        try:
            work(release)
        except Interrupt as exc:
            interrupted_at.append(str(exc))
            continue  # the next step
        except CallTimeout:
            break  # no step left to interrupt
        else:
            break
        finally:
            sys.settrace(previous)
            if release is not None:
                release.set()
            wait_until(every_worker_idle)
            wait_until(lambda: all(ref() is None for ref in made))
    else:
        pytest.fail("the call never ended without an interrupt")
    assert sum(at.startswith("timeout_layer:") for at in interrupted_at) > 5, interrupted_at
    assert work(None) is not None  # the pool still serves


def test_an_interrupt_inside_thread_start_leaves_the_new_threads_descriptors_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Interrupted inside Thread.start(), once the new thread ran, the caller closed the
    # worker's pipes under it: the thread polled closed descriptors (EBADF killed it) or,
    # their numbers reused by the next open(), read a byte of another worker's or file's.
    policies(p={"timeout": {"attempt": LONG}})

    @guarded("p")
    def work(x: int) -> int:
        return x

    assert work(0) == 0  # compiled
    died: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: died.append(args.exc_value))
    start_file = threading.Thread.start.__code__.co_filename

    def local(frame: FrameType, event: str, arg: Any) -> Any:
        line = linecache.getline(start_file, frame.f_lineno) if event == "line" else ""
        if "self._started.wait()" in line:
            raise Interrupt("inside Thread.start, the thread started")
        return local

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        spawning = frame.f_back is not None and frame.f_back.f_code.co_name == "_spawn"
        return local if frame.f_code.co_name == "start" and spawning else None

    for _ in range(20):
        drain_pool()
        before = open_fds()
        previous = sys.gettrace()
        sys.settrace(tracer)
        try:
            with pytest.raises(Interrupt):
                work(1)
        finally:
            sys.settrace(previous)
        drain_pool()  # the started thread woke to its dropped handle, and ended
        assert (died, open_fds(), timeout_layer._POOL.files) == ([], before, {})
    assert work(2) == 2


def test_work_finishing_as_the_deadline_passes_returns_its_result(
    gate: threading.Event,
) -> None:
    # The caller's timed wait ends; before it claims the attempt, the work finishes and the
    # worker claims it: the caller takes the result (not a timeout), exactly once.
    policies(p={"timeout": {"attempt": SHORT}})
    returned = threading.Event()

    @guarded("p")
    def work(x: int) -> int:
        gate.wait(LONG)
        returned.set()
        return x

    module_file = timeout_layer.__file__

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        if frame.f_code.co_filename != module_file:
            return None

        def local(frame: FrameType, event: str, arg: Any) -> Any:
            line = ""
            if event == "line":
                line = linecache.getline(module_file, frame.f_lineno)
            if "gate.acquire(False)" in line and "worker" in frame.f_locals:
                worker = frame.f_locals["worker"]
                gate.set()  # the work finishes now, after the timed wait ran out
                assert returned.wait(LONG)
                wait_until(worker.gate.locked)  # and its worker claimed the attempt
            return local

        return local

    previous = sys.gettrace()
    sys.settrace(tracer)
    try:
        result = work(7)
    finally:
        sys.settrace(previous)
    assert result == 7
    s = stats()
    assert (s.successes, s.timeouts, s.abandoned) == (1, 0, 0)
    wait_until(every_worker_idle)


# --- recursion ------------------------------------------------------------------------------


def test_recursion_through_a_sync_timeout_ends_in_recursion_error() -> None:
    # Each nested call waits for a thread of its own, and each thread has a fresh stack:
    # runaway recursion never met the recursion limit and started threads without bound.
    policies(p={"timeout": {"attempt": LONG}})
    deepest = [0]

    @guarded("p")
    def recurse(n: int) -> int:
        deepest[0] = max(deepest[0], n)
        return n if n >= 3000 else recurse(n + 1)  # bounded, so a broken layer ends

    with pytest.raises(RecursionError, match="nested through sync timeouts"):
        recurse(0)
    assert deepest[0] * timeout_layer.FRAMES_PER_HOP < sys.getrecursionlimit()
    assert stats().timeouts == 0

    @guarded("p")
    def nested(n: int) -> int:
        return n if n == 0 else 1 + nested(n - 1)

    assert nested(20) == 20  # ordinary nesting still works


# --- races at the deadline ------------------------------------------------------------------


@pytest.mark.parametrize("idle_seconds", [30.0, 0.0005])
def test_many_callers_at_the_deadline_each_get_their_own_result(
    monkeypatch: pytest.MonkeyPatch, idle_seconds: float
) -> None:
    # 1 ms deadlines on about 1 ms of work: every call returns its own result or raises
    # CallTimeout; counters exact; no worker lost. A tiny idle time makes workers end while
    # callers take them.
    monkeypatch.setattr(timeout_layer, "IDLE_SECONDS", idle_seconds)
    policies(p={"timeout": {"attempt": 0.001}})

    @guarded("p")
    def work(x: int) -> int:
        time.sleep(0.001 if x % 2 else 0)
        return x

    wrong: list[tuple[int, int]] = []
    outcomes = {"ok": 0, "timeout": 0}
    count = threading.Lock()
    barrier = threading.Barrier(8)

    def caller(k: int) -> None:
        barrier.wait(LONG)
        for j in range(150):
            x = k * 1000 + j
            try:
                got = work(x)
            except CallTimeout:
                with count:
                    outcomes["timeout"] += 1
                continue
            with count:
                outcomes["ok"] += 1
            if got != x:
                wrong.append((x, got))

    callers = [threading.Thread(target=caller, args=(k,)) for k in range(8)]
    for t in callers:
        t.start()
    for t in callers:
        t.join(LONG)
    assert not any(t.is_alive() for t in callers)
    assert wrong == []
    assert outcomes["ok"] + outcomes["timeout"] == 8 * 150
    s = stats()
    assert (s.successes, s.timeouts, s.abandoned) == (
        outcomes["ok"],
        outcomes["timeout"],
        outcomes["timeout"],
    )
    wait_until(every_worker_idle)


def test_a_worker_reused_after_abandoned_work_returns_the_new_callers_result(
    gate: threading.Event,
) -> None:
    policies(p={"timeout": {"attempt": SHORT}}, q={"timeout": {"attempt": LONG}})
    ran_on: dict[str, threading.Thread] = {}

    @guarded("p")
    def old() -> str:
        ran_on["old"] = threading.current_thread()
        gate.wait(LONG)
        return "old result"

    @guarded("q")
    def new() -> str:
        ran_on["new"] = threading.current_thread()
        return "new result"

    with pytest.raises(CallTimeout):
        old()
    idle_before = len(timeout_layer._POOL.idle)
    gate.set()
    wait_until(lambda: len(timeout_layer._POOL.idle) > idle_before)  # it came back
    assert new() == "new result"
    assert ran_on["new"] is ran_on["old"]  # the most recently idle worker


# --- control flow from the work -------------------------------------------------------------


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text")


@pytest.mark.parametrize("scope", ["attempt", "total"])
def test_system_exit_and_unprintable_errors_reach_the_caller_unchanged(scope: str) -> None:
    policies(p={"timeout": {scope: LONG}})
    errors: dict[str, BaseException] = {"exit": SystemExit(3), "odd": Unprintable()}

    @guarded("p")
    def work(kind: str) -> None:
        raise errors[kind]

    for kind, error in errors.items():
        with pytest.raises(type(error)) as got:
            work(kind)
        assert got.value is error
    assert stats().failures == 2


def test_an_abandoned_unprintable_error_is_logged_without_breaking_the_worker(
    gate: threading.Event, caplog: pytest.LogCaptureFixture
) -> None:
    policies(p={"timeout": {"attempt": SHORT}}, q={"timeout": {"attempt": LONG}})
    caplog.set_level(logging.DEBUG, logger="guardrails")

    @guarded("p")
    def odd() -> None:
        gate.wait(LONG)
        raise Unprintable

    @guarded("q")
    def fine() -> int:
        return 1

    with pytest.raises(CallTimeout):
        odd()
    gate.set()
    wait_until(lambda: any("abandoned after" in r.getMessage() for r in caplog.records))
    wait_until(every_worker_idle)
    assert fine() == 1


# --- fork -----------------------------------------------------------------------------------


#: The guarded functions of the fork test, for the pool's children (which inherit them).
_IN_CHILD: dict[str, Callable[..., Any]] = {}


def _square_with_timeouts(x: int) -> tuple[int, int]:
    timed_out = 0
    for _ in range(20):
        try:
            _IN_CHILD["hang"]()
        except CallTimeout:
            timed_out += 1
    return _IN_CHILD["square"](x), timed_out


def test_a_fork_pool_uses_timeouts_while_the_parents_workers_are_mid_job(
    gate: threading.Event,
) -> None:
    policies(ok={"timeout": {"attempt": LONG}}, hang={"timeout": {"attempt": 0.01}})

    @guarded("ok")
    def square(x: int) -> int:
        return x * x

    @guarded("hang")
    def hang() -> None:
        gate.wait(LONG)

    _IN_CHILD.update(square=square, hang=hang)
    try:
        for _ in range(3):
            with pytest.raises(CallTimeout):
                hang()  # three parent workers are busy at the fork
        assert square(3) == 9
        context = multiprocessing.get_context("fork")
        with context.Pool(2) as pool:
            got = pool.map_async(_square_with_timeouts, range(6)).get(LONG * 2)
        assert got == [(x * x, 20) for x in range(6)]
    finally:
        _IN_CHILD.clear()


# --- file descriptors and the lock fallback ---------------------------------------------------


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def is_open(fd: int) -> bool:
    """Without opening anything (listing /proc/self/fd opens a descriptor of its own)."""
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def pool_fds() -> int:
    return sum(len(files.fds) for files in timeout_layer._POOL.files.values())


def drain_pool() -> None:
    """End every pool thread: an idle one wakes to its dropped handle and ends (busy ones
    rejoin the pool when released, and are dropped in turn)."""

    def ended() -> bool:
        timeout_layer._POOL.idle.clear()
        return not pool_threads()

    wait_until(ended)


@pytest.fixture(params=["pipes", "locks"])
def hand_off(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Workers started from here hand off through pipes, or through locks (Windows)."""
    drain_pool()
    monkeypatch.setattr(timeout_layer, "_PIPES", request.param == "pipes")
    yield request.param
    drain_pool()  # no lock-based worker outlives the test


def test_worker_descriptors_are_closed_when_their_threads_end(
    monkeypatch: pytest.MonkeyPatch, gate: threading.Event
) -> None:
    # Each worker holds two pipes: they must go with its thread (idle exit, dropped handle).
    policies(p={"timeout": {"attempt": LONG}}, q={"timeout": {"attempt": SHORT}})

    @guarded("p")
    def where(x: int) -> threading.Thread:
        return threading.current_thread()

    @guarded("p")
    def boom() -> None:
        raise ValueError("boom")

    @guarded("q")
    def hang() -> None:
        gate.wait(LONG)

    drain_pool()
    before = open_fds()
    monkeypatch.setattr(timeout_layer, "IDLE_SECONDS", 0.001)
    threads: set[threading.Thread] = set()
    for i in range(200):
        thread = where(i)
        threads.add(thread)
        if i % 2:
            wait_until(lambda t=thread: not t.is_alive())  # ended idle: the next call starts one
        if i % 50 == 0:
            with pytest.raises(CallTimeout):
                hang()
        if i % 7 == 0:
            with pytest.raises(ValueError, match="boom"):
                boom()
    assert len(threads) >= 100  # many workers started and ended
    assert pool_fds() == 4 * len(timeout_layer._POOL.files) > 0
    gate.set()
    drain_pool()
    assert (open_fds(), pool_fds(), timeout_layer._POOL.files) == (before, 0, {})


def test_a_forked_child_closes_the_parents_worker_descriptors(gate: threading.Event) -> None:
    policies(p={"timeout": {"attempt": SHORT}}, ok={"timeout": {"attempt": LONG}})

    @guarded("p")
    def hang() -> None:
        gate.wait(LONG)

    @guarded("ok")
    def fine(x: int) -> int:
        return x

    with pytest.raises(CallTimeout):
        hang()
    assert fine(1) == 1  # a parent worker is busy, another idle, at the fork
    assert pool_fds() >= 8
    # By number, not by count: other tests' idle workers may close theirs meanwhile, and
    # every pool descriptor open at the fork must be closed in the child.
    pool = {fd for files in list(timeout_layer._POOL.files.values()) for fd in files.fds}
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            baseline = open_fds()  # the child has one thread: nothing else opens or closes
            code = 2 if any(map(is_open, pool)) else 3 if timeout_layer._POOL.files else 4
            if code == 4 and fine(2) == 2:
                code = 5
                with contextlib.suppress(CallTimeout):
                    hang()
                gate.set()
                timeout_layer.IDLE_SECONDS = 0.001  # the child's own workers end too
                drain_pool()
                code = 0 if open_fds() == baseline else 6
        finally:
            os._exit(code)
    assert _reap(pid) == 0


def test_work_that_forks_signals_only_its_own_caller() -> None:
    # The forked child of the work returns from the work too, into its copy of the worker:
    # that copy signalled "finished" through the pipe it shares with the parent, waking the
    # parent's caller while the parent's work still ran (RuntimeError from releasing a gate
    # nobody held, or a stale byte that a later caller of the worker took as its own).
    policies(p={"timeout": {"attempt": LONG}})
    statuses: list[int | None] = []

    @guarded("p")
    def work(x: int) -> int:
        pid = os.fork()
        if pid == 0:
            return -x  # the child's only thread returns into the worker's loop, and ends
        statuses.append(_reap(pid))  # the child has run to its end before this returns
        return x

    assert [work(x) for x in range(1, 6)] == [1, 2, 3, 4, 5]
    assert statuses == [0] * 5
    wait_until(every_worker_idle)
    assert (stats().successes, stats().failures) == (5, 0)


def test_out_of_descriptors_a_lock_hands_off(
    monkeypatch: pytest.MonkeyPatch, gate: threading.Event
) -> None:
    policies(p={"timeout": {"attempt": LONG}}, q={"timeout": {"attempt": SHORT}})

    @guarded("p")
    def double(x: int) -> int:
        return 2 * x

    @guarded("q")
    def hang() -> None:
        gate.wait(LONG)

    def no_pipe() -> tuple[int, int]:
        raise OSError(errno.EMFILE, "Too many open files")

    drain_pool()
    with monkeypatch.context() as patched:
        patched.setattr(os, "pipe", no_pipe)
        assert double(2) == 4
        with pytest.raises(CallTimeout):
            hang()
        assert [double(i) for i in range(5)] == [0, 2, 4, 6, 8]
    assert pool_fds() == 0 and len(timeout_layer._POOL.files) == 2
    gate.set()
    wait_until(every_worker_idle)
    assert [double(i) for i in range(5)] == [0, 2, 4, 6, 8]
    drain_pool()


# --- async ----------------------------------------------------------------------------------


async def _sleep_long(x: int) -> int:
    await asyncio.sleep(LONG)
    return x


@pytest.mark.parametrize(
    "path", ["ok", "error", "timeout", "caught and returned", "caught and raised", "base"]
)
def test_async_cancel_count_is_back_to_its_entry_value_on_every_path(path: str) -> None:
    policies(p={"timeout": {"attempt": SHORT, "total": LONG}})

    class Stop(BaseException):
        pass

    @guarded("p")
    async def work() -> str:
        if path == "ok":
            return "ok"
        if path == "error":
            raise KeyError("k")
        if path == "base":
            raise Stop
        try:
            await asyncio.sleep(LONG)
        except asyncio.CancelledError:
            if path == "caught and returned":
                return "too late"
            if path == "caught and raised":
                raise ValueError("converted") from None
            raise
        return "never"

    async def main() -> tuple[int, int, str]:
        task = asyncio.current_task()
        assert task is not None
        before = task.cancelling()
        try:
            outcome = await work()
        except (CallTimeout, KeyError, Stop) as exc:
            outcome = type(exc).__name__
        await asyncio.sleep(0)  # a cancellation left pending would land here
        return before, task.cancelling(), outcome

    before, after, outcome = asyncio.run(main())
    assert before == after == 0
    expected = {"ok": "ok", "error": "KeyError", "base": "Stop"}.get(path, "CallTimeout")
    assert outcome == expected


def test_async_outer_cancel_at_every_moment_around_the_deadline() -> None:
    # An outer cancel issued before the call ended is always a CancelledError; a call that
    # ended first is a CallTimeout; the task's cancel count is balanced either way.
    policies(p={"timeout": {"attempt": 0.002}})

    @guarded("p")
    async def work(x: int) -> int:
        return await _sleep_long(x)

    async def one(delay: float) -> str:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        cancelled_at: list[bool] = []

        def outer() -> None:
            cancelled_at.append(True)
            task.cancel()

        handle = loop.call_later(delay, outer)
        try:
            await work(1)
        except CallTimeout:
            handle.cancel()
            assert not cancelled_at, "an outer cancel became a timeout"
            return "timeout"
        except asyncio.CancelledError:
            assert cancelled_at
            assert task.uncancel() == 0  # only the outer cancel is left
            return "cancelled"
        finally:
            handle.cancel()
        pytest.fail("the work returned")

    async def main() -> set[str]:
        seen = set()
        for i in range(200):
            seen.add(await asyncio.create_task(one(0.004 * (i % 20) / 20)))
        return seen

    assert asyncio.run(main()) <= {"timeout", "cancelled"}


def test_many_async_tasks_inside_wait_for_and_task_groups_get_their_own_results() -> None:
    policies(p={"timeout": {"attempt": 0.002}})

    @guarded("p")
    async def work(x: int) -> int:
        await asyncio.sleep(0.002 if x % 3 == 0 else 0)
        return x

    async def main() -> tuple[dict[int, object], int]:
        got: dict[int, object] = {}

        async def call(x: int) -> None:
            task = asyncio.current_task()
            assert task is not None
            try:
                if x % 2:
                    got[x] = await asyncio.wait_for(work(x), LONG)
                else:
                    got[x] = await work(x)
            except CallTimeout:
                got[x] = "timeout"
            assert task.cancelling() == 0

        async with asyncio.TaskGroup() as group:
            for x in range(300):
                group.create_task(call(x))
        return got, len(got)

    got, n = asyncio.run(main())
    assert n == 300
    assert all(v in (x, "timeout") for x, v in got.items())
    s = stats()
    assert s.successes + s.timeouts == 300
    assert s.timeouts == sum(v == "timeout" for v in got.values())
    assert s.abandoned == 0  # async work is cancelled, never left running
