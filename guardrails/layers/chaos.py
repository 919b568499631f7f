"""The ``chaos`` layer: injects failures and latency for drills. ``configure()`` refuses it
unless the top level sets ``allow_chaos: true``.

STUB: the builders are not written yet; they return ``inner`` unchanged.
"""

from __future__ import annotations

from pydantic import StrictInt

from guardrails._types import AsyncInner, Block, Context, Duration, ExceptionClass, Inner, Share


class ChaosConfig(Block):
    """``chaos:`` — ``error_rate`` of ``error``; ``latency`` added to ``latency_rate`` of calls."""

    error_rate: Share = 0.0
    error: ExceptionClass = ConnectionError
    latency: Duration = 0.0
    latency_rate: Share = 1.0
    seed: StrictInt | None = None


def build(cfg: ChaosConfig, inner: Inner, ctx: Context) -> Inner:
    return inner


def build_async(cfg: ChaosConfig, inner: AsyncInner, ctx: Context) -> AsyncInner:
    return inner
