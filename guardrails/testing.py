"""Helpers for testing code that uses guardrails (and guardrails itself).

- ``reset()`` forgets the configuration, the statistics and every cache.
- ``fake_clock()`` makes retries, TTLs and deadlines run on a clock you move by hand.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from guardrails._clock import Clock, FakeClock, SystemClock
from guardrails._core import SLOTS, recompile
from guardrails._state import STATE
from guardrails.layers.memory import forget_collections, forget_crossings

__all__ = ["FakeClock", "fake_clock", "reset"]


def reset() -> None:
    """Back to the state at import: not configured, no statistics, empty caches, real time."""
    with STATE.lock:
        STATE.settings = None
        STATE.hydra_job = None
        STATE.counters.clear()
        STATE.shared.clear()
        STATE.clock = SystemClock()
        for slot in list(SLOTS):
            slot.reset()
    forget_collections()
    forget_crossings()


@contextmanager
def fake_clock(clock: FakeClock | None = None) -> Iterator[FakeClock]:
    """Run guarded functions on a fake clock: waits return at once and advance it.

    Chains are rebuilt on entry and exit, so caches start empty on the new clock.
    """
    clock = clock or FakeClock()
    with STATE.lock:
        previous: Clock = STATE.clock
        STATE.clock = clock
        recompile()
    forget_collections()
    try:
        yield clock
    finally:
        with STATE.lock:
            STATE.clock = previous
            recompile()
        forget_collections()
