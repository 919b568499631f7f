"""The GPU budget: ``memory.max_gpu`` / ``soft_gpu`` / ``gpu``.

There is no GPU on most machines that run these tests: ``guardrails.testing.fake_gpu``
gives the memory layer devices whose readings a test sets (the layer's code path is the
real one: it reads, reuses, collects, empties torch's cache and refuses as on a device).
The tests marked ``gpu`` read a real device and run only where CUDA is present.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import pickle
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml

import guardrails
from guardrails import MemoryBudgetExceeded, PolicyConfigError, configure, guarded
from guardrails._core import current_settings
from guardrails._gpu import GPU, UNREAD, cuda_available, visible_devices
from guardrails.layers.memory import MemoryConfig, Percent
from guardrails.testing import FakeClock, fake_gpu, override_policies

GiB = 2**30

needs_cuda = pytest.mark.skipif(
    not cuda_available(), reason="no CUDA device here (torch or NVML cannot read GPU 0)"
)


# --- configuration -------------------------------------------------------------------------


def test_sizes_percentages_and_device_are_read_as_written() -> None:
    cfg = MemoryConfig(max_gpu="12GiB", soft_gpu="75%", gpu="cuda:1")
    assert (cfg.max_gpu, cfg.soft_gpu, cfg.gpu) == (12 * GiB, Percent(75.0), 1)
    assert cfg.model_dump(mode="json", exclude_none=True) == {
        "enabled": True,
        "max_gpu": 12 * GiB,
        "soft_gpu": "75%",
        "gpu": 1,
    }
    # A percentage is never equal to that many bytes (the chain would be kept wrongly).
    assert MemoryConfig(max_gpu="80%") != MemoryConfig(max_gpu=80)
    assert str(Percent(12.5)) == "12.5%"


@pytest.mark.parametrize(
    ("memory", "key", "says"),
    [
        ({"max_gpu": "120%"}, "memory.max_gpu", "at most 100%"),
        ({"max_gpu": "0%"}, "memory.max_gpu", "above 0%"),
        ({"max_gpu": "lots"}, "memory.max_gpu", "or a percentage of the device's memory"),
        ({"max_gpu": True}, "memory.max_gpu", "got True"),
        ({"max_gpu": 1, "gpu": -1}, "memory.gpu", "expected a GPU index"),
        ({"max_gpu": 1, "gpu": "cuda:one"}, "memory.gpu", "expected a GPU index"),
        ({"max_gpu": 1, "gpu": True}, "memory.gpu", "expected a GPU index"),
        ({"gpu": 1}, "memory", "set max_rss, soft_rss, max_gpu or soft_gpu"),
        ({"gpu": 1, "max_rss": "1GiB"}, "memory", "gpu (1) picks the device of max_gpu"),
        ({"max_gpu": "1GiB", "soft_gpu": "2GiB"}, "memory", "soft_gpu (2.0 GiB) must not be"),
        ({"max_gpu": "50%", "soft_gpu": "60%"}, "memory", "soft_gpu (60%) must not be above"),
    ],
)
def test_bad_gpu_settings_name_the_key(memory: dict[str, Any], key: str, says: str) -> None:
    configure({"policies": {"good": {"memory": {"max_rss": "100%"}}}})
    before = current_settings()
    with pytest.raises(PolicyConfigError) as exc:
        configure({"policies": {"p": {"memory": memory}}})
    assert [path for path, _ in exc.value.problems] == [f"guardrails.policies.p.{key}"]
    assert says in str(exc.value)
    assert current_settings() is before


def test_a_device_the_reader_does_not_see_fails_configure() -> None:
    with fake_gpu(total="8GiB", devices=2):
        configure({"policies": {"p": {"memory": {"max_gpu": "4GiB"}}}})
        f = guarded("p")(lambda: "ran")
        assert f() == "ran"
        before = current_settings()
        with pytest.raises(PolicyConfigError) as exc:
            configure({"policies": {"p": {"memory": {"max_gpu": "4GiB", "gpu": 2}}}})
        assert exc.value.problems == (
            (
                "guardrails.policies.p.memory.gpu",
                "there is no GPU 2: the fake GPU sees 2 devices (memory.gpu takes 0 to 1)",
            ),
        )
        assert current_settings() is before
        assert f() == "ran"


def test_a_percentage_is_of_the_device_total() -> None:
    with fake_gpu(total="10GiB", used="6GiB") as gpu:
        configure({"policies": {"p": {"memory": {"max_gpu": "50%"}}}})
        f = guarded("p")(lambda: "ran")
        with pytest.raises(MemoryBudgetExceeded) as exc:
            f()
        assert (exc.value.limit, exc.value.rss, exc.value.device) == (5 * GiB, 6 * GiB, "cuda:0")
        gpu.used[0] = 4 * GiB
        assert f() == "ran"


def test_mixed_soft_and_hard_are_compared_once_the_total_is_known() -> None:
    with fake_gpu(total="10GiB"):
        with pytest.raises(PolicyConfigError) as exc:
            configure({"policies": {"p": {"memory": {"max_gpu": "4GiB", "soft_gpu": "50%"}}}})
            guarded("p")(lambda: None)()
        ((where, message),) = exc.value.problems
        assert where == "guardrails.policies.p.memory.soft_gpu"
        assert "50% (5.0 GiB) must not be above memory.max_gpu" in message
        assert "cuda:0, of 10.0 GiB" in message


def test_show_and_explain_keep_the_percentage_as_written(tmp_path: Path) -> None:
    path = tmp_path / "gpu.yaml"
    path.write_text(
        yaml.safe_dump(
            {"guardrails": {"policies": {"p": {"memory": {"max_gpu": "80%", "gpu": 1}}}}}
        )
    )
    script = Path(sys.executable).parent / "guardrails"

    def run(*args: str) -> Any:
        out = subprocess.run(
            [str(script), *args, "--format", "json"],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    shown = run("show", str(path))["guardrails"]["policies"]["p"]["memory"]
    assert shown == {"enabled": True, "max_gpu": "80%", "gpu": 1}
    (memory,) = [
        layer for layer in run("explain", "p", str(path))["layers"] if layer["layer"] == "memory"
    ]
    settings = {s["key"]: s for s in memory["settings"]}
    assert settings["max_gpu"]["value"] == "80%"
    assert settings["gpu"]["value"] == 1


# --- admission -----------------------------------------------------------------------------


def test_over_the_budget_refuses_with_the_device_and_numbers(clock: FakeClock) -> None:
    configure(
        {"policies": {"m": {"memory": {"max_gpu": "4GiB"}, "retry": {"retry_on": ["MemoryError"]}}}}
    )
    calls: list[int] = []
    with fake_gpu(total="16GiB", used="5GiB"):
        f = guarded("m")(lambda: calls.append(1))
        with pytest.raises(MemoryBudgetExceeded) as exc:
            f()
    err = exc.value
    assert isinstance(err, MemoryError)
    assert (err.policy, err.device, err.rss, err.limit) == ("m", "cuda:0", 5 * GiB, 4 * GiB)
    assert "cuda:0 memory in use 5.0 GiB is over memory.max_gpu 4.0 GiB" in str(err)
    assert calls == []
    s = guardrails.stats()["m"]
    assert (s.rejected, s.retries) == (1, 0)


def test_the_refusal_survives_a_trip_to_another_process() -> None:
    err = MemoryBudgetExceeded("p", "f", 5 * GiB, 4 * GiB, "cuda:1")
    back = pickle.loads(pickle.dumps(err))
    assert (back.policy, back.function, back.rss, back.limit, back.device) == (
        "p",
        "f",
        5 * GiB,
        4 * GiB,
        "cuda:1",
    )
    assert str(back) == str(err)
    rss = pickle.loads(pickle.dumps(MemoryBudgetExceeded("p", "f", 2048, 1024)))
    assert rss.device is None and "resident memory" in str(rss)


def test_torch_cache_is_emptied_before_refusing_at_most_once_per_interval(
    clock: FakeClock,
) -> None:
    configure({"policies": {"m": {"memory": {"max_gpu": "4GiB"}}}})
    with fake_gpu(total="16GiB", used="5GiB", cached="2GiB") as gpu:
        f = guarded("m")(lambda: "ran")
        clock.advance(10)
        assert f() == "ran"  # over, emptied, 3 GiB: admitted
        assert (gpu.releases, gpu.used[0]) == (1, 3 * GiB)
        gpu.used[0] = 5 * GiB
        gpu.cached[0] = 2 * GiB
        for _ in range(3):
            with pytest.raises(MemoryBudgetExceeded):
                f()
        assert gpu.releases == 1  # not again within GC_INTERVAL
        clock.advance(1.5)
        assert f() == "ran"
        assert gpu.releases == 2


def test_garbage_holding_device_memory_is_collected_before_refusing(clock: FakeClock) -> None:
    configure({"policies": {"m": {"memory": {"max_gpu": "4GiB"}}}})
    with fake_gpu(total="16GiB", used="3GiB") as gpu:

        class Tensor:
            """Holds a GiB of the fake device until it is freed."""

            def __init__(self) -> None:
                gpu.used[0] += GiB
                self.me = self  # a cycle: only the collector frees it

            def __del__(self) -> None:
                gpu.used[0] -= GiB

        f = guarded("m")(lambda: "ran")
        gc.disable()
        try:
            Tensor()
            Tensor()
            assert gpu.used[0] == 5 * GiB
            clock.advance(10)
            assert f() == "ran"
            assert gpu.used[0] == 3 * GiB
        finally:
            gc.enable()


def test_a_reading_is_reused_briefly_and_a_change_is_seen_at_the_next_call() -> None:
    with fake_gpu(total="16GiB", used="1GiB") as gpu:
        configure({"policies": {"m": {"memory": {"max_gpu": "4GiB"}}}})
        f = guarded("m")(lambda: "ran")
        start = gpu.reads
        for _ in range(200):
            f()
        # At most a reading before and after each call; fewer when calls come within MAX_AGE.
        assert 1 <= gpu.reads - start <= 400
        gpu.used[0] = 5 * GiB
        with pytest.raises(MemoryBudgetExceeded):
            f()


def test_the_soft_budget_warns_once_per_crossing(logs: pytest.LogCaptureFixture) -> None:
    with fake_gpu(total="16GiB", used="1GiB") as gpu:
        configure({"policies": {"m": {"memory": {"soft_gpu": "50%"}, "log": None}}})
        f = guarded("m")(lambda: None)
        g = guarded("m")(lambda: None)
        f()
        gpu.used[0] = 9 * GiB
        for _ in range(5):
            f()
            g()
        soft = [r for r in logs.records if "soft_gpu" in r.getMessage()]
        assert len(soft) == 1
        assert soft[0].levelname == "WARNING" and soft[0].policy == "m"
        assert soft[0].device == "cuda:0" and soft[0].gpu_used == 9 * GiB
        assert "cuda:0 memory in use 9.0 GiB is over memory.soft_gpu 8.0 GiB" in (
            soft[0].getMessage()
        )
        # A reload with the same budget keeps the crossing: no second warning.
        configure({"policies": {"m": {"memory": {"soft_gpu": "50%"}, "log": None}}})
        f()
        assert len([r for r in logs.records if "soft_gpu" in r.getMessage()]) == 1
        gpu.used[0] = 2 * GiB
        f()  # back under: re-armed
        gpu.used[0] = 9 * GiB
        f()
        assert len([r for r in logs.records if "soft_gpu" in r.getMessage()]) == 2


def test_rss_and_gpu_budgets_together() -> None:
    with fake_gpu(total="16GiB", used="5GiB") as gpu:
        configure({"policies": {"both": {"memory": {"max_rss": "100%", "max_gpu": "4GiB"}}}})
        f = guarded("both")(lambda: "ran")
        with pytest.raises(MemoryBudgetExceeded) as exc:
            f()
        assert exc.value.device == "cuda:0"
        gpu.used[0] = GiB
        assert f() == "ran"
        configure({"policies": {"both": {"memory": {"max_rss": 1024, "max_gpu": "4GiB"}}}})
        with pytest.raises(MemoryBudgetExceeded) as exc:
            f()
        assert exc.value.device is None


def test_the_budget_of_another_device() -> None:
    with fake_gpu(total="16GiB", used="1GiB", devices=2) as gpu:
        configure({"policies": {"m": {"memory": {"max_gpu": "4GiB", "gpu": 1}}}})
        f = guarded("m")(lambda: "ran")
        gpu.used[0] = 15 * GiB  # another device: not this budget
        assert f() == "ran"
        gpu.used[1] = 5 * GiB
        with pytest.raises(MemoryBudgetExceeded) as exc:
            f()
        assert exc.value.device == "cuda:1"


def test_async_functions_are_budgeted_too() -> None:
    with fake_gpu(total="16GiB", used="5GiB") as gpu:
        configure({"policies": {"m": {"memory": {"max_gpu": "4GiB"}}}})

        @guarded("m")
        async def infer() -> str:
            await asyncio.sleep(0)
            return "ran"

        with pytest.raises(MemoryBudgetExceeded):
            asyncio.run(infer())
        gpu.used[0] = GiB
        assert asyncio.run(infer()) == "ran"


# --- no GPU --------------------------------------------------------------------------------


def test_without_a_gpu_calls_run_and_one_warning_names_the_policy(
    logs: pytest.LogCaptureFixture,
) -> None:
    with fake_gpu(devices=0):
        configure(
            {
                "policies": {
                    "sized": {"memory": {"max_gpu": "4GiB"}},
                    "shared": {"memory": {"max_gpu": "80%", "soft_gpu": "60%"}},
                    "soft": {"memory": {"soft_gpu": "1GiB"}},
                }
            }
        )
        names = ("sized", "shared", "shared", "soft")
        fs = [guarded(name)(lambda: "ran") for name in names]
        for _ in range(3):
            assert [f() for f in fs] == ["ran"] * 4
        warned = [r for r in logs.records if "not checked" in r.getMessage()]
        assert sorted(r.policy for r in warned) == ["shared", "sized", "soft"]
        assert all(r.levelname == "WARNING" for r in warned)
        messages = {r.policy: r.getMessage() for r in warned}
        assert messages["sized"] == (
            "sized: memory.max_gpu is not checked: cuda:0 memory cannot be read: no GPU here "
            "(a fake machine without one); calls run without the GPU budget"
        )
        assert "memory.max_gpu and memory.soft_gpu are not checked" in messages["shared"]
        assert guardrails.stats()["shared"].rejected == 0


def test_a_gpu_that_becomes_readable_is_budgeted_from_then_on() -> None:
    with fake_gpu(total="10GiB", used="6GiB", devices=1) as gpu:
        gpu.unavailable = "torch has not initialised CUDA yet"
        configure({"policies": {"p": {"memory": {"max_gpu": "50%"}}}})
        f = guarded("p")(lambda: "ran")
        assert f() == "ran"  # cannot be read: run, warned
        gpu.unavailable = None  # CUDA initialised: the percentage resolves now
        with pytest.raises(MemoryBudgetExceeded) as exc:
            f()
        assert exc.value.limit == 5 * GiB


def test_the_real_reader_here_matches_what_the_machine_has(
    logs: pytest.LogCaptureFixture,
) -> None:
    # No fake: torch or NVML. On a machine without a GPU the budget warns and calls run;
    # on one with a GPU a one-byte budget refuses.
    assert GPU.fake is None
    configure({"policies": {"p": {"memory": {"max_gpu": 1}}}})
    f = guarded("p")(lambda: "ran")
    if cuda_available():
        with pytest.raises(MemoryBudgetExceeded) as exc:
            f()
        assert exc.value.device == "cuda:0" and exc.value.rss > 1
    else:
        assert f() == "ran"
        (warned,) = [r for r in logs.records if "not checked" in r.getMessage()]
        assert "cuda:0 memory cannot be read" in warned.getMessage()
        device = GPU.device(0)
        assert device.used() == UNREAD and device.reason


def test_nvml_starts_again_in_a_forked_child() -> None:
    GPU.device(0).read()  # the real reader, here or on a GPU box
    parent_state = (GPU.nvml._nvml is None, GPU.nvml._failed)
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            fresh = GPU.nvml._nvml is None and GPU.nvml._failed is None
            GPU.device(0).read()
            again = (GPU.nvml._nvml is None, GPU.nvml._failed) == parent_state
            os.write(writer, b"1" if fresh and again else b"0")
        finally:
            os._exit(0)
    os.close(writer)
    answer = os.read(reader, 1)
    os.close(reader)
    os.waitpid(pid, 0)
    assert answer == b"1"


# --- concurrency, reloads, overrides ----------------------------------------------------------


def test_threads_calling_while_memory_moves_and_the_config_reloads() -> None:
    with fake_gpu(total="16GiB", used="1GiB") as gpu:
        configure({"policies": {"m": {"memory": {"max_gpu": "50%", "soft_gpu": "40%"}}}})
        f = guarded("m")(lambda: "ran")
        stop = threading.Event()
        outcomes: list[str] = []
        problems: list[BaseException] = []

        def caller() -> None:
            while not stop.is_set():
                try:
                    outcomes.append(f())
                except MemoryBudgetExceeded:
                    outcomes.append("refused")
                except BaseException as exc:
                    problems.append(exc)
                    return

        threads = [threading.Thread(target=caller) for _ in range(4)]
        for t in threads:
            t.start()
        for i in range(60):
            gpu.used[0] = (i % 12) * GiB
            configure(
                {"policies": {"m": {"memory": {"max_gpu": f"{50 + i % 3}%", "soft_gpu": "40%"}}}}
            )
        stop.set()
        for t in threads:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in threads)
        assert problems == []
        assert "ran" in outcomes
        s = guardrails.stats()["m"]
        assert s.rejected == outcomes.count("refused")


def test_overriding_another_block_keeps_the_percentage() -> None:
    with fake_gpu(total="10GiB", used="6GiB"):
        configure({"policies": {"p": {"memory": {"max_gpu": "50%"}}}})
        f = guarded("p")(lambda: "ran")
        with override_policies() as use:
            settings = use({"p": {"retry": {"max_attempts": 2}}})
            assert settings.policy("p").memory.max_gpu == Percent(50.0)
            with pytest.raises(MemoryBudgetExceeded):
                f()


def test_a_hydra_override_sets_the_budget(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text(
        yaml.safe_dump({"guardrails": {"policies": {"predict": {"memory": {"max_rss": "100%"}}}}})
    )
    with fake_gpu(total="10GiB", used="6GiB") as gpu:
        configure(
            str(tmp_path),
            overrides=[
                "+guardrails.policies.predict.memory.max_gpu=50%",
                "+guardrails.policies.predict.memory.gpu=cuda:0",
            ],
        )
        f = guarded("predict")(lambda: "ran")
        with pytest.raises(MemoryBudgetExceeded) as exc:
            f()
        assert exc.value.limit == 5 * GiB
        gpu.used[0] = GiB
        assert f() == "ran"
        for overrides, says in (
            (["+guardrails.policies.predict.memory.gpu=3"], "neither is set"),
            (
                [
                    "+guardrails.policies.predict.memory.gpu=3",
                    "+guardrails.policies.predict.memory.soft_gpu=1GiB",
                ],
                "there is no GPU 3: the fake GPU sees 1 device (memory.gpu takes 0)",
            ),
        ):
            with pytest.raises(PolicyConfigError) as bad:
                configure(str(tmp_path), overrides=overrides)
            ((where, message),) = bad.value.problems
            assert where.startswith("guardrails.policies.predict.memory")
            assert says in message
            assert f() == "ran"  # the budget in force is kept


def test_visible_devices_as_cuda_reads_them() -> None:
    assert visible_devices(None, 3) == ["0", "1", "2"]
    assert visible_devices("2,0", 3) == ["2", "0"]
    assert visible_devices(" 1 , 0", 3) == ["1", "0"]
    assert visible_devices("", 3) == []
    assert visible_devices("-1", 3) == []
    assert visible_devices("0,0,1", 3) == ["0"]  # CUDA stops at a repeat
    assert visible_devices("1,7,0", 3) == ["1"]  # and at an index it does not have
    assert visible_devices("GPU-8f3a,1", 3) == ["GPU-8f3a", "1"]


# --- a real device -------------------------------------------------------------------------


@pytest.mark.gpu
@needs_cuda
def test_the_real_device_is_read_and_budgeted(clock: FakeClock) -> None:
    device = GPU.device(0)
    used = device.read()
    assert 0 < used < UNREAD and 0 < used <= device.total
    configure({"policies": {"big": {"memory": {"max_gpu": "100%", "soft_gpu": "100%"}}}})
    assert guarded("big")(lambda: "ran")() == "ran"
    configure({"policies": {"tiny": {"memory": {"max_gpu": 1}}}})
    with pytest.raises(MemoryBudgetExceeded) as exc:
        guarded("tiny")(lambda: "ran")()
    assert exc.value.device == "cuda:0"
