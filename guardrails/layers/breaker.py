"""The ``breaker`` layer: a circuit breaker over the attempts' outcomes, one per policy.

One ``Breaker`` per policy (``ctx.shared("breaker", ...)``) is shared by every function of
the policy, sync and async; it is kept across a ``configure()`` that leaves the block
unchanged and replaced when the block changes.

States: *closed* records each attempt's outcome into the window and opens when the window
holds ``min_calls`` outcomes and the failure rate reaches ``failure_rate`` (or, with
``slow_call``, the slow rate reaches ``slow_rate``). *Open* refuses at once with
``CircuitOpenError`` for ``open_for``; then *half-open* admits ``half_open_calls`` trial
calls: all succeed, closed (with an empty window); one fails (or is slow), open again.

The closed path takes no lock. Every recorded outcome draws a sequence number from an
``itertools.count`` (atomic under the GIL, ~30 ns); failures and slow calls are also noted,
under the lock, with their numbers (a count window) or in their time bucket (a time
window). So a count window of N calls is "the numbers in (s - N, s]" and its size is
arithmetic. A success needs no lock because it cannot raise the failure rate: it adds a
call and can only push an older outcome out. It looks at the verdict only when ``watch``
says it must: when it is the call that brings the window up to ``min_calls`` while the
window holds failures (the verdict can turn then), the one that pushes the last failure
out, or (time window) the first outcome of a new time bucket, because old successes
leaving the window can raise the rate. And in a count window full of successes, a success
does not even draw a number (``counting``): the next failure's window is then its own
number and the N - 1 before it, all successes. So the healthy closed path is two attribute
reads and the call. Measured here with ``log: None``, a trivial function, best of 7:
~180 ns per guarded call (~120 of them the chain without a breaker) against ~440 ns for
``circuitbreaker.circuit`` and ~1,150 ns for ``pybreaker``; a time window ~250 ns and
``slow_call`` ~300 ns (clock reads).

A time window is split into 20 buckets; an outcome stays in it for between ``window`` and
``window × 1.05`` (until its bucket is 20 buckets old).

Why our own state machine and not pybreaker or circuitbreaker: neither has rate-based
sliding windows (both count consecutive failures), slow calls or a bounded number of
half-open trials, none shares one breaker between sync and async calls, and both cost more
per closed call than this layer's whole budget.
"""

from __future__ import annotations

import itertools
import logging
import math
import re
import threading
from collections import deque
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import (
    BeforeValidator,
    Field,
    PlainSerializer,
    PrivateAttr,
    StrictBool,
    StrictInt,
    ValidationInfo,
    field_validator,
    model_validator,
)

from guardrails._errors import (
    BulkheadFull,
    CircuitOpenError,
    InputValidationError,
    MemoryBudgetExceeded,
    RateLimitExceeded,
)
from guardrails._imports import qualified_name
from guardrails._redis import Namespace, RedisTimeout, shared_module
from guardrails._types import AsyncInner, Block, Context, Duration, ExceptionClasses, Inner, Share
from guardrails._units import parse_duration, shown

#: How many buckets a time window is split into.
BUCKETS = 20
#: The shortest time window (seconds).
MIN_TIME_WINDOW = 0.001
#: ``watch`` when no success needs to look at the verdict (an int: int comparisons are fast).
_NEVER = 1 << 62

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
#: Outcome kinds.
_NEITHER, _SUCCESS, _FAILURE = 0, 1, 2
#: guardrails' own refusals: the dependency was never asked, so they are not its outcome.
_REFUSALS = (
    CircuitOpenError,
    RateLimitExceeded,
    BulkheadFull,
    InputValidationError,
    MemoryBudgetExceeded,
)
_BARE_NUMBER = re.compile(r"^\s*[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?\s*$")
_WINDOW_HINT = (
    "an integer for a window of the last N calls (20) or a duration with a unit for a "
    "time window ('60s', '5m')"
)


