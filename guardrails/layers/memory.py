"""The ``memory`` layer: refuses to start work while the process is over its memory budget.

Resident memory is read from a kept handle on ``/proc/self/statm`` (one ``pread``, about
half a microsecond; psutil elsewhere, about ten), reopened in a forked child. A reading is
reused for up to ``MAX_AGE`` (one millisecond): a process cannot fault in more than a few
megabytes in that time, and a hot function then pays a clock read, not a system call.
A reading over a limit is always taken afresh before anything is refused, and while a
function is over its ``soft_rss`` every call reads afresh, so a drop back under it is seen
(and the warning re-armed) however soon the next call comes.

The GPU budget (``max_gpu``, ``soft_gpu``, device ``gpu``) works the same way on the memory
in use on the device, read through :mod:`guardrails._gpu` (torch once it has initialised
CUDA, else NVML). Before refusing it collects garbage and empties torch's cache (each at
most once per ``GC_INTERVAL``) and reads again. A percentage is of the device's total, read
when the chain is compiled (or at the first call that can read the device). A device index
the reader does not see is a configuration error; a machine where no GPU can be read (a
laptop running the GPU box's YAML) warns once per policy and runs the calls.
"""

from __future__ import annotations

import contextlib
import gc
import os
import re
import threading
from dataclasses import dataclass
from time import monotonic
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer, model_validator

from guardrails._errors import MemoryBudgetExceeded, PolicyConfigError, _fmt_bytes
from guardrails._forksafe import ForkSafeLock
from guardrails._gpu import GPU, UNREAD, Device
from guardrails._types import AsyncInner, Block, Context, Inner, MemorySize
from guardrails._units import SIZE_HINT, parse_size, shown

#: At most one forced garbage collection per this many seconds, across all policies.
GC_INTERVAL = 1.0
#: How long a resident-memory reading is reused, in seconds.
MAX_AGE = 0.001


@dataclass(frozen=True, slots=True)
class Percent:
    """A share of a GPU's total memory, as written: ``Percent(80.0)`` is ``"80%"``."""

    value: float

    def of(self, total: int) -> int:
        """This share of ``total`` bytes."""
        return int(total * self.value / 100)

    def __str__(self) -> str:
        return f"{self.value:g}%" if self.value == float(f"{self.value:g}") else f"{self.value!r}%"


def _as_written(limit: int | Percent) -> str:
    """A GPU limit as a person wrote it: ``90%``, or a size (``10.0 GiB``), never raw bytes."""
    return str(limit) if isinstance(limit, Percent) else _fmt_bytes(limit)


_PERCENT = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*%\s*$")
_DEVICE = re.compile(r"^\s*(?:cuda:)?(\d+)\s*$")


def _gpu_size(value: object) -> int | Percent:
    if isinstance(value, Percent):
        return value
    if isinstance(value, str) and (m := _PERCENT.match(value)):
        percent = float(m.group(1))
        if not 0 < percent <= 100:
            raise ValueError(
                f"expected a percentage of the device's memory above 0% and at most 100%, "
                f"got {shown(value)}"
            )
        return Percent(percent)
    try:
        return parse_size(value)
    except ValueError as exc:
        hint = f"{SIZE_HINT} or a percentage of the device's memory like '80%'"
        raise ValueError(str(exc).replace(SIZE_HINT, hint, 1)) from None


def _gpu_size_text(value: int | Percent) -> int | str:
    return str(value) if isinstance(value, Percent) else value


