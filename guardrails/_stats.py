"""Per-policy statistics: lock-free counters on the call path, snapshots on demand.

Every counter is an ``itertools.count`` that only goes up: ``reset_stats()`` moves a
baseline that ``stats()`` subtracts, so the raw totals (what the metrics exporters read,
see ``PolicyCounters.totals``) never go down. Each finished call bumps exactly one of the
outcome counters (``success``, ``slow_success``, ``fallback``, and ``failure``, which files a
failure under one of ``refused``, ``failed`` or ``cancelled``), so the outcomes of calls add
up to the calls at any instant, without a lock.
"""

from __future__ import annotations

import bisect
import itertools
import math
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

from guardrails._errors import (
    BulkheadFull,
    CircuitOpenError,
    InputValidationError,
    MemoryBudgetExceeded,
    OutputValidationError,
    RateLimitExceeded,
)
from guardrails._forksafe import ForkSafeLock

#: How many recent latencies each policy keeps for its percentiles.
LATENCY_WINDOW = 10_000

#: The latency histogram's default bucket bounds in seconds (1 ms .. 60 s), for ML calls:
#: feature lookups in milliseconds, model calls in tens to hundreds, batch jobs in seconds.
DEFAULT_BUCKETS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)

#: The failures that are refusals: the call was turned away (bad input or output, over
#: the memory budget, the rate limit, the bulkhead, an open breaker), not a fault of its own.
REFUSALS: tuple[type[BaseException], ...] = (
    InputValidationError,
    OutputValidationError,
    MemoryBudgetExceeded,
    RateLimitExceeded,
    BulkheadFull,
    CircuitOpenError,
)


def count_of(counter: itertools.count[int]) -> int:
    # itertools.count's repr is the next value, which is how many times next() ran.
    return int(repr(counter)[6:-1])


#: The counters every policy keeps, in ``PolicyStats`` order: (field, increment method).
COUNTERS: tuple[tuple[str, str], ...] = (
    ("successes", "success"),
    ("failures", "failure"),
    ("retries", "retry"),
    ("cache_hits", "cache_hit"),
    ("cache_misses", "cache_miss"),
    ("rejected_input", "reject_input"),
    ("rejected_output", "reject_output"),
    ("rejected_memory", "reject_memory"),
    ("timeouts", "timeout"),
    ("abandoned", "abandon"),
    ("short_circuited", "short_circuit"),
    ("rate_limited", "rate_limit"),
    ("bulkhead_rejected", "bulkhead_reject"),
    ("fallbacks", "fallback"),
    ("injected", "inject"),
    ("shared_cache_hits", "shared_cache_hit"),
    ("redis_errors", "redis_error"),
)

#: The raw counters behind them: ``failures`` is ``refused + failed + cancelled`` (kept
#: apart so that an exporter reads each kind of failure from one counter), and
#: ``successes`` is ``success + slow_success`` (a slow success is one increment, so a
#: scrape never sees it counted as both fast and slow).
_RAW: tuple[str, ...] = (
    "success",
    "slow_success",
    "refused",
    "failed",
    "cancelled",
    *(method for _, method in COUNTERS if method not in ("success", "failure")),
)
_AT = {name: i for i, name in enumerate(_RAW)}


#: Threads' sums a histogram keeps before it first folds those of ended threads.
_TIDY_AT = 64


