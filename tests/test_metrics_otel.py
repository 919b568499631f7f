"""OpenTelemetry export with the real SDK: metrics read by an InMemoryMetricReader, spans
caught by an InMemorySpanExporter."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

import guardrails
from guardrails import configure, guarded
from guardrails._state import STATE
from guardrails.metrics import otel
from guardrails.testing import FakeClock
from tests.test_metrics_prometheus import MIX, run_mix
from tests.twins import guard_as


class Otel:
    def __init__(self) -> None:
        self.reader = InMemoryMetricReader()
        self.meters = MeterProvider(metric_readers=[self.reader])
        self.exporter = InMemorySpanExporter()
        self.tracers = TracerProvider()
        self.tracers.add_span_processor(SimpleSpanProcessor(self.exporter))

    def metrics(self) -> dict[str, Any]:
        """``{instrument name: [data points]}`` of one collection."""
        data = self.reader.get_metrics_data()
        out: dict[str, Any] = {}
        assert data is not None
        for rm in data.resource_metrics:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    out.setdefault(metric.name, []).extend(metric.data.data_points)
        return out

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())


@pytest.fixture
def tel() -> Iterator[Otel]:
    t = Otel()
    otel.register(t.meters, t.tracers)
    yield t
    otel.unregister(t.meters)
    assert STATE.spans is None
    t.meters.shutdown()
    t.tracers.shutdown()


@pytest.fixture(params=["sync", "async"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def points(found: list[Any], **fixed: str) -> dict[str, Any]:
    """Data points matching ``fixed`` attributes, by the one attribute left (or "")."""
    got = {}
    for p in found:
        attrs = dict(p.attributes)
        if all(attrs.get(k) == v for k, v in fixed.items()):
            rest = [v for k, v in sorted(attrs.items()) if k not in fixed]
            got[rest[0] if rest else ""] = p
    return got


def values(found: list[Any], **fixed: str) -> dict[str, Any]:
    return {k: p.value for k, p in points(found, **fixed).items()}


def test_the_scripted_mix_through_the_metrics_api(kind: str, tel: Otel, clock: FakeClock) -> None:
    configure({"policies": MIX})
    run_mix(kind)
    m = tel.metrics()
    assert values(m["guardrails.calls"], policy="m") == {
        "ok": 3,
        "slow": 1,
        "rejected": 2,
        "failed": 2,
        "cancelled": 0,
        "fallback": 0,
    }
    assert values(m["guardrails.calls"], policy="fb")["fallback"] == 2
    assert values(m["guardrails.retries"], policy="m") == {"": 3}
    assert values(m["guardrails.cache.requests"], policy="m") == {"hit": 1, "miss": 6}
    assert values(m["guardrails.rejections"], policy="br")["breaker"] == 1
    assert values(m["guardrails.rejections"], policy="m")["input"] == 1
    assert values(m["guardrails.breaker.state"], policy="br") == {"": 2}
    assert values(m["guardrails.process.rss"])[""] > 1_000_000
    duration = points(m["guardrails.call.duration"], policy="m")[""]
    assert duration.count == 8 and duration.sum >= 0.5
    assert duration.explicit_bounds[0] == 0.001  # seconds, not the SDK's millisecond default
    assert "quiet" not in {dict(p.attributes)["policy"] for p in m["guardrails.call.duration"]}
    assert tel.spans() == []  # no policy asked for a span


def test_totals_never_go_down_across_reset_stats(tel: Otel) -> None:
    configure({"policies": {"p": {}}})
    f = guarded("p")(lambda: 1)
    f(), f()
    assert values(tel.metrics()["guardrails.calls"], policy="p")["ok"] == 2
    guardrails.reset_stats()
    f()
    assert values(tel.metrics()["guardrails.calls"], policy="p")["ok"] == 3
    assert guardrails.stats()["p"].calls == 1


def test_registering_twice_does_not_double_anything(tel: Otel) -> None:
    otel.register(tel.meters, tel.tracers)
    configure({"policies": {"p": {}}})
    guarded("p")(lambda: 1)()
    m = tel.metrics()
    assert len(points(m["guardrails.calls"], policy="p")) == 6  # one point per outcome
    assert points(m["guardrails.call.duration"], policy="p")[""].count == 1


def test_without_durations_no_histogram_is_fed(tel: Otel) -> None:
    otel.register(tel.meters, tel.tracers, durations=False)
    configure({"policies": {"p": {}}})
    guarded("p")(lambda: 1)()
    m = tel.metrics()
    assert "guardrails.call.duration" not in m
    assert values(m["guardrails.calls"], policy="p")["ok"] == 1
    assert "append" not in vars(STATE.counters["p"].latencies)  # the cheap path


def test_after_unregister_nothing_is_reported() -> None:
    t = Otel()
    otel.register(t.meters, t.tracers)
    configure({"policies": {"p": {"log": {"trace": True}}}})
    f = guarded("p")(lambda: 1)
    f()
    otel.unregister(t.meters)
    f()
    assert len(t.spans()) == 1  # the call before
    data = t.reader.get_metrics_data()
    names = {
        metric.name
        for rm in (data.resource_metrics if data else [])
        for sm in rm.scope_metrics
        for metric in sm.metrics
        if metric.data.data_points and not metric.name.endswith("duration")
    }
    assert names == set()
    t.meters.shutdown()
    t.tracers.shutdown()


TRACED = {
    "t": {
        "log": {"trace": True, "slow": "1h"},
        "cache": {"ttl": 60},
        "retry": {"max_attempts": 3, "wait": {"initial": "100ms", "jitter": 0}},
    },
    "plain": {"retry": {"max_attempts": 3, "wait": {"initial": "100ms", "jitter": 0}}},
}


def test_a_span_per_traced_call_with_retry_events(kind: str, tel: Otel, clock: FakeClock) -> None:
    configure({"policies": TRACED})
    failing = [ConnectionError("a"), TimeoutError("b")]

    def fetch(x: int) -> int:
        if x == 1 and failing:
            raise failing.pop(0)
        if x == 2:
            raise KeyError("missing")
        return x

    f = guard_as(kind, fetch, "t")
    assert f(1) == 1  # two retries, then ok
    assert f(1) == 1  # cache hit
    with pytest.raises(KeyError):
        f(2)
    plain = guard_as(kind, lambda: 1, "plain")
    plain()
    spans = tel.spans()
    assert len(spans) == 3  # none for the untraced policy
    first, hit, failed = spans
    assert first.name.endswith("fetch")  # the function's qualified name
    assert dict(first.attributes or {}) == {
        "guardrails.policy": "t",
        "guardrails.function": first.attributes["guardrails.function"],  # type: ignore[index]
        "guardrails.outcome": "ok",
        "guardrails.attempts": 3,
        "guardrails.cache_hit": False,
    }
    assert "fetch" in str(first.attributes["guardrails.function"])  # type: ignore[index]
    assert first.status.status_code is StatusCode.UNSET
    assert [(e.name, dict(e.attributes or {})) for e in first.events] == [
        (
            "retry",
            {
                "guardrails.attempt": 1,
                "exception.type": "ConnectionError",
                "guardrails.wait_s": 0.1,
            },
        ),
        (
            "retry",
            {"guardrails.attempt": 2, "exception.type": "TimeoutError", "guardrails.wait_s": 0.2},
        ),
    ]
    assert hit.attributes is not None
    assert (hit.attributes["guardrails.cache_hit"], hit.attributes["guardrails.attempts"]) == (
        True,
        1,
    )
    assert failed.attributes is not None
    assert failed.attributes["guardrails.outcome"] == "failed"
    assert failed.status.status_code is StatusCode.ERROR
    assert "KeyError" in (failed.status.description or "")
    exc_events = [e for e in failed.events if e.name == "exception"]
    assert exc_events and exc_events[0].attributes is not None
    assert exc_events[0].attributes["exception.type"] == "KeyError"
    # The stack trace names the function's frame, none of guardrails' or tenacity's.
    stack = str(exc_events[0].attributes["exception.stacktrace"])
    assert 'in fetch\n    raise KeyError("missing")' in stack, stack
    assert "/guardrails/" not in stack and "tenacity" not in stack, stack


def test_refusals_and_fallbacks_in_spans(tel: Otel) -> None:
    configure(
        {
            "policies": {
                "v": {"log": {"trace": True}, "validate": {"output": "int"}},
                "fb": {"log": {"trace": True}, "fallback": {"value": 0}},
            }
        }
    )
    with pytest.raises(guardrails.OutputValidationError):
        guarded("v")(lambda: "x")()

    @guarded("fb")
    def boom() -> int:
        raise RuntimeError("down")

    assert boom() == 0
    refused, answered = tel.spans()
    assert refused.attributes is not None and answered.attributes is not None
    assert refused.attributes["guardrails.outcome"] == "rejected"
    assert refused.status.status_code is StatusCode.ERROR
    assert answered.attributes["guardrails.outcome"] == "fallback"
    assert answered.status.status_code is StatusCode.UNSET
    assert [e.attributes["exception.type"] for e in answered.events if e.attributes] == [
        "RuntimeError"
    ]


def test_the_span_is_current_in_the_function_across_awaits(tel: Otel) -> None:
    configure({"policies": {"a": {"log": {"trace": True}}}})
    tracer = tel.tracers.get_tracer("app")
    seen: list[int] = []

    @guarded("a")
    async def handler() -> None:
        seen.append(trace.get_current_span().get_span_context().span_id)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        seen.append(trace.get_current_span().get_span_context().span_id)
        with tracer.start_as_current_span("child"):
            await asyncio.sleep(0)

    async def main() -> None:
        # Interleaved with another traced call: each keeps its own span current.
        await asyncio.gather(handler(), handler())

    asyncio.run(main())
    spans = tel.spans()
    ours = [s for s in spans if s.name != "child"]
    children = [s for s in spans if s.name == "child"]
    assert len(ours) == 2 and len(children) == 2
    ids = {s.context.span_id for s in ours}
    assert set(seen) == ids and len(seen) == 4
    assert {c.parent.span_id for c in children if c.parent} == ids


def test_a_cancelled_call_is_recorded_without_error_status(tel: Otel) -> None:
    configure({"policies": {"c": {"log": {"trace": True}}}})

    @guarded("c")
    async def waits(started: asyncio.Event) -> None:
        started.set()
        await asyncio.Event().wait()

    async def main() -> None:
        started = asyncio.Event()
        task = asyncio.create_task(waits(started))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    (span,) = tel.spans()
    assert span.attributes is not None
    assert span.attributes["guardrails.outcome"] == "cancelled"
    assert span.status.status_code is StatusCode.UNSET
    assert values(tel.metrics()["guardrails.calls"], policy="c")["cancelled"] == 1


def test_an_inner_untraced_policy_does_not_write_into_the_outer_span(
    tel: Otel, clock: FakeClock
) -> None:
    configure({"policies": TRACED})
    flaky = [ConnectionError()]

    @guarded("plain")
    def inner() -> int:
        if flaky:
            raise flaky.pop()
        return 1

    @guarded("t")
    def outer(x: int) -> int:
        return inner() + x

    assert outer(1) == 2
    (span,) = tel.spans()
    assert span.events == ()  # the inner policy's retry is its own
    assert guardrails.stats()["plain"].retries == 1


def test_trace_false_or_no_tracer_means_no_span_step(tel: Otel) -> None:
    configure({"policies": {"off": {"log": {"trace": False}}, "on": {"log": {"trace": True}}}})
    f, g = guarded("off")(lambda: 1), guarded("on")(lambda: 1)
    f(), g()
    assert [s.attributes["guardrails.policy"] for s in tel.spans() if s.attributes] == ["on"]


def test_spans_from_many_threads(tel: Otel) -> None:
    configure({"policies": {"p": {"log": {"trace": True}}}})
    f = guarded("p")(lambda x: x)
    start = threading.Barrier(4)

    def run() -> None:
        start.wait()
        for i in range(100):
            f(i)

    pool = [threading.Thread(target=run) for _ in range(4)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(60)
    assert not any(t.is_alive() for t in pool)
    spans = tel.spans()
    assert len(spans) == 400
    assert all(s.parent is None for s in spans)  # no span leaked into the next call's context
