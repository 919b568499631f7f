"""OpenTelemetry export (extra ``[otel]``): metrics through the metrics API, and a span per
call of each policy with ``log.trace: true``.

``register(meter_provider=None, tracer_provider=None)`` (the global providers by default):

- observable instruments read guardrails' lock-free counters at collection time (nothing
  per call): ``guardrails.calls`` {policy, outcome}, ``guardrails.retries``,
  ``guardrails.cache.requests`` {result}, ``guardrails.rejections`` {reason},
  ``guardrails.timeouts``, ``guardrails.abandoned``, ``guardrails.chaos.injected``,
  ``guardrails.cache.shared_hits``, ``guardrails.redis.errors``,
  ``guardrails.breaker.state`` (0 closed, 1 half-open, 2 open), ``guardrails.process.rss``
  (bytes), ``guardrails.config.reloads`` {result}. Through an OpenTelemetry Prometheus
  exporter they carry the names of ``guardrails.metrics.prometheus``.
- ``guardrails.call.duration`` (seconds), a histogram: the metrics API has no observable
  histogram, so each call made while the policy's ``log`` is on records its duration
  (``durations=False`` turns this per-call cost off).
- a span per call, named after the function, for each policy whose ``log.trace`` is true:
  attributes ``guardrails.policy``, ``guardrails.function``, ``guardrails.outcome``,
  ``guardrails.attempts``, ``guardrails.cache_hit``; status ERROR with the exception recorded
  when the call raises (a cancellation is recorded, status left unset); a ``retry`` event
  per retry (``guardrails.attempt``: the attempt that failed, ``exception.type``,
  ``guardrails.wait_s``). The span is current while the call runs (the function's own spans
  are its children), across awaits too. Policies without ``log.trace`` get no span step.

Totals are raw (since the process started): ``reset_stats()`` never makes them go down.
"""

from __future__ import annotations

import functools
import logging
import threading
import traceback
from collections.abc import Callable, Iterable
from time import perf_counter
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation
from opentelemetry.trace import Status, StatusCode, TracerProvider

from guardrails import _frames, _stats
from guardrails._state import STATE
from guardrails._types import CURRENT_SPAN, AsyncInner, Context, Inner
from guardrails.layers.log import LogConfig
from guardrails.metrics import (
    BREAKER_STATES,
    PolicyTotals,
    config_reloads,
    process_rss_bytes,
    read,
    recompile_chains,
)

__all__ = ["register", "unregister"]

_VERSION = "0.1.0"
_LOCK = threading.Lock()
_LOGGER = logging.getLogger("guardrails")


class _Registration:
    """The instruments made on one meter provider; ``active`` while registered."""

    def __init__(self, provider: MeterProvider, durations: bool) -> None:
        self.active = True
        self.key = f"otel:{id(provider)}"
        meter = provider.get_meter("guardrails", _VERSION)
        per_policy: list[tuple[str, str, str, Callable[[PolicyTotals], Iterable[Any]]]] = [
            ("guardrails.calls", "{call}", "Guarded calls finished, by outcome", _calls),
            ("guardrails.retries", "{retry}", "Extra attempts made by retry", _retries),
            ("guardrails.cache.requests", "{request}", "Cache lookups, by result", _cache),
            (
                "guardrails.rejections",
                "{rejection}",
                "Refusals where they happen (per attempt), by reason",
                _rejections,
            ),
            ("guardrails.timeouts", "{timeout}", "Attempts and calls that timed out", _timeouts),
            (
                "guardrails.abandoned",
                "{attempt}",
                "Sync attempts left running after their timeout",
                _abandoned,
            ),
            ("guardrails.chaos.injected", "{fault}", "Faults injected by chaos", _injected),
            (
                "guardrails.cache.shared_hits",
                "{hit}",
                "Cache hits answered by the shared Redis level (a part of the hits)",
                _shared_hits,
            ),
            (
                "guardrails.redis.errors",
                "{error}",
                "Redis operations that failed or timed out (each fell back to this process)",
                _redis_errors,
            ),
        ]
        for name, unit, doc, pick in per_policy:
            meter.create_observable_counter(
                name, callbacks=[self._per_policy(pick)], unit=unit, description=doc
            )
        meter.create_observable_gauge(
            "guardrails.breaker.state",
            callbacks=[self._per_policy(_breaker)],
            unit="{state}",
            description="Circuit breaker state: 0 closed, 1 half-open, 2 open",
        )
        meter.create_observable_gauge(
            "guardrails.process.rss",
            callbacks=[self._rss],
            unit="By",
            description="Resident memory of this process",
        )
        meter.create_observable_counter(
            "guardrails.config.reloads",
            callbacks=[self._reloads],
            unit="{reload}",
            description="Configuration reloads by guardrails.watch(), by result (ok, failed)",
        )
        self.histogram = meter.create_histogram(
            "guardrails.call.duration",
            unit="s",
            description="Duration of guarded calls, recorded while the policy's log block is on",
            explicit_bucket_boundaries_advisory=list(_stats.DEFAULT_BUCKETS),
        )
        self.durations = durations

    def _per_policy(
        self, pick: Callable[[PolicyTotals], Iterable[Any]]
    ) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            if not self.active:
                return []
            return [Observation(value, attrs) for p in read() for value, attrs in pick(p)]

        return observe

    def _rss(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(process_rss_bytes())] if self.active else []

    def _reloads(self, options: CallbackOptions) -> Iterable[Observation]:
        found = config_reloads() if self.active else None
        if found is None:
            return []
        return [
            Observation(found[0], {"result": "ok"}),
            Observation(found[1], {"result": "failed"}),
        ]

    def sink(self, policy: str) -> Callable[[float], Any]:
        return functools.partial(self.histogram.record, attributes={"policy": policy})