class Histogram:
    """Call durations in buckets, lock-free: one ``itertools.count`` per bucket (not
    cumulative; ``read()`` adds them up), and the sum of durations kept per thread, in a
    one-item list only that thread adds to (a float ``+=`` shared by threads could lose an
    update). The sums of threads that ended are folded into one total when read."""

    __slots__ = ("_cells", "_counts", "_fold", "_retired", "_tidy_at", "bounds", "bumps", "local")

    def __init__(self, bounds: Iterable[float]) -> None:
        self.bounds: tuple[float, ...] = tuple(bounds)
        # One more bucket than bounds: the last one is +Inf.
        self._counts = tuple(itertools.count() for _ in range(len(self.bounds) + 1))
        self.bumps: tuple[Callable[[], int], ...] = tuple(c.__next__ for c in self._counts)
        #: ``local.cell``: this thread's sum (see ``add_thread``).
        self.local = threading.local()
        self._cells: list[tuple[threading.Thread, list[float]]] = []
        self._retired = 0.0
        self._fold = ForkSafeLock()
        #: How many threads' sums are kept before ended threads are folded on a new one.
        self._tidy_at = _TIDY_AT

    def add_thread(self, seconds: float) -> None:
        """The first duration a thread records: its sum starts. Ended threads' sums are
        folded here too once they pile up, so a thread per call (a threading server, a
        pool that renews its threads) keeps bounded memory even when nobody reads."""
        cell = [seconds]
        self.local.cell = cell
        self._cells.append((threading.current_thread(), cell))
        if len(self._cells) >= self._tidy_at:
            with self._fold:
                self._fold_ended()
                # Amortised: at least as many new threads again before the next pass.
                self._tidy_at = max(_TIDY_AT, 2 * len(self._cells))

    def _fold_ended(self) -> float:
        """Fold the sums of threads that ended into one total (under ``_fold``); returns
        the total with the live threads' sums added."""
        parts = [self._retired]
        for entry in list(self._cells):
            thread, cell = entry
            if thread.is_alive():
                parts.append(cell[0])
            else:  # it will add no more: fold it, so threads come and go in bounded memory
                self._retired += cell[0]
                parts[0] += cell[0]
                self._cells.remove(entry)
        return math.fsum(parts)

    def observe(self, seconds: float) -> None:
        self.bumps[bisect.bisect_left(self.bounds, seconds)]()
        try:
            self.local.cell[0] += seconds
        except AttributeError:
            self.add_thread(seconds)

    def read(self) -> tuple[list[int], float]:
        """The cumulative count at or below each bound (the last one: +Inf, every
        observation) and the sum of the observations, in seconds."""
        total = 0
        cumulative = []
        for counter in self._counts:
            total += count_of(counter)
            cumulative.append(total)
        with self._fold:
            return cumulative, self._fold_ended()


class _Export:
    """What the metrics exporters add to each call's duration (see ``recorder``)."""

    def __init__(self) -> None:
        #: The bucket bounds of a histogram kept per policy; ``None``: no histogram.
        self.buckets: tuple[float, ...] | None = None
        #: Other receivers of each duration, by owner: ``factory(policy)`` is called when
        #: a chain is compiled and returns the function to call, or ``None``.
        self.sinks: dict[str, Callable[[str], Callable[[float], Any] | None]] = {}


EXPORT = _Export()


def export_histogram(buckets: Iterable[float] | None) -> None:
    """Keep a duration histogram per policy with these bucket bounds (``None``: stop).

    Chains compiled before pick it up when recompiled (``guardrails._core.recompile``).
    """
    EXPORT.buckets = None if buckets is None else histogram_bounds(buckets)


def histogram_bounds(buckets: Iterable[float]) -> tuple[float, ...]:
    """``buckets`` as bucket bounds, or ``ValueError`` saying what is expected."""
    try:
        bounds = tuple(float(b) for b in buckets)
    except (TypeError, ValueError):
        raise ValueError(
            f"histogram buckets must be numbers of seconds, like (0.01, 0.1, 1), got {buckets!r}"
        ) from None
    if not bounds or any(not math.isfinite(b) or b <= 0 for b in bounds):
        raise ValueError(
            f"histogram buckets must be finite positive seconds, like (0.01, 0.1, 1), got {bounds}"
        )
    if list(bounds) != sorted(set(bounds)):
        raise ValueError(f"histogram buckets must be strictly increasing, got {bounds}")
    return bounds


class _Window(deque[float]):
    """The recent latencies of a policy. While an exporter takes each duration, its
    ``append`` (set on the instance) also hands the duration on; the log layer's failure
    path appends here directly."""


