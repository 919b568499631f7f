"""Per-policy statistics: lock-free counters on the call path, snapshots on demand."""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

#: How many recent latencies each policy keeps for its percentiles.
LATENCY_WINDOW = 10_000


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
    ("slow", "slow_call"),
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
)


class PolicyCounters:
    """The live counters of one policy name, shared by every function that uses it.

    Each increment method (``success()``, ``timeout()``, ...) is ``next`` of an
    ``itertools.count``: atomic in CPython, no lock.
    """

    __slots__ = (
        "_base",
        "_counts",
        *(method for _, method in COUNTERS),
        "latencies",
        "max_rss_growth",
        "name",
    )

    success: Callable[[], int]
    failure: Callable[[], int]
    retry: Callable[[], int]
    cache_hit: Callable[[], int]
    cache_miss: Callable[[], int]
    slow_call: Callable[[], int]
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

    def __init__(self, name: str) -> None:
        self.name = name
        self._counts = tuple(itertools.count() for _ in COUNTERS)
        for (_, method), counter in zip(COUNTERS, self._counts, strict=True):
            setattr(self, method, counter.__next__)
        self.latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self.max_rss_growth = 0
        self._base: tuple[int, ...] = (0,) * len(COUNTERS)

    def recorder(self) -> Callable[[float], Any]:
        """What a compiled log layer calls with each call's duration in seconds."""
        return self.latencies.append

    def _raw(self) -> tuple[int, ...]:
        return tuple(count_of(c) for c in self._counts)

    def reset(self) -> None:
        """Zero the statistics. Compiled chains hold the counters' ``__next__``, so the
        counters stay and a baseline is subtracted from them instead."""
        self._base = self._raw()
        self.latencies.clear()
        self.max_rss_growth = 0

    def snapshot(self, breaker_state: str | None = None) -> PolicyStats:
        counts = {
            field: now - then
            for (field, _), now, then in zip(COUNTERS, self._raw(), self._base, strict=True)
        }
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
    ``breaker_state`` is ``"closed"``, ``"open"``, ``"half_open"`` or ``None`` (no breaker).
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
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    max_rss_growth_bytes: int
    breaker_state: str | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