def _calls(p: PolicyTotals) -> Iterable[Any]:
    return [(n, {"policy": p.policy, "outcome": outcome}) for outcome, n in p.calls]


def _retries(p: PolicyTotals) -> Iterable[Any]:
    return [(p.retries, {"policy": p.policy})]


def _cache(p: PolicyTotals) -> Iterable[Any]:
    return [(n, {"policy": p.policy, "result": result}) for result, n in p.cache]


def _rejections(p: PolicyTotals) -> Iterable[Any]:
    return [(n, {"policy": p.policy, "reason": reason}) for reason, n in p.rejections]


def _timeouts(p: PolicyTotals) -> Iterable[Any]:
    return [(p.timeouts, {"policy": p.policy})]


def _abandoned(p: PolicyTotals) -> Iterable[Any]:
    return [(p.abandoned, {"policy": p.policy})]


def _injected(p: PolicyTotals) -> Iterable[Any]:
    return [(p.injected, {"policy": p.policy})]


def _shared_hits(p: PolicyTotals) -> Iterable[Any]:
    return [(p.shared_cache_hits, {"policy": p.policy})]


def _redis_errors(p: PolicyTotals) -> Iterable[Any]:
    return [(p.redis_errors, {"policy": p.policy})]


def _breaker(p: PolicyTotals) -> Iterable[Any]:
    if p.breaker_state is None:
        return []
    return [(BREAKER_STATES[p.breaker_state], {"policy": p.policy})]


#: Meter providers registered (or registered before: their instruments stay, inactive).
_METERS: dict[int, tuple[MeterProvider, _Registration]] = {}
#: The tracer the span step uses (the last ``register()``'s); ``None``: no spans.
_TRACER: list[trace.Tracer | None] = [None]


def register(
    meter_provider: MeterProvider | None = None,
    tracer_provider: TracerProvider | None = None,
    *,
    durations: bool = True,
) -> None:
    """Export guardrails' metrics through ``meter_provider`` and trace the policies with
    ``log.trace: true`` with ``tracer_provider`` (each the global provider by default).

    Registering a provider again does not duplicate its instruments. ``durations=False``
    leaves out the duration histogram, the one instrument that costs something per call.
    Chains are recompiled, so the span step and the histogram take effect at once.
    """
    meters = metrics.get_meter_provider() if meter_provider is None else meter_provider
    tracers = trace.get_tracer_provider() if tracer_provider is None else tracer_provider
    with _LOCK:
        found = _METERS.get(id(meters))
        if found is None or found[0] is not meters:
            registration = _Registration(meters, durations)
            _METERS[id(meters)] = (meters, registration)
        else:
            registration = found[1]
            registration.active = True
            registration.durations = durations
        if durations:
            _stats.EXPORT.sinks[registration.key] = registration.sink
        else:
            _stats.EXPORT.sinks.pop(registration.key, None)
        _TRACER[0] = tracers.get_tracer("guardrails", _VERSION)
        STATE.spans = (_build, _build_async)
        recompile_chains()


def unregister(meter_provider: MeterProvider | None = None) -> None:
    """Stop exporting through ``meter_provider`` (default: the global one) and stop tracing.
    Its instruments report nothing from then on (the metrics API cannot remove them);
    chains are recompiled without the span step or the histogram."""
    meters = metrics.get_meter_provider() if meter_provider is None else meter_provider
    with _LOCK:
        found = _METERS.get(id(meters))
        if found is not None and found[0] is meters:
            found[1].active = False
            _stats.EXPORT.sinks.pop(found[1].key, None)
        _TRACER[0] = None
        STATE.spans = None
        recompile_chains()


# --- the span step ----------------------------------------------------------------------


def _plan(cfg: LogConfig, ctx: Context) -> tuple[trace.Tracer, dict[str, Any], float]:
    tracer = _TRACER[0]
    assert tracer is not None  # built only while STATE.spans is set, with the tracer
    attributes = {"guardrails.policy": ctx.policy, "guardrails.function": ctx.qualname}
    return tracer, attributes, cfg.slow if cfg.slow is not None else float("inf")


def _adder(span: trace.Span) -> Callable[[str, dict[str, Any]], None]:
    def add_event(name: str, attributes: dict[str, Any]) -> None:
        # Not after the span ended (a timeout.total gave up on work still retrying).
        if span.is_recording():
            span.add_event(name, attributes)

    return add_event


