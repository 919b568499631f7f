"""The ``retry`` layer: re-runs the layers below with exponential backoff and jitter.

tenacity is imported here and nowhere else. A call that succeeds at once never reaches it:
the first attempt runs in a plain ``try``. After a retryable failure tenacity decides, per
failure, whether to stop and how long to wait (``Retrying.iter`` on a state this layer
keeps); the layer itself runs the attempts and the waits. So tenacity's frames never end up
in the traceback the caller gets, and no frame in that traceback holds the exception: a
failed call's arguments are freed as soon as the caller lets go of the exception, without
waiting for the cyclic garbage collector.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import random
from typing import Any, cast

import tenacity
from pydantic import Field, StrictInt, field_validator

from guardrails._imports import qualified_name
from guardrails._types import (
    AsyncInner,
    Block,
    Context,
    Duration,
    ExceptionClasses,
    Inner,
    Section,
)

# Jitter from a generator of our own, reseeded in every forked child: an application's
# `random.seed(42)` in each replica, or a fork of a seeded parent, must not give every
# client the same jitter (then clients that failed together retry together).
_RNG = random.Random()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_RNG.seed)

_CONTROL_FLOW: tuple[tuple[type[BaseException], str], ...] = (
    (KeyboardInterrupt, "it is how Ctrl-C interrupts a program"),
    (SystemExit, "it is how sys.exit() ends a program"),
    (GeneratorExit, "it is how a generator or coroutine is closed"),
    (asyncio.CancelledError, "it is how an asyncio task is cancelled (timeouts included)"),
)


def _not_retryable_reason(cls: type[BaseException]) -> str:
    name = qualified_name(cls)
    if issubclass(Exception, cls):
        return (
            f"{name} cannot be retried: it also matches KeyboardInterrupt, SystemExit, "
            "GeneratorExit and asyncio.CancelledError, so Ctrl-C, sys.exit() and task "
            "cancellation would run the function again; list Exception to retry every error"
        )
    why = next(
        (text for base, text in _CONTROL_FLOW if issubclass(cls, base)),
        "a BaseException that is not an Exception signals control flow, not a failure",
    )
    return (
        f"{name} cannot be retried: {why}, so it must stop the call at once; retry_on "
        "takes subclasses of Exception only (abort_on may list anything)"
    )


def _retryable_classes(classes: tuple[type[BaseException], ...]) -> tuple[type[Exception], ...]:
    """``classes`` narrowed to ``Exception``: ``BaseException`` becomes ``Exception`` and
    control flow (Ctrl-C, exit, cancellation) is dropped, whatever built the config."""
    kept: list[type[Exception]] = []
    for cls in classes:
        if issubclass(cls, Exception):
            kept.append(cls)
        elif issubclass(Exception, cls):
            kept.append(Exception)
    return tuple(dict.fromkeys(kept))


class WaitConfig(Section):
    """Backoff. With ``j = min(jitter, max)``, the wait after failed attempt ``n`` is
    ``min(initial * multiplier**(n-1), max - j) + uniform(0, j)``.

    No wait exceeds ``max``, and waits at the cap still spread over ``[max - j, max]``, so
    clients that failed together do not retry together. ``jitter`` defaults to ``initial``,
    so a policy that sets ``initial: 10ms`` waits about 10-20 ms, not 100 ms of noise.
    """

    initial: Duration = 0.1
    max: Duration = 5.0
    multiplier: float = Field(default=2.0, ge=1.0, strict=True, allow_inf_nan=False)
    jitter: Duration | None = None


class RetryConfig(Block):
    """``retry:`` — how often and on what to try again."""

    max_attempts: StrictInt = Field(default=3, ge=1)
    wait: WaitConfig = WaitConfig()
    retry_on: ExceptionClasses = (ConnectionError, TimeoutError)
    abort_on: ExceptionClasses = ()
    deadline: Duration | None = None

    @field_validator("retry_on")
    @classmethod
    def _only_exceptions(
        cls, value: tuple[type[BaseException], ...]
    ) -> tuple[type[BaseException], ...]:
        bad = [c for c in value if not issubclass(c, Exception)]
        if bad:
            raise ValueError("; ".join(_not_retryable_reason(c) for c in bad))
        return value


class _Call(tenacity.RetryCallState):
    """tenacity's state for one call on the slow path, with the time it must stop before."""

    def __init__(self, retrying: tenacity.Retrying, deadline_at: float | None) -> None:
        super().__init__(retrying, None, (), {})
        self.deadline_at = deadline_at


