"""The ``memory`` layer: refuses to start work while the process is over its memory budget.

Resident memory is read from a kept handle on ``/proc/self/statm`` (one ``pread``, about
half a microsecond; psutil elsewhere, about ten), reopened in a forked child. A reading is
reused for up to ``MAX_AGE`` (one millisecond): a process cannot fault in more than a few
megabytes in that time, and a hot function then pays a clock read, not a system call.
A reading over a limit is always taken afresh before anything is refused, and while a
function is over its ``soft_rss`` every call reads afresh, so a drop back under it is seen
(and the warning re-armed) however soon the next call comes.
"""

from __future__ import annotations

import contextlib
import gc
import os
import threading
from time import monotonic
from typing import Any

from pydantic import model_validator

from guardrails._errors import MemoryBudgetExceeded, _fmt_bytes
from guardrails._forksafe import ForkSafeLock
from guardrails._types import AsyncInner, Block, Context, Inner, MemorySize

#: At most one forced garbage collection per this many seconds, across all policies.
GC_INTERVAL = 1.0
#: How long a resident-memory reading is reused, in seconds.
MAX_AGE = 0.001


class MemoryConfig(Block):
    """``memory:`` — ``max_rss`` refuses calls above it; ``soft_rss`` warns once per crossing."""

    max_rss: MemorySize | None = None
    soft_rss: MemorySize | None = None

    @model_validator(mode="after")
    def _limits(self) -> MemoryConfig:
        if self.max_rss is None and self.soft_rss is None and self.enabled:
            raise ValueError("set max_rss, soft_rss or both (sizes like '2GiB' or '80%')")
        if self.max_rss is not None and self.soft_rss is not None and self.soft_rss > self.max_rss:
            raise ValueError(
                f"soft_rss ({_fmt_bytes(self.soft_rss)}) must not be above "
                f"max_rss ({_fmt_bytes(self.max_rss)})"
            )
        return self


class RssProbe:
    """Reads this process's resident set size cheaply; safe across ``os.fork()``."""

    def __init__(self) -> None:
        self._fd = -1
        self._pid = -1
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        self._psutil: Any = None
        self._lock = threading.Lock()
        self._last = (float("-inf"), 0)
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        # The child shares the parent's descriptor, which still names the parent's statm.
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._fd = -1
        self._psutil = None
        self._lock = threading.Lock()
        self._last = (float("-inf"), 0)

    def _open(self) -> None:
        with self._lock:
            if self._fd >= 0 or self._psutil is not None:
                return
            try:
                self._fd = os.open(f"/proc/{os.getpid()}/statm", os.O_RDONLY | os.O_CLOEXEC)
                self._pid = os.getpid()
            except OSError:
                import psutil

                self._psutil = psutil.Process()

    def rss(self) -> int:
        """Resident bytes, as read at most ``MAX_AGE`` ago."""
        now = monotonic()
        taken, value = self._last
        if now - taken < MAX_AGE:
            return value
        return self.read(now)

    def read(self, now: float | None = None) -> int:
        """Resident bytes now (a fresh reading)."""
        fd = self._fd
        value = -1
        if fd >= 0:
            try:
                value = int(os.pread(fd, 64, 0).split()[1]) * self._page
            except OSError:
                value = -1
        if value < 0:
            if self._psutil is not None:
                value = int(self._psutil.memory_info().rss)
            else:
                self._open()
                return self.read(now)
        self._last = (monotonic() if now is None else now, value)
        return value

    @property
    def pid(self) -> int:
        """The process the kept handle reads (for tests of the fork handling)."""
        return self._pid


PROBE = RssProbe()


class _Collections:
    """The rate limit on forced collections, shared by every policy."""

    __slots__ = ("last", "lock")

    def __init__(self) -> None:
        self.lock = ForkSafeLock()
        self.last = float("-inf")


_COLLECTIONS = _Collections()


def forget_collections() -> None:
    """Let the next refusal collect at once (the clock changed, or a test starts over)."""
    with _COLLECTIONS.lock:
        _COLLECTIONS.last = float("-inf")


def _collect_if_due(monotonic: Any) -> bool:
    with _COLLECTIONS.lock:
        now = monotonic()
        if now - _COLLECTIONS.last < GC_INTERVAL:
            return False
        _COLLECTIONS.last = now
    gc.collect()
    return True


