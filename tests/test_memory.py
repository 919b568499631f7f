from __future__ import annotations

import gc
import os
import sys
from typing import Any

import psutil
import pytest

import guardrails
from guardrails import MemoryBudgetExceeded, configure, guarded
from guardrails._memory import PROBE, RssProbe
from guardrails.testing import FakeClock


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


def test_memory_growth_is_recorded() -> None:
    configure({"policies": {"m": {"memory": {"max_rss": "100%"}}}})
    keep = []

    @guarded("m")
    def grow() -> None:
        # Faulting in 128 MiB takes far longer than the probe's 1 ms reuse window.
        block = bytearray(128 * 2**20)
        block[::4096] = b"x" * len(block[::4096])
        keep.append(block)

    grow()
    assert guardrails.stats()["m"].max_rss_growth_bytes >= 64 * 2**20


def test_async_memory_guard() -> None:
    import asyncio

    configure({"policies": {"m": {"memory": {"max_rss": 1024}}}})

    @guarded("m")
    async def f() -> None: ...

    with pytest.raises(MemoryBudgetExceeded):
        asyncio.run(f())