_GAVE_UP = object()


def _gave_up(state: tenacity.RetryCallState) -> object:
    return _GAVE_UP  # what `Retrying.iter` returns on stopping, instead of raising


class _Plan:
    """One compiled retry layer's settings, and the tenacity controller of its slow path."""

    __slots__ = (
        "_retrying",
        "abort_on",
        "cap",
        "cfg",
        "ctx",
        "headroom",
        "initial",
        "jitter",
        "log_multiplier",
        "max",
        "multiplier",
        "note_prefix",
        "retry_on",
    )

    def __init__(self, cfg: RetryConfig, ctx: Context) -> None:
        self.cfg = cfg
        self.ctx = ctx
        self.retry_on = _retryable_classes(cfg.retry_on)
        self.abort_on = cfg.abort_on
        w = cfg.wait
        self.initial, self.multiplier, self.max = w.initial, w.multiplier, w.max
        self.jitter = min(w.initial if w.jitter is None else w.jitter, w.max)
        self.cap = w.max - self.jitter
        self.log_multiplier = math.log(w.multiplier)
        # log(cap / initial): the exponent at which the backoff reaches the cap, compared
        # before exponentiating so no multiplier or attempt number can overflow.
        self.headroom = (
            math.log(self.cap) - math.log(w.initial) if self.cap > 0 and w.initial > 0 else None
        )
        self.note_prefix = f"guardrails: policy {ctx.policy!r} gave up after "
        self._retrying: tenacity.Retrying | None = None

    def retryable(self, exc: BaseException) -> bool:
        return isinstance(exc, self.retry_on) and not isinstance(exc, self.abort_on)

    def backoff(self, attempt: int) -> float:
        """``min(initial * multiplier**(attempt-1), max - jitter)``, never overflowing."""
        if self.headroom is None:
            return 0.0  # initial is 0 or the jitter takes all of max
        exponent = (attempt - 1) * self.log_multiplier
        if exponent >= self.headroom:
            return self.cap
        if exponent < 700.0:  # exact arithmetic: waits of 1, 2, 4 stay 1.0, 2.0, 4.0
            return min(self.initial * self.multiplier ** (attempt - 1), self.cap)
        # Only for an `initial` below 1e-300 s: the power alone would overflow.
        return min(math.exp(math.log(self.initial) + exponent), self.cap)

    def wait(self, state: tenacity.RetryCallState) -> float:
        delay = self.backoff(state.attempt_number)
        if self.jitter:
            delay += _RNG.uniform(0.0, self.jitter)
        return min(delay, self.max)

    def stop(self, state: tenacity.RetryCallState) -> bool:
        if state.attempt_number >= self.cfg.max_attempts:
            return True
        deadline_at = cast(_Call, state).deadline_at
        return (
            deadline_at is not None
            and self.ctx.clock.monotonic() + state.upcoming_sleep >= deadline_at
        )

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

    def begin(self, started: float | None) -> _Call:
        """The state of a call whose first attempt just failed with a retryable error."""
        retrying = self._retrying
        if retrying is None:
            # Built on the first failure, not at compile time: configure() stays cheap.
            # Only retryable failures reach tenacity, so it never re-raises one itself.
            retrying = self._retrying = tenacity.Retrying(
                stop=self.stop,
                wait=self.wait,
                retry=tenacity.retry_always,
                before_sleep=self.before_sleep,
                retry_error_callback=_gave_up,
            )
        retrying.begin()  # tenacity's per-thread statistics, which `iter` updates
        deadline = self.cfg.deadline
        return _Call(retrying, None if started is None or deadline is None else started + deadline)

    def failed(self, call: _Call, exc: BaseException) -> float | None:
        """After attempt ``call.attempt_number`` raised ``exc``: the wait before the next
        attempt, or ``None`` (then ``exc`` has its note and the caller re-raises it)."""
        if not self.retryable(exc):
            reason = f"{type(exc).__name__} is not retried by this policy"
            self.give_up(exc, call.attempt_number, reason)
            return None
        call.set_exception((type(exc), exc, exc.__traceback__))
        try:
            do = call.retry_object.iter(call)
        finally:
            # The state must not hold the failure: the caller's frame, which holds the
            # state, is in the failure's traceback, and that cycle would keep every
            # argument of the call alive until the cyclic collector runs.
            call.outcome = None
        if do is _GAVE_UP:
            attempts = call.attempt_number
            if attempts >= self.cfg.max_attempts:
                reason = f"retry.max_attempts={self.cfg.max_attempts}"
            else:
                reason = f"retry.deadline={self.cfg.deadline:g}s would be passed"
            self.give_up(exc, attempts, reason)
            return None
        call.prepare_for_next_attempt()
        return float(cast(tenacity.DoSleep, do))

    def give_up(self, exc: BaseException, attempts: int, reason: str) -> None:
        """Note on ``exc`` why retrying stopped, replacing this policy's earlier note.

        An exception instance raised on every call (a module-level constant) would
        otherwise gain a note per call. Control flow (Ctrl-C, cancellation) gets none.
        """
        if attempts <= 1 or not isinstance(exc, Exception):
            return
        prefix = self.note_prefix
        note = f"{prefix}{attempts} attempts ({reason})"
        notes = getattr(exc, "__notes__", None)
        if isinstance(notes, list):
            notes[:] = [n for n in notes if not (isinstance(n, str) and n.startswith(prefix))]
        # `__notes__` replaced by something that is not a list: exc goes on as it is.
        with contextlib.suppress(TypeError):
            exc.add_note(note)


