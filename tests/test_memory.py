from __future__ import annotations

import asyncio
import gc
import os
import select
import signal
import sys
import threading
import time
import warnings
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np
import psutil
import pytest

import guardrails
from guardrails import MemoryBudgetExceeded, configure, guarded
from guardrails.layers import memory as _memory
from guardrails.layers.memory import PROBE, RssProbe
from guardrails.testing import FakeClock

MiB = 2**20


def _close(a: int, b: int) -> bool:
    return abs(a - b) <= max(a, b) * 0.1


def test_probe_agrees_with_psutil() -> None:
    assert _close(PROBE.rss(), psutil.Process().memory_info().rss)


def test_probe_reads_the_child_after_fork() -> None:
    PROBE.rss()
    parent = PROBE.pid
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report and leave at once
        try:
            ballast = bytearray(64 * 2**20)  # grow the child only
            ballast[::4096] = b"x" * len(ballast[::4096])
            ok = PROBE.rss() > 0 and PROBE.pid == os.getpid() != parent
            ok = ok and _close(PROBE.rss(), psutil.Process().memory_info().rss)
            os.write(writer, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(writer)
    answer = os.read(reader, 1)
    os.close(reader)
    os.waitpid(pid, 0)
    assert answer == b"1"
    assert PROBE.pid == os.getpid()


def test_a_fresh_probe_opens_lazily() -> None:
    probe = RssProbe()
    assert probe.pid == -1
    assert probe.rss() > 0
    if sys.platform == "linux":
        assert probe.pid == os.getpid()


def test_over_the_hard_limit_refuses_with_the_numbers(clock: FakeClock) -> None:
    configure(
        {"policies": {"m": {"memory": {"max_rss": 1024}, "retry": {"retry_on": ["MemoryError"]}}}}
    )
    calls = []
    f = guarded("m")(lambda: calls.append(1))
    with pytest.raises(MemoryBudgetExceeded) as exc:
        f()
    assert isinstance(exc.value, MemoryError)
    assert exc.value.limit == 1024 and exc.value.rss > 1024
    assert "over memory.max_rss 1.0 KiB" in str(exc.value)
    assert calls == []
    s = guardrails.stats()["m"]
    assert (s.rejected, s.retries) == (1, 0)


def test_refusal_collects_garbage_at_most_once_per_interval(clock: FakeClock) -> None:
    configure({"policies": {"m": {"memory": {"max_rss": 1024}}}})
    f = guarded("m")(lambda: None)
    collections = []

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start" and info["generation"] == 2:
            collections.append(1)

    clock.advance(10)
    gc.callbacks.append(on_gc)
    try:
        for _ in range(3):
            with pytest.raises(MemoryBudgetExceeded):
                f()
        assert len(collections) == 1
        clock.advance(1.5)
        with pytest.raises(MemoryBudgetExceeded):
            f()
        assert len(collections) == 2
    finally:
        gc.callbacks.remove(on_gc)


def test_soft_limit_warns_once_per_crossing(logs: pytest.LogCaptureFixture) -> None:
    configure({"policies": {"m": {"memory": {"soft_rss": 1024}, "log": None}}})
    f = guarded("m")(lambda: None)
    for _ in range(5):
        f()
    warnings = [r for r in logs.records if "soft_rss" in r.getMessage()]
    assert len(warnings) == 1
    assert warnings[0].levelname == "WARNING" and warnings[0].policy == "m"


def test_percent_of_the_limit_admits_a_normal_process() -> None:
    configure({"policies": {"m": {"memory": {"max_rss": "100%"}}}})
    assert guarded("m")(lambda: "ran")() == "ran"
    assert guardrails.stats()["m"].rejected == 0


def test_memory_growth_is_recorded(probe_time: list[float]) -> None:
    configure({"policies": {"m": {"memory": {"max_rss": "100%"}}}})
    keep = []

    @guarded("m")
    def grow() -> None:
        keep.append(_ballast())
        probe_time[0] += 1.0  # so the reading after the call is a fresh one

    grow()
    growth = guardrails.stats()["m"].max_rss_growth_bytes
    assert growth >= 48 * MiB, f"growth {growth}; {_memory_facts()}"


def test_memory_growth_is_recorded_async(probe_time: list[float]) -> None:
    configure({"policies": {"m": {"memory": {"max_rss": "100%"}}}})
    keep = []

    @guarded("m")
    async def grow() -> None:
        keep.append(_ballast())
        probe_time[0] += 1.0  # so the reading after the call is a fresh one

    asyncio.run(grow())
    assert guardrails.stats()["m"].max_rss_growth_bytes >= 48 * MiB


def test_async_memory_guard() -> None:
    import asyncio

    configure({"policies": {"m": {"memory": {"max_rss": 1024}}}})

    @guarded("m")
    async def f() -> None: ...

    with pytest.raises(MemoryBudgetExceeded):
        asyncio.run(f())


# --- soft_rss: one warning per crossing, whatever the probe's reuse window --------------


@pytest.fixture
def probe_time(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> list[float]:
    """Freeze the probe's clock: a reading is reused until the test moves this clock past
    ``MAX_AGE`` (the worst case of the reuse window, with no dependence on real timing)."""
    # Behind real time, so readings stamped with it look old once the real clock is back.
    now = [time.monotonic() - 3600.0]
    monkeypatch.setattr(_memory, "monotonic", lambda: now[0])
    # No collection may free an earlier test's garbage between the baseline and the reading
    # after the ballast: collect now, then hold the collector off until the test ends.
    gc.collect()
    if gc.isenabled():
        gc.disable()
        request.addfinalizer(gc.enable)
    PROBE.read()
    return now


def _ballast() -> Any:
    # Every page written, so it is resident at once; this large an array is its own mapping,
    # returned to the kernel when it is freed.
    before = psutil.Process().memory_info().rss
    ballast = np.ones(64 * MiB // 8)
    after = psutil.Process().memory_info().rss
    # If the kernel did not count the ballast as resident, no guard could see it: say so.
    assert after - before >= 48 * MiB, f"64 MiB ballast: rss {before} -> {after}; {_memory_facts()}"
    return ballast


def _memory_facts() -> str:
    facts = []
    for path in (
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory.high",
        "/sys/fs/cgroup/memory.current",
        "/sys/fs/cgroup/memory.swap.current",
        "/sys/kernel/mm/transparent_hugepage/enabled",
    ):
        try:
            with open(path) as f:
                facts.append(f"{path}={f.read().strip()}")
        except OSError:
            pass
    return "; ".join(facts)


def _soft_warnings(logs: pytest.LogCaptureFixture) -> int:
    return sum("soft_rss" in r.getMessage() for r in logs.records)


def _soft_limit_just_above_now(f: Callable[[], Any]) -> None:
    configure({"policies": {"m": {"memory": {"soft_rss": "100%"}, "log": None}}})
    f()  # compiled and warm before the baseline is read
    soft = PROBE.read() + 32 * MiB
    configure({"policies": {"m": {"memory": {"soft_rss": soft}, "log": None}}})


def test_soft_limit_warns_again_after_a_call_saw_memory_back_under_it(
    logs: pytest.LogCaptureFixture, probe_time: list[float]
) -> None:
    f = guarded("m")(lambda: None)
    _soft_limit_just_above_now(f)
    f()
    assert _soft_warnings(logs) == 0

    ballast = _ballast()
    probe_time[0] += 1.0
    f()
    f()
    assert _soft_warnings(logs) == 1

    del ballast  # back under, and the next call comes within the reuse window
    f()
    assert _soft_warnings(logs) == 1

    ballast = _ballast()
    probe_time[0] += 1.0
    f()
    f()
    assert _soft_warnings(logs) == 2
    del ballast


def test_soft_limit_warns_again_after_a_call_saw_memory_back_under_it_async(
    logs: pytest.LogCaptureFixture, probe_time: list[float]
) -> None:
    @guarded("m")
    async def f() -> None: ...

    _soft_limit_just_above_now(lambda: asyncio.run(f()))

    async def scenario() -> list[int]:
        seen = []
        await f()
        seen.append(_soft_warnings(logs))
        ballast = _ballast()
        probe_time[0] += 1.0
        await f()
        await f()
        seen.append(_soft_warnings(logs))
        del ballast
        await f()
        seen.append(_soft_warnings(logs))
        ballast = _ballast()
        probe_time[0] += 1.0
        await f()
        await f()
        seen.append(_soft_warnings(logs))
        del ballast
        return seen

    assert asyncio.run(scenario()) == [0, 1, 1, 2]


def test_one_warning_per_crossing_for_the_policy_across_functions_and_reconfigures(
    logs: pytest.LogCaptureFixture, probe_time: list[float]
) -> None:
    f = guarded("m")(lambda: None)
    g = guarded("m")(lambda: None)
    _soft_limit_just_above_now(f)
    soft = guardrails.policy("m").memory.soft_rss  # type: ignore[union-attr]
    ballast = _ballast()
    probe_time[0] += 1.0
    f()
    g()  # another function of the policy sees the same crossing
    for _ in range(3):  # the same limits again: still the same crossing
        configure({"policies": {"m": {"memory": {"soft_rss": soft}, "log": None}}})
        f()
        g()
    assert _soft_warnings(logs) == 1
    del ballast


def test_one_warning_per_crossing_for_the_policy_across_functions_async(
    logs: pytest.LogCaptureFixture, probe_time: list[float]
) -> None:
    @guarded("m")
    async def f() -> None: ...

    @guarded("m")
    async def g() -> None: ...

    _soft_limit_just_above_now(lambda: asyncio.run(f()))
    ballast = _ballast()
    probe_time[0] += 1.0

    async def scenario() -> None:
        await f()
        await g()

    asyncio.run(scenario())
    assert _soft_warnings(logs) == 1
    del ballast


# --- a failed or refused call does not keep its arguments alive ----------------------------


class Boom(ValueError):
    """A failure that can be weakly referenced (built-in exceptions cannot)."""


def _boom(a: Any) -> None:
    raise Boom


async def _boom_async(a: Any) -> None:
    raise Boom


def _fine(a: Any) -> None: ...


async def _fine_async(a: Any) -> None: ...


@pytest.mark.parametrize(
    ("memory", "fn", "error"),
    [({"max_rss": "100%"}, _boom, Boom), ({"max_rss": 1024}, _fine, MemoryBudgetExceeded)],
    ids=["failed", "refused"],
)
def test_a_failed_call_frees_its_arguments_and_its_exception_without_the_collector(
    memory: dict[str, Any], fn: Callable[[Any], Any], error: type[BaseException]
) -> None:
    # No log block: a captured log record would hold the exception on purpose.
    configure({"policies": {"m": {"memory": memory, "log": None}}})
    f = guarded("m")(fn)
    gc.collect()
    gc.disable()
    try:
        array = np.ones(8)
        arg = weakref.ref(array)
        try:
            f(array)
        except error as e:
            exc = weakref.ref(e)
        del array
        assert arg() is None and exc() is None
    finally:
        gc.enable()


@pytest.mark.parametrize(
    ("memory", "fn", "error"),
    [
        ({"max_rss": "100%"}, _boom_async, Boom),
        ({"max_rss": 1024}, _fine_async, MemoryBudgetExceeded),
    ],
    ids=["failed", "refused"],
)
def test_a_failed_call_frees_its_arguments_and_its_exception_without_the_collector_async(
    memory: dict[str, Any], fn: Callable[[Any], Any], error: type[BaseException]
) -> None:
    # No log block: a captured log record would hold the exception on purpose.
    configure({"policies": {"m": {"memory": memory, "log": None}}})
    f = guarded("m")(fn)

    async def scenario() -> tuple[object, object]:
        array = np.ones(8)
        arg = weakref.ref(array)
        try:
            await f(array)
        except error as e:
            exc = weakref.ref(e)
        del array
        return arg(), exc()

    gc.collect()
    gc.disable()
    try:
        assert asyncio.run(scenario()) == (None, None)
    finally:
        gc.enable()


# --- fork while another thread holds the memory layer's lock -----------------------------


def _fork_while_the_collection_lock_is_held(child: Callable[[], bool]) -> None:
    """Fork while another thread holds the forced-collection lock; the child runs ``child``
    and reports; the parent waits a bounded time and never hangs the suite."""
    held, release = threading.Event(), threading.Event()

    def holder() -> None:
        with _memory._COLLECTIONS.lock:
            held.set()
            release.wait()

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        assert held.wait(60), "the holder thread never took the lock"
        reader, writer = os.pipe()
        with warnings.catch_warnings():  # 3.12+ warns about forking a threaded process
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:
            try:
                os.write(writer, b"1" if child() else b"0")
            finally:
                os._exit(0)
        os.close(writer)
        ready, _, _ = select.select([reader], [], [], 60)
        answer = os.read(reader, 1) if ready else b""
        os.close(reader)
        if not answer:
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        assert answer == b"1", "the child's guarded call never finished"
    finally:
        release.set()
        thread.join()


def test_a_child_forked_while_a_thread_holds_the_collection_lock_runs_guarded_calls() -> None:
    configure({"policies": {"m": {"memory": {"max_rss": 1024}, "log": None}}})
    f = guarded("m")(lambda: None)  # always over: every call goes through the collection

    def child() -> bool:
        try:
            f()
        except MemoryBudgetExceeded:
            return True
        return False

    _fork_while_the_collection_lock_is_held(child)


def test_a_child_forked_while_a_thread_holds_the_collection_lock_runs_guarded_calls_async() -> None:
    configure({"policies": {"m": {"memory": {"max_rss": 1024}, "log": None}}})

    @guarded("m")
    async def f() -> None: ...

    def child() -> bool:
        try:
            asyncio.run(f())
        except MemoryBudgetExceeded:
            return True
        return False

    _fork_while_the_collection_lock_is_held(child)
