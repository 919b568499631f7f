"""Guarded functions in worker processes: multiprocessing (spawn and fork), process pools,
joblib (loky) and Dask, each worker running the driver's configuration.

Every pool runs in a driver script of its own (a subprocess): its guarded functions live in
a module written for the test (pickled by reference) or in the script itself (``__main__``,
which cloudpickle carries by value), never in this module, whose guarded functions would
outlive their test in this process's registry.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap
import types
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

import guardrails
from guardrails import PolicyConfigError, configure, guarded

#: The driver's configuration: `flaky` retries KeyError (no default does), so a worker that
#: runs anything else than the driver's configuration fails the call.
CONFIG = {
    "guardrails": {
        "strict": True,
        "policy_defaults": {"log": {"enabled": False}},
        "policies": {
            "flaky": {
                "retry": {
                    "max_attempts": 3,
                    "wait": {"initial": 0.001, "max": 0.001},
                    "retry_on": ["builtins.KeyError"],
                }
            }
        },
    }
}

WORKMOD = """
import os

import guardrails
from guardrails import guarded

_seen: set[int] = set()


@guarded("flaky")
def flaky(x: int) -> int:
    # Fails the first time each input is seen in this process: one retry per call.
    if x not in _seen:
        _seen.add(x)
        raise KeyError(x)
    return x * 2


def probe(_: object = None) -> tuple[int, guardrails.Settings]:
    return os.getpid(), guardrails.settings()


def run(x: int) -> tuple[int, int, int]:
    value = flaky(x)
    return value, os.getpid(), guardrails.stats()["flaky"].retries


def flaky_stats() -> tuple[int, int]:
    found = guardrails.stats().get("flaky")
    return (found.calls, found.retries) if found is not None else (0, 0)
"""

HEADER = f"""
import json
import os
import sys

import guardrails
import workmod

