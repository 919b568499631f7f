"""The ``rate_limit`` layer: a token bucket per policy, shared by its sync and async calls.

STUB: the builders are not written yet; they return ``inner`` unchanged.
"""

from __future__ import annotations

from pydantic import Field, StrictInt

from guardrails._types import AsyncInner, Block, Context, Duration, Inner, PerSecond


class RateLimitConfig(Block):
    """``rate_limit:`` — ``rate`` tokens per period, a bucket of ``burst``, ``max_wait``."""

    rate: PerSecond
    burst: StrictInt | None = Field(default=None, ge=1)
    max_wait: Duration = 0.0


def build(cfg: RateLimitConfig, inner: Inner, ctx: Context) -> Inner:
    return inner


def build_async(cfg: RateLimitConfig, inner: AsyncInner, ctx: Context) -> AsyncInner:
    return inner
