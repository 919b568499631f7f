"""Readings of GPU memory for the memory layer's GPU budget (``memory.max_gpu``/``soft_gpu``).

What is measured is the memory in use on the device, by every process: its total less what
is free (``cudaMemGetInfo`` through torch, ``nvmlDeviceGetMemoryInfo`` through NVML, the same
figure). That is what decides whether the next allocation fails, whoever holds the rest;
``torch.cuda.memory_reserved`` would see this process's caching allocator alone, not the
CUDA context nor another process filling the card. Percentages are of the device's total.

Which reader is used, at each fresh reading:

1. a fake (``guardrails.testing.fake_gpu``) while one is installed;
2. torch, when it is imported and has initialised CUDA in this process: guardrails never
   initialises CUDA itself (a parent that did could no longer fork workers that use it);
3. NVML (the ``nvidia-ml-py`` package, extra ``[gpu]``), started once, lazily, and again in
   a forked child. NVML numbers every device of the machine; ``memory.gpu`` is an index as
   CUDA and torch count, so ``CUDA_VISIBLE_DEVICES`` (indices or ``GPU-`` UUIDs) is applied.

When none of them can read the device (no GPU, no driver, nothing installed, or
``CUDA_VISIBLE_DEVICES`` showing this process none) a reading is
:data:`UNREAD` and the reason is kept; the memory layer then warns once and lets calls run.
A reading is reused for up to ``MAX_AGE``, as the resident-memory probe does; a device that
could not be read is tried again after ``RETRY_UNREAD``.
"""

from __future__ import annotations

import os
import sys
import threading
from time import monotonic
from typing import Any, Protocol

from guardrails._forksafe import ForkSafeLock

#: How long a reading of the memory in use is reused, in seconds.
MAX_AGE = 0.001
#: How long a device that could not be read is left before it is tried again, in seconds.
RETRY_UNREAD = 1.0
#: The reading of a device that cannot be read: above any budget, so a guard looks closer.
UNREAD = 1 << 64


class GpuUnavailable(Exception):
    """No reader can read GPU memory here; the message says why."""


class DeviceMissing(Exception):
    """The device index is not one of the devices a reader sees."""

    def __init__(self, index: int, count: int, via: str) -> None:
        self.index = index
        self.count = count
        self.via = via
        seen = f"{count} device{'s' if count != 1 else ''}" if count else "no device"
        super().__init__(f"there is no GPU {index}: {via} sees {seen}")


class Reader(Protocol):
    """Reads one device's memory: ``(bytes in use, total bytes)``."""

    name: str

    def memory(self, index: int) -> tuple[int, int]: ...


def torch_cuda() -> Any:
    """``torch.cuda`` when torch is imported and has initialised CUDA here, else ``None``
    (in a child forked after CUDA was initialised, torch says it is not)."""
    torch = sys.modules.get("torch")
    cuda = getattr(torch, "cuda", None)
    if cuda is None:
        return None
    try:
        return cuda if cuda.is_initialized() else None
    except Exception:  # a torch too old or half-imported: not a reader
        return None


class TorchReader:
    """``torch.cuda.mem_get_info``: the device's free and total memory."""

    name = "torch"

    def memory(self, index: int) -> tuple[int, int]:
        cuda = torch_cuda()
        if cuda is None:
            raise GpuUnavailable("torch has not initialised CUDA")
        count = int(cuda.device_count())
        if not 0 <= index < count:
            raise DeviceMissing(index, count, "torch")
        free, total = cuda.mem_get_info(index)
        return int(total) - int(free), int(total)


def visible_devices(value: str | None, count: int) -> list[str]:
    """The machine's devices CUDA shows this process, in CUDA's order: NVML indices as text,
    or UUID prefixes (``GPU-…``, ``MIG-…``), from ``CUDA_VISIBLE_DEVICES`` (``None``: all).
    CUDA stops at the first entry it cannot use (a negative or unknown index, a repeat)."""
    if value is None:
        return [str(i) for i in range(count)]
    found: list[str] = []
    for raw in value.split(","):
        entry = raw.strip()
        if entry.startswith(("GPU-", "MIG-")):
            pass
        elif entry.isascii() and entry.isdigit() and int(entry) < count:
            entry = str(int(entry))
        else:
            break
        if entry in found:
            break
        found.append(entry)
    return found


