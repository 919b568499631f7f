"""The ``retry`` layer: re-runs the layers below with exponential backoff and jitter.

tenacity is imported here and nowhere else. A call that succeeds at once never reaches it:
the first attempt runs in a plain ``try``. After a retryable failure tenacity decides, per
failure, whether to stop and how long to wait (``Retrying.iter`` on a state this layer
keeps); the layer itself runs the attempts and the waits. So tenacity's frames never end up
in the traceback the caller gets, and no frame in that traceback holds the exception: a
failed call's arguments are freed as soon as the caller lets go of the exception, without
waiting for the cyclic garbage collector.

``retry.budget`` caps the retries of a policy at a share of its calls (plus a reserve per
second) over a sliding window, so a dependency that fails for everyone does not get every
call two or three times. ``retry.wait.retry_after`` waits as long as the failure asks (its
``retry_after`` attribute, or an HTTP error's ``Retry-After`` header) instead of the
backoff. ``CircuitOpenError`` is never retried: it means "do not call now".
"""

from __future__ import annotations

import contextlib
import datetime
import email.utils
import itertools
import logging
import math
import os
import random
import re
import threading
import time
from typing import Annotated, Any, cast

import tenacity
from pydantic import BeforeValidator, Field, StrictBool, StrictInt, field_validator

from guardrails._errors import CircuitOpenError
from guardrails._imports import qualified_name
from guardrails._stats import count_of as _count_of
from guardrails._types import (
    CALLER_GONE,
    CURRENT_SPAN,
    AsyncInner,
    Block,
    Context,
    Duration,
    ExceptionClasses,
    Inner,
    Section,
    Share,
    control_flow_problem,
    failures_only,
)
from guardrails._units import PER_SECOND_HINT, parse_per_second, shown

# Jitter from a generator of our own, reseeded in every forked child: an application's
# `random.seed(42)` in each replica, or a fork of a seeded parent, must not give every
# client the same jitter (then clients that failed together retry together).
_RNG = random.Random()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_RNG.seed)


def _not_retryable_reason(cls: type[BaseException]) -> str:
    if issubclass(cls, CircuitOpenError):
        return (
            f"{qualified_name(cls)} cannot be retried: an open circuit means do not call now, "
            "so the retry layer always lets it through at once (retry_on: [Exception] retries "
            "everything else)"
        )
    return control_flow_problem(
        cls,
        "cannot be retried",
        "would run the function again; list Exception to retry every error",
        "retry_on takes subclasses of Exception only (abort_on may list anything)",
    )


class WaitConfig(Section):
    """Backoff. With ``j = min(jitter, max)``, the wait after failed attempt ``n`` is
    ``min(initial * multiplier**(n-1), max - j) + uniform(0, j)``.

    No wait exceeds ``max``, and waits at the cap still spread over ``[max - j, max]``, so
    clients that failed together do not retry together. ``jitter`` defaults to ``initial``,
    so a policy that sets ``initial: 10ms`` waits about 10-20 ms, not 100 ms of noise.

    ``retry_after: true``: when the failure says how long to wait (see ``requested_delay``),
    wait that long instead, capped at ``max``, without jitter (the server spreads its
    clients); a failure that says nothing, or nothing readable, gets the backoff.
    """

    initial: Duration = 0.1
    max: Duration = 5.0
    multiplier: float = Field(default=2.0, ge=1.0, strict=True, allow_inf_nan=False)
    jitter: Duration | None = None
    retry_after: StrictBool = False