def _text(exc: BaseException) -> str:
    """``str(exc)``, or a placeholder when its ``__str__`` raises."""
    try:
        return str(exc)
    except Exception:
        return "<unprintable>"


def _exception_event(exc: BaseException, *, escaped: bool) -> dict[str, str]:
    """The attributes of the ``exception`` event the SDK's ``record_exception`` adds, made
    without calling ``str()`` on the exception unguarded (an exception whose ``__str__``
    raises must reach the caller as itself), and with the stack trace as a log record shows
    it: the function's frames, not guardrails' or tenacity's."""
    kind = type(exc)
    module = kind.__module__
    tb = _frames.for_record(exc, None, "short")
    try:
        stacktrace = "".join(traceback.format_exception(kind, exc, tb))
    except Exception:
        stacktrace = f"{kind.__qualname__}: <traceback could not be formatted>"
    return {
        "exception.type": f"{module}.{kind.__qualname__}"
        if module and module != "builtins"
        else kind.__qualname__,
        "exception.message": _text(exc),
        "exception.stacktrace": stacktrace,
        "exception.escaped": str(escaped),
    }


def _succeeded(span: trace.Span, seconds: float, slow: float, info: Any) -> None:
    try:
        if info is not None and info[2] is not None:
            outcome = "fallback"
            # What the fallback answered.
            span.add_event("exception", _exception_event(info[2], escaped=False))
        else:
            outcome = "slow" if seconds >= slow else "ok"
        _attributes(span, outcome, info)
    except Exception:
        _not_recorded(span)
    _end(span)


def _failed(span: trace.Span, exc: BaseException, info: Any) -> None:
    try:
        span.add_event("exception", _exception_event(exc, escaped=True))
        if isinstance(exc, _stats.REFUSALS):
            outcome = "rejected"
        elif not isinstance(exc, Exception):
            outcome = "cancelled"  # control flow, not a fault: no ERROR status
        else:
            outcome = "failed"
        if outcome != "cancelled":
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {_text(exc)}"))
        _attributes(span, outcome, info)
    except Exception:
        _not_recorded(span)
    _end(span)


def _end(span: trace.Span) -> None:
    try:
        span.end()  # runs the span processors, which are the application's
    except Exception:
        _not_recorded(span)


def _attributes(span: trace.Span, outcome: str, info: Any) -> None:
    attempts, cache_hit = (info[0], info[1]) if info is not None else (1, False)
    span.set_attribute("guardrails.outcome", outcome)
    span.set_attribute("guardrails.attempts", attempts)
    span.set_attribute("guardrails.cache_hit", cache_hit)


def _not_recorded(span: trace.Span) -> None:
    # Tracing never changes a call's outcome: the call's own result or exception goes on
    # to the caller; what went wrong with its span is logged (not swallowed).
    _LOGGER.warning("guardrails could not record a call's span %r", span, exc_info=True)


def _build(cfg: LogConfig, inner: Inner, ctx: Context) -> Inner:
    """The sync span step, just inside ``log``."""
    tracer, attributes, slow = _plan(cfg, ctx)
    name = ctx.qualname
    start, in_context = tracer.start_span, trace.set_span_in_context
    attach, detach, mark, unmark = (
        otel_context.attach,
        otel_context.detach,
        CURRENT_SPAN.set,
        CURRENT_SPAN.reset,
    )

    def span_step(args: tuple[Any, ...], kwargs: dict[str, Any], info: Any) -> Any:
        span = start(name, attributes=attributes)
        token, marked = attach(in_context(span)), mark((ctx, _adder(span)))
        t0 = perf_counter()
        try:
            result = inner(args, kwargs, info)
        except BaseException as exc:
            unmark(marked)
            detach(token)
            _failed(span, exc, info)
            raise
        seconds = perf_counter() - t0
        unmark(marked)
        detach(token)
        _succeeded(span, seconds, slow, info)
        return result

    return span_step


def _build_async(cfg: LogConfig, inner: AsyncInner, ctx: Context) -> AsyncInner:
    """The async span step: the span stays current across the call's awaits (contextvars)."""
    tracer, attributes, slow = _plan(cfg, ctx)
    name = ctx.qualname
    start, in_context = tracer.start_span, trace.set_span_in_context
    attach, detach, mark, unmark = (
        otel_context.attach,
        otel_context.detach,
        CURRENT_SPAN.set,
        CURRENT_SPAN.reset,
    )

    async def span_step(args: tuple[Any, ...], kwargs: dict[str, Any], info: Any) -> Any:
        span = start(name, attributes=attributes)
        token, marked = attach(in_context(span)), mark((ctx, _adder(span)))
        t0 = perf_counter()
        try:
            result = await inner(args, kwargs, info)
        except BaseException as exc:
            unmark(marked)
            detach(token)
            _failed(span, exc, info)
            raise
        seconds = perf_counter() - t0
        unmark(marked)
        detach(token)
        _succeeded(span, seconds, slow, info)
        return result

    return span_step