def build(cfg: RetryConfig, inner: Inner, ctx: Context) -> Inner:
    """The sync retry layer around ``inner``."""
    plan = _Plan(cfg, ctx)
    if cfg.max_attempts <= 1 or not plan.retry_on:
        return inner
    retry_on, abort_on, monotonic = plan.retry_on, plan.abort_on, ctx.clock.monotonic
    sleep, begin, failed = ctx.clock.sleep, plan.begin, plan.failed
    retried = ctx.counters.retry
    timed = cfg.deadline is not None

    # No local of these frames may hold an exception once it is raised on: the frames are
    # in its traceback, and the cycle would keep the call's arguments alive.
    def slow(call: _Call, wait: float, args: Any, kwargs: Any, info: Any) -> Any:
        while True:
            sleep(wait)
            retried()
            if info is not None:
                info[0] = call.attempt_number
            try:
                return inner(args, kwargs, info)
            except BaseException as exc:
                next_wait = failed(call, exc)
                if next_wait is None:
                    raise
            wait = next_wait

    def retry_layer(args: tuple[Any, ...], kwargs: dict[str, Any], info: Any) -> Any:
        started = monotonic() if timed else None
        try:
            return inner(args, kwargs, info)
        except retry_on as exc:
            if abort_on and isinstance(exc, abort_on):
                raise
            call = begin(started)
            wait = failed(call, exc)
            if wait is None:
                raise
        return slow(call, wait, args, kwargs, info)

    return retry_layer


def build_async(cfg: RetryConfig, inner: AsyncInner, ctx: Context) -> AsyncInner:
    """The async retry layer: waits with the clock's ``async_sleep``, never blocking the loop."""
    plan = _Plan(cfg, ctx)
    if cfg.max_attempts <= 1 or not plan.retry_on:
        return inner
    retry_on, abort_on, monotonic = plan.retry_on, plan.abort_on, ctx.clock.monotonic
    sleep, begin, failed = ctx.clock.async_sleep, plan.begin, plan.failed
    retried = ctx.counters.retry
    timed = cfg.deadline is not None

    async def slow(call: _Call, wait: float, args: Any, kwargs: Any, info: Any) -> Any:
        while True:
            await sleep(wait)
            retried()
            if info is not None:
                info[0] = call.attempt_number
            try:
                return await inner(args, kwargs, info)
            except BaseException as exc:
                next_wait = failed(call, exc)
                if next_wait is None:
                    raise
            wait = next_wait

    async def retry_layer(args: tuple[Any, ...], kwargs: dict[str, Any], info: Any) -> Any:
        started = monotonic() if timed else None
        try:
            return await inner(args, kwargs, info)
        except retry_on as exc:
            if abort_on and isinstance(exc, abort_on):
                raise
            call = begin(started)
            wait = failed(call, exc)
            if wait is None:
                raise
        return await slow(call, wait, args, kwargs, info)

    return retry_layer
