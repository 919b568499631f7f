"""Metrics export: ``guardrails.metrics.prometheus`` (extra ``[prometheus]``) and
``guardrails.metrics.otel`` (extra ``[otel]``).

This module reads what both export, at scrape or collection time, from the counters the
chains keep anyway (``guardrails._stats``): exporting adds nothing to a call but the latency
histogram's bucket increment (see ``PolicyCounters.recorder``). It imports neither client.

The totals are raw: counted since the process (or the policy's first call) began, never
zeroed by ``reset_stats()`` or a new Hydra job, so exported counters never go down.
"""

from __future__ import annotations

import contextlib
import importlib
from dataclasses import dataclass

from guardrails._state import STATE

#: ``calls`` outcomes, as in the log record: ``ok`` and ``slow`` succeeded (``slow``: took
#: ``log.slow`` or longer), ``fallback`` failed and was answered by ``fallback``,
#: ``rejected`` was refused (validation, memory, rate limit, bulkhead, open breaker),
#: ``failed`` raised anything else, ``cancelled`` was interrupted (asyncio cancellation,
#: KeyboardInterrupt): control flow, not a fault.
OUTCOMES: tuple[str, ...] = ("ok", "slow", "rejected", "failed", "cancelled", "fallback")

#: ``rejections`` reasons and the counter of each (refusals where they happen, per attempt:
#: a refusal retried or answered by a fallback is counted here too).
REASONS: tuple[tuple[str, str], ...] = (
    ("input", "reject_input"),
    ("output", "reject_output"),
    ("memory", "reject_memory"),
    ("rate_limit", "rate_limit"),
    ("bulkhead", "bulkhead_reject"),
    ("breaker", "short_circuit"),
)

#: The breaker state gauge's values: ordered by severity, so ``max`` over replicas is the
#: worst state.
BREAKER_STATES: dict[str, int] = {"closed": 0, "half_open": 1, "open": 2}


@dataclass(frozen=True, slots=True)
class Histogram:
    """A policy's call durations: ``counts[i]`` calls took at most ``bounds[i]`` seconds
    (cumulative); ``counts[-1]`` is every call (the ``+Inf`` bucket); ``sum`` in seconds."""

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    sum: float


@dataclass(frozen=True, slots=True)
class PolicyTotals:
    """One policy's raw totals (see the module's docstring)."""

    policy: str
    #: ``(outcome, calls)`` for each of ``OUTCOMES``: they add up to every finished call.
    calls: tuple[tuple[str, int], ...]
    retries: int
    #: ``(("hit", n), ("miss", n))``.
    cache: tuple[tuple[str, int], ...]
    #: ``(reason, refusals)`` for each of ``REASONS``.
    rejections: tuple[tuple[str, int], ...]
    timeouts: int
    abandoned: int
    injected: int
    #: Cache hits answered by the shared (Redis) level: a part of the hits.
    shared_cache_hits: int
    #: Redis operations that failed or timed out (each fell back to in-process state).
    redis_errors: int
    #: ``"closed"``, ``"half_open"``, ``"open"``, or ``None`` (no breaker in force).
    breaker_state: str | None
    #: ``None`` when none is kept (no exporter asked for one, or the policy's log is off).
    histogram: Histogram | None


def read() -> list[PolicyTotals]:
    """Every policy's totals, sorted by name. Never waits for a ``configure()``."""
    # One C-level copy each (atomic under the GIL): no lock, so a scrape never waits for a
    # configure() compiling thousands of policies, nor slows one down.
    counters = dict(STATE.counters)
    breakers = {
        policy: found[1]
        for (policy, kind), found in dict(STATE.shared).items()
        if kind == "breaker"
    }
    out = []
    for name in sorted(counters):
        c = counters[name]
        raw = c.totals()
        failures = {"rejected": raw["refused"], "failed": raw["failed"]}
        calls = {
            "ok": raw["success"],
            "slow": raw["slow_success"],
            **failures,
            "cancelled": raw["cancelled"],
            "fallback": raw["fallback"],
        }
        hist = c.histogram
        histogram = None
        if hist is not None:
            counts, total = hist.read()
            histogram = Histogram(hist.bounds, tuple(counts), total)
        breaker = breakers.get(name)
        out.append(
            PolicyTotals(
                policy=name,
                calls=tuple((outcome, calls[outcome]) for outcome in OUTCOMES),
                retries=raw["retry"],
                cache=(("hit", raw["cache_hit"]), ("miss", raw["cache_miss"])),
                rejections=tuple((reason, raw[counter]) for reason, counter in REASONS),
                timeouts=raw["timeout"],
                abandoned=raw["abandon"],
                injected=raw["inject"],
                shared_cache_hits=raw["shared_cache_hit"],
                redis_errors=raw["redis_error"],
                breaker_state=None if breaker is None else breaker.state_name(),
                histogram=histogram,
            )
        )
    return out


def process_rss_bytes() -> int:
    """This process's resident memory now (the reader the memory layer uses)."""
    from guardrails.layers.memory import PROBE

    return PROBE.read()


def config_reloads() -> tuple[int, int] | None:
    """``(reloads applied, reloads failed)`` by every ``guardrails.watch()`` of this process,
    or ``None`` where live reload is not available."""
    try:
        watch = importlib.import_module("guardrails._watch")
    except ImportError:
        return None
    counts = getattr(watch, "reload_counts", None)
    if counts is None:
        return None
    reloads, failures = counts()
    return int(reloads), int(failures)


def recompile_chains() -> None:
    """Rebuild every chain, so calls pick up an exporter's hooks (the histogram, the span
    step). A guarded function whose policy is missing under ``strict`` cannot be compiled:
    its chain stays unbuilt and its next call raises the ``PolicyConfigError`` naming it,
    as it would have anyway; registering an exporter does not fail for it."""
    from guardrails._core import recompile
    from guardrails._errors import PolicyConfigError

    # Every chain is then unbuilt: each is compiled (or raises) on its next call.
    with contextlib.suppress(PolicyConfigError):
        recompile()