def _per_second_or_zero(value: object) -> float:
    """Retries per second: a number from 0 up, or a rate like ``'10/s'``."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(
                f"expected a finite number of retries per second from 0 up, or "
                f"{PER_SECOND_HINT}, got {shown(value)}"
            )
        return float(value)
    return parse_per_second(value)


#: The shortest budget window: its buckets are numbered ``floor(now / width)``, which a
#: window of 1e-320 s would overflow on any clock reading (an OverflowError on every call).
MIN_WINDOW = 0.001


def _positive_window(value: float) -> float:
    if value <= 0:
        raise ValueError(f"expected a window longer than 0 seconds, got {shown(value)}")
    if value < MIN_WINDOW:
        raise ValueError(
            f"expected a window of at least 1ms (a budget counts calls over it), got {shown(value)}"
        )
    return value


#: How many buckets a budget's window is cut into: the window slides in tenths of it.
BUDGET_BUCKETS = 10


class BudgetConfig(Block):
    """``retry.budget`` — the retries a policy may make, over a sliding ``window``: while
    ``retries < ratio * calls + min_per_second * window`` counting the retry about to be
    made, i.e. after it the policy has retried at most ``ratio`` of its calls, plus
    ``min_per_second`` a second so a quiet policy may still retry. Calls are the calls of
    every function of the policy that reached the retry layer (each counted once, however
    many attempts it made). The window (default 10 s, like Finagle's ``RetryBudget``) is
    cut into ``BUDGET_BUCKETS`` buckets: a call or retry counts for between 9/10 of the
    window and the whole window. A call whose retry the budget refuses fails at once with
    its last exception and a note saying the budget is spent.
    """

    ratio: Share = 0.2
    min_per_second: Annotated[float, BeforeValidator(_per_second_or_zero)] = 10.0
    window: Duration = 10.0

    _window_is_positive = field_validator("window")(_positive_window)


class RetryConfig(Block):
    """``retry:`` — how often and on what to try again."""

    max_attempts: StrictInt = Field(default=3, ge=1)
    wait: WaitConfig = WaitConfig()
    retry_on: ExceptionClasses = (ConnectionError, TimeoutError)
    abort_on: ExceptionClasses = ()
    deadline: Duration | None = None
    budget: BudgetConfig | None = None

    @field_validator("retry_on")
    @classmethod
    def _only_exceptions(
        cls, value: tuple[type[BaseException], ...]
    ) -> tuple[type[BaseException], ...]:
        bad = [c for c in value if not issubclass(c, Exception) or issubclass(c, CircuitOpenError)]
        if bad:
            raise ValueError("; ".join(_not_retryable_reason(c) for c in bad))
        return value


_DELTA_SECONDS = re.compile(r"\s*(\d+(?:\.\d+)?)\s*", re.ASCII)  # HTTP digits are ASCII


def _seconds_of(value: object) -> float | None:
    """A wait in seconds from a ``retry_after`` value or a ``Retry-After`` header: a number,
    a ``timedelta``, delta-seconds text or an HTTP date (wall-clock; past means 0)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, datetime.timedelta):
        value = value.total_seconds()
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:  # an int too large for a float: "very long"
            return math.inf if value > 0 else 0.0
        return None if math.isnan(seconds) else max(seconds, 0.0)
    if not isinstance(value, str):
        return None
    if m := _DELTA_SECONDS.fullmatch(value):
        return float(m.group(1))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # "-0000": UTC, by RFC 5322
        when = when.replace(tzinfo=datetime.UTC)
    return max(when.timestamp() - time.time(), 0.0)


def requested_delay(exc: BaseException) -> float | None:
    """How long the failure asks the caller to wait, in seconds, or ``None``.

    Its ``retry_after`` attribute (guardrails' ``RateLimitExceeded``; any exception may have
    one), else the ``Retry-After`` header of its ``response`` (``httpx.HTTPStatusError``,
    ``requests.HTTPError``, or anything with a ``response.headers`` mapping). Duck-typed:
    neither library is imported. An exception whose attributes raise says nothing.
    """
    try:
        seconds = _seconds_of(getattr(exc, "retry_after", None))
        if seconds is not None:
            return seconds
        headers = getattr(getattr(exc, "response", None), "headers", None)
        get = getattr(headers, "get", None)
        if get is None:
            return None
        value = get("Retry-After")
        if value is None:
            value = get("retry-after")  # a plain dict of lower-cased names
        return _seconds_of(value)
    except Exception:  # a hostile property or mapping: fall back to the backoff
        return None


