"""The ``rate_limit`` layer: a token bucket per policy, shared by its sync and async calls.

The bucket is kept as one number, the time at which it will next be full (the "theoretical
arrival time" of GCRA, the generic cell rate algorithm): taking a token pushes that time one
token's interval later, and an attempt is admitted while the pushed time stays within a full
bucket's worth of intervals of now. That is an exact token bucket (start full, refill at
``rate``, hold at most ``burst``) with one comparison per attempt and no refill loop, and a
waiter *reserves* its token when it starts waiting, so waiters are served in arrival order and
the rate is never overshot however many threads and tasks wait at once.

We do not use the ``limits`` library, though it is well kept: its cheapest strategy (a fixed
window ``hit()``, storage key built and looked up per hit) costs two to five microseconds a
call, while this layer's budget is a fifth of that for the whole guarded call (it takes about
0.3 µs); and its windows are not a token bucket (a fixed window lets twice the rate through
across a boundary; none reserves a token for a bounded wait).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Any

from pydantic import Field, StrictInt

from guardrails._errors import RateLimitExceeded
from guardrails._types import AsyncInner, Block, Context, Duration, Inner, PerSecond

#: Float rounding tolerance, in seconds: a token due within this of now counts as there (so a
#: fake clock moved by exactly one interval always finds the token it should).
_EPSILON = 1e-9


class RateLimitConfig(Block):
    """``rate_limit:`` — ``rate`` tokens per period (``100/s``, ``600/min``, ``5/100ms``), a
    bucket of ``burst`` tokens (default: one second's worth, ``floor(rate)``, at least 1),
    and ``max_wait``: how long an attempt may wait for a token (default 0: refuse at once).

    The bucket starts full; sync and async calls of the policy share it. Waits read the
    policy's clock (``guardrails.testing.fake_clock()`` in tests).
    """

    rate: PerSecond
    burst: StrictInt | None = Field(default=None, ge=1)
    max_wait: Duration = 0.0

    @property
    def capacity(self) -> int:
        """The bucket's size: ``burst``, or one second's worth of tokens (at least 1)."""
        if self.burst is not None:
            return self.burst
        return max(1, math.floor(self.rate))


class Bucket:
    """A policy's token bucket (the ``"rate_limit"`` shared state).

    ``full_at`` is when the bucket will hold ``capacity`` tokens again; tokens reserved by
    waiters are already taken from it.
    """

    __slots__ = ("capacity", "full_at", "interval", "lock", "max_wait", "monotonic", "span")

    def __init__(self, cfg: RateLimitConfig, ctx: Context) -> None:
        self.monotonic = ctx.clock.monotonic
        self.capacity = cfg.capacity
        self.interval = 1.0 / cfg.rate
        #: How far ahead of now ``full_at`` may be with a token still in the bucket.
        self.span = (self.capacity - 1) * self.interval
        self.max_wait = cfg.max_wait
        self.full_at = -math.inf  # full
        self.lock = threading.Lock()

    def take(self) -> tuple[float, float]:
        """Take a token: ``(0.0, _)`` now; ``(wait, due)`` reserved for ``due`` (the clock's
        time), after a wait of at most ``max_wait``; ``(wait, -inf)`` refused, a token in
        ``wait`` seconds (nothing taken)."""
        with self.lock:
            now = self.monotonic()
            full_at = self.full_at
            full_at = max(full_at, now)
            wait = full_at - self.span - now
            if wait <= _EPSILON:
                self.full_at = full_at + self.interval
                return 0.0, now
            if wait > self.max_wait:
                return wait, -math.inf
            self.full_at = full_at + self.interval
            return wait, now + wait

    def give_back(self, due: float) -> None:
        """A waiter that reserved the token due at ``due`` gave up before it: the token is
        back (unless its time has passed: the bucket refilled past it, so it is not owed)."""
        with self.lock:
            now = self.monotonic()
            if now < due:
                self.full_at = max(self.full_at - self.interval, now)

    def after_fork_in_child(self) -> None:
        # Another thread of the parent may have held the lock at the fork; the tokens taken
        # stay taken (the child's calls and the parent's share one budget until then).
        self.lock = threading.Lock()


def _bucket(cfg: RateLimitConfig, ctx: Context) -> Bucket:
    bucket: Bucket = ctx.shared("rate_limit", cfg, lambda: Bucket(cfg, ctx))
    return bucket


def _slow_path(bucket: Bucket, ctx: Context) -> Callable[[], tuple[float, float]]:
    """No token was in the bucket a moment ago: reserve one within ``max_wait`` (returns the
    wait and the time it is due), else count and raise the refusal."""
    take, refused, policy, qualname = bucket.take, ctx.counters.rate_limit, ctx.policy, ctx.qualname

    def reserve() -> tuple[float, float]:
        wait, due = take()  # again: the bucket may have refilled meanwhile
        if due == -math.inf:
            refused()
            raise RateLimitExceeded(policy, qualname, wait)
        return wait, due

    return reserve


def build(cfg: RateLimitConfig, inner: Inner, ctx: Context) -> Inner:
    """The sync rate-limit layer around ``inner``: one token per attempt."""
    bucket = _bucket(cfg, ctx)
    monotonic, span, interval = bucket.monotonic, bucket.span, bucket.interval
    slow = _slow_path(bucket, ctx)
    sleep = ctx.clock.sleep

    def rate_limit_layer(args: tuple[Any, ...], kwargs: dict[str, Any], info: Any) -> Any:
        # Bucket.take inlined: the common case (a token in the bucket) is one locked update.
        lock = bucket.lock  # read per call: a forked child renews it
        lock.acquire()  # (acquire/try/finally: a fifth cheaper than `with`)
        try:
            now = monotonic()
            full_at = bucket.full_at
            if full_at < now:  # noqa: PLR1730 (max() costs a call)
                full_at = now
            wait = full_at - span - now
            if wait <= _EPSILON:
                bucket.full_at = full_at + interval
        finally:
            lock.release()
        if wait > _EPSILON:
            wait, due = slow()
            try:
                sleep(wait)
            except BaseException:
                bucket.give_back(due)
                raise
        return inner(args, kwargs, info)

    return rate_limit_layer


def build_async(cfg: RateLimitConfig, inner: AsyncInner, ctx: Context) -> AsyncInner:
    """The async rate-limit layer around ``inner``: waits with the clock's ``async_sleep``."""
    bucket = _bucket(cfg, ctx)
    monotonic, span, interval = bucket.monotonic, bucket.span, bucket.interval
    slow = _slow_path(bucket, ctx)
    sleep = ctx.clock.async_sleep

    async def rate_limit_layer(args: tuple[Any, ...], kwargs: dict[str, Any], info: Any) -> Any:
        lock = bucket.lock  # read per call: a forked child renews it
        lock.acquire()  # (acquire/try/finally: a fifth cheaper than `with`)
        try:
            now = monotonic()
            full_at = bucket.full_at
            if full_at < now:  # noqa: PLR1730 (max() costs a call)
                full_at = now
            wait = full_at - span - now
            if wait <= _EPSILON:
                bucket.full_at = full_at + interval
        finally:
            lock.release()
        if wait > _EPSILON:
            wait, due = slow()
            try:
                await sleep(wait)
            except BaseException:  # cancelled while waiting: the token was never used
                bucket.give_back(due)
                raise
        return await inner(args, kwargs, info)

    return rate_limit_layer


__all__ = ["Bucket", "RateLimitConfig", "build", "build_async"]
