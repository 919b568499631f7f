"""The ``bulkhead`` layer: caps the attempts of a policy running at once, sync and async
together.

Per policy, a pool of free-slot tokens: a free slot is taken with one atomic ``deque.pop()``
and given back with an ``append()``, no lock (about a fifth of a ``BoundedSemaphore``
wrapper's cost). When the slots are all taken, an attempt may wait up to ``max_wait`` in one
FIFO queue shared by threads and tasks, ordered by a plain lock that is held for a few
bytecodes and never across a wait: a freed slot is handed to the first waiter directly, so
waiters are served in order (a newcomer may only take a slot in the instant between its
release and its hand-over, as with any semaphore). A thread waits on a lock of its own; a
task on a future of its own loop, resolved with ``call_soon_threadsafe`` (the slot may be
freed by a thread), so waiting never blocks an event loop. Whether a waiter got its slot is
decided under that lock alone: a waiter whose wait ends (timed out, cancelled) at the moment
a slot is handed to it keeps the slot if it goes on, or passes it on if it does not.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import weakref
from collections import deque
from itertools import repeat
from typing import Any

from pydantic import Field, StrictBool, StrictInt

from guardrails._errors import BulkheadFull
from guardrails._redis import Namespace, RedisTimeout, shared_module
from guardrails._types import AsyncInner, Block, Context, Duration, Inner


class BulkheadConfig(Block):
    """``bulkhead:`` — at most ``max_concurrent`` attempts of the policy at once (sync and
    async calls together); a full bulkhead makes an attempt wait up to ``max_wait`` for a
    slot (default 0: refuse at once) before it raises ``BulkheadFull``.

    ``max_wait`` is real time, even under ``guardrails.testing.fake_clock()``: a slot is
    freed by another thread or task finishing, which no fake clock can bring about.
    """

    #: (A million: the free slots are a deque of that many tokens, 8 bytes each; a billion
    #: took 8 GB at configure(), 2**63 raised OverflowError.)
    max_concurrent: StrictInt = Field(ge=1, le=1_000_000)
    OFF_DEFAULTS = {"max_concurrent": 1}  # noqa: RUF012 (a ClassVar of Block)
    max_wait: Duration = 0.0
    #: The slots in Redis (``redis_url``): at most ``max_concurrent`` across every process.
    shared: StrictBool = False
    redis_timeout: RedisTimeout = 0.05
    namespace: Namespace = None
    #: Shared: a slot not given back within this (its process was killed) comes back.
    #: Default: the policy's ``timeout.attempt`` (else ``timeout.total``) plus 1s, else 60s.
    lease: Duration | None = Field(default=None, gt=0)


class _ThreadWaiter:
    """A thread waiting for a slot: it blocks on ``wake``, a lock taken at creation."""

    __slots__ = ("granted", "wake")

    def __init__(self) -> None:
        self.granted = False
        self.wake = threading.Lock()
        self.wake.acquire()

    def hand_slot(self) -> bool:
        self.granted = True
        self.wake.release()
        return True


class _TaskWaiter:
    """A task waiting for a slot: it awaits ``future``, resolved on its own loop."""

    __slots__ = ("future", "granted", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.granted = False
        self.loop = loop
        self.future: asyncio.Future[None] = loop.create_future()

    def hand_slot(self) -> bool:
        try:
            self.loop.call_soon_threadsafe(_resolve, self.future)
        except RuntimeError:  # its loop is closed: the task will never run again
            return False
        self.granted = True
        return True


class _Debt:
    """Slots a shrunk bulkhead still has to retire: attempts of the larger size were running
    when it shrank. It queues first among the waiters, so each slot freed goes to it (and is
    dropped) until it is paid, before any waiter runs."""

    __slots__ = ("owed", "waiters")
    granted = False

    def __init__(self, owed: int, waiters: deque[Any]) -> None:
        self.owed = owed
        self.waiters = waiters

    def hand_slot(self) -> bool:
        """Under the lock, just taken off the queue: the slot is retired."""
        self.owed -= 1
        if self.owed:
            self.waiters.appendleft(self)
        return True


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Slots:
    """The slots of one policy: a pool of free-slot tokens and a queue of waiters.

    ``free`` is a deque of ``None`` tokens: taking a slot is one ``pop()`` and freeing one an
    ``append()``, each atomic (deques are thread-safe), so the common case takes no lock.
    ``lock`` orders the waiters: a waiter queues itself and then looks for a token under it,
    and whoever frees a slot while someone waits hands tokens over under it, so a waiter
    never sleeps through a freed slot.
    """

    __slots__ = ("__weakref__", "capacity", "debt", "free", "lock", "waiters")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.free: deque[None] = deque(repeat(None, capacity))
        self.lock = threading.Lock()
        self.waiters: deque[_ThreadWaiter | _TaskWaiter | _Debt] = deque()
        self.debt: _Debt | None = None
        _SLOTS.add(self)

    def resize(self, capacity: int) -> None:
        """Make it ``capacity`` slots, counting the attempts running now: a bigger pool frees
        the new slots at once (to the waiters first); a smaller one retires free slots now
        and the rest as the running attempts end, so no more than the larger of the two
        sizes ever run, and then no more than the new one."""
        with self.lock:
            change, self.capacity = capacity - self.capacity, capacity
            debt, free = self.debt, self.free
            if change < 0:
                owed = -change
                while owed:
                    try:
                        free.pop()
                    except IndexError:
                        break
                    owed -= 1
                if owed:
                    if debt is not None and debt.owed:
                        debt.owed += owed
                    else:
                        self.debt = _Debt(owed, self.waiters)
                        self.waiters.appendleft(self.debt)
            elif change > 0:
                if debt is not None and debt.owed:
                    paid = min(change, debt.owed)
                    debt.owed -= paid
                    change -= paid
                    if not debt.owed:
                        self._leave(debt)
                free.extend(repeat(None, change))
                self._hand_over()

    def after_fork_in_child(self) -> None:
        """In a forked child: another thread of the parent may have held ``lock`` at the fork,
        and the waiters were the parent's threads and tasks, which are not in the child. An
        attempt of the forking thread still releases into these slots: it must not wait on
        that lock forever, nor hand the slot to a waiter that does not exist."""
        self.lock = threading.Lock()
        self.waiters.clear()
        self.debt = None

    @property
    def in_use(self) -> int:
        """Slots taken (by attempts running, or handed to waiters about to run)."""
        debt = self.debt
        return self.capacity - len(self.free) + (debt.owed if debt is not None else 0)

    def release(self) -> None:
        """Free a slot while someone waits: it goes to the first waiter."""
        with self.lock:
            self.free.append(None)
            self._hand_over()

    def hand_over(self) -> None:
        """A slot was freed (``append``) and then a waiter seen: hand the tokens over."""
        with self.lock:
            self._hand_over()

    def _hand_over(self) -> None:
        free, waiters = self.free, self.waiters
        while waiters:
            try:
                free.pop()
            except IndexError:  # an attempt not yet queued took it first
                return
            if not waiters.popleft().hand_slot():
                free.append(None)

    def _enqueue(self, waiter: _ThreadWaiter | _TaskWaiter) -> bool:
        """Under the lock: queue ``waiter``, then hand out any free slot in queue order (one
        freed since this attempt found none goes to an earlier waiter first). True: ``waiter``
        got one at once."""
        self.waiters.append(waiter)
        self._hand_over()
        return waiter.granted

    def _settle(self, waiter: _ThreadWaiter | _TaskWaiter) -> bool:
        """Under the lock, after a wait ended: whether ``waiter`` holds a slot (else it
        leaves the queue)."""
        if waiter.granted:
            return True
        self._leave(waiter)
        return False

    def _give_up(self, waiter: _ThreadWaiter | _TaskWaiter) -> None:
        """Under the lock: ``waiter`` stops waiting without running; a slot handed to it at
        that moment goes on to the next waiter."""
        if waiter.granted:
            self.free.append(None)
            self._hand_over()
        else:
            self._leave(waiter)

    def _leave(self, waiter: _ThreadWaiter | _TaskWaiter | _Debt) -> None:
        """Under the lock: ``waiter`` leaves the queue, unless it left it already: a task
        whose loop was closed is dropped when a slot is offered to it, and its coroutine is
        closed later (``GeneratorExit`` when it is collected) with no slot to give back."""
        with contextlib.suppress(ValueError):
            self.waiters.remove(waiter)

    def wait(self, timeout: float) -> bool:
        """A thread waits up to ``timeout`` seconds (real time) for a slot."""
        waiter = _ThreadWaiter()
        with self.lock:
            if self._enqueue(waiter):
                return True
        try:
            waiter.wake.acquire(timeout=timeout)
        except BaseException:  # interrupted (KeyboardInterrupt, a signal handler's error)
            with self.lock:
                self._give_up(waiter)
            raise
        with self.lock:
            return self._settle(waiter)

    async def wait_async(self, timeout: float) -> bool:
        """A task waits up to ``timeout`` seconds (real time) for a slot."""
        loop = asyncio.get_running_loop()
        waiter = _TaskWaiter(loop)
        with self.lock:
            if self._enqueue(waiter):
                return True
        expiry = loop.call_later(timeout, _resolve, waiter.future)
        try:
            await waiter.future
        except BaseException:  # cancelled while waiting: a slot handed over meanwhile is passed on
            with self.lock:
                self._give_up(waiter)
            raise
        finally:
            expiry.cancel()
        with self.lock:
            return self._settle(waiter)


class Bulkhead:
    """A policy's bulkhead (the ``"bulkhead"`` shared state): ``capacity`` slots, in a pool
    handed on from the bulkhead it replaces (see ``in_force``)."""

    __slots__ = ("__weakref__", "capacity", "slots")

    def __init__(self, capacity: int, slots: Slots | None = None) -> None:
        self.capacity = capacity
        self.slots = Slots(capacity) if slots is None else slots

    def in_force(self) -> None:
        """Its configure() is installed: the pool takes this size. Not before, so a
        configure() that fails leaves the pool as it was."""
        self.slots.resize(self.capacity)

    def after_fork_in_child(self) -> None:
        # The parent's other threads, which held slots or waited for one, do not exist in the
        # child: it starts with every slot free. Attempts in flight at the fork (the forking
        # thread's own) release into the old, forgotten slots (renewed by _after_fork_in_child).
        self.slots = Slots(self.slots.capacity)


#: Every pool of slots alive, the ones a ``configure()`` or a fork replaced included: an
#: attempt in flight releases into the pool it took its slot from.
_SLOTS: weakref.WeakSet[Slots] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for slots in list(_SLOTS):
        slots.after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _bulkhead(cfg: BulkheadConfig, ctx: Context) -> Bulkhead:
    capacity = cfg.max_concurrent
    # Keyed on the capacity alone: a configure() that changes only max_wait keeps the
    # bulkhead. One that changes max_concurrent makes a new one on the same pool of slots,
    # resized when it comes into force: a new, empty pool would let the attempts still
    # running in the old one run beside a full new one (4 then 3 let 7 run; a configure()
    # flapping between two sizes let ever more run).
    previous = ctx.in_force("bulkhead")
    pool = previous.slots if previous is not None else None

    def renewed() -> Bulkhead:
        return Bulkhead(capacity, pool)

    bulkhead: Bulkhead = ctx.shared("bulkhead", capacity, renewed)
    return bulkhead


#: ``threading.Lock.acquire`` refuses longer timeouts; a wait this long is endless anyway.
_LONGEST_WAIT = min(threading.TIMEOUT_MAX, 365 * 86400.0)


def build(cfg: BulkheadConfig, inner: Inner, ctx: Context) -> Inner:
    """The sync bulkhead layer around ``inner``: one slot per attempt (a lease in Redis with
    ``shared: true``, a slot of this process's own while Redis is away)."""
    if cfg.shared:
        shared = shared_module(ctx, "bulkhead")
        layer: Inner = shared.bulkhead(cfg, inner, _build_local(cfg, inner, ctx), ctx)
        return layer
    return _build_local(cfg, inner, ctx)


def _build_local(cfg: BulkheadConfig, inner: Inner, ctx: Context) -> Inner:
    bulkhead = _bulkhead(cfg, ctx)
    max_wait = min(cfg.max_wait, _LONGEST_WAIT)
    rejected, policy, qualname = ctx.counters.bulkhead_reject, ctx.policy, ctx.qualname
    capacity = cfg.max_concurrent

    def bulkhead_layer(args: tuple[Any, ...], kwargs: dict[str, Any], info: Any) -> Any:
        slots = bulkhead.slots
        free, waiters = slots.free, slots.waiters
        try:
            free.pop()
        except IndexError:
            full = True
        else:
            full = False
        if full and not (max_wait and slots.wait(max_wait)):
            rejected()
            raise BulkheadFull(policy, qualname, capacity)
        try:
            return inner(args, kwargs, info)
        finally:
            if waiters:
                slots.release()
            else:
                free.append(None)
                if waiters:  # queued meanwhile, after failing to find this slot
                    slots.hand_over()

    return bulkhead_layer


def build_async(cfg: BulkheadConfig, inner: AsyncInner, ctx: Context) -> AsyncInner:
    """The async bulkhead layer around ``inner``: waits for a slot without blocking the loop."""
    if cfg.shared:
        shared = shared_module(ctx, "bulkhead")
        local = _build_local_async(cfg, inner, ctx)
        layer: AsyncInner = shared.bulkhead_async(cfg, inner, local, ctx)
        return layer
    return _build_local_async(cfg, inner, ctx)


def _build_local_async(cfg: BulkheadConfig, inner: AsyncInner, ctx: Context) -> AsyncInner:
    bulkhead = _bulkhead(cfg, ctx)
    max_wait = min(cfg.max_wait, _LONGEST_WAIT)
    rejected, policy, qualname = ctx.counters.bulkhead_reject, ctx.policy, ctx.qualname
    capacity = cfg.max_concurrent

    async def bulkhead_layer(args: tuple[Any, ...], kwargs: dict[str, Any], info: Any) -> Any:
        slots = bulkhead.slots
        free, waiters = slots.free, slots.waiters
        try:
            free.pop()
        except IndexError:
            full = True
        else:
            full = False
        if full and not (max_wait and await slots.wait_async(max_wait)):
            rejected()
            raise BulkheadFull(policy, qualname, capacity)
        try:
            return await inner(args, kwargs, info)
        finally:
            if waiters:
                slots.release()
            else:
                free.append(None)
                if waiters:  # queued meanwhile, after failing to find this slot
                    slots.hand_over()

    return bulkhead_layer


__all__ = ["Bulkhead", "BulkheadConfig", "Slots", "build", "build_async"]
