"""Per-policy statistics: lock-free counters on the call path, snapshots on demand."""

from __future__ import annotations

import itertools
import math
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

#: How many recent latencies each policy keeps for its percentiles.
LATENCY_WINDOW = 10_000


def _read(counter: itertools.count[int]) -> int:
    # itertools.count's repr is the next value, which is how many times next() ran.
    return int(repr(counter)[6:-1])


class PolicyCounters:
    """The live counters of one policy name, shared by every function that uses it.

    Increments are ``next()`` on an ``itertools.count``: atomic in CPython, no lock.
    """

    __slots__ = (
        "_base",
        "_cache_hits",
        "_cache_misses",
        "_failures",
        "_rejected",
        "_retries",
        "_successes",
        "cache_hit",
        "cache_miss",
        "failure",
        "latencies",
        "max_rss_growth",
        "name",
        "rejection",
        "retry",
        "success",
    )

    def __init__(self, name: str) -> None:
        self.name = name
        self._successes = itertools.count()
        self._failures = itertools.count()
        self._rejected = itertools.count()
        self._retries = itertools.count()
        self._cache_hits = itertools.count()
        self._cache_misses = itertools.count()
        self.success = self._successes.__next__
        self.failure = self._failures.__next__
        self.rejection = self._rejected.__next__
        self.retry = self._retries.__next__
        self.cache_hit = self._cache_hits.__next__
        self.cache_miss = self._cache_misses.__next__
        self.latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self.max_rss_growth = 0
        self._base: tuple[int, ...] = (0, 0, 0, 0, 0, 0)

    def _raw(self) -> tuple[int, ...]:
        return tuple(
            _read(c)
            for c in (
                self._successes,
                self._failures,
                self._retries,
                self._cache_hits,
                self._cache_misses,
                self._rejected,
            )
        )

    def reset(self) -> None:
        """Zero the statistics. Compiled chains hold the counters' ``__next__``, so the
        counters stay and a baseline is subtracted from them instead."""
        self._base = self._raw()
        self.latencies.clear()
        self.max_rss_growth = 0

    def snapshot(self) -> PolicyStats:
        raw = self._raw()
        successes, failures, retries, hits, misses, rejected = (
            now - then for now, then in zip(raw, self._base, strict=True)
        )
        lat = sorted(self.latencies)
        return PolicyStats(
            calls=successes + failures,
            successes=successes,
            failures=failures,
            retries=retries,
            cache_hits=hits,
            cache_misses=misses,
            rejected=rejected,
            p50_ms=_percentile(lat, 50),
            p95_ms=_percentile(lat, 95),
            p99_ms=_percentile(lat, 99),
            max_rss_growth_bytes=self.max_rss_growth,
        )


def _percentile(sorted_seconds: list[float], pct: float) -> float | None:
    if not sorted_seconds:
        return None
    rank = max(1, math.ceil(pct / 100 * len(sorted_seconds)))
    return sorted_seconds[rank - 1] * 1000.0


@dataclass(frozen=True, slots=True)
class PolicyStats:
    """One policy's statistics at the moment of the snapshot.

    ``calls`` counts finished calls (``successes + failures``), cache hits and refusals
    included; ``rejected`` counts the failures that were validation or memory refusals.
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
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    max_rss_growth_bytes: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
