"""The one piece of global state: the configuration in force, the counters, layer state.

Everything here is read and written under ``STATE.lock``, except what the call path reads:
each guarded function's compiled chain, which is swapped whole (one reference) by
``configure()``, so a call in flight finishes on the chain it started with.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from guardrails._clock import Clock, SystemClock
from guardrails._forksafe import ForkSafeLock
from guardrails._stats import PolicyCounters

if TYPE_CHECKING:
    from guardrails._policy import Settings


class State:
    """Global state; ``reset()`` is for tests (``guardrails.testing.reset``)."""

    def __init__(self) -> None:
        self.lock = ForkSafeLock(threading.RLock)
        self.settings: Settings | None = None
        self.counters: dict[str, PolicyCounters] = {}
        self.clock: Clock = SystemClock()
        #: The Hydra job the configuration was last installed in (see ``configure()``).
        self.hydra_job: tuple[str, ...] | None = None
        #: Per-policy layer state (breakers, buckets, bulkheads, budgets) in force:
        #: ``(policy, kind) -> (settings, object)``; see ``Context.shared``.
        self.shared: dict[tuple[str, str], tuple[Any, Any]] = {}
        #: The span step of a registered tracer (``guardrails.metrics.otel``): builders
        #: ``(build, build_async)`` taking ``(log_config, inner, ctx)``, put in the chain
        #: of each policy with ``log.trace: true``. ``None``: no tracer, no span step.
        self.spans: tuple[Callable[..., Any], Callable[..., Any]] | None = None

    def counters_for(self, name: str) -> PolicyCounters:
        with self.lock:
            found = self.counters.get(name)
            if found is None:
                found = self.counters[name] = PolicyCounters(name)
            return found


STATE = State()


#: Every per-policy state object ``Context.shared`` made and still alive: the ones in force,
#: and the ones a ``configure()`` replaced that a call in flight still uses (a retry's next
#: attempt takes its tokens from the bucket its chain was compiled with).
MADE: weakref.WeakSet[Any] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # Threads of the parent that held a bulkhead slot, a lock, or waited on a breaker do not
    # exist in the child: each state object starts the child clean.
    for shared in list(MADE):
        renew = getattr(shared, "after_fork_in_child", None)
        if renew is not None:
            renew()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