CONFIG = {CONFIG!r}
"""


def _run(tmp_path: Path, body: str, timeout: float = 120) -> dict[str, Any]:
    (tmp_path / "workmod.py").write_text(WORKMOD)
    script = tmp_path / "driver.py"
    script.write_text(HEADER + textwrap.dedent(body))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.getcwd()])}
    env.pop("GUARDRAILS_CONFIG", None)
    env.pop("GUARDRAILS_OVERRIDES", None)
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    last = done.stdout.strip().splitlines()[-1]
    return json.loads(last)  # type: ignore[no-any-return]


def _per_worker(results: list[list[int]]) -> dict[int, list[int]]:
    """pid -> the retries each of its calls saw in stats(), in order."""
    seen: dict[int, list[int]] = {}
    for _, pid, retries in results:
        seen.setdefault(pid, []).append(retries)
    return {pid: sorted(found) for pid, found in seen.items()}


def _check_runs(results: list[list[int]], inputs: range) -> None:
    assert [value for value, _, _ in results] == [x * 2 for x in inputs]
    for retries in _per_worker(results).values():
        # Each call retried once, counted in the worker's own stats().
        assert retries == list(range(1, len(retries) + 1))


# --- multiprocessing and concurrent.futures -----------------------------------------------


def test_spawn_pool_initializer_fork_and_process_pool_executor(tmp_path: Path) -> None:
    found = _run(
        tmp_path,
        """
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        def main():
            settings = guardrails.configure(CONFIG)
            out = {}
            spawn = multiprocessing.get_context("spawn")
            with spawn.Pool(2, initializer=guardrails.configure, initargs=(settings,)) as pool:
                out["spawn_same"] = [s == settings for _, s in pool.map(workmod.probe, range(4))]
                out["spawn_policy"] = [
                    s.policy("flaky") == guardrails.policy("flaky")
                    for _, s in pool.map(workmod.probe, range(4))
                ]
                out["spawn_runs"] = pool.map(workmod.run, range(8), chunksize=1)
            with spawn.Pool(1) as pool:  # no initializer: the packaged defaults
                _, alone = pool.apply(workmod.probe)
                out["bare_same"] = alone == settings
                try:
                    pool.apply(workmod.flaky, (1,))
                    out["bare_error"] = None
                except Exception as exc:
                    out["bare_error"] = type(exc).__name__
            with multiprocessing.get_context("fork").Pool(2) as pool:  # inherited
                out["fork_same"] = [s == settings for _, s in pool.map(workmod.probe, range(4))]
                out["fork_runs"] = pool.map(workmod.run, range(8), chunksize=1)
            with ProcessPoolExecutor(
                2, mp_context=spawn, initializer=guardrails.configure, initargs=(settings,)
            ) as ex:
                out["ppe_runs"] = list(ex.map(workmod.run, range(8)))
            print(json.dumps(out))

        if __name__ == "__main__":
            main()
        """,
    )
    assert found["spawn_same"] == [True] * 4
    assert found["spawn_policy"] == [True] * 4
    assert found["bare_same"] is False
    assert found["bare_error"] == "KeyError"  # the packaged defaults: no retry there
    assert found["fork_same"] == [True] * 4
    for key in ("spawn_runs", "fork_runs", "ppe_runs"):
        _check_runs(found[key], range(8))


# --- joblib (loky) ------------------------------------------------------------------------


def test_joblib_loky_module_and_main_functions(tmp_path: Path) -> None:
    found = _run(
        tmp_path,
        """
        from joblib import Parallel, delayed, parallel_config
        from guardrails import guarded

        _mine = set()

        @guarded("flaky")
        def in_main(x: int) -> list[int]:
            if x not in _mine:
                _mine.add(x)
                raise KeyError(x)
            return [x * 3, os.getpid(), guardrails.stats()["flaky"].retries]

        def main():
            settings = guardrails.configure(CONFIG)
            with parallel_config(
                backend="loky", initializer=guardrails.configure, initargs=(settings,)
            ):
                module = Parallel(n_jobs=2)(delayed(workmod.run)(x) for x in range(6))
                mine = Parallel(n_jobs=2)(delayed(in_main)(x) for x in range(6))
                same = Parallel(n_jobs=2)(delayed(workmod.probe)(x) for x in range(4))
            print(json.dumps({
                "module": module,
                "main": mine,
                "same": [s == settings for _, s in same],
                "driver_calls": workmod.flaky_stats()[0],
            }))

        if __name__ == "__main__":
            main()
        """,
    )
    _check_runs(found["module"], range(6))
    assert [v for v, _, _ in found["main"]] == [x * 3 for x in range(6)]
    assert all(retries >= 1 for _, _, retries in found["main"])
    assert found["same"] == [True] * 4
    assert found["driver_calls"] == 0  # every call ran in a worker


# --- Dask distributed ---------------------------------------------------------------------


def test_dask_local_cluster(tmp_path: Path) -> None:
    found = _run(
        tmp_path,
        """
        from dask.distributed import Client, LocalCluster
        from guardrails import guarded

        @guarded("flaky")
        def in_main(x: int) -> int:
            return workmod.flaky(x) + 1

        def main():
            settings = guardrails.configure(CONFIG)
            with LocalCluster(
                n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
            ) as cluster, Client(cluster) as client:
                client.run(guardrails.configure, settings)
                values = client.gather(client.map(workmod.flaky, range(10)))
                mine = client.gather(client.map(in_main, range(10, 14)))
                per_worker = client.run(workmod.flaky_stats)
                same = client.run(lambda: guardrails.settings() == settings)
            print(json.dumps({
                "values": values,
                "mine": mine,
                "stats": sorted(per_worker.values()),
                "same": sorted(same.values()),
            }))

        if __name__ == "__main__":
            main()
        """,
        timeout=180,
    )
    assert found["values"] == [x * 2 for x in range(10)]
    assert found["mine"] == [x * 2 + 1 for x in range(10, 14)]
    assert found["same"] == [True, True]
    # flaky ran 14 times over the two workers (10 direct, 4 inside in_main, both policy
    # `flaky`), each call retried once; in_main's own calls count under `flaky` too.
    calls = sum(c for c, _ in found["stats"])
    retries = sum(r for _, r in found["stats"])
    assert retries == 14
    assert calls == 14 + 4


# --- in this process: what the pools rely on -----------------------------------------------


def test_settings_pickle_and_configure_installs_them_as_they_are() -> None:
    settings = configure(CONFIG)
    assert guardrails.settings() is settings
    again = pickle.loads(pickle.dumps(settings))
    assert again == settings and again is not settings
    assert isinstance(again.policies, types.MappingProxyType)
    assert again.policy("flaky").retry is not None
    assert again.policy("flaky").retry.retry_on == (KeyError,)
    configure({})  # something else in force
    assert guardrails.policy("flaky") != settings.policy("flaky")
    assert configure(again) is again
    assert guardrails.settings() is again
    assert guardrails.policy("flaky") == settings.policy("flaky")


def test_settings_default_to_the_lazy_default() -> None:
    found = guardrails.settings()
    assert found.strict is False and dict(found.policies) == {}
    assert pickle.loads(pickle.dumps(found)) == found


def test_configure_settings_keeps_the_strict_checks() -> None:
    strict = configure(CONFIG)
    configure({})

    def orphan(x: int) -> int:
        return x

    kept = guarded("no_such_policy")(orphan)
    assert kept(1) == 1  # not strict: policy_defaults
    with pytest.raises(PolicyConfigError, match="no_such_policy"):
        configure(strict)
    assert guardrails.settings().strict is False  # nothing changed
    with pytest.raises(TypeError, match="overrides"):
        configure(strict, overrides=["guardrails.strict=false"])


def test_a_guarded_function_pickled_by_value_is_guarded_in_the_receiver() -> None:
    configure(CONFIG)
    seen: set[int] = set()

    @guarded("flaky")
    def nested(x: int) -> int:
        if x not in seen:
            seen.add(x)
            raise KeyError(x)
        return x + 1

    assert nested(1) == 2
    copy = cloudpickle.loads(cloudpickle.dumps(nested))
    assert copy is not nested
    slot = copy.__guardrails__
    assert slot is not nested.__guardrails__  # type: ignore[attr-defined]
    assert slot.name == "flaky" and slot.qualname == nested.__guardrails__.qualname  # type: ignore[attr-defined]
    before = guardrails.stats()["flaky"].retries
    assert copy(5) == 6  # retried in the copy: its chain is compiled here
    assert guardrails.stats()["flaky"].retries == before + 1
    # Registered: the next configure() recompiles it (no retry: KeyError goes through).
    configure({"policies": {"flaky": {}}})
    with pytest.raises(KeyError):
        copy(7)
