"""The ``fallback`` layer: turns a failure into a configured value or another function's
result. Never cached (it sits above the cache); input validation errors never fall back.

STUB: the builders are not written yet; they return ``inner`` unchanged.
"""

from __future__ import annotations

from typing import Any

from pydantic import model_validator

from guardrails._types import AsyncInner, Block, Context, ExceptionClasses, ImportedCallable, Inner


class FallbackConfig(Block):
    """``fallback:`` — ``value`` or ``function`` (same arguments), for the failures in ``catch``."""

    value: Any = None
    function: ImportedCallable | None = None
    catch: ExceptionClasses = (Exception,)

    @model_validator(mode="after")
    def _one(self) -> FallbackConfig:
        if self.function is not None and self.value is not None:
            raise ValueError("set value or function, not both")
        return self


def build(cfg: FallbackConfig, inner: Inner, ctx: Context) -> Inner:
    return inner


def build_async(cfg: FallbackConfig, inner: AsyncInner, ctx: Context) -> AsyncInner:
    return inner
