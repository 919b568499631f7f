"""The ``breaker`` layer: a circuit breaker over the attempts' outcomes, one per policy.

STUB: the builders are not written yet; they return ``inner`` unchanged.
"""

from __future__ import annotations

from pydantic import Field, StrictInt

from guardrails._types import AsyncInner, Block, Context, Duration, ExceptionClasses, Inner, Share


class BreakerConfig(Block):
    """``breaker:`` — when to open (failure and slow-call rates over a window), for how long."""

    failure_rate: Share = 0.5
    slow_call: Duration | None = Field(default=None, gt=0)
    slow_rate: Share = 1.0
    #: An int: the last N calls; a duration string ("60s"): the calls of that long.
    window: StrictInt | Duration = 20
    min_calls: StrictInt = Field(default=10, ge=1)
    open_for: Duration = Field(default=30.0, gt=0)
    half_open_calls: StrictInt = Field(default=3, ge=1)
    failure_on: ExceptionClasses = (Exception,)
    ignore_on: ExceptionClasses = ()


def build(cfg: BreakerConfig, inner: Inner, ctx: Context) -> Inner:
    return inner


def build_async(cfg: BreakerConfig, inner: AsyncInner, ctx: Context) -> AsyncInner:
    return inner