def _window(value: object) -> int | float:
    if isinstance(value, bool):
        raise ValueError(f"expected {_WINDOW_HINT}, got {shown(value)}")
    if isinstance(value, int):
        if value < 1:
            raise ValueError(f"a window of calls holds at least 1 call, got {shown(value)}")
        return value
    if isinstance(value, float) or (isinstance(value, str) and _BARE_NUMBER.match(value)):
        raise ValueError(
            f"{shown(value)} is ambiguous (a number of calls or of seconds?): write {_WINDOW_HINT}"
        )
    if not isinstance(value, str):
        raise ValueError(f"expected {_WINDOW_HINT}, got {shown(value)}")
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError(f"a time window must be longer than 0 s, got {shown(value)}")
    if seconds < MIN_TIME_WINDOW:
        # Its buckets are numbered floor(now / width): a window of 1e-320 s overflows that
        # on any clock reading, an OverflowError on every call.
        raise ValueError(f"a time window must be at least 1ms long, got {shown(value)}")
    return seconds


def _window_text(value: int | float) -> int | str:
    if isinstance(value, int):
        return value
    return format(value, "f").rstrip("0").rstrip(".") + "s"


#: ``window``: an int is a count window (the last N calls); a duration string with a unit
#: is a time window (seconds, a float). A bare float is refused as ambiguous.
Window = Annotated[int | float, BeforeValidator(_window), PlainSerializer(_window_text)]


class BreakerConfig(Block):
    """``breaker:`` — when to open (failure and slow-call rates over a window), for how long."""

    failure_rate: Share = 0.5
    slow_call: Duration | None = Field(default=None, gt=0)
    slow_rate: Share = 1.0
    #: An int: the last N calls; a duration string ("60s"): the calls of that long.
    window: Window = 20
    min_calls: StrictInt = Field(default=10, ge=1, validate_default=True)
    open_for: Duration = Field(default=30.0, gt=0)
    half_open_calls: StrictInt = Field(default=3, ge=1)
    failure_on: ExceptionClasses = (Exception,)
    ignore_on: ExceptionClasses = ()
    #: Keep the breaker's state in Redis (``redis_url``), one breaker for every process.
    shared: StrictBool = False
    redis_timeout: RedisTimeout = 0.05
    namespace: Namespace = None
    #: A time window of 20 s and a count window of 20 calls compare equal as numbers; this
    #: keeps their configs unequal, so a breaker is never kept across such a change.
    _timed: bool = PrivateAttr(default=False)

    @field_validator("failure_rate", "slow_rate")
    @classmethod
    def _positive_rate(cls, value: float, info: ValidationInfo) -> float:
        if value <= 0:
            what = "failure" if info.field_name == "failure_rate" else "slow-call"
            raise ValueError(
                f"must be above 0: a {what} rate of 0 would open the breaker with no "
                f"{'failures' if what == 'failure' else 'slow calls'} at all"
            )
        return value

    @field_validator("slow_rate")
    @classmethod
    def _slow_rate_needs_slow_call(cls, value: float, info: ValidationInfo) -> float:
        # The default passes: a dumped config (``guardrails show``) must read back.
        if info.data.get("slow_call", 0.0) is None and value != 1.0:
            raise ValueError("has no effect without slow_call (the duration a slow call exceeds)")
        return value

    @field_validator("min_calls")
    @classmethod
    def _min_calls_fit(cls, value: int, info: ValidationInfo) -> int:
        window = info.data.get("window")
        if isinstance(window, int) and value > window:
            raise ValueError(
                f"{value} is more than the window holds ({window} calls), so the breaker "
                "could never open; lower min_calls or widen window"
            )
        return value

    @field_validator("failure_on")
    @classmethod
    def _failures_are_exceptions(
        cls, value: tuple[type[BaseException], ...]
    ) -> tuple[type[BaseException], ...]:
        bad = [c for c in value if not issubclass(c, Exception)]
        if bad:
            raise ValueError(
                f"{', '.join(qualified_name(c) for c in bad)} cannot count as a failure: "
                "KeyboardInterrupt, SystemExit, GeneratorExit and asyncio.CancelledError are "
                "control flow, never the dependency's failure; failure_on takes subclasses of "
                "Exception only (list Exception for every error)"
            )
        return value

    @field_validator("failure_on")
    @classmethod
    def _failures_possible(
        cls, value: tuple[type[BaseException], ...], info: ValidationInfo
    ) -> tuple[type[BaseException], ...]:
        if not value and info.data.get("slow_call", 0.0) is None:
            raise ValueError(
                "is empty and slow_call is not set, so nothing could ever open the breaker; "
                "list the exceptions that count as failures"
            )
        return value

    @field_validator("ignore_on")
    @classmethod
    def _not_everything_ignored(
        cls, value: tuple[type[BaseException], ...], info: ValidationInfo
    ) -> tuple[type[BaseException], ...]:
        failure_on = info.data.get("failure_on")
        if (
            value
            and failure_on
            and info.data.get("slow_call", 0.0) is None
            and all(issubclass(c, value) for c in failure_on)
        ):
            raise ValueError(
                "covers every class in failure_on (each is a subclass of one here), so "
                "nothing could ever count as a failure and the breaker could never open"
            )
        return value

    @model_validator(mode="after")
    def _window_kind(self) -> BreakerConfig:
        self._timed = isinstance(self.window, float)
        return self

    @property
    def timed(self) -> bool:
        """Whether ``window`` is a time window (else the last ``window`` calls)."""
        return self._timed


