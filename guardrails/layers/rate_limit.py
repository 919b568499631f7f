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

from pydantic import Field, StrictBool, StrictInt, field_validator

from guardrails._errors import RateLimitExceeded
from guardrails._redis import Namespace, RedisTimeout, shared_module
from guardrails._types import AsyncInner, Block, Context, Duration, Inner, PerSecond
from guardrails._units import MAX_SECONDS

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

    OFF_DEFAULTS = {"rate": "1/s"}  # noqa: RUF012 (a ClassVar of Block)

    rate: PerSecond
    #: (A billion: more is no limit at all, and a huge integer overflows the float arithmetic.)
    burst: StrictInt | None = Field(default=None, ge=1, le=1_000_000_000)
    max_wait: Duration = 0.0
    #: One bucket in Redis (``redis_url``) for every process: the rate is the total's.
    shared: StrictBool = False
    redis_timeout: RedisTimeout = 0.05
    namespace: Namespace = None

    @field_validator("rate")
    @classmethod
    def _at_least_one_per_century(cls, rate: float) -> float:
        # One token per 1/rate seconds: below this, 1/rate overflows to infinity (1e-320/s)
        # and the bucket's arithmetic turns to NaN, which admitted every call.
        if 1.0 / rate > MAX_SECONDS:
            raise ValueError(
                f"expected a rate of at least one per 100 years, got {rate!r} per second"
            )
        return rate

    @property
    def capacity(self) -> int:
        """The bucket's size: ``burst``, or one second's worth of tokens (at least 1)."""
        if self.burst is not None:
            return self.burst
        return max(1, math.floor(self.rate))


class Bucket:
    """A policy's token bucket (the ``"rate_limit"`` shared state) for one rate and burst.

    ``full_at`` is when the bucket will hold ``capacity`` tokens again; tokens reserved by
    waiters are already taken from it. ``max_wait`` is the layer's, not the bucket's: a
    ``configure()`` that changes only ``max_wait`` keeps the bucket and the tokens taken
    (a new bucket would start full and let a second burst through at once).
    """

    __slots__ = ("__weakref__", "capacity", "full_at", "interval", "lock", "monotonic", "span")

    def __init__(self, rate: float, capacity: int, monotonic: Callable[[], float]) -> None:
        self.monotonic = monotonic
        self.capacity = capacity
        self.interval = 1.0 / rate
        #: How far ahead of now ``full_at`` may be with a token still in the bucket.
        self.span = (capacity - 1) * self.interval
        self.full_at = -math.inf  # full
        self.lock = threading.Lock()

    def take(self, max_wait: float) -> tuple[float, float | None]:
        """Take a token: ``(0.0, None)`` now; ``(wait, ticket)`` reserved, due in ``wait``
        seconds (at most ``max_wait``), ``ticket`` to give it back with; ``(wait, None)``
        with ``wait > 0``: refused, the next token in ``wait`` seconds (nothing taken)."""
        with self.lock:
            now = self.monotonic()
            full_at = max(self.full_at, now)
            wait = full_at - self.span - now
            if wait <= _EPSILON:
                self.full_at = full_at + self.interval
                return 0.0, None
            if wait > max_wait:
                return wait, None
            self.full_at = ticket = full_at + self.interval
            return wait, ticket

    def give_back(self, ticket: float) -> None:
        """A waiter gave up its reserved token (``ticket``, from ``take``) unused: it is back
        if it is still the last token taken, as if it had never been reserved. Tokens taken
        after it are scheduled after it: giving an earlier one back would hand its place to
        a newcomer at the time of the last, two through at once, so it is spent."""
        with self.lock:
            if self.full_at == ticket:
                self.full_at = ticket - self.interval

    def after_fork_in_child(self) -> None:
        # Another thread of the parent may have held the lock at the fork; the tokens taken
        # stay taken (the child's calls and the parent's share one budget until then).
        self.lock = threading.Lock()


def _bucket(cfg: RateLimitConfig, ctx: Context) -> Bucket:
    rate, capacity, monotonic = cfg.rate, cfg.capacity, ctx.clock.monotonic
    # Keyed on what the bucket is, not on the whole block (see Bucket).
    bucket: Bucket = ctx.shared(
        "rate_limit", (rate, capacity), lambda: Bucket(rate, capacity, monotonic)
    )
    return bucket


def _slow_path(bucket: Bucket, cfg: RateLimitConfig, ctx: Context) -> Callable[[], Any]:
    """No token was in the bucket a moment ago: take one now (``(0.0, None)``) or reserve one
    within ``max_wait`` (the wait and the ticket), else count and raise the refusal."""
    take, max_wait = bucket.take, cfg.max_wait
    refused, policy, qualname = ctx.counters.rate_limit, ctx.policy, ctx.qualname

    def reserve() -> tuple[float, float | None]:
        wait, ticket = take(max_wait)  # again: the bucket may have refilled meanwhile
        if ticket is None and wait:
            refused()
            raise RateLimitExceeded(policy, qualname, wait)
        return wait, ticket

    return reserve


def build(cfg: RateLimitConfig, inner: Inner, ctx: Context) -> Inner:
    """The sync rate-limit layer around ``inner``: one token per attempt (from one bucket in
    Redis with ``shared: true``, this process's own while Redis is away)."""
    if cfg.shared:
        shared = shared_module(ctx, "rate_limit")
        layer: Inner = shared.rate_limit(cfg, inner, _build_local(cfg, inner, ctx), ctx)
        return layer
    return _build_local(cfg, inner, ctx)


def _build_local(cfg: RateLimitConfig, inner: Inner, ctx: Context) -> Inner:
    bucket = _bucket(cfg, ctx)
    monotonic, span, interval = bucket.monotonic, bucket.span, bucket.interval
    slow, give_back = _slow_path(bucket, cfg, ctx), bucket.give_back
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
            wait, ticket = slow()
            if ticket is not None:
                try:
                    sleep(wait)
                except BaseException:  # interrupted: the token was never used
                    give_back(ticket)
                    raise
        return inner(args, kwargs, info)

    return rate_limit_layer


def build_async(cfg: RateLimitConfig, inner: AsyncInner, ctx: Context) -> AsyncInner:
    """The async rate-limit layer around ``inner``: waits with the clock's ``async_sleep``."""
    if cfg.shared:
        shared = shared_module(ctx, "rate_limit")
        local = _build_local_async(cfg, inner, ctx)
        layer: AsyncInner = shared.rate_limit_async(cfg, inner, local, ctx)
        return layer
    return _build_local_async(cfg, inner, ctx)


def _build_local_async(cfg: RateLimitConfig, inner: AsyncInner, ctx: Context) -> AsyncInner:
    bucket = _bucket(cfg, ctx)
    monotonic, span, interval = bucket.monotonic, bucket.span, bucket.interval
    slow, give_back = _slow_path(bucket, cfg, ctx), bucket.give_back
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
            wait, ticket = slow()
            if ticket is not None:
                try:
                    await sleep(wait)
                except BaseException:  # cancelled while waiting: the token was never used
                    give_back(ticket)
                    raise
        return await inner(args, kwargs, info)

    return rate_limit_layer


__all__ = ["Bucket", "RateLimitConfig", "build", "build_async"]