class NvmlReader:
    """NVML through ``pynvml``: started once, lazily, and again in a forked child."""

    name = "NVML"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._nvml: Any = None
        self._failed: str | None = None
        self._handles: dict[int, Any] = {}
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self._lock = threading.Lock()
        self._nvml = None
        self._failed = None
        self._handles = {}

    def start(self) -> Any:
        """The ``pynvml`` module, started; raises ``GpuUnavailable`` (for good, in this
        process) when the package, the library or the driver is missing."""
        nvml = self._nvml
        if nvml is not None:
            return nvml
        with self._lock:
            if self._nvml is not None:
                return self._nvml
            if self._failed is not None:
                raise GpuUnavailable(self._failed)
            try:
                import pynvml  # type: ignore[import-untyped]
            except ImportError:
                self._failed = (
                    "nvidia-ml-py is not installed (pip install 'hydra-guardrails[gpu]') "
                    "and torch has not initialised CUDA"
                )
                raise GpuUnavailable(self._failed) from None
            try:
                pynvml.nvmlInit()
            except pynvml.NVMLError as exc:
                self._failed = f"no NVIDIA driver here (NVML: {exc})"
                raise GpuUnavailable(self._failed) from None
            self._nvml = pynvml
            return pynvml

    def _handle(self, nvml: Any, index: int) -> Any:
        handle = self._handles.get(index)
        if handle is not None:
            return handle
        count = int(nvml.nvmlDeviceGetCount())
        setting = os.environ.get("CUDA_VISIBLE_DEVICES")
        visible = visible_devices(setting, count)
        via = "NVML" if setting is None else f"NVML with CUDA_VISIBLE_DEVICES={setting!r}"
        if not 0 <= index < len(visible):
            raise DeviceMissing(index, len(visible), via)
        entry = visible[index]
        if entry.isdigit():
            handle = nvml.nvmlDeviceGetHandleByIndex(int(entry))
        elif entry.startswith("GPU-"):
            for i in range(count):
                candidate = nvml.nvmlDeviceGetHandleByIndex(i)
                uuid = nvml.nvmlDeviceGetUUID(candidate)
                if (uuid.decode() if isinstance(uuid, bytes) else str(uuid)).startswith(entry):
                    handle = candidate
                    break
            else:
                raise DeviceMissing(index, 0, f"NVML (no device's UUID starts {entry!r})")
        else:
            raise GpuUnavailable(
                f"CUDA_VISIBLE_DEVICES names a MIG instance ({entry}), which NVML cannot "
                "read by CUDA's index; the budget is read through torch once it has "
                "initialised CUDA"
            )
        self._handles[index] = handle
        return handle

    def memory(self, index: int) -> tuple[int, int]:
        nvml = self.start()
        try:
            info = nvml.nvmlDeviceGetMemoryInfo(self._handle(nvml, index))
        except nvml.NVMLError as exc:
            raise GpuUnavailable(f"NVML could not read GPU {index} ({exc})") from None
        return int(info.total) - int(info.free), int(info.total)


class FakeGpu:
    """Devices whose readings a test sets; what ``guardrails.testing.fake_gpu`` installs.

    ``used[i]`` and ``total[i]`` are device ``i``'s bytes in use and in all; ``cached[i]``
    what emptying torch's cache would give back (moved out of ``used[i]`` when it is
    emptied); ``reads`` counts fresh readings and ``releases`` the times the cache was
    emptied. ``unavailable`` (a reason) makes every reading fail as a machine without a
    GPU does.
    """

    name = "fake"

    def __init__(self, total: list[int], used: list[int], cached: list[int]) -> None:
        self.total = total
        self.used = used
        self.cached = cached
        self.reads = 0
        self.releases = 0
        self.unavailable: str | None = None

    def memory(self, index: int) -> tuple[int, int]:
        if self.unavailable is not None:
            raise GpuUnavailable(self.unavailable)
        if not 0 <= index < len(self.total):
            raise DeviceMissing(index, len(self.total), "the fake GPU")
        self.reads += 1
        return self.used[index], self.total[index]

    def release(self) -> None:
        self.releases += 1
        for i, cached in enumerate(self.cached):
            self.used[i] -= cached
            self.cached[i] = 0


