"""Attacks on metrics export, the span step and the counters behind them (reviewer 2):
telemetry must never change a call's outcome, every call is counted exactly once, and the
memory kept for exporting stays bounded."""

from __future__ import annotations

import asyncio
import logging
import math
import random
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from prometheus_client import CollectorRegistry

import guardrails
from guardrails import configure, guarded
from guardrails._state import STATE
from guardrails.metrics import otel, prometheus
from tests.twins import guard_as


class Unprintable(Exception):
    """An exception whose ``str()`` raises (a bad ``__str__`` in a client library)."""

    def __str__(self) -> str:
        raise RuntimeError("__str__ is broken")


class Tel:
    def __init__(self) -> None:
        self.reader = InMemoryMetricReader()
        self.meters = MeterProvider(metric_readers=[self.reader])
        self.exporter = InMemorySpanExporter()
        self.tracers = TracerProvider()
        self.tracers.add_span_processor(SimpleSpanProcessor(self.exporter))

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())


@pytest.fixture
def tel() -> Iterator[Tel]:
    t = Tel()
    otel.register(t.meters, t.tracers)
    yield t
    otel.unregister(t.meters)
    t.meters.shutdown()
    t.tracers.shutdown()


@pytest.fixture(params=["sync", "async"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def outcomes(policy: str) -> dict[str, int]:
    (found,) = [p for p in guardrails.metrics.read() if p.policy == policy]
    return dict(found.calls)


# --- the span step never changes a call's outcome -----------------------------------------


def test_an_exception_with_a_broken_str_reaches_the_caller_as_itself(kind: str, tel: Tel) -> None:
    configure({"policies": {"p": {"log": {"trace": True}}}})

    def f() -> None:
        raise Unprintable

    g = guard_as(kind, f, "p")
    with pytest.raises(Unprintable):
        g()
    assert outcomes("p")["failed"] == 1 and sum(outcomes("p").values()) == 1
    (span,) = tel.spans()  # ended, with what could be recorded
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes is not None and span.attributes["guardrails.outcome"] == "failed"
    (event,) = [e for e in span.events if e.name == "exception"]
    assert event.attributes is not None
    assert str(event.attributes["exception.type"]).endswith("Unprintable")
    assert event.attributes["exception.message"] == "<unprintable>"


def test_a_fallback_answer_for_an_unprintable_failure_is_the_answer_counted_once(
    kind: str, tel: Tel
) -> None:
    configure({"policies": {"p": {"log": {"trace": True}, "fallback": {"value": 7}}}})

    def f() -> int:
        raise Unprintable

    g = guard_as(kind, f, "p")
    assert g() == 7
    assert outcomes("p") == {
        "ok": 0,
        "slow": 0,
        "rejected": 0,
        "failed": 0,
        "cancelled": 0,
        "fallback": 1,
    }
    (span,) = tel.spans()
    assert span.attributes is not None and span.attributes["guardrails.outcome"] == "fallback"


class Exploding(SpanProcessor):
    """An application's span processor with a bug."""

    def on_end(self, span: ReadableSpan) -> None:
        raise ValueError("processor bug")


def test_a_span_processor_that_raises_changes_no_call_and_is_logged(
    kind: str, tel: Tel, logs: pytest.LogCaptureFixture
) -> None:
    tel.tracers.add_span_processor(Exploding())
    configure({"policies": {"p": {"log": {"trace": True}}}})
    ok = guard_as(kind, lambda: 5, "p")

    def bad() -> None:
        raise KeyError("mine")

    failing = guard_as(kind, bad, "p")
    assert ok() == 5
    with pytest.raises(KeyError, match="mine"):
        failing()
    assert outcomes("p")["ok"] == 1 and outcomes("p")["failed"] == 1
    assert sum(outcomes("p").values()) == 2
    broken = [r for r in logs.records if "could not record" in r.getMessage()]
    assert len(broken) == 2 and all(r.levelno == logging.WARNING for r in broken)
    assert all(r.exc_info is not None and r.exc_info[0] is ValueError for r in broken)


# --- the histogram -----------------------------------------------------------------------


def test_a_thread_per_call_keeps_bounded_memory_without_a_scrape() -> None:
    """A threading server runs each request in a new thread: the histogram's per-thread
    sums of the ended threads must not pile up until someone scrapes (maybe never)."""
    registry = CollectorRegistry()
    prometheus.register(registry)
    try:
        configure({"policies": {"p": {"log": {}}}})
        f = guarded("p")(lambda: 1)
        for _ in range(600):
            t = threading.Thread(target=f)
            t.start()
            t.join()
        hist = STATE.counters["p"].histogram
        assert hist is not None
        assert len(hist._cells) <= 130  # 600 before: one per thread that ever called
        (totals,) = guardrails.metrics.read()
        assert totals.histogram is not None and totals.histogram.counts[-1] == 600
        # Nothing folded away was lost: the sum is that of the 600 durations recorded.
        window = STATE.counters["p"].latencies
        assert len(window) == 600
        assert totals.histogram.sum == pytest.approx(math.fsum(window), rel=1e-12, abs=0)
    finally:
        prometheus.unregister(registry)


def test_folding_on_new_threads_while_scrapes_fold_too_loses_nothing() -> None:
    registry = CollectorRegistry()
    prometheus.register(registry)
    stop = threading.Event()
    try:
        configure({"policies": {"p": {"log": {}}}})
        f = guarded("p")(lambda: 1)

        def spawner() -> None:
            for _ in range(150):
                t = threading.Thread(target=lambda: [f() for _ in range(3)])
                t.start()
                t.join()

        def scraper() -> None:
            while not stop.is_set():
                guardrails.metrics.read()

        reader = threading.Thread(target=scraper)
        reader.start()
        spawners = [threading.Thread(target=spawner) for _ in range(4)]
        for t in spawners:
            t.start()
        for t in spawners:
            t.join()
        stop.set()
        reader.join()
        (totals,) = guardrails.metrics.read()
        assert totals.histogram is not None and totals.histogram.counts[-1] == 1800
        window = STATE.counters["p"].latencies
        assert len(window) == 1800
        assert totals.histogram.sum == pytest.approx(math.fsum(window), rel=1e-12, abs=0)
    finally:
        stop.set()
        prometheus.unregister(registry)


# --- both exporters, every kind of ending -----------------------------------------------

STORM = {
    "leaf": {
        "log": {"trace": True},
        "cache": {"ttl": 60},
        "retry": {
            "max_attempts": 3,
            "wait": {"initial": "1ms", "jitter": 0},
            "retry_on": ["ConnectionError"],
        },
        "timeout": {"attempt": "200ms", "total": "400ms"},
        "validate": {"args": {"x": {"min": 0}}},
        "fallback": {"value": -1, "catch": ["KeyError"]},
    }
}


def test_both_exporters_see_every_call_once_through_cancellations_and_timeouts() -> None:
    """Async tasks cancelled at random points, timeouts abandoning attempts, refusals,
    fallbacks, cache hits and waiters, and threads calling alongside: the outcomes add
    up to the calls made, and both histograms count each call once."""
    registry = CollectorRegistry()
    prometheus.register(registry)
    t = Tel()
    otel.register(t.meters, t.tracers)
    try:
        configure({"policies": STORM})

        async def leaf(x: int) -> int:
            await asyncio.sleep(0.001 * (x % 3))
            if x % 7 == 1:
                raise ConnectionError(x)
            if x % 7 == 2:
                raise KeyError(x)
            if x % 7 == 3:
                await asyncio.Event().wait()  # only a timeout or a cancel ends it
            return x

        g = guarded("leaf")(leaf)
        calls = 600

        async def storm() -> list[Any]:
            rnd = random.Random(8)
            tasks = []
            for i in range(calls):
                task = asyncio.create_task(g(rnd.randrange(-3, 30)))
                tasks.append(task)
                if rnd.random() < 0.3:
                    asyncio.get_running_loop().call_later(rnd.random() * 0.01, task.cancel)
                if i % 40 == 0:
                    await asyncio.sleep(0)
            return await asyncio.gather(*tasks, return_exceptions=True)

        threads = [threading.Thread(target=lambda: asyncio.run(storm())) for _ in range(2)]
        for th in threads:
            th.start()
        results = asyncio.run(storm())
        for th in threads:
            th.join()
        assert len(results) == calls
        (totals,) = guardrails.metrics.read()
        by_outcome = dict(totals.calls)
        assert sum(by_outcome.values()) == 3 * calls, by_outcome
        assert by_outcome["cancelled"] > 0 and by_outcome["fallback"] > 0
        assert by_outcome["rejected"] > 0 and by_outcome["failed"] > 0
        assert totals.histogram is not None and totals.histogram.counts[-1] == 3 * calls
        found = t.reader.get_metrics_data()  # the SDK's histogram, fed by the same recorder
        assert found is not None
        (point,) = [
            p
            for rm in found.resource_metrics
            for sm in rm.scope_metrics
            for m in sm.metrics
            if m.name == "guardrails.call.duration"
            for p in m.data.data_points
        ]
        assert isinstance(point, HistogramDataPoint)
        assert point.count == 3 * calls
        assert point.sum == pytest.approx(totals.histogram.sum, rel=1e-9)
        assert len(t.spans()) == 3 * calls  # one span per call, every one ended
    finally:
        otel.unregister(t.meters)
        prometheus.unregister(registry)
        t.meters.shutdown()
        t.tracers.shutdown()


def test_two_registries_then_one_then_none() -> None:
    first, second = CollectorRegistry(), CollectorRegistry()
    prometheus.register(first)
    prometheus.register(second)
    try:
        configure({"policies": {"p": {"log": {}}}})
        f = guarded("p")(lambda: 1)
        for _ in range(5):
            f()
        assert _count(first) == _count(second) == 5
        prometheus.unregister(first)
        for _ in range(5):
            f()
        assert _count(second) == 10  # still fed for the registry left
        assert first.get_sample_value("guardrails_calls_total", {"policy": "p"}) is None
    finally:
        prometheus.unregister(second)
    for _ in range(5):
        f()
    assert sum(dict(guardrails.metrics.read()[0].calls).values()) == 15
    prometheus.register(second)  # from where the totals are; the histogram missed 5 calls
    try:
        assert (
            second.get_sample_value("guardrails_calls_total", {"policy": "p", "outcome": "ok"})
            == 15
        )
        assert _count(second) == 10
    finally:
        prometheus.unregister(second)


def _count(registry: CollectorRegistry) -> float | None:
    return registry.get_sample_value("guardrails_call_duration_seconds_count", {"policy": "p"})
