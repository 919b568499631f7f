"""The ``cache`` layer: a TTL result cache per guarded function (cachetools provides the store).

Hits skip everything below. Exceptions are never cached. Concurrent misses on one key
compute once: the first caller computes, the others wait for its result (or its exception).

Hits take no lock. The store is a ``cachetools.TTLCache``, changed only under the lock;
beside it, a plain dict mirrors each live entry as ``(value, expires)``, and a hit reads
that dict (one atomic ``dict.get``). A hit also notes its key, and the next locked
operation replays those notes into the TTLCache, so eviction stays least-recently-used.
Without this, threads calling a cached function queue on the lock and throughput falls
several-fold from one thread to eight.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
from collections.abc import Callable, Hashable
from typing import Any

import cachetools
from pydantic import Field, StrictInt

from guardrails._binding import Binder
from guardrails._keys import ATOMIC, UnkeyableArgument, key_of
from guardrails._types import AsyncInner, Block, Context, Duration, Inner

_MISS: Any = object()
#: A waiter that sees this instead of a result computes for itself (the leader was cancelled).
_AGAIN: Any = object()


class CacheConfig(Block):
    """``cache:`` — ``ttl`` per entry, ``maxsize`` entries (LRU eviction), ``key`` arguments."""

    ttl: Duration = 300.0
    maxsize: StrictInt = Field(default=1024, ge=1)
    key: tuple[str, ...] | None = None


class _MirroredTTLCache(cachetools.TTLCache[Hashable, Any]):
    """A TTLCache that keeps ``view[key] = (value, expires)`` for every live entry.

    Every change goes through ``__setitem__``, ``__delitem__`` (eviction and ``pop`` use
    it) or ``expire``; the view follows each. Callers hold the store's lock for changes.
    """

    def __init__(self, maxsize: int, ttl: float, timer: Callable[[], float]) -> None:
        super().__init__(maxsize=maxsize, ttl=ttl, timer=timer)
        self.view: dict[Hashable, tuple[Any, float]] = {}
        self._now = timer
        self._ttl = ttl

    def __setitem__(self, key: Hashable, value: Any) -> None:
        # Read the clock first: the view's expiry is never later than the TTLCache's.
        expires = self._now() + self._ttl
        super().__setitem__(key, value)
        self.view[key] = (value, expires)

    def __delitem__(self, key: Hashable) -> None:
        self.view.pop(key, None)
        super().__delitem__(key)

    def expire(self, time: float | None = None) -> list[tuple[Hashable, Any]]:
        expired = super().expire(time)
        for key, _ in expired:
            self.view.pop(key, None)
        return expired


class Store:
    """One function's cache: the TTLCache, its lock-free view, and the calls in flight."""

    __slots__ = ("cache", "inflight", "lock", "settings", "timer", "touched")

    def __init__(self, cfg: CacheConfig, timer: Callable[[], float]) -> None:
        self.settings = (cfg.ttl, cfg.maxsize, cfg.key, timer)
        self.timer = timer
        self.cache = _MirroredTTLCache(maxsize=cfg.maxsize, ttl=cfg.ttl, timer=timer)
        self.lock = threading.Lock()
        self.inflight: dict[Hashable, Any] = {}
        #: Keys hit without the lock, oldest first, for ``replay`` (bounded: older notes
        #: than ``maxsize`` hits cannot change which entries are the least recent).
        self.touched: collections.deque[Hashable] = collections.deque(maxlen=cfg.maxsize)

    def replay(self) -> None:
        """Under the lock: move the entries hit since the last replay to most recent."""
        touched, cache = self.touched, self.cache
        # Only the notes there now: hits on other threads keep adding while this runs.
        for _ in range(len(touched)):
            key = touched.popleft()
            if key in cache.view:
                with contextlib.suppress(KeyError):
                    cache[key]


class _Flight:
    """A computation other threads wait on."""

    __slots__ = ("done", "error", "value")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: Any = _AGAIN
        self.error: BaseException | None = None


