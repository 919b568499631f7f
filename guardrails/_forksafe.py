"""Locks a forked child gets anew.

A child of ``fork`` has only the thread that forked. A lock another thread of the parent held
at that moment stays held in the child forever, so every lock guardrails keeps in a module,
the global state's included, is one of these, replaced in the child. (A cache store renews its
lock in its own at-fork hook, which also forgets the calls in flight.)
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable
from typing import Any


class ForkSafeLock:
    """A lock for ``with`` blocks (a ``threading.Lock``, or what ``factory`` makes: an
    ``RLock``), replaced by a new one in a forked child."""

    __slots__ = ("__weakref__", "_entered", "_factory", "_lock")

    def __init__(self, factory: Callable[[], Any] = threading.Lock) -> None:
        self._factory = factory
        self._lock = factory()
        #: Per thread, the locks its open ``with`` blocks acquired: a block releases the lock
        #: it took, even if a fork inside it (in the child) renewed ``_lock`` meanwhile.
        self._entered = threading.local()
        _ALL.add(self)

    def __enter__(self) -> bool:
        lock = self._lock
        lock.acquire()
        entered = getattr(self._entered, "locks", None)
        if entered is None:
            entered = self._entered.locks = []
        entered.append(lock)
        return True

    def __exit__(self, *exc: Any) -> None:
        self._entered.locks.pop().release()

    def _renew(self) -> None:
        self._lock = self._factory()


_ALL: weakref.WeakSet[ForkSafeLock] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for lock in list(_ALL):
        lock._renew()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