def _exception_text(exc: BaseException) -> str:
    """``Type: message`` for a log line; never raises (a hostile ``__str__`` must not replace
    the exception the caller gets)."""
    try:
        return f"{type(exc).__name__}: {exc}"
    except Exception:
        return f"{type(exc).__name__}: <unprintable>"


def _pct(x: float) -> str:
    return f"{x * 100:.3g}%"


def _secs(x: float) -> str:
    return f"{x:.3g} s"


class Breaker:
    """A policy's circuit breaker (the ``"breaker"`` shared state).

    The closed path reads ``refusing`` and ``watch`` (and ``turn_at`` for a time window)
    without the lock; everything else is read and written under ``lock``. A transition
    returns its log message, emitted after the lock is released (a handler may call a
    guarded function of this policy).
    """

    __slots__ = (
        "__weakref__",
        "base",
        "bucket_width",
        "buckets",
        "counting",
        "epoch",
        "fail_total",
        "fails",
        "failure_on",
        "failure_rate",
        "half_open_calls",
        "ignore_on",
        "in_flight",
        "lock",
        "logger",
        "min_calls",
        "monotonic",
        "next_seq",
        "open_for",
        "open_until",
        "policy",
        "refusing",
        "size",
        "slow_call",
        "slow_rate",
        "slow_total",
        "slows",
        "state",
        "timed",
        "trials_ok",
        "turn_at",
        "watch",
        "window",
    )

    def __init__(
        self,
        cfg: BreakerConfig,
        monotonic: Callable[[], float],
        policy: str,
        logger: logging.Logger,
    ) -> None:
        self.monotonic = monotonic
        self.policy = policy
        self.logger = logger
        self.lock = threading.Lock()
        self.failure_rate = cfg.failure_rate
        self.slow_call = cfg.slow_call
        self.slow_rate = cfg.slow_rate
        self.min_calls = cfg.min_calls
        self.open_for = cfg.open_for
        self.half_open_calls = cfg.half_open_calls
        self.failure_on = cfg.failure_on
        self.ignore_on = cfg.ignore_on
        self.timed = cfg.timed
        self.window = cfg.window
        self.size = cfg.window if isinstance(cfg.window, int) else 0
        self.bucket_width = cfg.window / BUCKETS if cfg.timed else 0.0
        self.next_seq = itertools.count().__next__
        self.state = CLOSED
        #: The closed path's two reads: refuse (open or half-open), and the sequence number
        #: from which a success must look at the verdict.
        self.refusing = False
        self.watch = _NEVER
        #: Whether a success must draw a number. Off only in a count window full of
        #: successes: a success then changes nothing (the one it pushes out was a success),
        #: and the next failure's window is its own number and the N - 1 before it, all
        #: successes. A failure turns it on; the success that pushes the last failure out
        #: of the window (``watch``) turns it off.
        self.counting = True
        #: Time window: when the newest bucket ends (the first outcome after it turns it).
        self.turn_at = -math.inf if self.timed else math.inf
        self.base = 0
        self.fails: deque[int] = deque()
        self.slows: deque[int] = deque()
        #: Time window: ``[bucket index, first sequence number, failures, slow calls]``.
        self.buckets: deque[list[int]] = deque()
        self.fail_total = 0
        self.slow_total = 0
        self._fresh_window()
        self.open_until = -math.inf
        self.epoch = 0
        self.in_flight = 0
        self.trials_ok = 0

    # --- what stats() and fork handling ask ---------------------------------------------

    def state_name(self) -> str:
        """``"closed"``, ``"open"`` or ``"half_open"`` (an open breaker whose ``open_for``
        has passed is half-open: the next call is a trial)."""
        state = self.state
        if state is OPEN and self.monotonic() >= self.open_until:
            return HALF_OPEN
        return state

    def after_fork_in_child(self) -> None:
        """A forked child has only the thread that forked: the lock is renewed, and trial
        calls in flight (the parent's threads) are forgotten, so the child's own calls can
        be trials; a late outcome of a trial admitted before the fork is ignored."""
        self.lock = threading.Lock()
        if self.state is HALF_OPEN:
            self.in_flight = 0
            self.epoch += 1

    # --- outcomes --------------------------------------------------------------------------

    def classify(self, exc: BaseException) -> int:
        """Whether an exception is the dependency's failure, its answer, or neither."""
        if isinstance(exc, _REFUSALS) or not isinstance(exc, Exception):
            return _NEITHER  # guardrails' own refusals; control flow (BaseExceptions)
        if isinstance(exc, self.ignore_on):
            return _NEITHER
        return _FAILURE if isinstance(exc, self.failure_on) else _SUCCESS

    def closed_raised(self, exc: BaseException, t0: float, now: float, qualname: str) -> None:
        """A call admitted while closed raised ``exc`` (``t0``/``now``: its start and end,
        read only for a time window or ``slow_call``)."""
        kind = self.classify(exc)
        if kind == _NEITHER:
            return
        slow_call = self.slow_call
        slow = slow_call is not None and now - t0 >= slow_call
        if kind == _FAILURE or slow:
            self.record(kind == _FAILURE, slow, now, qualname, exc)
            return
        s = self.next_seq()
        if s >= self.watch or now >= self.turn_at:
            self.success_seen(s, now, qualname)

    def record(
        self,
        failed: bool,
        slow: bool,
        now: float,
        qualname: str,
        exc: BaseException | None = None,
    ) -> None:
        """A failure or a slow call of a call admitted while closed."""
        message = None
        with self.lock:
            if self.state is not CLOSED:
                return  # admitted before the breaker opened: not a trial, not this window
            s = self.next_seq()
            self.counting = True
            first, nf, ns = self._window_at(s, now)
            if self.timed:
                bucket = self.buckets[-1]
                bucket[2] += failed
                bucket[3] += slow
                self.fail_total += failed
                self.slow_total += slow
            else:
                if failed:
                    self.fails.append(s)
                if slow:
                    self.slows.append(s)
            message = self._verdict(first, max(s, first), nf + failed, ns + slow)
        if message is not None:
            self._log(message, qualname)

    def success_seen(self, s: int, now: float, qualname: str) -> None:
        """A success numbered ``s`` that may change the verdict (see the module docstring)."""
        with self.lock:
            if self.state is not CLOSED:
                return
            first, nf, ns = self._window_at(s, now)
            message = self._verdict(first, max(s, first), nf, ns)
        if message is not None:
            self._log(message, qualname)

    def _window_at(self, s: int, now: float) -> tuple[int, int, int]:
        """Under the lock: the window as of outcome ``s`` at ``now`` (old outcomes dropped,
        a new time bucket started): its first sequence number, failures and slow calls."""
        if self.timed:
            k = math.floor(now / self.bucket_width)
            buckets = self.buckets
            while buckets and buckets[0][0] < k - BUCKETS:
                _, _, f, sl = buckets.popleft()
                self.fail_total -= f
                self.slow_total -= sl
            if not buckets or buckets[-1][0] < k:
                buckets.append([k, s, 0, 0])
                self.turn_at = self._bucket_start(k + 1)
            return buckets[0][1], self.fail_total, self.slow_total
        lo = max(s - self.size + 1, self.base)
        return lo, self._count(self.fails, lo, s), self._count(self.slows, lo, s)

    def _bucket_start(self, k: int) -> float:
        """The first time whose bucket (``floor(t / width)``) is ``k``, exactly in floats,
        so the closed path's ``now >= turn_at`` agrees with the bucket arithmetic."""
        width = self.bucket_width
        t = k * width
        while math.floor(t / width) < k:
            t = math.nextafter(t, math.inf)
        while math.floor((before := math.nextafter(t, -math.inf)) / width) >= k:
            t = before
        return t

    @staticmethod
    def _count(seqs: deque[int], lo: int, hi: int) -> int:
        """How many of the ascending ``seqs`` lie in ``[lo, hi]``; drops those below ``lo``."""
        while seqs and seqs[0] < lo:
            seqs.popleft()
        n = len(seqs)
        i = n - 1
        while i >= 0 and seqs[i] > hi:  # numbered after ``hi`` by other threads: few
            i -= 1
        return i + 1

    def _verdict(self, first: int, last: int, nf: int, ns: int) -> tuple[Any, ...] | None:
        """Under the lock, closed: open if the window says so (returns the log message),
        else set ``watch`` for the successes to come."""
        calls = last - first + 1
        if calls >= self.min_calls:
            why = None
            if nf and nf / calls >= self.failure_rate:
                span = self._span(calls)
                why = (
                    f"{nf} of {span} failed ({_pct(nf / calls)}, failure_rate "
                    f"{_pct(self.failure_rate)})"
                )
            elif ns and self.slow_call is not None and ns / calls >= self.slow_rate:
                span = self._span(calls)
                why = (
                    f"{ns} of {span} took {_secs(self.slow_call)} or longer "
                    f"({_pct(ns / calls)}, slow_rate {_pct(self.slow_rate)})"
                )
            if why is not None:
                return self._open(CLOSED, why)
        self._watch(first, calls, nf or ns)
        return None

    def _watch(self, first: int, calls: int, bad: int) -> None:
        """Under the lock, closed: from which number a success must look at the verdict."""
        to_min = first + self.min_calls - 1 if bad and calls < self.min_calls else _NEVER
        if self.timed:
            self.watch = to_min
        elif bad:  # until the window reaches min_calls, or the last failure leaves it
            last = max(self.fails[-1] if self.fails else -1, self.slows[-1] if self.slows else -1)
            self.counting = True
            self.watch = min(to_min, last + self.size)
        elif calls >= self.size:  # full of successes: stop counting them
            self.counting = False
            self.watch = _NEVER
        else:  # until the window is full
            self.counting = True
            self.watch = first + self.size - 1

    def _fresh_window(self) -> None:
        """Under the lock (or in ``__init__``): closed with an empty window."""
        self._clear()
        self.base = self.next_seq() + 1
        self.counting = True
        self.watch = _NEVER if self.timed else self.base + self.size - 1

    def _span(self, calls: int) -> str:
        if self.timed:
            return f"{calls} calls in the last {_secs(self.window)}"
        return f"the last {calls} calls"

    def _open(self, was: str, why: str) -> tuple[Any, ...]:
        """Under the lock: to open, for ``open_for``; returns the log message."""
        self.state = OPEN
        self.refusing = True
        self.watch = _NEVER
        self.open_until = self.monotonic() + self.open_for
        self._clear()
        return (was, OPEN, f"{why}; trial calls in {_secs(self.open_for)}")

    def _clear(self) -> None:
        self.fails.clear()
        self.slows.clear()
        self.buckets.clear()
        self.fail_total = self.slow_total = 0
        self.turn_at = -math.inf if self.timed else math.inf

    def _log(self, message: tuple[Any, ...], qualname: str) -> None:
        was, now, why = message
        self.logger.warning(
            "%s: circuit breaker %s -> %s (%s): %s",
            self.policy,
            was,
            now,
            qualname,
            why,
            extra={"policy": self.policy, "function": qualname, "breaker_state": now},
        )

    # --- open and half-open ----------------------------------------------------------------

    def admit(self, qualname: str, held: list[int]) -> None:
        """A call while open or half-open: appends its trial ticket to ``held``, or leaves it
        empty if the breaker closed meanwhile (the call takes the closed path); raises
        ``CircuitOpenError`` otherwise.

        ``held`` is the caller's, filled under the lock right after the permit is taken (no
        call in between, so no signal handler can run there): a ``KeyboardInterrupt`` that
        lands later, e.g. while the transition to half-open is logged, finds the ticket in
        the caller's hands, and the caller gives the permit back. Returned instead, the
        ticket would be lost with the interrupted return, and the permit with it: with
        ``half_open_calls: 1``, every call refused with ``retry_after`` 0, forever."""
        message = None
        refused = -1.0
        with self.lock:
            state = self.state
            if state is OPEN:
                now = self.monotonic()
                if now < self.open_until:
                    # A clock set back to before the breaker opened: open for open_for
                    # from now, not for as long as it went back. (Only then: float
                    # addition is monotonic, so ``now + open_for`` is never less otherwise.)
                    self.open_until = min(self.open_until, now + self.open_for)
                    refused = self.open_until - now
                else:
                    state = self.state = HALF_OPEN
                    self.epoch += 1
                    self.in_flight = self.trials_ok = 0
                    n = self.half_open_calls
                    message = (
                        OPEN,
                        HALF_OPEN,
                        f"open for {_secs(self.open_for)}; letting {n} trial "
                        f"call{'s' if n != 1 else ''} through",
                    )
            if state is HALF_OPEN and refused < 0:
                if self.trials_ok + self.in_flight < self.half_open_calls:
                    self.in_flight += 1
                    held.append(self.epoch)
                else:
                    refused = 0.0  # half-open already: trial permits come back any moment
        if message is not None:
            self._log(message, qualname)
        if refused >= 0:
            raise CircuitOpenError(self.policy, qualname, refused)

    def trial_done(
        self, ticket: int, exc: BaseException | None, seconds: float, qualname: str
    ) -> None:
        """A trial call ended (``exc`` None: it returned), after ``seconds``."""
        kind = _SUCCESS if exc is None else self.classify(exc)
        slow_call = self.slow_call
        slow = kind != _NEITHER and slow_call is not None and seconds >= slow_call
        message = None
        with self.lock:
            if self.state is not HALF_OPEN or ticket != self.epoch:
                return  # a trial of an earlier half-open spell (or of the parent process)
            self.in_flight -= 1  # the permit comes back whatever happened
            if kind == _NEITHER:
                return
            if kind == _FAILURE or slow:
                if kind == _FAILURE:
                    assert exc is not None
                    why = f"a trial call failed ({_exception_text(exc)})"
                else:
                    why = f"a trial call took {_secs(seconds)}, slow_call {_secs(slow_call or 0)}"
                message = self._open(HALF_OPEN, why)
            else:
                self.trials_ok += 1
                if self.trials_ok >= self.half_open_calls:
                    n = self.trials_ok
                    self.state = CLOSED
                    self._fresh_window()
                    self.refusing = False
                    message = (
                        HALF_OPEN,
                        CLOSED,
                        f"{n} trial call{'s' if n != 1 else ''} succeeded",
                    )
        if message is not None:
            self._log(message, qualname)


