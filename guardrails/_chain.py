"""The layer table: which layers exist, their order, and how a chain is compiled from a policy.

This table is the one place the order lives. Outermost first; ``log`` (which also keeps
the counters) always wraps the rest, and a policy with ``log.trace: true`` gets a span step
right inside it while a tracer is registered. A layer whose block is absent or disabled is
not in the chain at all, so it costs nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from guardrails._policy import Policy
from guardrails._state import STATE
from guardrails._types import AsyncInner, Block, Context, Inner
from guardrails.layers import breaker as _breaker
from guardrails.layers import bulkhead as _bulkhead
from guardrails.layers import cache as _cache
from guardrails.layers import chaos as _chaos
from guardrails.layers import fallback as _fallback
from guardrails.layers import log as _log
from guardrails.layers import memory as _memory
from guardrails.layers import rate_limit as _rate_limit
from guardrails.layers import retry as _retry
from guardrails.layers import timeout as _timeout
from guardrails.layers import validate as _validate


@dataclass(frozen=True, slots=True)
class Layer:
    """One row of the table: the layer's name, the policy block it reads, and its builders."""

    name: str
    block: str
    per: Literal["call", "attempt"]
    build: Callable[[Any, Inner, Context], Inner]
    build_async: Callable[[Any, AsyncInner, Context], AsyncInner]
    #: The layer's per-call facts (attempts, cache hit) feed the log record.
    informs_log: bool = False


def _cache_build(cfg: Any, inner: Inner, ctx: Context) -> Inner:
    return _cache.build(cfg, inner, ctx, ctx.store_for(cfg))


def _cache_build_async(cfg: Any, inner: AsyncInner, ctx: Context) -> AsyncInner:
    return _cache.build_async(cfg, inner, ctx, ctx.store_for(cfg))


#: Outermost first. ``log`` is built separately as the outermost wrapper (see ``compile``).
#: Rows with ``per="attempt"`` sit inside ``retry`` and run once per attempt.
ORDER: tuple[Layer, ...] = (
    Layer("validate.input", "validate", "call", _validate.build_input, _validate.build_input_async),
    Layer("fallback", "fallback", "call", _fallback.build, _fallback.build_async, informs_log=True),
    Layer("cache", "cache", "call", _cache_build, _cache_build_async, informs_log=True),
    Layer("memory", "memory", "call", _memory.build, _memory.build_async),
    Layer("timeout.total", "timeout", "call", _timeout.build_total, _timeout.build_total_async),
    Layer("retry", "retry", "call", _retry.build, _retry.build_async, informs_log=True),
    Layer("breaker", "breaker", "attempt", _breaker.build, _breaker.build_async),
    Layer("rate_limit", "rate_limit", "attempt", _rate_limit.build, _rate_limit.build_async),
    Layer("bulkhead", "bulkhead", "attempt", _bulkhead.build, _bulkhead.build_async),
    Layer(
        "timeout.attempt",
        "timeout",
        "attempt",
        _timeout.build_attempt,
        _timeout.build_attempt_async,
    ),
    Layer(
        "validate.output",
        "validate",
        "attempt",
        _validate.build_output,
        _validate.build_output_async,
    ),
    Layer("chaos", "chaos", "attempt", _chaos.build, _chaos.build_async),
)
#: The full order as the contract's table gives it.
LAYER_NAMES: tuple[str, ...] = ("log", *(layer.name for layer in ORDER))


def active_block(policy: Policy, name: str) -> Block | None:
    block: Block | None = getattr(policy, name)
    return block if block is not None and block.enabled else None


def compile_chain(policy: Policy, ctx: Context) -> Any:
    """The compiled chain for one function: ``(args, kwargs, info) -> result`` (or awaitable)."""
    fn = ctx.function
    if ctx.is_async:

        def terminal(args: tuple[Any, ...], kwargs: dict[str, Any], info: Any) -> Any:
            return fn(*args, **kwargs)  # the coroutine; the layer above awaits it

    else:

        def terminal(args: tuple[Any, ...], kwargs: dict[str, Any], info: Any) -> Any:
            return fn(*args, **kwargs) if kwargs else fn(*args)  # an empty ** costs

    inner: Any = terminal
    needs_info = False
    for layer in reversed(ORDER):
        block = active_block(policy, layer.block)
        if block is None:
            continue
        built = (layer.build_async if ctx.is_async else layer.build)(block, inner, ctx)
        if built is not inner:
            needs_info = needs_info or layer.informs_log
            inner = built
    log_cfg = active_block(policy, "log")
    spans = STATE.spans
    if spans is not None and isinstance(log_cfg, _log.LogConfig) and log_cfg.trace:
        # A span per call, just inside `log` (see guardrails.metrics.otel); not a row of
        # ORDER: it is part of the log block, and only there while a tracer is registered.
        inner = (spans[1] if ctx.is_async else spans[0])(log_cfg, inner, ctx)
    if ctx.is_async:
        return _log.build_async(log_cfg, inner, ctx, needs_info=needs_info)  # type: ignore[arg-type]
    direct = fn if inner is terminal else None
    return _log.build(log_cfg, inner, ctx, direct=direct, needs_info=needs_info)  # type: ignore[arg-type]
