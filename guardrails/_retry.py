"""The ``retry`` layer: re-runs the layers below with exponential backoff and jitter.

tenacity is imported here and nowhere else. A call that succeeds at once never reaches it:
the first attempt runs in a plain ``try``, and only a retryable failure enters tenacity,
which is handed that failure as its own first attempt.
"""

from __future__ import annotations

import logging
import random
from typing import Any

import tenacity
from pydantic import Field, StrictInt

from guardrails._types import (
    AsyncInner,
    Block,
    Context,
    Duration,
    ExceptionClasses,
    Inner,
    Section,
)


class WaitConfig(Section):
    """Backoff: ``initial * multiplier ** (n - 1)`` plus up to ``jitter``, capped at ``max``.

    ``jitter`` defaults to ``initial``, so a policy that sets ``initial: 10ms`` waits about
    10-20 ms, not a fixed 100 ms of noise.
    """

    initial: Duration = 0.1
    max: Duration = 5.0
    multiplier: float = Field(default=2.0, ge=1.0, strict=True)
    jitter: Duration | None = None


class RetryConfig(Block):
    """``retry:`` — how often and on what to try again."""

    max_attempts: StrictInt = Field(default=3, ge=1)
    wait: WaitConfig = WaitConfig()
    retry_on: ExceptionClasses = (ConnectionError, TimeoutError)
    abort_on: ExceptionClasses = ()
    deadline: Duration | None = None


class _Plan:
    """One compiled retry layer's settings, and the tenacity objects for a slow path."""

    __slots__ = ("abort_on", "cfg", "ctx", "retry_on")

    def __init__(self, cfg: RetryConfig, ctx: Context) -> None:
        self.cfg = cfg
        self.ctx = ctx
        self.retry_on = cfg.retry_on
        self.abort_on = cfg.abort_on

    def retryable(self, exc: BaseException) -> bool:
        return isinstance(exc, self.retry_on) and not isinstance(exc, self.abort_on)

    def wait(self, state: tenacity.RetryCallState) -> float:
        w = self.cfg.wait
        delay = w.initial * w.multiplier ** (state.attempt_number - 1)
        jitter = w.initial if w.jitter is None else w.jitter
        if jitter:
            delay += random.uniform(0, jitter)
        return min(delay, w.max)

    def tenacity_kwargs(self, started: float | None, why: list[str]) -> dict[str, Any]:
        cfg, clock = self.cfg, self.ctx.clock
        deadline_at = None if started is None or cfg.deadline is None else started + cfg.deadline

        def stop(state: tenacity.RetryCallState) -> bool:
            if state.attempt_number >= cfg.max_attempts:
                why.append(f"retry.max_attempts={cfg.max_attempts}")
                return True
            if deadline_at is not None and clock.monotonic() + state.upcoming_sleep >= deadline_at:
                why.append(f"retry.deadline={cfg.deadline:g}s would be passed")
                return True
            return False

        return {
            "stop": stop,
            "wait": self.wait,
            "retry": tenacity.retry_if_exception(self.retryable),
            "reraise": True,
            "before_sleep": self.before_sleep,
        }

    def before_sleep(self, state: tenacity.RetryCallState) -> None:
        logger = self.ctx.logger
        if logger.isEnabledFor(logging.DEBUG) and state.outcome is not None:
            exc = state.outcome.exception()
            logger.debug(
                "%s: attempt %d of %d failed with %s; retrying in %.3f s",
                self.ctx.policy,
                state.attempt_number,
                self.cfg.max_attempts,
                type(exc).__name__,
                state.upcoming_sleep,
                extra={"policy": self.ctx.policy, "function": self.ctx.qualname},
            )

    def give_up(self, exc: BaseException, attempts: int, why: list[str]) -> None:
        if attempts > 1:
            reason = why[-1] if why else f"{type(exc).__name__} is not retried by this policy"
            exc.add_note(
                f"guardrails: policy {self.ctx.policy!r} gave up after {attempts} attempts "
                f"({reason})"
            )


def build(cfg: RetryConfig, inner: Inner, ctx: Context) -> Inner:
    """The sync retry layer around ``inner``."""
    if cfg.max_attempts <= 1 or not cfg.retry_on:
        return inner
    plan = _Plan(cfg, ctx)
    retry_on, abort_on, monotonic = plan.retry_on, plan.abort_on, ctx.clock.monotonic
    retried = ctx.counters.retry
    timed = cfg.deadline is not None

    def slow(first: BaseException, started: float | None, args: Any, kwargs: Any, info: Any) -> Any:
        attempts = 0
        why: list[str] = []

        def attempt() -> Any:
            nonlocal attempts
            attempts += 1
            if attempts == 1:
                raise first
            retried()
            if info is not None:
                info[0] = attempts
            return inner(args, kwargs, info)

        retrying = tenacity.Retrying(sleep=ctx.clock.sleep, **plan.tenacity_kwargs(started, why))
        try:
            return retrying(attempt)
        except BaseException as exc:
            plan.give_up(exc, attempts, why)
            raise

    def retry_layer(args: tuple[Any, ...], kwargs: dict[str, Any], info: Any) -> Any:
        started = monotonic() if timed else None
        try:
            return inner(args, kwargs, info)
        except retry_on as exc:
            if abort_on and isinstance(exc, abort_on):
                raise
            first = exc
        return slow(first, started, args, kwargs, info)

    return retry_layer


def build_async(cfg: RetryConfig, inner: AsyncInner, ctx: Context) -> AsyncInner:
    """The async retry layer: waits with the clock's ``async_sleep``, never blocking the loop."""
    if cfg.max_attempts <= 1 or not cfg.retry_on:
        return inner
    plan = _Plan(cfg, ctx)
    retry_on, abort_on, monotonic = plan.retry_on, plan.abort_on, ctx.clock.monotonic
    retried = ctx.counters.retry
    timed = cfg.deadline is not None

    async def slow(
        first: BaseException, started: float | None, args: Any, kwargs: Any, info: Any
    ) -> Any:
        attempts = 0
        why: list[str] = []

        async def attempt() -> Any:
            nonlocal attempts
            attempts += 1
            if attempts == 1:
                raise first
            retried()
            if info is not None:
                info[0] = attempts
            return await inner(args, kwargs, info)

        retrying = tenacity.AsyncRetrying(
            sleep=ctx.clock.async_sleep, **plan.tenacity_kwargs(started, why)
        )
        try:
            return await retrying(attempt)
        except BaseException as exc:
            plan.give_up(exc, attempts, why)
            raise

    async def retry_layer(args: tuple[Any, ...], kwargs: dict[str, Any], info: Any) -> Any:
        started = monotonic() if timed else None
        try:
            return await inner(args, kwargs, info)
        except retry_on as exc:
            if abort_on and isinstance(exc, abort_on):
                raise
            first = exc
        return await slow(first, started, args, kwargs, info)

    return retry_layer
