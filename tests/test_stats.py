"""Per-policy statistics: exact counters, nearest-rank percentiles, the report table."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import math
import random
import threading
from collections.abc import Callable
from time import perf_counter
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console

import guardrails
from guardrails import configure, guarded
from guardrails._state import STATE
from guardrails._stats import LATENCY_WINDOW, PolicyCounters
from guardrails.testing import FakeClock
from tests.twins import guard_as


@pytest.fixture(params=["sync", "async"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def guard(kind: str, fn: Callable[..., Any], name: str) -> Callable[..., Any]:
    return guard_as(kind, fn, name)


def nearest_rank(values: list[float], pct: float) -> float:
    """The smallest value with at least ``pct`` percent of the values at or below it."""
    ordered = sorted(values)
    return next(v for v in ordered if sum(x <= v for x in values) * 100 >= pct * len(values))


def fails_if(fail: bool) -> int:
    if fail:
        raise KeyError("asked to")
    return 1


def test_every_counter_is_exact(kind: str, clock: FakeClock) -> None:
    # Every counter ends on a different number, so a swapped pair cannot pass.
    configure(
        {
            "policies": {
                "s": {
                    "log": {},
                    "validate": {"args": {"x": {"min": 0}}, "output": "int"},
                    "cache": {"ttl": 60},
                    "retry": {"max_attempts": 3, "wait": {"initial": 1, "jitter": 0}},
                }
            }
        }
    )
    flaky = [ConnectionError()]

    def f(x: int) -> Any:
        if x == 1 and flaky:
            raise flaky.pop()  # once, then fine: one retry
        if x == 2:
            raise KeyError(x)  # not retried
        if x == 3:
            raise ConnectionError  # every attempt: two retries
        if x == 4:
            return "not an int"  # output refused
        return x

    g = guard(kind, f, "s")
    assert g(1) == 1  # miss, retry
    for _ in range(6):
        assert g(1) == 1  # hits
    assert g(5) == 5  # miss
    for x, error in [
        (-1, guardrails.InputValidationError),
        (2, KeyError),
        (3, ConnectionError),
        (4, guardrails.OutputValidationError),
    ]:
        with pytest.raises(error):
            g(x)
    s = guardrails.stats()["s"]
    assert s.as_dict() | {"p50_ms": None, "p95_ms": None, "p99_ms": None} == {
        "calls": 12,
        "successes": 8,
        "failures": 4,
        "retries": 3,
        "cache_hits": 6,
        "cache_misses": 5,
        "rejected": 2,
        "rejected_input": 1,
        "rejected_output": 1,
        "rejected_memory": 0,
        "slow": 0,
        "p50_ms": None,
        "p95_ms": None,
        "p99_ms": None,
        "max_rss_growth_bytes": 0,
        "timeouts": 0,
        "abandoned": 0,
        "short_circuited": 0,
        "rate_limited": 0,
        "bulkhead_rejected": 0,
        "fallbacks": 0,
        "injected": 0,
        "shared_cache_hits": 0,
        "redis_errors": 0,
        "breaker_state": None,
    }
    assert s.p50_ms is not None  # latencies were recorded (log is on)


def test_functions_sharing_a_policy_add_up() -> None:
    configure({"policies": {"s": {"log": {}}}})
    f = guarded("s")(lambda: 1)

    @guarded("s")
    async def g() -> None:
        raise RuntimeError

    @guarded("other")
    def h() -> int:
        return 1

    f(), f(), h()
    with pytest.raises(RuntimeError):
        asyncio.run(g())
    stats = guardrails.stats()
    assert list(stats) == ["other", "s"]
    s = stats["s"]
    assert (s.calls, s.successes, s.failures, s.rejected) == (3, 2, 1, 0)
    assert stats["other"].calls == 1


def test_counters_are_exact_under_threads() -> None:
    configure({"policies": {"s": {"log": {}}}})
    f = guarded("s")(fails_if)
    start = threading.Barrier(8)

    def worker(i: int) -> None:
        start.wait()
        for n in range(300):
            with contextlib.suppress(KeyError):
                f(n % 3 == 0)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    s = guardrails.stats()["s"]
    assert (s.calls, s.successes, s.failures) == (2400, 1600, 800)
    assert len(STATE.counters["s"].latencies) == 2400


@pytest.mark.parametrize(
    ("latencies_ms", "expected"),
    [
        ([7.0], (7, 7, 7)),
        (list(range(1, 11)), (5, 10, 10)),
        (list(range(1, 21)), (10, 19, 20)),
        (list(range(1, 101)), (50, 95, 99)),
        (list(range(1, 201)), (100, 190, 198)),
        ([3.0, 1.0, 2.0, 100.0], (2, 100, 100)),
    ],
)
def test_percentiles_are_nearest_rank(latencies_ms: list[float], expected: tuple[int, ...]) -> None:
    c = PolicyCounters("x")
    shuffled = list(latencies_ms)
    random.Random(0).shuffle(shuffled)
    for ms in shuffled:
        c.latencies.append(ms / 1000)
    s = c.snapshot()
    assert (s.p50_ms, s.p95_ms, s.p99_ms) == pytest.approx(expected)


@given(st.lists(st.floats(min_value=0, max_value=1e4, allow_nan=False), min_size=1, max_size=60))
def test_percentiles_are_nearest_rank_for_any_latencies(latencies: list[float]) -> None:
    c = PolicyCounters("x")
    c.latencies.extend(latencies)
    s = c.snapshot()
    for got, pct in [(s.p50_ms, 50), (s.p95_ms, 95), (s.p99_ms, 99)]:
        assert got == nearest_rank(latencies, pct) * 1000.0


def test_percentiles_cover_the_most_recent_window() -> None:
    c = PolicyCounters("x")
    c.latencies.extend([60.0] * LATENCY_WINDOW)  # old and slow
    c.latencies.extend([0.001] * (LATENCY_WINDOW // 2))
    s = c.snapshot()
    assert (s.p50_ms, s.p95_ms) == (1.0, 60_000.0)  # half the window is still old
    c.latencies.extend([0.001] * (LATENCY_WINDOW // 2))
    assert c.snapshot().p95_ms == 1.0


def test_percentiles_are_the_recorded_durations(kind: str, logs: pytest.LogCaptureFixture) -> None:
    # Driven end to end: the statistics' percentiles are exactly the nearest-rank elements
    # of the durations the records reported (failures and refusals included), whatever
    # those durations turned out to be.
    configure(
        {"policies": {"s": {"log": {"level": "DEBUG"}, "validate": {"args": {"x": {"min": 0}}}}}}
    )

    def f(x: int) -> int:
        # Each call busier than the next, so arrival order is not sorted order.
        t0 = perf_counter()
        while perf_counter() - t0 < (20 - x) * 0.0001:
            pass
        if x % 7 == 6:
            raise KeyError(x)
        return x

    g = guard(kind, f, "s")
    for x in [*range(19), -1]:
        with contextlib.suppress(KeyError, guardrails.InputValidationError):
            g(x)
    durations = [r.duration_ms for r in logs.records if r.name == "guardrails"]  # type: ignore[attr-defined]
    assert len(durations) == 20
    s = guardrails.stats()["s"]
    assert (s.calls, s.failures, s.rejected) == (20, 3, 1)
    assert [s.p50_ms, s.p95_ms, s.p99_ms] == [nearest_rank(durations, p) for p in (50, 95, 99)]


def test_no_percentiles_without_log(kind: str) -> None:
    configure({"policies": {"s": {"log": {"enabled": False}, "cache": {"ttl": 60}}}})
    g = guard(kind, lambda x: x, "s")
    g(1), g(1)
    s = guardrails.stats()["s"]
    assert (s.calls, s.cache_hits, s.cache_misses) == (2, 1, 1)
    assert (s.p50_ms, s.p95_ms, s.p99_ms) == (None, None, None)


def test_latencies_are_kept_while_nobody_reads_the_records(kind: str) -> None:
    # Recording is the log block's job, not the logger's: a silenced logger still has stats.
    configure({"policies": {"s": {"log": {"level": "DEBUG"}}}})
    logger = logging.getLogger("guardrails")
    before = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        g = guard(kind, fails_if, "s")
        g(False)
        with pytest.raises(KeyError):
            g(True)
    finally:
        logger.setLevel(before)
    assert len(STATE.counters["s"].latencies) == 2
    assert guardrails.stats()["s"].p50_ms is not None


def test_stats_survive_reconfiguration(kind: str) -> None:
    g = guard(kind, lambda: 1, "s")
    g()
    configure({"policies": {"s": {"retry": {}}}})
    g()
    assert guardrails.stats()["s"].calls == 2


def test_reset_stats_zeroes_one_policy_or_all(kind: str, clock: FakeClock) -> None:
    configure(
        {
            "policies": {
                "s": {"log": {}, "cache": {"ttl": 60}, "retry": {"wait": {"initial": 1}}},
                "t": {"log": {}},
            }
        }
    )
    flaky = [ConnectionError(), ConnectionError()]

    def f(x: int) -> int:
        if flaky:
            raise flaky.pop()
        return x

    g, h = guard(kind, f, "s"), guard(kind, lambda: 1, "t")
    g(1), g(1), h()
    guardrails.reset_stats("s")
    s, t = guardrails.stats()["s"], guardrails.stats()["t"]
    assert s.as_dict() == PolicyCounters("s").snapshot().as_dict()  # as if new
    assert (t.calls, t.p50_ms is not None) == (1, True)  # another policy is untouched
    # Counting goes on from zero on the chains already compiled, every counter included.
    flaky.append(ConnectionError())
    g(2), g(2)
    s = guardrails.stats()["s"]
    assert (s.calls, s.successes, s.retries, s.cache_hits, s.cache_misses) == (2, 2, 1, 1, 1)
    assert len(STATE.counters["s"].latencies) == 2
    guardrails.reset_stats()
    assert all(v.calls == 0 and v.p50_ms is None for v in guardrails.stats().values())


def test_snapshot_fields() -> None:
    configure({"policies": {"s": {"log": {}}}})
    guarded("s")(lambda: 1)()
    assert list(guardrails.stats()["s"].as_dict()) == [
        "calls",
        "successes",
        "failures",
        "retries",
        "cache_hits",
        "cache_misses",
        "rejected",
        "timeouts",
        "abandoned",
        "short_circuited",
        "rate_limited",
        "bulkhead_rejected",
        "fallbacks",
        "injected",
        "slow",
        "rejected_input",
        "rejected_output",
        "rejected_memory",
        "shared_cache_hits",
        "redis_errors",
        "p50_ms",
        "p95_ms",
        "p99_ms",
        "max_rss_growth_bytes",
        "breaker_state",
    ]


def cells(text: str, policy: str) -> list[str]:
    row = next(line for line in text.splitlines() if f" {policy} " in line)
    return [cell.strip() for cell in row.split("│")[1:-1]]


def test_report_prints_a_table() -> None:
    configure({"policies": {"fetch": {"cache": {"ttl": 60}}, "quiet": {"log": {"enabled": False}}}})
    f = guarded("fetch")(lambda x: x)
    f(1), f(1)
    guarded("quiet")(lambda: 1)()
    # Every figure different, so no two columns can trade places unseen.
    c = STATE.counters["fetch"]
    bumps = [(c.success, 4), (c.failure, 4), (c.retry, 3), (c.cache_hit, 4), (c.reject_input, 2)]
    for bump, times in bumps:
        for _ in range(times):
            bump()
    c.latencies.clear()
    c.latencies.extend(ms / 1000 for ms in range(100, 0, -1))
    c.max_rss_growth = 3 * 2**20
    out = io.StringIO()
    guardrails.report(Console(file=out, width=150))
    text = out.getvalue()
    assert "guardrails statistics" in text
    header = [cell.strip() for cell in text.splitlines()[2].split("┃")[1:-1]]
    assert header[:8] == [
        "policy",
        "calls",
        "ok",
        "failed",
        "retries",
        "hits",
        "misses",
        "rejected",
    ]
    assert cells(text, "fetch") == [
        "fetch",
        "10",
        "6",
        "4",
        "3",
        "5",
        "1",
        "2",
        "50.00",
        "95.00",
        "99.00",
        "3.0 MiB",
    ]
    assert cells(text, "quiet")[8:] == ["—", "—", "—", "—"]


def test_report_defaults_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    guarded("shown")(lambda: 1)()
    guardrails.report()
    assert "shown" in capsys.readouterr().out


def test_nearest_rank_helper_is_the_definition() -> None:
    # The helper the tests compare against, checked against the textbook rank formula.
    values = [float(v) for v in range(1, 41)]
    for pct in (1, 50, 95, 99, 100):
        assert nearest_rank(values, pct) == values[math.ceil(pct / 100 * 40) - 1]
