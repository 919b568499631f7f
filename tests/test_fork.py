"""Forked children never hang on state a vanished thread held: stores, in-flight keys, locks.

A child of ``fork`` has only the thread that forked. Whatever the parent's other threads
held at that moment (a store's lock, a key they were computing) is never released in the
child, so each test forks while other threads are busy with guarded calls.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import random
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import guardrails
from guardrails import configure, guarded
from tests.twins import reap as _reap

pytestmark = pytest.mark.filterwarnings(
    # Python 3.12+ warns on any fork from a multi-threaded process: that is the point here.
    "ignore:This process .* is multi-threaded:DeprecationWarning"
)

KEYS = range(8)


def _square(x: int) -> int:
    # A little work, so that keys spend time in flight while the threads run.
    total = sum(i * i for i in range(300))
    return x * x + total - total


#: The guarded function under test, made per test so that it never outlives its test (a
#: guarded function with no policy would trip other tests' strict configurations).
_current: dict[str, Any] = {}


def square(x: int) -> int:
    return _current["square"](x)  # type: ignore[no-any-return]


def _store() -> Any:
    return _current["square"].__guardrails__.store


@pytest.fixture(autouse=True)
def _guarded_square() -> Iterator[None]:
    _current["square"] = guarded("forked")(_square)
    yield
    _current.clear()


@pytest.fixture
def busy_threads() -> Iterator[threading.Event]:
    """Four threads making cache misses (two entries for eight keys) until the test ends."""
    configure({"policies": {"forked": {"cache": {"ttl": 60, "maxsize": 2}}}})
    stop = threading.Event()

    def work(seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            square(rng.choice(KEYS))

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(4)]
    for t in threads:
        t.start()
    yield stop
    stop.set()
    for t in threads:
        t.join(10)


def _child_body() -> int:
    # Every key, so that any key in flight in the parent at the fork is asked for.
    ok = all(square(k) == k * k for k in KEYS)
    guardrails.clear_caches()
    ok = ok and all(square(k) == k * k for k in KEYS)
    return 0 if ok else 1


def test_forty_forks_while_four_threads_make_misses_all_finish(
    busy_threads: threading.Event,
) -> None:
    statuses = []
    for _ in range(40):
        pid = os.fork()
        if pid == 0:  # the child: never return into pytest
            code = 1
            try:
                code = _child_body()
            finally:
                os._exit(code)
        statuses.append(_reap(pid))
    assert statuses == [0] * 40, f"children that hung (None) or failed: {statuses}"


def _pool_task(x: int) -> int:
    return square(x)


def test_a_fork_pool_started_while_threads_run_just_works(busy_threads: threading.Event) -> None:
    ctx = multiprocessing.get_context("fork")
    for _ in range(5):
        with ctx.Pool(2) as pool:
            result = pool.map_async(_pool_task, list(KEYS) * 4)
            assert result.get(timeout=60) == [k * k for k in KEYS] * 4


def test_a_child_keeps_the_parents_entries_when_no_lock_was_held() -> None:
    configure({"policies": {"forked": {"cache": {"ttl": 60}}}})
    for k in KEYS:
        square(k)
    hits_before = guardrails.stats()["forked"].cache_hits
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(read)
            for k in KEYS:
                square(k)
            os.write(write, str(guardrails.stats()["forked"].cache_hits - hits_before).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    assert _reap(pid) == 0
    with os.fdopen(read) as pipe:
        assert int(pipe.read()) == len(KEYS)  # a forked worker starts warm


def _run_in_fork(fn: Any) -> int | None:
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = fn()
        finally:
            os._exit(code)
    return _reap(pid)


@contextlib.contextmanager
def _held_on_another_thread(held_by: Any) -> Iterator[None]:
    """While the body runs, another thread is inside ``with held_by:`` (a lock, a pause), as a
    thread in the middle of ``configure()`` would be when this one forks."""
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with held_by:
            held.set()
            release.wait(30)

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    held.wait(10)
    try:
        yield
    finally:
        release.set()
        holder.join(10)


def test_a_child_forked_while_the_configuration_lock_is_held_can_configure() -> None:
    from guardrails._state import STATE

    configure({"policies": {"forked": {"cache": {"ttl": 60}}}})

    def child() -> int:
        configure({"policies": {"forked": {"cache": {"ttl": 30}}}})
        return 0 if square(3) == 9 else 1

    with _held_on_another_thread(STATE.lock):
        assert _run_in_fork(child) == 0


def test_a_child_forked_while_a_store_lock_is_held_starts_that_cache_empty() -> None:
    configure({"policies": {"forked": {"cache": {"ttl": 60}}}})
    square(2)
    store = _store()
    store.lock.acquire()  # as a parent thread in the middle of an update would
    try:

        def child() -> int:
            misses = guardrails.stats()["forked"].cache_misses
            ok = square(2) == 4 and guardrails.stats()["forked"].cache_misses == misses + 1
            return 0 if ok else 1

        assert _run_in_fork(child) == 0
    finally:
        store.lock.release()


def test_a_child_forked_while_another_thread_composes_a_config_dir_can_compose(
    tmp_path: Any,
) -> None:
    from guardrails._config import _compose_lock

    (tmp_path / "config.yaml").write_text(
        "guardrails:\n  policies:\n    forked: {cache: {ttl: 30}}\n"
    )

    def child() -> int:
        configure(str(tmp_path))
        return 0 if square(3) == 9 else 1

    with _held_on_another_thread(_compose_lock):
        assert _run_in_fork(child) == 0


def test_a_child_forked_while_another_thread_configures_has_the_collector_on() -> None:
    import gc

    from guardrails._core import _collector_paused

    assert gc.isenabled()
    with _held_on_another_thread(_collector_paused()):
        assert _run_in_fork(lambda: 0 if gc.isenabled() else 1) == 0
    assert gc.isenabled()


def test_a_child_forked_inside_a_with_block_of_a_module_lock_leaves_it_and_locks_again() -> None:
    # The forking thread survives in the child and leaves its `with` blocks there: each must
    # release the lock it took, though the child has renewed the lock since.
    from guardrails._state import STATE
    from guardrails.layers.memory import _COLLECTIONS

    configure({"policies": {"forked": {"cache": {"ttl": 60}}}})
    for lock, depth in [(STATE.lock, 1), (STATE.lock, 2), (_COLLECTIONS.lock, 1)]:

        def fork_inside(lock: Any = lock, depth: int = depth) -> int | None:
            with contextlib.ExitStack() as stack:
                for _ in range(depth):  # the global lock is re-entrant
                    stack.enter_context(lock)
                pid = os.fork()
                if pid == 0:
                    code = 1
                    try:
                        stack.close()  # leaves the blocks in the child
                        with lock:  # and the lock works afterwards
                            code = 0 if square(3) == 9 else 1
                    finally:
                        os._exit(code)
            return _reap(pid)

        assert fork_inside() == 0, (lock, depth)