class RetryBudget:
    """One policy's retry budget (``retry.budget``), shared by its functions.

    The window is a ring of ``BUDGET_BUCKETS`` buckets; bucket ``i`` holds slot number
    ``slots[i]`` (the time ``slot * width`` it starts at), its calls in an
    ``itertools.count`` and its retries. Recording a call is lock-free: ``current`` is
    ``[end of the current bucket, next() of its call counter]``, which the compiled layer
    reads as locals; only the first call in a new bucket takes the lock (``tick``).
    Retries are decided and recorded under the lock, on the slow path only.
    """

    __slots__ = (
        "__weakref__",
        "_calls",
        "_lock",
        "_newest",
        "_retries",
        "_slots",
        "cfg",
        "current",
        "reserve",
        "width",
    )

    def __init__(self, cfg: BudgetConfig) -> None:
        self.cfg = cfg
        self.width = cfg.window / BUDGET_BUCKETS
        self.reserve = cfg.min_per_second * cfg.window
        self._lock = threading.Lock()
        self._slots: list[float] = [-math.inf] * BUDGET_BUCKETS
        self._calls = [itertools.count() for _ in range(BUDGET_BUCKETS)]
        self._retries = [0] * BUDGET_BUCKETS
        #: The newest slot opened (``None`` before the first call).
        self._newest: int | None = None
        # -inf: the first call opens a bucket.
        self.current: list[Any] = [-math.inf, self._calls[0].__next__]

    def after_fork_in_child(self) -> None:
        # A thread of the parent may have held the lock at the fork: it stays held.
        self._lock = threading.Lock()

    def _advance(self, now: float) -> int:
        """Open the bucket ``now`` falls in (lock held); its index in the ring."""
        width = self.width
        slot = math.floor(now / width)
        if (slot + 1) * width <= now:  # float rounding: ``now`` must fall before the end
            slot += 1
        # Never back to an earlier bucket: a thread that read the clock before another
        # opened the next bucket, or a clock set back, counts in the newest one (time stood
        # still). Going back would reopen (and wipe) a bucket of the window as if it were new.
        newest = self._newest
        if newest is not None and slot < newest:
            slot = newest
        self._newest = slot
        i = slot % BUDGET_BUCKETS
        if self._slots[i] != slot:
            self._slots[i] = slot
            self._calls[i] = itertools.count()
            self._retries[i] = 0
        current = self.current
        current[1] = self._calls[i].__next__
        current[0] = (slot + 1) * width
        return i

    def tick(self, now: float) -> None:
        """The first call at or past the current bucket's end opens the next one."""
        with self._lock:
            if now >= self.current[0]:
                self._advance(now)

    def withdraw(self, now: float) -> str | None:
        """Take one retry from the budget: ``None``, or why it is spent."""
        with self._lock:
            i = self._advance(now)
            oldest = self._slots[i] - BUDGET_BUCKETS
            calls = retries = 0
            for slot, counter, retried in zip(self._slots, self._calls, self._retries, strict=True):
                if slot > oldest:
                    calls += _count_of(counter)
                    retries += retried
            # 1e-9: 0.29 * 100 is 28.999999999999996, not 29.
            if retries + 1 <= self.cfg.ratio * calls + self.reserve + 1e-9:
                self._retries[i] += 1
                return None
        cfg = self.cfg
        return (
            f"retry.budget spent: {retries} retr{'y' if retries == 1 else 'ies'} for "
            f"{calls} call{'' if calls == 1 else 's'} in the last {cfg.window:g}s; "
            f"ratio={cfg.ratio:g}, min_per_second={cfg.min_per_second:g}"
        )