def _breaker_for(cfg: BreakerConfig, ctx: Context) -> Breaker:
    monotonic, policy, logger = ctx.clock.monotonic, ctx.policy, ctx.logger
    breaker: Breaker = ctx.shared("breaker", cfg, lambda: Breaker(cfg, monotonic, policy, logger))
    return breaker


def _shared_breaker(cfg: BreakerConfig, ctx: Context, shared: Any) -> Any:
    """The policy's ``SharedBreaker`` (state in Redis) holding its per-process fallback."""
    monotonic, policy, logger = ctx.clock.monotonic, ctx.policy, ctx.logger
    return ctx.shared(
        "breaker",
        cfg,
        lambda: shared.SharedBreaker(cfg, ctx, Breaker(cfg, monotonic, policy, logger)),
    )


def build(cfg: BreakerConfig, inner: Inner, ctx: Context) -> Inner:
    """The sync breaker layer around ``inner`` (in Redis with ``shared: true``)."""
    if cfg.shared:
        shared = shared_module(ctx, "breaker")
        held = _shared_breaker(cfg, ctx, shared)
        local = _build_local(cfg, inner, ctx, held.local)
        layer: Inner = shared.breaker(cfg, inner, local, ctx, held)
        return layer
    return _build_local(cfg, inner, ctx, _breaker_for(cfg, ctx))