_append = deque.append


class PolicyCounters:
    """The live counters of one policy name, shared by every function that uses it.

    Each increment method (``success()``, ``timeout()``, ...) is ``next`` of an
    ``itertools.count``: atomic in CPython, no lock. ``failure()`` (called while the
    failure is being handled, or given it) files it as a refusal, a cancellation or a
    failure.
    """

    __slots__ = (
        "_base",
        "_counts",
        *(name for name in _RAW if name != "failed"),
        "failure",
        "histogram",
        "latencies",
        "max_rss_growth",
        "name",
    )

    success: Callable[[], int]
    slow_success: Callable[[], int]
    refused: Callable[[], int]
    cancelled: Callable[[], int]
    retry: Callable[[], int]
    cache_hit: Callable[[], int]
    cache_miss: Callable[[], int]
    reject_input: Callable[[], int]
    reject_output: Callable[[], int]
    reject_memory: Callable[[], int]
    timeout: Callable[[], int]
    abandon: Callable[[], int]
    short_circuit: Callable[[], int]
    rate_limit: Callable[[], int]
    bulkhead_reject: Callable[[], int]
    fallback: Callable[[], int]
    inject: Callable[[], int]
    shared_cache_hit: Callable[[], int]
    redis_error: Callable[[], int]

    def __init__(self, name: str) -> None:
        self.name = name
        self._counts = tuple(itertools.count() for _ in _RAW)
        for method, counter in zip(_RAW, self._counts, strict=True):
            if method != "failed":
                setattr(self, method, counter.__next__)
        self.failure = _failure(
            self._counts[_AT["refused"]].__next__,
            self._counts[_AT["cancelled"]].__next__,
            self._counts[_AT["failed"]].__next__,
        )
        self.latencies: deque[float] = _Window(maxlen=LATENCY_WINDOW)
        self.histogram: Histogram | None = None
        self.max_rss_growth = 0
        self._base: tuple[int, ...] = (0,) * len(_RAW)

    def recorder(self) -> Callable[[float], Any]:
        """What a compiled log layer calls with each call's duration in seconds.

        Without exporters: the latency window's own ``append``. With a histogram exported
        (``export_histogram``) or duration sinks: a function that also bumps the bucket
        and calls the sinks; the window's ``append`` becomes that function too, so the
        log layer's failure path (which appends directly) is counted as well.
        """
        window = self.latencies
        append: Callable[[float], None] = _append.__get__(window)
        buckets = EXPORT.buckets
        sinks = tuple(
            sink for make in list(EXPORT.sinks.values()) if (sink := make(self.name)) is not None
        )
        if buckets is None and not sinks:
            vars(window).pop("append", None)
            return append
        record: Callable[[float], Any]
        if buckets is None:

            def record(seconds: float) -> None:
                for sink in sinks:
                    sink(seconds)
                append(seconds)

        else:
            hist = self.histogram
            if hist is None or hist.bounds != buckets:
                hist = self.histogram = Histogram(buckets)
            find, bounds, bumps = bisect.bisect_left, hist.bounds, hist.bumps
            local, add_thread = hist.local, hist.add_thread
            if not sinks:

                def record(seconds: float) -> None:
                    bumps[find(bounds, seconds)]()
                    try:
                        local.cell[0] += seconds
                    except AttributeError:
                        add_thread(seconds)
                    append(seconds)

            else:

                def record(seconds: float) -> None:
                    bumps[find(bounds, seconds)]()
                    try:
                        local.cell[0] += seconds
                    except AttributeError:
                        add_thread(seconds)
                    for sink in sinks:
                        sink(seconds)
                    append(seconds)

        vars(window)["append"] = record
        return record

    def _raw(self) -> tuple[int, ...]:
        return tuple(count_of(c) for c in self._counts)

    def totals(self) -> dict[str, int]:
        """The raw totals since the counters were made, which never go down (``reset()``
        does not touch them): what a metrics exporter reads. Keys: the raw counter names
        (``success`` ... ``inject``).
        """
        return dict(zip(_RAW, self._raw(), strict=True))

    def reset(self) -> None:
        """Zero the statistics. Compiled chains hold the counters' ``__next__``, so the
        counters stay and a baseline is subtracted from them instead."""
        self._base = self._raw()
        self.latencies.clear()
        self.max_rss_growth = 0

    def snapshot(self, breaker_state: str | None = None) -> PolicyStats:
        raw = {
            name: now - then for name, now, then in zip(_RAW, self._raw(), self._base, strict=True)
        }
        counts = {field: raw.get(method, 0) for field, method in COUNTERS}
        counts["successes"] = raw["success"] + raw["slow_success"]
        counts["slow"] = raw["slow_success"]
        counts["failures"] = raw["refused"] + raw["failed"] + raw["cancelled"]
        lat = sorted(self.latencies)
        return PolicyStats(
            calls=counts["successes"] + counts["failures"] + counts["fallbacks"],
            rejected=sum(counts[f"rejected_{why}"] for why in ("input", "output", "memory")),
            **counts,
            p50_ms=_percentile(lat, 50),
            p95_ms=_percentile(lat, 95),
            p99_ms=_percentile(lat, 99),
            max_rss_growth_bytes=self.max_rss_growth,
            breaker_state=breaker_state,
        )


