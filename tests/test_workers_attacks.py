"""Attacks on guarded functions and settings crossing process boundaries (pickle, cloudpickle).

The guarded functions pickled here are nested (or live in a module written for the test and
dropped after it), so none outlives its test in this process's registry.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import os
import pickle
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

import guardrails
from guardrails import PolicyConfigError, configure, guarded
from guardrails._core import SLOTS
from tests.test_workers import CONFIG as WORKERS

#: The driver's configuration of tests/test_workers.py, and a cached policy.
CONFIG = {
    "guardrails": {
        **WORKERS["guardrails"],
        "policies": {**WORKERS["guardrails"]["policies"], "fetch": {"cache": {"ttl": "1h"}}},
    }
}

MODULE = """
from guardrails import guarded

_seen: set[int] = set()


def _fetch(x: int) -> int:
    if x not in _seen:
        _seen.add(x)
        raise KeyError(x)
    return x + 1


# Bound to another name than the function's own: cloudpickle carries it by value.
fetch = guarded("flaky")(_fetch)


@guarded("flaky")
def flaky(x: int) -> int:
    if -x not in _seen:
        _seen.add(-x)
        raise KeyError(x)
    return x * 2
"""


@pytest.fixture
def workmod(tmp_path: Path) -> Iterator[Any]:
    """A module of guarded functions, importable by name, forgotten after the test."""
    name = f"workmod_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(MODULE)
    sys.path.insert(0, str(tmp_path))
    try:
        module = importlib.import_module(name)
        yield module
    finally:
        sys.path.remove(str(tmp_path))
        with contextlib.suppress(ValueError):  # registered by the test, or not
            cloudpickle.unregister_pickle_by_value(module)
        sys.modules.pop(name, None)
        del module
        gc.collect()


def _retries() -> int:
    return guardrails.stats()["flaky"].retries


# --- functions cloudpickle carries by value that the decorator could not foresee ------------


@pytest.mark.parametrize("called_first", [False, True])
def test_a_module_registered_for_pickling_by_value_carries_its_guarded_functions(
    workmod: Any, called_first: bool
) -> None:
    # Dask's advice for a module the workers cannot import: register it, and cloudpickle
    # carries its functions by value. The wrapper held its compiled chain (thread-locals,
    # locks): "TypeError: cannot pickle '_thread._local' object".
    configure(CONFIG)
    if called_first:
        assert workmod.flaky(1) == 2
    cloudpickle.register_pickle_by_value(workmod)
    copy = cloudpickle.loads(cloudpickle.dumps(workmod.flaky))
    assert copy is not workmod.flaky
    assert copy.__guardrails__ is not workmod.flaky.__guardrails__
    assert copy.__guardrails__.name == "flaky"
    before = _retries()
    assert copy(21) == 42  # its own module copy has not seen 21: one retry, in the copy
    assert _retries() == before + 1
    # The original still works, and pickles by reference again once unregistered.
    assert workmod.flaky(5) == 10
    cloudpickle.unregister_pickle_by_value(workmod)
    assert cloudpickle.loads(cloudpickle.dumps(workmod.flaky)) is workmod.flaky


def test_a_guarded_function_bound_to_another_name_pickles_by_value(workmod: Any) -> None:
    configure(CONFIG)
    assert workmod.fetch(1) == 2  # the original has its chain compiled
    with pytest.raises(pickle.PicklingError):
        pickle.dumps(workmod.fetch)  # as for any function not found under its own name
    copy = cloudpickle.loads(cloudpickle.dumps(workmod.fetch))
    before = _retries()
    assert copy(30) == 31
    assert _retries() == before + 1
    # Registered in this process: the next configure() recompiles the copy.
    configure({"policies": {"flaky": {}}})
    with pytest.raises(KeyError):
        copy(31)


# --- long-lived workers: what each task's copy leaves behind ---------------------------------


def _nested_flaky() -> Any:
    seen: set[int] = set()

    @guarded("flaky")
    def nested(x: int) -> int:
        if x not in seen:
            seen.add(x)
            raise KeyError(x)
        return x + 1

    return nested


def test_a_worker_unpickling_a_function_for_each_task_keeps_no_slot_per_task() -> None:
    configure(CONFIG)
    data = cloudpickle.dumps(_nested_flaky())
    gc.collect()
    registered = len(SLOTS)
    for x in range(300):
        assert cloudpickle.loads(data)(x) == x + 1
    gc.collect()
    assert len(SLOTS) == registered
    assert guardrails.stats()["flaky"].calls == 300


def test_a_recursive_function_carried_by_value_calls_its_guarded_copy() -> None:
    configure({"policies": {"fact": {}}})

    def make() -> Any:
        @guarded("fact")
        def fact(n: int) -> int:
            return 1 if n <= 1 else n * fact(n - 1)

        return fact

    copy = cloudpickle.loads(cloudpickle.dumps(make()))
    assert copy(6) == 720
    assert guardrails.stats()["fact"].calls == 6  # each level went through the guard


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_one_payload_keeps_identity_at_every_protocol(protocol: int) -> None:
    configure(CONFIG)
    fn = _nested_flaky()
    a, b = cloudpickle.loads(cloudpickle.dumps([fn, fn], protocol=protocol))
    assert a is b
    assert a(3) == 4 and _retries() == 1


def test_async_functions_methods_and_partials_carried_by_value() -> None:
    configure({"policies": {"p": {"retry": {"retry_on": ["builtins.KeyError"]}}}})

    def make() -> Any:
        seen: set[str] = set()

        def once(tag: str) -> None:
            if tag not in seen:
                seen.add(tag)
                raise KeyError(tag)

        class K:
            @guarded("p")
            def m(self, x: int) -> int:
                once("m")
                return x * 10

            @staticmethod
            @guarded("p")
            def s(x: int) -> int:
                once("s")
                return x * 100

            @classmethod
            @guarded("p")
            def c(cls, x: int) -> int:
                once("c")
                return x * 1000

        @guarded("p")
        async def co(x: int) -> int:
            once("co")
            return x + 1

        return K, co

    k, co = cloudpickle.loads(cloudpickle.dumps(make()))
    assert (k().m(1), k.s(1), k.c(1), asyncio.run(co(1))) == (10, 100, 1000, 2)
    assert guardrails.stats()["p"].retries == 4


def test_a_function_carried_to_a_strict_worker_without_its_policy_names_it() -> None:
    configure(CONFIG)

    def make() -> Any:
        @guarded("not_in_the_workers_config")
        def orphan(x: int) -> int:
            return x

        return orphan

    data = cloudpickle.dumps(make())
    copy = cloudpickle.loads(data)
    with pytest.raises(PolicyConfigError, match="no policy named 'not_in_the_workers_config'"):
        copy(1)
    # The error itself travels back to the driver.
    with pytest.raises(PolicyConfigError) as caught:
        copy(1)
    again = pickle.loads(pickle.dumps(caught.value))
    assert again.problems == caught.value.problems


# --- settings from another guardrails --------------------------------------------------------


def _pickled_by_another_version(tmp_path: Path) -> bytes:
    """Settings pickled by a copy of guardrails whose retry block has another set of keys
    (``deadline`` renamed, as a release might), in a process of its own."""
    other = tmp_path / "other"
    shutil.copytree(
        Path(guardrails.__file__).parent,
        other / "guardrails",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    retry = other / "guardrails" / "layers" / "retry.py"
    source = retry.read_text()
    field = "    deadline: Duration | None = None\n"
    assert source.count(field) == 1
    retry.write_text(source.replace(field, "    hedge_after: Duration | None = None\n" + field))
    script = (
        "import pickle, sys, guardrails\n"
        "assert guardrails.__file__.startswith(sys.argv[1]), guardrails.__file__\n"
        f"settings = guardrails.configure({CONFIG!r})\n"
        "sys.stdout.buffer.write(pickle.dumps(settings))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(other)],
        cwd=other,
        env={**os.environ, "PYTHONPATH": str(other)},
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    return done.stdout


def test_settings_pickled_by_another_guardrails_are_refused_when_unpickled(
    tmp_path: Path,
) -> None:
    settings = configure(CONFIG)
    data = _pickled_by_another_version(tmp_path)
    assert b"RetryConfig" in data and b"hedge_after" in data
    # Unpickled silently before: a RetryConfig with the other version's fields, which failed
    # each call of the policy with "AttributeError: 'RetryConfig' object has no attribute
    # 'deadline'" (here, or a field of a newer release ignored without a word).
    with pytest.raises(PolicyConfigError) as caught:
        pickle.loads(data)
    message = str(caught.value)
    assert "another version of guardrails" in message
    assert "same guardrails version" in message
    assert guardrails.settings() is settings  # nothing changed


def test_settings_pickled_here_still_unpickle_at_every_protocol() -> None:
    settings = configure(CONFIG)
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        for dumps in (pickle.dumps, cloudpickle.dumps):
            again = pickle.loads(dumps(settings, protocol=protocol))
            assert again == settings
            assert configure(again) is again


def test_settings_with_instance_of_equal_themselves_after_pickling() -> None:
    # pydantic's InstanceOf marker hashes by identity: a new one after unpickling made the
    # settings unequal (a new cache store and type adapter in every worker configured twice).
    settings = guardrails.configure(
        {"policies": {"p": {"validate": {"output": "dict[str, InstanceOf[numpy.ndarray]] | None"}}}}
    )
    back = pickle.loads(pickle.dumps(settings))
    assert back == settings
    output = settings.policies["p"].validate.output
    assert hash(back.policies["p"].validate.output) == hash(output)  # one type adapter