def _build_local(cfg: BreakerConfig, inner: Inner, ctx: Context, br: Breaker) -> Inner:
    qualname = ctx.qualname
    monotonic = ctx.clock.monotonic
    next_seq, admit, trial_done = br.next_seq, br.admit, br.trial_done
    closed_raised, success_seen, record = br.closed_raised, br.success_seen, br.record
    short_circuit = ctx.counters.short_circuit

    def trial(args: tuple[Any, ...], kwargs: dict[str, Any], info: Any) -> Any:
        held: list[int] = []  # the trial's ticket, once its permit is taken (see ``admit``)
        try:
            admit(qualname, held)
        except BaseException as exc:
            if held:  # interrupted after its permit was taken: the permit comes back
                trial_done(held[0], exc, 0.0, qualname)
            elif isinstance(exc, CircuitOpenError):
                short_circuit()
            raise
        if not held:  # closed meanwhile
            return breaker_layer(args, kwargs, info)
        ticket = held[0]
        t0 = math.inf  # no gap between the permit and the ``try`` that gives it back
        try:
            t0 = monotonic()
            result = inner(args, kwargs, info)
        except BaseException as exc:
            trial_done(ticket, exc, monotonic() - t0, qualname)
            raise
        trial_done(ticket, None, monotonic() - t0, qualname)
        return result

    def counted(args: tuple[Any, ...], kwargs: dict[str, Any], info: Any) -> Any:
        # A count window without slow_call: no clock read at all.
        if br.refusing:
            return trial(args, kwargs, info)
        try:
            result = inner(args, kwargs, info)
        except BaseException as exc:
            closed_raised(exc, 0.0, 0.0, qualname)
            raise
        if br.counting:
            s = next_seq()
            if s >= br.watch:
                success_seen(s, 0.0, qualname)
        return result

    slow = cfg.slow_call if cfg.slow_call is not None else math.inf

    def timed(args: tuple[Any, ...], kwargs: dict[str, Any], info: Any) -> Any:
        if br.refusing:
            return trial(args, kwargs, info)
        t0 = monotonic()
        try:
            result = inner(args, kwargs, info)
        except BaseException as exc:
            closed_raised(exc, t0, monotonic(), qualname)
            raise
        now = monotonic()
        if now - t0 >= slow:
            record(False, True, now, qualname)
        else:
            s = next_seq()
            if s >= br.watch or now >= br.turn_at:
                success_seen(s, now, qualname)
        return result

    def windowed(args: tuple[Any, ...], kwargs: dict[str, Any], info: Any) -> Any:
        # A time window without slow_call: one clock read, at the end.
        if br.refusing:
            return trial(args, kwargs, info)
        try:
            result = inner(args, kwargs, info)
        except BaseException as exc:
            now = monotonic()
            closed_raised(exc, now, now, qualname)
            raise
        s = next_seq()
        if s >= br.watch or monotonic() >= br.turn_at:
            success_seen(s, monotonic(), qualname)
        return result

    breaker_layer = timed if cfg.slow_call is not None else windowed if cfg.timed else counted
    return breaker_layer