class _Crossing:
    """Whether the process is over a policy's soft limit, shared by every function of the
    policy and kept across ``configure()`` while the limits stay: one warning per crossing,
    however many functions or compiled chains see it."""

    __slots__ = ("gate", "over_soft")

    def __init__(self, hard: int) -> None:
        self.over_soft = False
        #: A call whose first reading is above this goes through ``admit``: the hard limit
        #: normally, below any reading while over the soft limit (so each call reads afresh).
        self.gate = hard


_CROSSINGS: dict[tuple[str, int, int], _Crossing] = {}


def forget_crossings() -> None:
    """Forget which soft limits the process is over (a test starts over)."""
    _CROSSINGS.clear()


class _Guard:
    """The admission decision and the soft-limit warning of one compiled memory layer."""

    __slots__ = ("ctx", "hard", "soft", "state")

    def __init__(self, cfg: MemoryConfig, ctx: Context) -> None:
        self.ctx = ctx
        self.hard = cfg.max_rss if cfg.max_rss is not None else 1 << 62
        self.soft = cfg.soft_rss if cfg.soft_rss is not None else 1 << 62
        self.state = _CROSSINGS.setdefault((ctx.policy, self.hard, self.soft), _Crossing(self.hard))

    def admit(self, before: int) -> int:
        """The slow path of admission: refuse over the hard limit, and while over the soft
        limit take a fresh reading, re-arming the warning if memory is back under it."""
        rss = before if before > self.hard else PROBE.read()
        if rss > self.hard:
            rss = self.over_hard()
        if self.state.over_soft and rss <= self.soft:
            self.rearm()
        return rss

    def rearm(self) -> None:
        """Memory was seen back under the soft limit: the next crossing warns again."""
        self.state.over_soft = False
        self.state.gate = self.hard

    def over_hard(self) -> int:
        """Called when a reading is over the hard limit: collect once, look again, then refuse."""
        _collect_if_due(self.ctx.clock.monotonic)
        rss = PROBE.read()
        if rss > self.hard:
            self.ctx.counters.reject_memory()
            raise MemoryBudgetExceeded(self.ctx.policy, self.ctx.qualname, rss, self.hard)
        return rss

    def note(self, before: int, rss: int) -> None:
        """After a call whose readings differ, or while over the soft limit."""
        counters = self.ctx.counters
        growth = rss - before
        counters.max_rss_growth = max(counters.max_rss_growth, growth)
        if rss > self.soft:
            state = self.state
            if not state.over_soft:
                state.over_soft = True
                state.gate = -1
                self.ctx.logger.warning(
                    "%s: resident memory %s is over memory.soft_rss %s",
                    self.ctx.policy,
                    _fmt_bytes(rss),
                    _fmt_bytes(self.soft),
                    extra={"policy": self.ctx.policy, "function": self.ctx.qualname, "rss": rss},
                )
        elif self.state.over_soft:
            self.rearm()


def build(cfg: MemoryConfig, inner: Inner, ctx: Context) -> Inner:
    """The sync memory layer around ``inner``."""
    guard = _Guard(cfg, ctx)
    rss, soft, note, state = PROBE.rss, guard.soft, guard.note, guard.state

    def memory_layer(args: tuple[Any, ...], kwargs: dict[str, Any], info: Any) -> Any:
        before = rss()
        if before > state.gate:
            before = guard.admit(before)
        result = inner(args, kwargs, info)
        now = rss()
        if now != before or now > soft:
            note(before, now)
        return result

    return memory_layer


def build_async(cfg: MemoryConfig, inner: AsyncInner, ctx: Context) -> AsyncInner:
    """The async memory layer around ``inner``."""
    guard = _Guard(cfg, ctx)
    rss, soft, note, state = PROBE.rss, guard.soft, guard.note, guard.state

    async def memory_layer(args: tuple[Any, ...], kwargs: dict[str, Any], info: Any) -> Any:
        before = rss()
        if before > state.gate:
            before = guard.admit(before)
        result = await inner(args, kwargs, info)
        now = rss()
        if now != before or now > soft:
            note(before, now)
        return result

    return memory_layer


__all__ = ["PROBE", "MemoryConfig", "RssProbe", "build", "build_async"]