def replace_note(exc: BaseException, prefix: str, note: str) -> None:
    """Add ``note`` to ``exc``, dropping its earlier notes that start with ``prefix`` (an
    exception instance raised on every call, a module-level constant, gains one note, not
    one per call). Never raises: an exception whose ``__notes__`` or ``add_note`` raises, or
    whose ``__notes__`` is not a list, goes on without the note, never replaced by that
    error."""
    with contextlib.suppress(Exception):
        notes = getattr(exc, "__notes__", None)
        if isinstance(notes, list):
            notes[:] = [n for n in notes if not (isinstance(n, str) and n.startswith(prefix))]
        exc.add_note(note)


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
        "budget",
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
        "retry_after",
        "retry_on",
    )

    def __init__(self, cfg: RetryConfig, ctx: Context) -> None:
        self.cfg = cfg
        self.ctx = ctx
        self.retry_on = failures_only(cfg.retry_on)
        # An open circuit means "do not call now", whatever retry_on says.
        self.abort_on = (*cfg.abort_on, CircuitOpenError)
        budget = cfg.budget
        self.budget: RetryBudget | None = None
        if budget is not None and budget.enabled and self.retry_on and cfg.max_attempts > 1:
            self.budget = ctx.shared("retry_budget", budget, lambda: RetryBudget(budget))
        w = cfg.wait
        self.retry_after = w.retry_after
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
        if self.retry_after and state.outcome is not None:
            asked = requested_delay(cast(BaseException, state.outcome.exception()))
            if asked is not None:
                return min(asked, self.max)
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
        gone = CALLER_GONE.get()
        if gone is not None and gone[0]:
            # A sync timeout.total above has returned CallTimeout to the caller and left
            # this work running: retrying would only add load nobody waits for.
            self.give_up(exc, call.attempt_number, "timeout.total passed; the caller left")
            return None
        if not self.retryable(exc):
            if isinstance(exc, CircuitOpenError):
                reason = "the circuit is open; CircuitOpenError is never retried"
            else:
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
        budget = self.budget
        if budget is not None:
            spent = budget.withdraw(self.ctx.clock.monotonic())
            if spent is not None:
                self.give_up(exc, call.attempt_number, spent, always=True)
                logger = self.ctx.logger
                if logger.isEnabledFor(logging.DEBUG):
                    logger.debug(
                        "%s: attempt %d failed with %s; not retried: %s",
                        self.ctx.policy,
                        call.attempt_number,
                        type(exc).__name__,
                        spent,
                        extra={"policy": self.ctx.policy, "function": self.ctx.qualname},
                    )
                return None
        failed_attempt = call.attempt_number
        call.prepare_for_next_attempt()
        wait = float(cast(tenacity.DoSleep, do))
        span = CURRENT_SPAN.get()
        if span is not None and span[0] is self.ctx:  # this call is traced: say so in its span
            span[1](
                "retry",
                {
                    "guardrails.attempt": failed_attempt,
                    "exception.type": qualified_name(type(exc)),
                    "guardrails.wait_s": wait,
                },
            )
        return wait

    def give_up(
        self, exc: BaseException, attempts: int, reason: str, *, always: bool = False
    ) -> None:
        """Note on ``exc`` why retrying stopped, replacing this policy's earlier note.

        An exception instance raised on every call (a module-level constant) would
        otherwise gain a note per call. Control flow (Ctrl-C, cancellation) gets none, nor
        does a first attempt's failure unless ``always`` (the budget refused its retry).
        """
        if (attempts <= 1 and not always) or not isinstance(exc, Exception):
            return
        prefix = self.note_prefix
        replace_note(
            exc, prefix, f"{prefix}{attempts} attempt{'' if attempts == 1 else 's'} ({reason})"
        )


def build(cfg: RetryConfig, inner: Inner, ctx: Context) -> Inner:
    """The sync retry layer around ``inner``."""
    plan = _Plan(cfg, ctx)
    if cfg.max_attempts <= 1 or not plan.retry_on:
        return inner
    retry_on, abort_on, monotonic = plan.retry_on, plan.abort_on, ctx.clock.monotonic
    sleep, begin, failed = ctx.clock.sleep, plan.begin, plan.failed
    retried = ctx.counters.retry
    timed = cfg.deadline is not None
    budget = plan.budget
    counted = budget is not None
    # The budget's current bucket and its lock-free call counter (see RetryBudget).
    current: list[Any] = budget.current if budget is not None else []
    tick = budget.tick if budget is not None else None

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
        if counted:
            now = monotonic()
            if now >= current[0]:
                tick(now)  # type: ignore[misc]
            current[1]()
            started: float | None = now
        else:
            started = monotonic() if timed else None
        try:
            return inner(args, kwargs, info)
        except retry_on as exc:
            if isinstance(exc, abort_on):
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
    budget = plan.budget
    counted = budget is not None
    # The budget's current bucket and its lock-free call counter (see RetryBudget).
    current: list[Any] = budget.current if budget is not None else []
    tick = budget.tick if budget is not None else None

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
        if counted:
            now = monotonic()
            if now >= current[0]:
                tick(now)  # type: ignore[misc]
            current[1]()
            started: float | None = now
        else:
            started = monotonic() if timed else None
        try:
            return await inner(args, kwargs, info)
        except retry_on as exc:
            if isinstance(exc, abort_on):
                raise
            call = begin(started)
            wait = failed(call, exc)
            if wait is None:
                raise
        return await slow(call, wait, args, kwargs, info)

    return retry_layer