def _gpu_index(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and (m := _DEVICE.match(value)):
        return int(m.group(1))
    raise ValueError(f"expected a GPU index like 0 (or 'cuda:1'), got {shown(value)}")


#: Bytes (``"12GiB"``) or a percentage of the GPU's total memory (``"80%"``), kept as written
#: and resolved against the device when the chain is compiled.
GpuSize = Annotated[
    Any, BeforeValidator(_gpu_size), PlainSerializer(_gpu_size_text, return_type=Any)
]
#: A CUDA device index as torch counts them (``0``; ``"cuda:1"`` is read as ``1``).
GpuIndex = Annotated[int, BeforeValidator(_gpu_index)]


class MemoryConfig(Block):
    """``memory:`` — ``max_rss`` refuses calls above it; ``soft_rss`` warns once per crossing;
    ``max_gpu``/``soft_gpu`` do the same for the memory in use on GPU ``gpu``."""

    max_rss: MemorySize | None = None
    soft_rss: MemorySize | None = None
    max_gpu: GpuSize | None = None
    soft_gpu: GpuSize | None = None
    #: The device of ``max_gpu``/``soft_gpu``; unset is ``0`` (``show`` prints it only when
    #: it is written).
    gpu: GpuIndex | None = None

    @model_validator(mode="after")
    def _limits(self) -> MemoryConfig:
        limits = (self.max_rss, self.soft_rss, self.max_gpu, self.soft_gpu)
        if all(limit is None for limit in limits) and self.enabled:
            raise ValueError(
                "set max_rss, soft_rss, max_gpu or soft_gpu (sizes like '2GiB' or '80%')"
            )
        if self.max_rss is not None and self.soft_rss is not None and self.soft_rss > self.max_rss:
            raise ValueError(
                f"soft_rss ({_fmt_bytes(self.soft_rss)}) must not be above "
                f"max_rss ({_fmt_bytes(self.max_rss)})"
            )
        hard, soft = self.max_gpu, self.soft_gpu
        if self.gpu is not None and hard is None and soft is None and self.enabled:
            raise ValueError(
                f"gpu ({self.gpu}) picks the device of max_gpu and soft_gpu, and neither is "
                "set: set max_gpu or soft_gpu (a size like '12GiB' or '80%'), or remove gpu"
            )
        if isinstance(hard, int) and isinstance(soft, int) and soft > hard:
            raise ValueError(
                f"soft_gpu ({_fmt_bytes(soft)}) must not be above max_gpu ({_fmt_bytes(hard)})"
            )
        if isinstance(hard, Percent) and isinstance(soft, Percent) and soft.value > hard.value:
            raise ValueError(f"soft_gpu ({soft}) must not be above max_gpu ({hard})")
        return self

    @property
    def guards_rss(self) -> bool:
        return self.max_rss is not None or self.soft_rss is not None

    @property
    def guards_gpu(self) -> bool:
        return self.max_gpu is not None or self.soft_gpu is not None


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
    """A rate limit on forced collections (or on emptying torch's cache), shared by every
    policy."""

    __slots__ = ("last", "lock")

    def __init__(self) -> None:
        self.lock = ForkSafeLock()
        self.last = float("-inf")


_COLLECTIONS = _Collections()
_RELEASES = _Collections()


def forget_collections() -> None:
    """Let the next refusal collect at once (the clock changed, or a test starts over)."""
    for limit in (_COLLECTIONS, _RELEASES):
        with limit.lock:
            limit.last = float("-inf")


def _release_if_due(monotonic: Any) -> bool:
    with _RELEASES.lock:
        now = monotonic()
        if now - _RELEASES.last < GC_INTERVAL:
            return False
        _RELEASES.last = now
    return GPU.release()


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
    """Forget which soft limits the process is over, and the GPU budgets resolved against a
    device (a test starts over, or a fake GPU comes or goes)."""
    _CROSSINGS.clear()
    _GPU_STATES.clear()


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


def _build_rss(cfg: MemoryConfig, inner: Inner, ctx: Context) -> Inner:
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


def _build_rss_async(cfg: MemoryConfig, inner: AsyncInner, ctx: Context) -> AsyncInner:
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


#: No limit: above every reading, ``UNREAD`` included.
_NEVER = UNREAD << 1


class _GpuState:
    """A policy's GPU budget on one device, resolved to bytes, and whether memory there is
    over its soft limit: shared by every function of the policy, kept across ``configure()``
    while the budget stays as written."""

    __slots__ = ("gate", "hard", "over_soft", "resolved", "soft", "warned")

    def __init__(self) -> None:
        self.resolved = False
        self.hard = _NEVER
        self.soft = _NEVER
        self.over_soft = False
        #: A reading above this goes through ``admit``: every reading while the budget is
        #: not resolved (a percentage of a device not read yet) or memory is over the soft
        #: limit, else the hard limit, below ``UNREAD`` (a guard looks into why a device
        #: cannot be read).
        self.gate = -1
        #: The reason already warned about that the device cannot be read.
        self.warned: str | None = None


_GPU_STATES: dict[tuple[str, int, Any, Any], _GpuState] = {}


class _GpuGuard:
    """The admission decision and the soft-limit warning of one compiled GPU budget."""

    __slots__ = ("ctx", "device", "max_gpu", "soft_gpu", "state")

    def __init__(self, cfg: MemoryConfig, ctx: Context) -> None:
        self.ctx = ctx
        self.max_gpu: int | Percent | None = cfg.max_gpu
        self.soft_gpu: int | Percent | None = cfg.soft_gpu
        index = cfg.gpu or 0
        self.device: Device = GPU.device(index)
        key = (ctx.policy, index, cfg.max_gpu, cfg.soft_gpu)
        self.state = _GPU_STATES.setdefault(key, _GpuState())
        # Read now: a device the reader does not see fails configure(), and a percentage
        # is resolved before the first call when the device can be read.
        self.device.read()
        self.check_device()
        if not self.state.resolved:
            self.resolve()

    def where(self, key: str) -> str:
        return f"guardrails.policies.{self.ctx.policy}.memory.{key}"

    def check_device(self) -> None:
        missing = self.device.missing
        if missing is not None:
            count = missing.count
            takes = (
                "no GPU is seen"
                if not count
                else "memory.gpu takes 0"
                if count == 1
                else f"memory.gpu takes 0 to {count - 1}"
            )
            raise PolicyConfigError([(self.where("gpu"), f"{missing} ({takes})")])

    def resolve(self, *, at_call: bool = False) -> None:
        """The budget in bytes, once the device's total is known (or needed by none).

        Limits that contradict each other on this device (``soft_gpu: 90%`` above
        ``max_gpu: 10GiB`` on a 16 GiB card) fail ``configure()``; found only at a call (the
        device became readable after ``configure()``), they are logged at ERROR once and the
        soft limit is held at the hard one: a configuration that ran must not start failing
        every call."""
        hard, soft, total = self.max_gpu, self.soft_gpu, self.device.total
        if (isinstance(hard, Percent) or isinstance(soft, Percent)) and not total:
            return  # not read yet: every call comes here until it is
        state = self.state
        hard_bytes = (
            _NEVER if hard is None else hard.of(total) if isinstance(hard, Percent) else hard
        )
        soft_bytes = (
            _NEVER if soft is None else soft.of(total) if isinstance(soft, Percent) else soft
        )
        if hard is not None and soft is not None and soft_bytes > hard_bytes:
            problem = (
                f"{_as_written(soft)} ({_fmt_bytes(soft_bytes)}) must not be above "
                f"memory.max_gpu {_as_written(hard)} ({_fmt_bytes(hard_bytes)}) on "
                f"{self.device.name}, of {_fmt_bytes(total)}"
            )
            if not at_call:
                raise PolicyConfigError([(self.where("soft_gpu"), problem)])
            self.ctx.logger.error(
                "%s: %s; the soft limit is held at memory.max_gpu until the policy is fixed",
                self.where("soft_gpu"),
                problem,
                extra={"policy": self.ctx.policy, "function": self.ctx.qualname},
            )
            soft_bytes = hard_bytes
        state.hard, state.soft = hard_bytes, soft_bytes
        state.resolved = True
        state.gate = -1 if state.over_soft else min(hard_bytes, UNREAD - 1)

    def admit(self, before: int) -> int:
        """The slow path of admission: a device that cannot be read, a budget not resolved
        yet, a reading over the hard limit, or memory over the soft limit."""
        state = self.state
        if before >= UNREAD:
            self.check_device()
            reason = self.device.reason or "it cannot be read"
            if state.warned != reason:
                state.warned = reason
                self.ctx.logger.warning(
                    "%s: memory.%s not checked: %s memory cannot be read: %s; calls run "
                    "without the GPU budget",
                    self.ctx.policy,
                    " and memory.".join(
                        key for key in ("max_gpu", "soft_gpu") if getattr(self, key) is not None
                    )
                    + (" are" if self.max_gpu is not None and self.soft_gpu is not None else " is"),
                    self.device.name,
                    reason,
                    extra={"policy": self.ctx.policy, "function": self.ctx.qualname},
                )
            return before
        state.warned = None
        if not state.resolved:
            self.resolve(at_call=True)
        hard = state.hard
        used = before if before > hard else self.device.read()
        if hard < used < UNREAD:
            used = self.over_hard()
        if state.over_soft and used <= state.soft:
            state.over_soft = False
            state.gate = min(hard, UNREAD - 1)
        return used

    def over_hard(self) -> int:
        """Called when a reading is over the hard limit: collect garbage and empty torch's
        cache (each if due), look again, then refuse."""
        clock = self.ctx.clock.monotonic
        _collect_if_due(clock)
        _release_if_due(clock)
        used = self.device.read()
        if self.state.hard < used < UNREAD:
            self.ctx.counters.reject_memory()
            raise MemoryBudgetExceeded(
                self.ctx.policy, self.ctx.qualname, used, self.state.hard, self.device.name
            )
        return used

    def note(self, used: int) -> None:
        """After a call whose reading is over the soft limit."""
        state = self.state
        if used >= UNREAD or not state.resolved or used <= state.soft or state.over_soft:
            return
        state.over_soft = True
        state.gate = -1
        self.ctx.logger.warning(
            "%s: %s memory in use %s is over memory.soft_gpu %s",
            self.ctx.policy,
            self.device.name,
            _fmt_bytes(used),
            _fmt_bytes(state.soft),
            extra={
                "policy": self.ctx.policy,
                "function": self.ctx.qualname,
                "gpu_used": used,
                "device": self.device.name,
            },
        )


def _build_gpu(cfg: MemoryConfig, inner: Inner, ctx: Context) -> Inner:
    guard = _GpuGuard(cfg, ctx)
    used, admit, note, state = guard.device.used, guard.admit, guard.note, guard.state

    def gpu_memory_layer(args: tuple[Any, ...], kwargs: dict[str, Any], info: Any) -> Any:
        before = used()
        if before > state.gate:
            admit(before)
        result = inner(args, kwargs, info)
        now = used()
        if now > state.soft:
            note(now)
        return result

    return gpu_memory_layer


def _build_gpu_async(cfg: MemoryConfig, inner: AsyncInner, ctx: Context) -> AsyncInner:
    guard = _GpuGuard(cfg, ctx)
    used, admit, note, state = guard.device.used, guard.admit, guard.note, guard.state

    async def gpu_memory_layer(args: tuple[Any, ...], kwargs: dict[str, Any], info: Any) -> Any:
        before = used()
        if before > state.gate:
            admit(before)
        result = await inner(args, kwargs, info)
        now = used()
        if now > state.soft:
            note(now)
        return result

    return gpu_memory_layer


def build(cfg: MemoryConfig, inner: Inner, ctx: Context) -> Inner:
    """The sync memory layer around ``inner``: the GPU budget inside the RSS guard."""
    if cfg.guards_gpu:
        inner = _build_gpu(cfg, inner, ctx)
    return _build_rss(cfg, inner, ctx) if cfg.guards_rss else inner


def build_async(cfg: MemoryConfig, inner: AsyncInner, ctx: Context) -> AsyncInner:
    """The async memory layer around ``inner``: the GPU budget inside the RSS guard."""
    if cfg.guards_gpu:
        inner = _build_gpu_async(cfg, inner, ctx)
    return _build_rss_async(cfg, inner, ctx) if cfg.guards_rss else inner


__all__ = [
    "PROBE",
    "GpuIndex",
    "GpuSize",
    "MemoryConfig",
    "Percent",
    "RssProbe",
    "build",
    "build_async",
]