def build_async(cfg: BreakerConfig, inner: AsyncInner, ctx: Context) -> AsyncInner:
    """The async breaker layer around ``inner`` (the same breaker as the sync one)."""
    if cfg.shared:
        shared = shared_module(ctx, "breaker")
        held = _shared_breaker(cfg, ctx, shared)
        local = _build_local_async(cfg, inner, ctx, held.local)
        layer: AsyncInner = shared.breaker_async(cfg, inner, local, ctx, held)
        return layer
    return _build_local_async(cfg, inner, ctx, _breaker_for(cfg, ctx))


def _build_local_async(
    cfg: BreakerConfig, inner: AsyncInner, ctx: Context, br: Breaker
) -> AsyncInner:
    qualname = ctx.qualname
    monotonic = ctx.clock.monotonic
    next_seq, admit, trial_done = br.next_seq, br.admit, br.trial_done
    closed_raised, success_seen, record = br.closed_raised, br.success_seen, br.record
    short_circuit = ctx.counters.short_circuit
    slow = cfg.slow_call if cfg.slow_call is not None else math.inf

    async def trial(args: tuple[Any, ...], kwargs: dict[str, Any], info: Any) -> Any:
        held: list[int] = []  # the trial's ticket, once its permit is taken (see ``admit``)
        try:
            admit(qualname, held)
        except BaseException as exc:
            if held:  # interrupted after its permit was taken: the permit comes back
                trial_done(held[0], exc, 0.0, qualname)
            elif isinstance(exc, CircuitOpenError):
                short_circuit()
            raise
        if not held:  # closed meanwhile
            return await breaker_layer(args, kwargs, info)
        ticket = held[0]
        t0 = math.inf  # no gap between the permit and the ``try`` that gives it back
        try:
            t0 = monotonic()
            result = await inner(args, kwargs, info)
        except BaseException as exc:  # a cancelled trial gives its permit back
            trial_done(ticket, exc, monotonic() - t0, qualname)
            raise
        trial_done(ticket, None, monotonic() - t0, qualname)
        return result

    async def counted(args: tuple[Any, ...], kwargs: dict[str, Any], info: Any) -> Any:
        if br.refusing:
            return await trial(args, kwargs, info)
        try:
            result = await inner(args, kwargs, info)
        except BaseException as exc:
            closed_raised(exc, 0.0, 0.0, qualname)
            raise
        if br.counting:
            s = next_seq()
            if s >= br.watch:
                success_seen(s, 0.0, qualname)
        return result

    async def timed(args: tuple[Any, ...], kwargs: dict[str, Any], info: Any) -> Any:
        if br.refusing:
            return await trial(args, kwargs, info)
        t0 = monotonic()
        try:
            result = await inner(args, kwargs, info)
        except BaseException as exc:
            closed_raised(exc, t0, monotonic(), qualname)
            raise
        now = monotonic()
        if now - t0 >= slow:
            record(False, True, now, qualname)
        else:
            s = next_seq()
            if s >= br.watch or now >= br.turn_at:
                success_seen(s, now, qualname)
        return result

    breaker_layer = counted if not cfg.timed and cfg.slow_call is None else timed
    return breaker_layer


__all__ = [
    "BUCKETS",
    "Breaker",
    "BreakerConfig",
    "build",
    "build_async",
]
