"""The ``timeout`` layers: ``timeout.total`` bounds the whole call (retries and waits
included), ``timeout.attempt`` one attempt. Both raise ``CallTimeout``.

STUB: the builders are not written yet; they return ``inner`` unchanged.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from guardrails._types import AsyncInner, Block, Context, Duration, Inner


class TimeoutConfig(Block):
    """``timeout:`` — ``attempt`` (each attempt, inside retry), ``total`` (the whole call)."""

    attempt: Duration | None = Field(default=None, gt=0)
    total: Duration | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _some(self) -> TimeoutConfig:
        if self.attempt is None and self.total is None:
            raise ValueError("set attempt, total or both (durations like '2s')")
        return self


def build_total(cfg: TimeoutConfig, inner: Inner, ctx: Context) -> Inner:
    return inner


def build_total_async(cfg: TimeoutConfig, inner: AsyncInner, ctx: Context) -> AsyncInner:
    return inner


def build_attempt(cfg: TimeoutConfig, inner: Inner, ctx: Context) -> Inner:
    return inner


def build_attempt_async(cfg: TimeoutConfig, inner: AsyncInner, ctx: Context) -> AsyncInner:
    return inner
