"""The ``cache`` layer: a TTL result cache per guarded function (cachetools provides the store).

Hits skip everything below. Exceptions are never cached, and neither are one-shot values
(coroutines, generators, iterators): a hit would hand out a spent object. Concurrent misses
on one key compute once: the first caller computes, the others wait for its result (or its
exception). A call that re-enters its own computation (recursion, directly or through other
guarded functions) computes for itself instead of waiting on itself.

Hits take no lock. The store is a ``cachetools.TTLCache``, changed only under the lock;
beside it, a plain dict mirrors each live entry as ``(value, expires)``, and a hit reads
that dict (one atomic ``dict.get``). A hit also notes its key, and the next locked
operation replays those notes into the TTLCache, so eviction stays least-recently-used.
Without this, threads calling a cached function queue on the lock and throughput falls
several-fold from one thread to eight.

Fork safety: a child forked while another thread held a store's lock, or while keys were in
flight on threads that do not exist in the child, would wait forever. After a fork every
store gets a new lock and forgets the calls in flight; a store whose lock was held (its
TTLCache may be half-updated) starts empty. Other stores keep their entries: a forked
worker starts warm.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import functools
import hashlib
import os
import threading
import time
import types
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Iterator
from typing import Any, Literal

import cachetools
from pydantic import Field, SecretStr, StrictInt, ValidationInfo, field_validator

from guardrails import _keys_frames  # noqa: F401 (registers the keys of DataFrames, tensors, ...)
from guardrails._binding import Binder
from guardrails._clock import SystemClock
from guardrails._errors import PolicyConfigError
from guardrails._keys import ATOMIC, UnkeyableArgument, key_of
from guardrails._redis import Namespace, RedisTimeout, integration, redis_url_problem
from guardrails._types import AsyncInner, Block, Context, Duration, Inner

#: A waiter that sees this instead of a result computes for itself (the leader was cancelled).
_AGAIN: Any = object()
#: The largest ``maxsize``: far above any in-process cache, far below what overflows a C size.
MAX_ENTRIES = 2**31


class CacheConfig(Block):
    """``cache:`` — ``ttl`` per entry, ``maxsize`` entries (LRU eviction), ``key`` arguments;
    ``backend: redis`` adds a level shared by every process (see ``guardrails.redis.cache``)."""

    ttl: Duration = Field(default=300.0, gt=0)
    maxsize: StrictInt = Field(default=1024, ge=1, le=MAX_ENTRIES)
    key: tuple[str, ...] | None = None
    #: Past ``ttl`` an entry is served for this long more while one caller recomputes it.
    stale_for: Duration = Field(default=0.0, ge=0)
    backend: Literal["memory", "redis"] = "memory"
    #: The Redis server (default: the top-level ``redis_url``, else ``$GUARDRAILS_REDIS_URL``).
    url: str | None = Field(default=None, repr=False)  # it may hold a password
    #: The first part of the Redis keys (default: the policy's name).
    namespace: Namespace = None
    #: Part of the Redis keys: bump it to stop reading values stored before.
    version: StrictInt = Field(default=1, ge=0)
    serializer: Literal["auto", "pickle"] = "auto"
    #: Signs every value stored in Redis (HMAC-SHA256); required by ``serializer: pickle``.
    secret: SecretStr | None = Field(default=None, validate_default=True)
    #: The timeout of every Redis operation of the layer.
    redis_timeout: RedisTimeout = 0.05
    #: The cross-process lock's expiry when the policy has no ``timeout``.
    lock_timeout: Duration = Field(default=30.0, gt=0)

    @field_validator("key")
    @classmethod
    def _some_arguments(cls, key: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if key is not None and not key:
            # An empty key would make every call share one entry.
            raise ValueError(
                "list at least one parameter name, or leave key out to use every argument"
            )
        if key is not None and len(set(key)) != len(key):
            raise ValueError(f"each parameter name once, got {list(key)}")
        return key

    @field_validator("url")
    @classmethod
    def _a_redis_url(cls, url: str | None) -> str | None:
        if url is not None:
            problem = redis_url_problem(url)
            if problem is not None:
                raise ValueError(problem)
        return url

    @field_validator("secret")
    @classmethod
    def _secret_for_pickle(cls, secret: SecretStr | None, info: ValidationInfo) -> Any:
        if secret is not None and not secret.get_secret_value():
            raise ValueError("an empty secret signs nothing: set a long random string")
        if secret is None and info.data.get("serializer") == "pickle":
            raise ValueError(
                "serializer: pickle needs a secret (every pickled value is signed with it, so "
                "nobody with write access to Redis can run code in a reader); set it from "
                "the environment, e.g. secret: ${oc.env:GUARDRAILS_CACHE_SECRET}"
            )
        return secret


class _MirroredTTLCache(cachetools.TTLCache[Hashable, Any]):
    """A TTLCache that keeps ``view[key] = (value, fresh_until, keep_until)`` for every live
    entry: a hit reads ``[0]`` and ``[1]``; between the two times (``stale_for``) the entry
    is stale, served only while another caller recomputes it.

    Every change goes through ``put`` (``__setitem__``), ``__delitem__`` (eviction and
    ``pop`` use it) or ``expire``; the view follows each. The TTLCache keeps each entry for
    ``ttl + stale_for``, the longest any entry lives; an entry read from Redis may be fresh
    for less (``put``). Callers hold the store's lock for changes.
    """

    def __init__(
        self,
        maxsize: int,
        ttl: float,
        stale_for: float,
        timer: Callable[[], float],
        view: dict[Hashable, tuple[Any, float, float]],
    ) -> None:
        super().__init__(maxsize=maxsize, ttl=ttl + stale_for, timer=timer)
        self.view = view
        self._now = timer
        self._ttl = ttl
        self._stale_for = stale_for

    def __setitem__(self, key: Hashable, value: Any) -> None:
        self.put(key, value, self._ttl)

    def put(self, key: Hashable, value: Any, fresh_for: float, keep_for: float = -1.0) -> None:
        """Store ``value``, fresh for ``fresh_for`` seconds and kept ``keep_for`` (default:
        ``fresh_for + stale_for``); neither longer than the TTLCache keeps it."""
        # Read the clock first: the view's times are never later than the TTLCache's.
        now = self._now()
        super().__setitem__(key, value)
        fresh_until = now + fresh_for
        keep = keep_for if keep_for >= 0 else fresh_for + self._stale_for
        self.view[key] = (value, fresh_until, now + keep)

    def live(self, key: Hashable) -> tuple[Any, float, float] | None:
        """The entry of ``key`` while it is fresh or stale (not past ``keep_until``)."""
        try:
            self[key]  # also moves it to most recently used
        except KeyError:
            return None
        entry = self.view.get(key)
        if entry is None or self._now() >= entry[2]:
            return None
        return entry

    def __delitem__(self, key: Hashable) -> None:
        self.view.pop(key, None)
        super().__delitem__(key)

    def expire(self, time: float | None = None) -> list[tuple[Hashable, Any]]:
        expired = super().expire(time)
        for key, _ in expired:
            self.view.pop(key, None)
        return expired


#: Every live store, for ``clear()`` by policy and for the fork handler.
_STORES: weakref.WeakSet[Store] = weakref.WeakSet()


class Store:
    """One function's cache: the TTLCache, its lock-free view, and the calls in flight.

    The compiled layers hold the ``view`` dict, the ``touched`` deque and the ``inflight``
    dict, which never change identity; ``lock`` and ``cache`` are read from the store on
    each miss, so that a clear or a fork can replace them.
    """

    __slots__ = (
        "__weakref__",
        "cache",
        "generation",
        "inflight",
        "lock",
        "settings",
        "shared",
        "timer",
        "touched",
        "view",
    )

    def __init__(self, cfg: CacheConfig, timer: Callable[[], float], output: Any = None) -> None:
        self.settings = self.settings_for(cfg, timer, output)
        self.timer = timer
        self.view: dict[Hashable, tuple[Any, float, float]] = {}
        #: The Redis level of the chain in force (``guardrails.redis.cache.SharedLevel``).
        self.shared: Any = None
        self.cache = self._new_cache()
        self.lock = threading.Lock()
        self.inflight: dict[Hashable, Any] = {}
        #: Bumped by ``clear()``: a computation that started before it does not store.
        self.generation = 0
        #: Keys hit without the lock, oldest first, for ``replay`` (bounded: older notes
        #: than ``maxsize`` hits cannot change which entries are the least recent).
        self.touched: collections.deque[Hashable] = collections.deque(maxlen=cfg.maxsize)
        _STORES.add(self)

    @staticmethod
    def settings_for(cfg: CacheConfig, timer: Callable[[], float], output: Any) -> tuple[Any, ...]:
        """What a store's entries depend on: a store is kept across ``configure()`` only
        while these stay the same (``output`` is the ``validate.output`` type below it)."""
        # The Redis settings too: entries read under another namespace or version (or from
        # another server) are not what the new settings would read.
        shared = (cfg.backend, cfg.url, cfg.namespace, cfg.version, cfg.serializer, cfg.secret)
        return (cfg.ttl, cfg.maxsize, cfg.key, timer, output, cfg.stale_for, shared)

    def _new_cache(self) -> _MirroredTTLCache:
        ttl, maxsize, _, timer, _, stale_for, _ = self.settings
        self.view.clear()
        return _MirroredTTLCache(
            maxsize=maxsize, ttl=ttl, stale_for=stale_for, timer=timer, view=self.view
        )

    def replay(self) -> None:
        """Under the lock: move the entries hit since the last replay to most recent."""
        touched, cache = self.touched, self.cache
        # Only the notes there now: hits on other threads keep adding while this runs.
        for _ in range(len(touched)):
            key = touched.popleft()
            if key in cache.view:
                with contextlib.suppress(KeyError):
                    cache[key]

    def clear(self) -> None:
        """Drop every entry; computations in flight finish but do not store their result."""
        with self.lock:
            self.generation += 1
            self.cache = self._new_cache()
            self.touched.clear()

    def after_fork_in_child(self) -> None:
        held = self.lock.locked()
        self.lock = threading.Lock()
        self.inflight.clear()
        if held:
            self.cache = self._new_cache()
            self.touched.clear()


def _after_fork_in_child() -> None:
    _WAITING.clear()  # only the forking thread exists, and it is not waiting
    for store in list(_STORES):
        store.after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class _Flight:
    """A computation other threads wait on: ``done`` is held by the leader until it ends."""

    __slots__ = ("__weakref__", "done", "error", "owner", "value", "waiters")

    def __init__(self) -> None:
        self.done = threading.Lock()
        self.done.acquire()
        self.owner = threading.get_ident()
        self.value: Any = _AGAIN
        self.error: BaseException | None = None
        #: How many callers wait on it (read by tests to line callers up).
        self.waiters = 0


#: The computations this call stack is leading (weak references to ``_Flight`` objects and
#: futures), seen by the tasks it starts and the threads it hands its context to
#: (``asyncio.to_thread``): a call that meets one of them in flight is re-entering it and
#: must not wait on itself. With ``backend: redis`` it also holds the Redis keys the stack
#: leads (strings), so that a re-entry through another wrapper of the function (another
#: store) never waits on its own Redis lock. Weak, because a flight holds its outcome: a
#: context copied while it led (``timeout`` runs each sync attempt in one, a task holds its
#: own) sits in the frames of the failure's traceback, and a strong reference would close the cycle
#: exception -> traceback -> frame -> context -> flight -> exception, keeping the call's
#: arguments until the garbage collector ran.
_LEADING: contextvars.ContextVar[tuple[Any, ...]] = contextvars.ContextVar(
    "guardrails_cache_leading", default=()
)


def _for_waiter(error: Exception) -> Exception:
    """The leader's exception as a waiter raises it: a twin of the same type, message and
    attributes, whose cause is the original.

    Raising the one instance in every waiter would chain every waiter's frames (and the
    arguments in them) onto one traceback, alive as long as any caller keeps the exception.
    The twin is made without running a class's own ``__init__`` again (which may build its
    message from its arguments, or count instances), then given the original's ``__dict__``
    and every attribute stored in a slot or a C-level field (``ImportError.name``,
    ``OSError.errno``, ``StopIteration.value``). An exception that cannot be twinned
    faithfully (its text would differ) is raised as it is.
    """
    cls = type(error)
    try:
        if isinstance(cls.__init__, types.FunctionType):  # the class's own __init__
            twin = cls.__new__(cls, *error.args)
        else:  # a built-in's: it only stores and parses its arguments
            twin = cls(*error.args)
        twin.args = error.args
        for name in _stored_attributes(cls):
            try:
                value = getattr(error, name)
            except AttributeError:  # never set (OSError.characters_written, an empty slot)
                continue
            if getattr(twin, name, _AGAIN) is not value:  # setting OSError's None shows it
                try:
                    setattr(twin, name, value)
                except AttributeError:  # read-only, made from the args (a group's exceptions)
                    if getattr(twin, name, _AGAIN) != value:
                        return error
        state = getattr(error, "__dict__", None)
        if state:
            twin.__dict__.update(state)
            notes = state.get("__notes__")
            if isinstance(notes, list):
                twin.__notes__ = list(notes)  # not one list shared by both
        if str(twin) != str(error) or repr(twin) != repr(error):
            return error
    except Exception:
        return error
    return twin


#: What BaseException itself stores: the twin's own, or set by raising it.
_OWN = frozenset(dir(BaseException))
_STORED: dict[type, tuple[str, ...]] = {}


def _stored_attributes(cls: type) -> tuple[str, ...]:
    """The attributes an exception class keeps in slots and C-level fields, along its MRO."""
    found = _STORED.get(cls)
    if found is None:
        names: list[str] = []
        for klass in cls.__mro__:
            for name, attr in vars(klass).items():
                stored = isinstance(attr, types.MemberDescriptorType | types.GetSetDescriptorType)
                if stored and name not in _OWN and name not in names and name != "__weakref__":
                    names.append(name)
        found = _STORED[cls] = tuple(names)
    return found


#: Thread -> the flight it waits on, for finding wait cycles across threads: thread A leads
#: key a and waits on key b, which thread B leads while it waits on key a.
_WAITING: dict[int, _Flight] = {}


def _waits_on(owner: int, me: int) -> bool:
    """Whether the thread ``owner`` waits, through a chain of flights, on thread ``me``.

    Each waiter registers before it looks, so of two threads closing a circle at once the
    second sees the first.
    """
    for _ in range(64):
        if owner == me:
            return True
        waited = _WAITING.get(owner)
        if waited is None or not waited.done.locked():
            # Not waiting, or waiting on a flight that has ended and will wake it.
            return False
        owner = waited.owner
    return False


def _picked(cfg: CacheConfig, binder: Binder, ctx: Context) -> tuple[int, ...]:
    """The positions of the parameters that make the key (``cache.key``, else all)."""
    names = binder.names
    if cfg.key is None:
        return tuple(range(len(names)))
    ctx.check_parameters(cfg.key, "cache.key")
    return tuple(names.index(k) for k in cfg.key)


def make_key_function(
    cfg: CacheConfig, binder: Binder, ctx: Context
) -> Callable[[tuple[Any, ...], dict[str, Any]], Hashable]:
    """``(args, kwargs) -> key`` from the bound arguments (defaults applied) in ``cfg.key``."""
    names = binder.names
    picked = _picked(cfg, binder, ctx)
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

    # One plain positional parameter: its one argument is the key. Only for a signature
    # where one positional argument binds to it (not ``*args``, not keyword-only).
    if binder.plain_arity == 1 and all_args:

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


_ONE_SHOT = (Iterator, Awaitable, AsyncIterator)


def _refuse_one_shot(ctx: Context, value: Any) -> None:
    """Raise ``TypeError`` for a value that can be consumed once: a hit would hand it out spent."""
    if not isinstance(value, _ONE_SHOT):
        return
    kind = type(value).__name__
    if asyncio.iscoroutine(value) or hasattr(value, "gi_frame"):
        # Never started: close it rather than leave "coroutine was never awaited" behind.
        value.close()  # type: ignore[union-attr]
    hint = (
        "make it an `async def` (guardrails awaits it and caches the result)"
        if isinstance(value, Awaitable)
        else "return the data itself (a list, a tuple, an array)"
    )
    raise TypeError(
        f"policy {ctx.policy!r} ({ctx.qualname}): cannot cache the {kind} it returned, which "
        f"can be consumed only once; {hint}, or remove guardrails.policies.{ctx.policy}.cache"
    )


def _shared_level(cfg: CacheConfig, ctx: Context, store: Store) -> Any:
    """The Redis level for ``backend: redis`` (``None`` for ``memory``); never connects."""
    if cfg.backend != "redis":
        store.shared = None
        return None
    url = cfg.url or ctx.redis_url
    if url is None:
        raise PolicyConfigError(
            [
                (
                    f"guardrails.policies.{ctx.policy}.cache.url",
                    "backend: redis needs a Redis server: set cache.url, the top-level "
                    "redis_url, or the environment variable $GUARDRAILS_REDIS_URL "
                    "(a URL like redis://localhost:6379/0)",
                )
            ]
        )
    # guardrails.redis.cache (and redis-py) only when a policy asks for it.
    _l2 = integration(ctx, "cache.backend", "cache")

    clock = ctx.clock
    # Values in Redis carry a wall-clock time (``time.time()``, comparable across
    # machines); on a fake clock, its time.
    wall = time.time if isinstance(clock, SystemClock) else clock.monotonic
    level = _l2.SharedLevel(
        url=url,
        depends_on=_depends_on(cfg, ctx, store),
        policy=ctx.policy,
        qualname=ctx.qualname,
        namespace=cfg.namespace if cfg.namespace is not None else ctx.policy,
        version=cfg.version,
        ttl=cfg.ttl,
        stale_for=cfg.stale_for,
        serializer=cfg.serializer,
        secret=cfg.secret.get_secret_value() if cfg.secret is not None else None,
        redis_timeout=cfg.redis_timeout,
        expiry=_l2.lock_expiry(cfg.lock_timeout, ctx.policy_blocks),
        wall=wall,
        redis_error=ctx.counters.redis_error,
        logger=ctx.logger,
    )
    store.shared = level
    return level


def _depends_on(cfg: CacheConfig, ctx: Context, store: Store) -> str:
    """What a stored value depends on besides the values of its key's arguments, the same
    in every process: which parameters (by name) make the key, and the ``validate.output``
    below the cache (a value coerced by one output type is not the value another gives).
    Part of every Redis key's digest, so that a config reload or another release of the
    function (``cache.key`` changed, parameters renamed or reordered, another output type)
    never reads what the other settings stored."""
    names = ctx.binder.names
    picked = tuple(names[i] for i in _picked(cfg, ctx.binder, ctx))
    output = store.settings[4]
    if output is None:
        shown = ""
    elif isinstance(output, type) or not hasattr(output, "model_dump"):
        from guardrails._types import type_text

        shown = type_text(output)
    else:  # checks (a model instance): their fields
        shown = f"{type(output).__qualname__}{output.model_dump(mode='json')!r}"
    return f"key={picked!r};output={shown};closure={_hidden_inputs(ctx, ctx.function)}"


def _plain(value: Any, depth: int = 0) -> bool:
    """An immutable value of a plain type (its key never changes, in any process)."""
    kind = type(value)
    if kind in ATOMIC or kind is float or kind is complex:
        return True
    if (kind is tuple or kind is frozenset) and depth < 8:
        return all(_plain(v, depth + 1) for v in value)
    return False


def _hidden_inputs(ctx: Context, fn: Any) -> str:
    """The digests of what a guarded callable computes from besides its arguments, where
    they are plain immutable values: a closure's variables (a factory's ``make(n)`` gives
    functions of one qualified name), a ``functools.partial``'s arguments, a bound method's
    instance. Anything else (a mutable object, an arbitrary instance) is not part of the
    key: ``?`` in its place."""
    digest = integration(ctx, "cache.backend", "digest").digest
    found: list[str] = []

    def add(value: Any) -> None:
        found.append(digest(key_of(value)) if _plain(value) else "?")

    for _ in range(16):  # partials of partials, methods of partials: a bounded walk
        if isinstance(fn, functools.partial):
            for value in fn.args:
                add(value)
            for name in sorted(fn.keywords):
                found.append(name)
                add(fn.keywords[name])
            fn = fn.func
        elif isinstance(fn, types.MethodType):
            add(fn.__self__)
            fn = fn.__func__
        else:
            break
    code = getattr(fn, "__code__", None)
    if code is not None and "<lambda>" in getattr(fn, "__qualname__", ""):
        # Every lambda of a module has one qualified name: tell them apart by their code.
        body = hashlib.blake2b(code.co_code, digest_size=8).hexdigest()
        found.append(f"{code.co_firstlineno}:{body}")
    for cell in getattr(fn, "__closure__", None) or ():
        try:
            value = cell.cell_contents
        except ValueError:  # not set yet
            found.append("-")
            continue
        add(value)
    return ",".join(found)


def _redis_key_function(
    cfg: CacheConfig, ctx: Context, level: Any
) -> Callable[[Hashable, tuple[Any, ...], dict[str, Any]], str]:
    """``(key, args, kwargs) -> Redis key``; a ``TypeError`` naming the argument whose key
    cannot be the same in every process (an object keyed by its own ``__hash__``)."""
    found_digest = integration(ctx, "cache.backend", "digest")
    Unshareable, digest = found_digest.Unshareable, found_digest.digest
    binder = ctx.binder
    picked = _picked(cfg, binder, ctx)
    key_for = level.key_for

    def redis_key(key: Hashable, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        try:
            return key_for(key)  # type: ignore[no-any-return]
        except Unshareable as exc:
            bound = binder.values(args, kwargs)
            for i in picked:
                try:
                    digest(key_of(bound[i]))
                except Unshareable as found:
                    raise TypeError(
                        f"policy {ctx.policy!r} ({ctx.qualname}): argument "
                        f"{binder.names[i]!r} cannot be part of a Redis cache key ({found}): "
                        "it is keyed by its own __hash__, which differs between processes; "
                        "list the arguments that identify the call in "
                        f"guardrails.policies.{ctx.policy}.cache.key, or pass a value of a "
                        "plain type (str, int, tuple, an array, ...)"
                    ) from None
            raise TypeError(
                f"policy {ctx.policy!r} ({ctx.qualname}): cannot make a Redis cache key ({exc})"
            ) from None

    return redis_key


def _answered(
    got: Any,
    level: Any,
    store: Store,
    key: Hashable,
    generation: int,
    stale: Any,
    cfg: CacheConfig,
) -> tuple[Any, Any]:
    """What a leader makes of Redis's answer ``got`` (``level.begin``): ``(lease, _AGAIN)``
    when this caller now holds the key's lock and computes, or ``(None, value)`` when Redis
    had the value (kept in process for what is left of its freshness when found fresh).
    With the lock and a stale value in Redis that this process did not have (``stale`` is
    ``_AGAIN``), the stale value is served here too while this caller recomputes, for what
    is left of its stale window."""
    if got[0] == level.LEASE:
        if stale is _AGAIN and got[2] is not level.NONE:
            left = cfg.stale_for + got[2][1]
            with store.lock:
                if store.generation == generation and left > 0:
                    store.cache.put(key, got[2][0], 0.0, left)
        return got[1], _AGAIN
    value = got[1]
    if got[0] == level.FOUND:
        with store.lock:
            store.replay()
            if store.generation == generation:
                store.cache.put(key, value, got[2])
    return None, value


def build(cfg: CacheConfig, inner: Inner, ctx: Context, store: Store) -> Inner:
    """The sync cache layer around ``inner``, keeping entries in ``store`` (and Redis)."""
    make_key = make_key_function(cfg, ctx.binder, ctx)
    level = _shared_level(cfg, ctx, store)
    if level is not None:
        redis_key = _redis_key_function(cfg, ctx, level)
    inflight = store.inflight
    hit, miss = ctx.counters.cache_hit, ctx.counters.cache_miss
    shared_hit = ctx.counters.shared_cache_hit
    view_get, touch, now = store.view.get, store.touched.append, store.timer
    one_arg = cfg.key is None and ctx.binder.plain_arity == 1
    get_ident = threading.get_ident
    leading = _LEADING

    def cache_layer(args: tuple[Any, ...], kwargs: dict[str, Any], info: Any) -> Any:
        # The hit path, kept flat and lock-free: it is most of the calls of a cached function.
        if one_arg and not kwargs and len(args) == 1:
            arg = args[0]
            kind = type(arg)
            # What key_of gives, inlined; a float only when it is neither a zero nor a NaN.
            if kind in ATOMIC or (kind is float and arg and arg == arg):  # noqa: PLR0124
                key: Hashable = (kind, arg)
            else:
                key = make_key(args, kwargs)
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
        stale: Any = _AGAIN
        while True:
            with store.lock:
                store.replay()
                entry = store.cache.live(key)
                flight: _Flight | None = inflight.get(key)
                if entry is not None:
                    if now() < entry[1] or (
                        flight is not None
                        and flight.owner != get_ident()
                        and weakref.ref(flight) not in leading.get()
                    ):
                        # Fresh; or stale while another caller recomputes it: serve it.
                        hit()
                        if info is not None:
                            info[1] = True
                        return entry[0]
                    stale = entry[0]
                if flight is None:
                    flight = inflight[key] = _Flight()
                    break
                if flight.owner == get_ident() or weakref.ref(flight) in leading.get():
                    # This call stack is computing this key further up.
                    flight = None
                    break
                flight.waiters += 1
            me = get_ident()
            outer = _WAITING.get(me)  # a signal handler's call may wait inside another wait
            _WAITING[me] = flight
            try:
                if _waits_on(flight.owner, me):
                    # The leader is (through other threads) waiting on this thread: waiting
                    # here would close the circle. Compute as the plain function would.
                    flight = None
                    break
                with flight.done:
                    pass
            finally:
                if outer is None:
                    _WAITING.pop(me, None)
                else:
                    _WAITING[me] = outer
            if flight.error is not None:
                error = flight.error
                twin = _for_waiter(error)  # type: ignore[arg-type]
                try:
                    if twin is error:
                        raise error
                    raise twin from error
                finally:
                    # The traceback holds this frame: drop what would hold the traceback.
                    del error, twin, flight
            if flight.value is not _AGAIN:
                hit()
                if info is not None:
                    info[1] = True
                return flight.value
        generation = store.generation
        token = leading.set((*leading.get(), weakref.ref(flight))) if flight is not None else None
        lease: Any = None
        try:
            if level is not None and flight is not None:
                rkey = redis_key(key, args, kwargs)
                stack = leading.get()
                # This call stack leads rkey further up (through another wrapper of the
                # function, or a chain compiled since): never wait on its own Redis lock.
                got = None if rkey in stack else level.begin(rkey)
                leading.set((*stack, rkey))  # undone with `token` below
                if got is not None:
                    lease, value = _answered(got, level, store, key, generation, stale, cfg)
                    if lease is None:
                        hit()
                        shared_hit()
                        if info is not None:
                            info[1] = True
                        flight.value = value
                        return value
            miss()
            value = inner(args, kwargs, info)
            _refuse_one_shot(ctx, value)
        except Exception as exc:
            if lease is not None:
                level.abandon(lease)
            if flight is not None:
                flight.error = exc
            raise
        except BaseException:
            if lease is not None:
                level.abandon(lease)
            raise
        else:
            if flight is not None:
                flight.value = value
            with store.lock:
                store.replay()
                if store.generation == generation:
                    store.cache[key] = value
            if lease is not None:
                try:
                    level.finish(lease, value)
                except BaseException:
                    level.abandon(lease)  # interrupted while storing: free the lock
                    raise
            return value
        finally:
            if token is not None:
                leading.reset(token)
            if flight is not None:
                with store.lock:
                    if inflight.get(key) is flight:
                        del inflight[key]
                flight.done.release()
                flight = None  # the traceback holds this frame, the flight holds the error

    return cache_layer


def build_async(cfg: CacheConfig, inner: AsyncInner, ctx: Context, store: Store) -> AsyncInner:
    """The async cache layer: waiters on the same event loop share the leader's result."""
    make_key = make_key_function(cfg, ctx.binder, ctx)
    level = _shared_level(cfg, ctx, store)
    if level is not None:
        redis_key = _redis_key_function(cfg, ctx, level)
    inflight = store.inflight
    hit, miss = ctx.counters.cache_hit, ctx.counters.cache_miss
    shared_hit = ctx.counters.shared_cache_hit
    view_get, touch, now = store.view.get, store.touched.append, store.timer
    leading = _LEADING

    async def cache_layer(args: tuple[Any, ...], kwargs: dict[str, Any], info: Any) -> Any:
        key = make_key(args, kwargs)
        entry = view_get(key)
        if entry is not None and now() < entry[1]:
            touch(key)
            hit()
            if info is not None:
                info[1] = True
            return entry[0]
        return await compute(key, args, kwargs, info)

    async def compute(
        key: Hashable, args: tuple[Any, ...], kwargs: dict[str, Any], info: Any
    ) -> Any:
        loop = asyncio.get_running_loop()
        mine: asyncio.Future[Any] | None = None
        twin: Exception | None = None
        stale: Any = _AGAIN
        while True:
            with store.lock:
                store.replay()
                entry = store.cache.live(key)
                found: asyncio.Future[Any] | None = inflight.get(key)
                if entry is not None:
                    if now() < entry[1] or (
                        found is not None and weakref.ref(found) not in leading.get()
                    ):
                        # Fresh; or stale while another caller recomputes it: serve it.
                        hit()
                        if info is not None:
                            info[1] = True
                        return entry[0]
                    stale = entry[0]
                if found is None:
                    mine = inflight[key] = loop.create_future()
                    break
                if found.get_loop() is not loop or weakref.ref(found) in leading.get():
                    # Another loop's flight cannot be awaited here; one this task leads
                    # is a re-entry: compute without waiting on ourselves.
                    break
            try:
                # shield: a waiter's cancellation must not cancel the leader's future.
                value = await asyncio.shield(found)
            except Exception as exc:
                twin = _for_waiter(exc)
                if twin is exc:
                    raise
                raise twin from exc
            finally:
                found = twin = None  # an exception's traceback holds this frame
            if value is not _AGAIN:
                hit()
                if info is not None:
                    info[1] = True
                return value
        found = None
        generation = store.generation
        token = leading.set((*leading.get(), weakref.ref(mine))) if mine is not None else None
        lease: Any = None
        try:
            if level is not None and mine is not None:
                rkey = redis_key(key, args, kwargs)
                stack = leading.get()
                got = None if rkey in stack else await level.abegin(rkey)
                leading.set((*stack, rkey))  # undone with `token` below
                if got is not None:
                    lease, value = _answered(got, level, store, key, generation, stale, cfg)
                    if lease is None:
                        hit()
                        shared_hit()
                        if info is not None:
                            info[1] = True
                        if not mine.done():
                            mine.set_result(value)
                        return value
            miss()
            value = await inner(args, kwargs, info)
            _refuse_one_shot(ctx, value)
        except Exception as exc:
            if lease is not None:
                await level.aabandon(lease)
            if mine is not None and not mine.done():
                mine.set_exception(exc)
                mine.exception()  # marks it retrieved: no "never retrieved" warning
            raise
        except BaseException:
            if lease is not None:
                # Cancelled (or interrupted): release in a task of its own, which a second
                # cancellation of this one cannot stop.
                level.release_later(lease)
            if mine is not None and not mine.done():
                mine.set_result(_AGAIN)
            raise
        else:
            with store.lock:
                store.replay()
                if store.generation == generation:
                    store.cache[key] = value
            if mine is not None and not mine.done():
                mine.set_result(value)  # before storing in Redis, which may be cancelled
            if lease is not None:
                try:
                    await level.afinish(lease, value)
                except BaseException:
                    level.release_later(lease)  # cancelled while storing: free the lock
                    raise
            return value
        finally:
            if token is not None:
                leading.reset(token)
            if mine is not None:
                with store.lock:
                    if inflight.get(key) is mine:
                        del inflight[key]
                mine = None  # the traceback holds this frame, the future holds the error

    return cache_layer


def clear_shared(stores: list[Store]) -> None:
    """Delete the Redis keys of ``stores`` (those with ``backend: redis``); the first Redis
    error, raised after every store was tried, as ``RuntimeError`` naming the function."""
    failures: list[str] = []
    first: BaseException | None = None
    for store in stores:
        level = store.shared
        if level is None:
            continue
        try:
            level.clear_shared()
        except Exception as exc:
            first = first or exc
            failures.append(f"{level.qualname} at {level.server.shown}: {exc}")
    if first is not None:
        raise RuntimeError(
            "clear_caches(shared=True) could not delete the Redis keys of " + "; ".join(failures)
        ) from first