def make_key_function(
    cfg: CacheConfig, binder: Binder, ctx: Context
) -> Callable[[tuple[Any, ...], dict[str, Any]], Hashable]:
    """``(args, kwargs) -> key`` from the bound arguments (defaults applied) in ``cfg.key``."""
    names = binder.names
    if cfg.key is None:
        picked = tuple(range(len(names)))
    else:
        ctx.check_parameters(cfg.key, "cache.key")
        picked = tuple(names.index(k) for k in cfg.key)
    values = binder.values
    all_args = picked == tuple(range(len(names)))

    def key(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Hashable:
        bound = values(args, kwargs)
        try:
            if all_args:
                return tuple([key_of(v) for v in bound])
            return tuple([key_of(bound[i]) for i in picked])
        except UnkeyableArgument as exc:
            raise _unkeyable(ctx, binder, bound, picked) from exc

    if len(names) == 1 and all_args:

        def key1(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Hashable:
            if not kwargs and len(args) == 1:
                try:
                    return key_of(args[0])
                except UnkeyableArgument as exc:
                    raise _unkeyable(ctx, binder, args, picked) from exc
            whole = key(args, kwargs)
            assert isinstance(whole, tuple)
            return whole[0]  # type: ignore[no-any-return]

        return key1
    return key


def _unkeyable(
    ctx: Context, binder: Binder, bound: tuple[Any, ...], picked: tuple[int, ...]
) -> TypeError:
    for i in picked:
        try:
            key_of(bound[i])
        except UnkeyableArgument as exc:
            return TypeError(
                f"policy {ctx.policy!r} ({ctx.qualname}): cannot make a cache key from argument "
                f"{binder.names[i]!r} ({exc}); list the arguments that identify the call in "
                f"guardrails.policies.{ctx.policy}.cache.key, or pass a hashable value"
            )
    return TypeError(f"policy {ctx.policy!r} ({ctx.qualname}): cannot make a cache key")


def build(cfg: CacheConfig, inner: Inner, ctx: Context, store: Store) -> Inner:
    """The sync cache layer around ``inner``, keeping entries in ``store``."""
    make_key = make_key_function(cfg, ctx.binder, ctx)
    cache, lock, inflight = store.cache, store.lock, store.inflight
    hit, miss = ctx.counters.cache_hit, ctx.counters.cache_miss
    view_get, touch, now, replay = cache.view.get, store.touched.append, store.timer, store.replay
    one_arg = cfg.key is None and ctx.binder.plain_arity == 1

    def cache_layer(args: tuple[Any, ...], kwargs: dict[str, Any], info: Any) -> Any:
        # The hit path, kept flat and lock-free: it is most of the calls of a cached function.
        if one_arg and not kwargs and len(args) == 1 and type(args[0]) in ATOMIC:
            key: Hashable = (type(args[0]), args[0])  # what key_of gives, inlined
        else:
            key = make_key(args, kwargs)
        entry = view_get(key)
        if entry is not None and now() < entry[1]:
            touch(key)
            hit()
            if info is not None:
                info[1] = True
            return entry[0]
        return compute(key, args, kwargs, info)

    def compute(key: Hashable, args: tuple[Any, ...], kwargs: dict[str, Any], info: Any) -> Any:
        """A miss: compute once per key, however many callers are waiting for it."""
        while True:
            with lock:
                replay()
                try:
                    value = cache[key]
                except KeyError:
                    found: _Flight | None = inflight.get(key)
                    leader = found is None
                    flight = inflight[key] = _Flight() if found is None else found
                else:
                    hit()
                    if info is not None:
                        info[1] = True
                    return value
            if leader:
                break
            flight.done.wait()
            if flight.error is not None:
                raise flight.error
            if flight.value is not _AGAIN:
                hit()
                if info is not None:
                    info[1] = True
                return flight.value
        miss()
        try:
            value = inner(args, kwargs, info)
        except Exception as exc:
            flight.error = exc
            raise
        else:
            flight.value = value
            with lock:
                replay()
                cache[key] = value
            return value
        finally:
            with lock:
                del inflight[key]
            flight.done.set()

    return cache_layer


def build_async(cfg: CacheConfig, inner: AsyncInner, ctx: Context, store: Store) -> AsyncInner:
    """The async cache layer: waiters on the same event loop share the leader's result."""
    make_key = make_key_function(cfg, ctx.binder, ctx)
    cache, lock, inflight = store.cache, store.lock, store.inflight
    hit, miss = ctx.counters.cache_hit, ctx.counters.cache_miss
    view_get, touch, now, replay = cache.view.get, store.touched.append, store.timer, store.replay

    async def cache_layer(args: tuple[Any, ...], kwargs: dict[str, Any], info: Any) -> Any:
        key = make_key(args, kwargs)
        entry = view_get(key)
        if entry is not None and now() < entry[1]:
            touch(key)
            hit()
            if info is not None:
                info[1] = True
            return entry[0]
        loop = asyncio.get_running_loop()
        while True:
            with lock:
                replay()
                try:
                    value = cache[key]
                except KeyError:
                    found: asyncio.Future[Any] | None = inflight.get(key)
                    leader = found is None or found.get_loop() is not loop
                    flight = inflight[key] = loop.create_future() if found is None else found
                else:
                    hit()
                    if info is not None:
                        info[1] = True
                    return value
            if leader:
                break
            # shield: a waiter's cancellation must not cancel the leader's future.
            value = await asyncio.shield(flight)
            if value is not _AGAIN:
                hit()
                if info is not None:
                    info[1] = True
                return value
        mine = inflight.get(key) is flight and flight.get_loop() is loop
        miss()
        try:
            value = await inner(args, kwargs, info)
        except Exception as exc:
            if mine and not flight.done():
                flight.set_exception(exc)
                flight.exception()  # marks it retrieved: no "never retrieved" warning
            raise
        except BaseException:
            if mine and not flight.done():
                flight.set_result(_AGAIN)
            raise
        else:
            with lock:
                replay()
                cache[key] = value
            if mine and not flight.done():
                flight.set_result(value)
            return value
        finally:
            if mine:
                with lock:
                    if inflight.get(key) is flight:
                        del inflight[key]

    return cache_layer
