"""Attacks on the GPU budget (``memory.max_gpu``/``soft_gpu``/``gpu``): forks, hostile
``CUDA_VISIBLE_DEVICES``, readers failing mid-run.

There is no GPU here. Most tests go through ``guardrails.testing.fake_gpu``; the ones about
``CUDA_VISIBLE_DEVICES`` need the NVML reader's own mapping, so they give it a stand-in
``pynvml`` module (the module boundary: the reader imports ``pynvml`` and calls five of its
functions) on a fresh reader. That stand-in is the only fake below the layer's real path.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import types
from collections.abc import Iterator
from typing import Any

import pytest

import guardrails
from guardrails import MemoryBudgetExceeded, configure, guarded
from guardrails._gpu import GPU, UNREAD, NvmlReader, visible_devices
from guardrails.layers.memory import forget_crossings
from guardrails.testing import fake_gpu

GiB = 2**30


class _NVMLError(Exception):
    pass


def _stand_in_pynvml(count: int, total: int, used: int) -> types.ModuleType:
    """What the NVML reader uses of ``pynvml``, for ``count`` devices (handles are indices)."""
    module = types.ModuleType("pynvml")
    module.NVMLError = _NVMLError  # type: ignore[attr-defined]
    module.nvmlInit = lambda: None  # type: ignore[attr-defined]
    module.nvmlDeviceGetCount = lambda: count  # type: ignore[attr-defined]

    def handle(index: int) -> int:
        if not 0 <= index < count:
            raise _NVMLError("Invalid Argument")
        return index

    module.nvmlDeviceGetHandleByIndex = handle  # type: ignore[attr-defined]
    module.nvmlDeviceGetUUID = lambda h: f"GPU-{h:08x}-0000"  # type: ignore[attr-defined]
    module.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(  # type: ignore[attr-defined]
        total=total, free=total - used
    )
    return module


@pytest.fixture
def nvml(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """A machine with two 16 GiB GPUs, 12 GiB in use on each, read through NVML."""
    assert GPU.fake is None and "torch" not in sys.modules
    monkeypatch.setitem(sys.modules, "pynvml", _stand_in_pynvml(2, 16 * GiB, 12 * GiB))
    monkeypatch.setattr(GPU, "nvml", NvmlReader())
    GPU.forget()
    forget_crossings()
    yield monkeypatch
    monkeypatch.undo()
    GPU.forget()
    forget_crossings()


# --- CUDA_VISIBLE_DEVICES -------------------------------------------------------------------


def test_the_nvml_stand_in_is_read_and_budgeted(nvml: pytest.MonkeyPatch) -> None:
    nvml.setenv("CUDA_VISIBLE_DEVICES", "1")
    configure({"policies": {"p": {"memory": {"max_gpu": "50%"}}}})
    with pytest.raises(MemoryBudgetExceeded) as exc:
        guarded("p")(lambda: "ran")()
    assert (exc.value.device, exc.value.limit, exc.value.rss) == ("cuda:0", 8 * GiB, 12 * GiB)


@pytest.mark.parametrize("hidden", ["", "-1", "none", "NoDevFiles"])
def test_a_process_shown_no_gpu_runs_its_calls_as_a_machine_without_one(
    nvml: pytest.MonkeyPatch, hidden: str, logs: pytest.LogCaptureFixture
) -> None:
    # CUDA_VISIBLE_DEVICES="" (or -1) is how a GPU box runs a CPU-only worker: the same YAML
    # must not stop it at configure() when a laptop with no GPU at all only gets a warning.
    nvml.setenv("CUDA_VISIBLE_DEVICES", hidden)
    configure({"policies": {"p": {"memory": {"max_gpu": "50%", "soft_gpu": "40%"}}}})
    f = guarded("p")(lambda: "ran")
    assert [f() for _ in range(3)] == ["ran"] * 3
    (warned,) = [r for r in logs.records if "not checked" in r.getMessage()]
    assert warned.levelname == "WARNING" and warned.__dict__["policy"] == "p"
    assert f"CUDA_VISIBLE_DEVICES={hidden!r}" in warned.getMessage()
    assert guardrails.stats()["p"].rejected == 0


def test_a_device_past_the_visible_ones_is_still_a_config_error(
    nvml: pytest.MonkeyPatch,
) -> None:
    nvml.setenv("CUDA_VISIBLE_DEVICES", "1")
    configure({"policies": {"p": {"memory": {"max_gpu": "100%"}}}})
    f = guarded("p")(lambda: "ran")
    assert f() == "ran"
    with pytest.raises(guardrails.PolicyConfigError) as exc:
        configure({"policies": {"p": {"memory": {"max_gpu": "50%", "gpu": "cuda:1"}}}})
    ((where, message),) = exc.value.problems
    assert where == "guardrails.policies.p.memory.gpu"
    assert "there is no GPU 1" in message and "memory.gpu takes 0" in message
    assert f() == "ran"  # the budget in force is kept


@pytest.mark.parametrize("setting", ["²", "0,²", "١", "0,١"])
def test_non_ascii_digits_in_cuda_visible_devices_end_the_list_as_cuda_does(
    setting: str,
) -> None:
    # CUDA reads ASCII digits; int() takes other scripts' digits, or raises on '²'.
    assert visible_devices(setting, 4) == (["0"] if setting.startswith("0") else [])


# --- forks ------------------------------------------------------------------------------------


def _in_child(body: Any) -> bytes:
    """Run ``body()`` (returning bytes) in a forked child; its answer, or b"hung" when it
    did not answer within a generous deadline (then it is killed)."""
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.write(writer, body())
        finally:
            os._exit(0)
    os.close(writer)
    deadline = time.monotonic() + 30
    while os.waitpid(pid, os.WNOHANG) == (0, 0):
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            os.close(reader)
            return b"hung"
        time.sleep(0.01)  # bounded polling on the child's exit
    answer = os.read(reader, 16)
    os.close(reader)
    return answer


def test_a_fork_while_another_thread_adds_a_device_does_not_hang_the_child() -> None:
    # The probe's lock, held by another thread at the fork, stays held in the child for ever
    # unless the child gets a new one: its first budget on a new device would hang.
    held, release = threading.Event(), threading.Event()

    def holder() -> None:
        with GPU._lock:
            held.set()
            release.wait(60)

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        assert held.wait(30)
        answer = _in_child(lambda: b"ok" if GPU.device(97).index == 97 else b"no")
    finally:
        release.set()
        thread.join(30)
    assert answer == b"ok"


def test_a_forked_child_reads_its_own_fake_reading_not_the_parents() -> None:
    with fake_gpu(total="10GiB", used="1GiB") as gpu:
        configure({"policies": {"p": {"memory": {"max_gpu": "50%"}}}})
        f = guarded("p")(lambda: "ran")
        assert f() == "ran"  # a reading of 1 GiB is now cached

        def child() -> bytes:
            gpu.used[0] = 9 * GiB
            try:
                f()
            except MemoryBudgetExceeded:
                return b"refused"
            return b"ran"

        assert _in_child(child) == b"refused"
        assert f() == "ran"


# --- a reader failing mid-run -----------------------------------------------------------------


def test_a_driver_error_mid_run_lets_calls_run_warns_once_and_recovers(
    logs: pytest.LogCaptureFixture,
) -> None:
    with fake_gpu(total="10GiB", used="6GiB") as gpu:
        configure({"policies": {"p": {"memory": {"max_gpu": "50%"}}}})
        f = guarded("p")(lambda: "ran")
        with pytest.raises(MemoryBudgetExceeded):
            f()
        real = gpu.memory

        def lost(index: int) -> tuple[int, int]:
            raise RuntimeError("GPU is lost")

        gpu.memory = lost  # type: ignore[method-assign]
        GPU.forget()
        assert [f() for _ in range(3)] == ["ran"] * 3
        warned = [r for r in logs.records if "not checked" in r.getMessage()]
        assert len(warned) == 1 and "RuntimeError: GPU is lost" in warned[0].getMessage()
        assert GPU.device(0).used() == UNREAD
        gpu.memory = real  # type: ignore[method-assign]
        GPU.forget()
        with pytest.raises(MemoryBudgetExceeded):
            f()


def test_limits_found_contradictory_only_at_a_call_are_logged_not_raised_on_every_call(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The device's total became known after configure() (torch initialised CUDA later): a
    # soft limit of 90% turns out above max_gpu 10GiB. The calls that ran must go on.
    caplog.set_level("ERROR", logger="guardrails")
    with fake_gpu(total=0, used=0, cached=0) as gpu:
        configure({"policies": {"g": {"memory": {"max_gpu": "10GiB", "soft_gpu": "90%"}}}})
        f = guarded("g")(lambda: "ran")
        assert f() == "ran"  # the total is unknown: the percentage waits
        gpu.total[0], gpu.used[0] = 16 * 2**30, 2**30
        assert f() == "ran"
        assert f() == "ran"
        errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
        assert len(errors) == 1, errors
        assert (
            "guardrails.policies.g.memory.soft_gpu: 90% (14.4 GiB) must not be above" in (errors[0])
        )
        assert "memory.max_gpu 10.0 GiB" in errors[0]  # as written, not 10737418240
        gpu.used[0] = 11 * 2**30  # over the hard limit: still refused
        with pytest.raises(MemoryBudgetExceeded):
            f()
