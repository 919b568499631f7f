"""Prometheus export (extra ``[prometheus]``): ``register()`` and the metrics are scraped.

A custom collector reads guardrails' own lock-free counters at scrape time, so a call pays
nothing for the counters; the one per-call cost is the latency histogram's bucket
increment, and only while an export is registered and the policy's ``log`` block is on.

==========================================  =================================================
``guardrails_calls_total``                  ``{policy, outcome}``: ``ok``, ``slow``,
                                            ``rejected``, ``failed``, ``cancelled``,
                                            ``fallback`` (they add up to every call)
``guardrails_call_duration_seconds``        ``{policy}`` histogram (calls made while ``log``
                                            is on)
``guardrails_retries_total``                ``{policy}``: extra attempts
``guardrails_cache_requests_total``         ``{policy, result}``: ``hit``, ``miss``
``guardrails_rejections_total``             ``{policy, reason}``: ``input``, ``output``,
                                            ``memory``, ``rate_limit``, ``bulkhead``,
                                            ``breaker`` (per refusal, per attempt)
``guardrails_timeouts_total``               ``{policy}``: timed-out attempts and calls
``guardrails_abandoned_total``              ``{policy}``: sync attempts left running
``guardrails_chaos_injected_total``         ``{policy}``: faults injected by ``chaos``
``guardrails_cache_shared_hits_total``      ``{policy}``: hits answered by Redis (a part of
                                            the ``hit`` requests)
``guardrails_redis_errors_total``           ``{policy}``: Redis operations that failed or
                                            timed out (each fell back to this process)
``guardrails_breaker_state``                ``{policy}``: 0 closed, 1 half-open, 2 open
``guardrails_process_rss_bytes``            resident memory of this process
``guardrails_config_reloads_total``         ``{result}``: ``ok``, ``failed`` (``watch()``)
==========================================  =================================================

Counters are totals since the process started: ``reset_stats()`` and a new Hydra job zero
``stats()``, never these (a Prometheus counter must not go down).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import REGISTRY, Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

from guardrails import _stats
from guardrails.metrics import (
    BREAKER_STATES,
    config_reloads,
    process_rss_bytes,
    read,
    recompile_chains,
)

#: How prometheus_client writes a bucket bound in ``le`` (the function is untyped there).
_le: Callable[[float], str] = floatToGoString

__all__ = ["DEFAULT_BUCKETS", "GuardrailsCollector", "register", "unregister"]

#: The latency histogram's default bucket bounds, in seconds: 1 ms to 60 s.
DEFAULT_BUCKETS: tuple[float, ...] = _stats.DEFAULT_BUCKETS

_DOCS = {
    "calls": "Guarded calls finished, by outcome (ok, slow, rejected, failed, cancelled, "
    "fallback); the outcomes add up to every call",
    "duration": "Duration of guarded calls in seconds, outermost (retries and waits "
    "included); recorded only while the policy's log block is on",
    "retries": "Extra attempts made by retry",
    "cache": "Cache lookups, by result (hit, miss)",
    "rejections": "Refusals where they happen, by reason (input, output, memory, "
    "rate_limit, bulkhead, breaker); per attempt, including refusals retried or answered "
    "by a fallback",
    "timeouts": "Attempts and calls that timed out",
    "abandoned": "Sync attempts left running after their timeout",
    "injected": "Faults injected by chaos",
    "shared_hits": "Cache hits answered by the shared Redis level (a part of the hits)",
    "redis_errors": "Redis operations that failed or timed out (each fell back to this "
    "process's own state)",
    "breaker": "Circuit breaker state: 0 closed, 1 half-open, 2 open",
    "rss": "Resident memory of this process in bytes",
    "reloads": "Configuration reloads by guardrails.watch(), by result (ok, failed)",
}


class GuardrailsCollector(Collector):
    """Reads guardrails' counters at each scrape (see the module's docstring)."""

    def describe(self) -> Iterable[Metric]:
        # The names, for the registry's duplicate check, without reading anything.
        return list(self._families(samples=False))

    def collect(self) -> Iterable[Metric]:
        return list(self._families(samples=True))

    def _families(self, *, samples: bool) -> Iterator[Metric]:
        calls = CounterMetricFamily(
            "guardrails_calls", _DOCS["calls"], labels=["policy", "outcome"]
        )
        duration = HistogramMetricFamily(
            "guardrails_call_duration_seconds", _DOCS["duration"], labels=["policy"]
        )
        retries = CounterMetricFamily("guardrails_retries", _DOCS["retries"], labels=["policy"])
        cache = CounterMetricFamily(
            "guardrails_cache_requests", _DOCS["cache"], labels=["policy", "result"]
        )
        rejections = CounterMetricFamily(
            "guardrails_rejections", _DOCS["rejections"], labels=["policy", "reason"]
        )
        timeouts = CounterMetricFamily("guardrails_timeouts", _DOCS["timeouts"], labels=["policy"])
        abandoned = CounterMetricFamily(
            "guardrails_abandoned", _DOCS["abandoned"], labels=["policy"]
        )
        injected = CounterMetricFamily(
            "guardrails_chaos_injected", _DOCS["injected"], labels=["policy"]
        )
        shared_hits = CounterMetricFamily(
            "guardrails_cache_shared_hits", _DOCS["shared_hits"], labels=["policy"]
        )
        redis_errors = CounterMetricFamily(
            "guardrails_redis_errors", _DOCS["redis_errors"], labels=["policy"]
        )
        breaker = GaugeMetricFamily("guardrails_breaker_state", _DOCS["breaker"], labels=["policy"])
        rss = GaugeMetricFamily("guardrails_process_rss_bytes", _DOCS["rss"])
        reloads = CounterMetricFamily(
            "guardrails_config_reloads", _DOCS["reloads"], labels=["result"]
        )
        if samples:
            for p in read():
                name = p.policy
                for outcome, n in p.calls:
                    calls.add_metric([name, outcome], n)
                retries.add_metric([name], p.retries)
                for result, n in p.cache:
                    cache.add_metric([name, result], n)
                for reason, n in p.rejections:
                    rejections.add_metric([name, reason], n)
                timeouts.add_metric([name], p.timeouts)
                abandoned.add_metric([name], p.abandoned)
                injected.add_metric([name], p.injected)
                shared_hits.add_metric([name], p.shared_cache_hits)
                redis_errors.add_metric([name], p.redis_errors)
                if p.breaker_state is not None:
                    breaker.add_metric([name], BREAKER_STATES[p.breaker_state])
                h = p.histogram
                if h is not None:
                    buckets = [
                        (_le(bound), float(n)) for bound, n in zip(h.bounds, h.counts, strict=False)
                    ]
                    buckets.append(("+Inf", float(h.counts[-1])))
                    duration.add_metric([name], buckets, h.sum)
            rss.add_metric([], process_rss_bytes())
            found = config_reloads()
            if found is not None:
                reloads.add_metric(["ok"], found[0])
                reloads.add_metric(["failed"], found[1])
        yield calls
        yield duration
        yield retries
        yield cache
        yield rejections
        yield timeouts
        yield abandoned
        yield injected
        yield shared_hits
        yield redis_errors
        yield breaker
        yield rss
        if not samples or reloads.samples:
            yield reloads


_LOCK = threading.Lock()
#: The registries exported to, each with its collector, in registration order.
_REGISTERED: list[tuple[CollectorRegistry, GuardrailsCollector]] = []


def register(
    registry: CollectorRegistry | None = None,
    *,
    buckets: Iterable[float] = DEFAULT_BUCKETS,
) -> GuardrailsCollector:
    """Export guardrails' metrics to ``registry`` (default: prometheus_client's ``REGISTRY``,
    which ``start_http_server`` and ``make_asgi_app`` serve); returns the collector.

    Registering a registry again returns its collector (no ``Duplicated timeseries``).
    ``buckets`` (seconds, increasing) are the latency histogram's bounds, one set for the
    process: the last ``register()`` sets them (a change starts the histograms anew).
    Chains are recompiled so calls start feeding the histogram.
    """
    bounds = _stats.histogram_bounds(buckets)
    target = REGISTRY if registry is None else registry
    with _LOCK:
        collector = next((c for r, c in _REGISTERED if r is target), None)
        if collector is None:
            collector = GuardrailsCollector()
            target.register(collector)
            _REGISTERED.append((target, collector))
        _histogram(bounds)
    return collector


def unregister(registry: CollectorRegistry | None = None) -> None:
    """Stop exporting to ``registry`` (default: ``REGISTRY``). When no registry is left, the
    histogram stops and chains are recompiled without it (no per-call cost at all).
    The totals go on counting: a later ``register()`` exports them from where they are."""
    target = REGISTRY if registry is None else registry
    with _LOCK:
        for i, (r, collector) in enumerate(_REGISTERED):
            if r is target:
                del _REGISTERED[i]
                target.unregister(collector)
                break
        if not _REGISTERED:
            _histogram(None)


def _histogram(bounds: tuple[float, ...] | None) -> None:
    if _stats.EXPORT.buckets == bounds:
        return
    _stats.export_histogram(bounds)
    recompile_chains()