def _failure(
    refused: Callable[[], int], cancelled: Callable[[], int], failed: Callable[[], int]
) -> Callable[..., int]:
    def failure(exc: BaseException | None = None) -> int:
        """Count a failed call: ``exc``, or else the exception being handled."""
        if exc is None:
            exc = sys.exception()
        if isinstance(exc, REFUSALS):
            return refused()
        if exc is not None and not isinstance(exc, Exception):
            return cancelled()  # asyncio cancellation, KeyboardInterrupt: control flow
        return failed()

    return failure


def _percentile(sorted_seconds: list[float], pct: float) -> float | None:
    if not sorted_seconds:
        return None
    rank = max(1, math.ceil(pct / 100 * len(sorted_seconds)))
    return sorted_seconds[rank - 1] * 1000.0


@dataclass(frozen=True, slots=True)
class PolicyStats:
    """One policy's statistics at the moment of the snapshot.

    ``calls`` counts finished calls (``successes + failures + fallbacks``), cache hits and
    refusals included; ``slow`` the successes that took ``log.slow`` or longer (counted
    while ``log`` is on); ``rejected`` counts the failures that were validation or memory
    refusals (``rejected_input + rejected_output + rejected_memory``); ``fallbacks`` the
    calls that failed and answered with ``fallback``.
    ``timeouts`` counts timed-out attempts and calls, ``abandoned`` the sync attempts left
    running after one; ``short_circuited``, ``rate_limited`` and ``bulkhead_rejected`` the
    refusals of the breaker, rate limit and bulkhead; ``injected`` the chaos faults.
    ``shared_cache_hits`` counts the cache hits answered by the shared (Redis) level,
    ``redis_errors`` the Redis operations that failed or timed out (each then fell back to
    this process's own state). ``breaker_state`` is ``"closed"``, ``"open"``,
    ``"half_open"`` or ``None`` (no breaker).
    Percentiles cover the most recent calls made while the policy's ``log`` block was on,
    and are ``None`` when there are none.
    """

    calls: int
    successes: int
    failures: int
    retries: int
    cache_hits: int
    cache_misses: int
    rejected: int
    timeouts: int
    abandoned: int
    short_circuited: int
    rate_limited: int
    bulkhead_rejected: int
    fallbacks: int
    injected: int
    slow: int
    rejected_input: int
    rejected_output: int
    rejected_memory: int
    shared_cache_hits: int
    redis_errors: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    max_rss_growth_bytes: int
    breaker_state: str | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