class Device:
    """The readings of one device index, shared by every guard of that index."""

    __slots__ = ("_last", "_probe", "index", "missing", "name", "reason", "total")

    def __init__(self, probe: GpuProbe, index: int) -> None:
        self._probe = probe
        self.index = index
        self.name = f"cuda:{index}"
        #: ``(when, bytes in use)``; ``when`` is in the future for a reading to retry later.
        self._last: tuple[float, int] = (float("-inf"), 0)
        #: The device's total bytes, once read.
        self.total = 0
        #: Why the last reading failed (``None`` after one that did not).
        self.reason: str | None = None
        #: The last reading found no such device (the memory layer raises it as a config error).
        self.missing: DeviceMissing | None = None

    def used(self) -> int:
        """Bytes in use, as read at most ``MAX_AGE`` ago; ``UNREAD`` if the device cannot be
        read (then ``reason`` or ``missing`` says why)."""
        now = monotonic()
        taken, value = self._last
        if now - taken < MAX_AGE:
            return value
        return self.read(now)

    def read(self, now: float | None = None) -> int:
        """Bytes in use now (a fresh reading), or ``UNREAD``."""
        when = monotonic() if now is None else now
        try:
            used, total = self._probe.reader().memory(self.index)
        except DeviceMissing as exc:
            if exc.count == 0:
                # No device at all for this process (CUDA_VISIBLE_DEVICES="" or -1: a CPU
                # worker on a GPU box): a machine without a GPU, not a wrong index.
                self._unread(when, f"{exc.via} shows this process no GPU", None)
            else:
                self._unread(when, str(exc), exc)
            return UNREAD
        except GpuUnavailable as exc:
            self._unread(when, str(exc), None)
            return UNREAD
        except Exception as exc:  # a driver error: kept as the reason, and warned about
            self._unread(when, f"reading it failed: {type(exc).__name__}: {exc}", None)
            return UNREAD
        self.total = total
        self.reason = None
        self.missing = None
        self._last = (when, used)
        return used

    def _unread(self, when: float, reason: str, missing: DeviceMissing | None) -> None:
        self.total = 0
        self.reason = reason
        self.missing = missing
        self._last = (when + RETRY_UNREAD - MAX_AGE, UNREAD)

    def forget(self) -> None:
        """Take the next reading afresh, and the total with it."""
        self._last = (float("-inf"), 0)
        self.total = 0


class GpuProbe:
    """Chooses the reader and keeps one :class:`Device` per index."""

    def __init__(self) -> None:
        self.fake: FakeGpu | None = None
        self.nvml = NvmlReader()
        self.torch = TorchReader()
        self._devices: dict[int, Device] = {}
        # Renewed in a forked child: one held by another thread at the fork would stay held.
        self._lock = ForkSafeLock()

    def reader(self) -> Reader:
        """The fake, torch (once it has initialised CUDA) or NVML; raises ``GpuUnavailable``."""
        fake = self.fake
        if fake is not None:
            return fake
        if torch_cuda() is not None:
            return self.torch
        try:
            self.nvml.start()
        except GpuUnavailable as exc:
            if "torch" in sys.modules and "torch" not in str(exc):
                raise GpuUnavailable(f"{exc}, and torch has not initialised CUDA") from None
            raise
        return self.nvml

    def device(self, index: int) -> Device:
        """The readings of device ``index``."""
        found = self._devices.get(index)
        if found is None:
            with self._lock:
                found = self._devices.setdefault(index, Device(self, index))
        return found

    def forget(self) -> None:
        """Every device reads afresh next time (a fake was installed or changed)."""
        for device in list(self._devices.values()):
            device.forget()
            device.reason = None
            device.missing = None

    def release(self) -> bool:
        """Give torch's cached blocks back to the device (the fake's, while one is
        installed); ``False`` when there is nothing to empty (torch has not used CUDA)."""
        fake = self.fake
        if fake is not None:
            fake.release()
            return True
        cuda = torch_cuda()
        if cuda is None:
            return False
        cuda.empty_cache()
        return True


GPU = GpuProbe()


def cuda_available() -> bool:
    """Whether a real reader (torch or NVML, not a fake) can read GPU 0 here."""
    reader: Reader
    if torch_cuda() is not None:
        reader = GPU.torch
    else:
        try:
            GPU.nvml.start()
        except GpuUnavailable:
            return False
        reader = GPU.nvml
    try:
        reader.memory(0)
    except Exception:
        return False
    return True


__all__ = [
    "GPU",
    "MAX_AGE",
    "UNREAD",
    "Device",
    "DeviceMissing",
    "FakeGpu",
    "GpuProbe",
    "GpuUnavailable",
    "cuda_available",
    "visible_devices",
]
