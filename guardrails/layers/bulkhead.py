"""The ``bulkhead`` layer: caps the attempts of a policy running at once, sync and async
together.

STUB: the builders are not written yet; they return ``inner`` unchanged.
"""

from __future__ import annotations

from pydantic import Field, StrictInt

from guardrails._types import AsyncInner, Block, Context, Duration, Inner


class BulkheadConfig(Block):
    """``bulkhead:`` — ``max_concurrent`` attempts at once; ``max_wait`` for a free slot."""

    max_concurrent: StrictInt = Field(ge=1)
    max_wait: Duration = 0.0


def build(cfg: BulkheadConfig, inner: Inner, ctx: Context) -> Inner:
    return inner


def build_async(cfg: BulkheadConfig, inner: AsyncInner, ctx: Context) -> AsyncInner:
    return inner
