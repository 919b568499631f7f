from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import logging
import threading
import time
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import guardrails
from guardrails import configure, guarded
from guardrails.testing import FakeClock
from tests.twins import guard_as


def cache_policy(**cache: Any) -> None:
    configure({"policies": {"c": {"cache": cache}}})


class Counter:
    def __init__(self) -> None:
        self.calls: list[Any] = []

    def __call__(self, *args: Any) -> Any:
        self.calls.append(args)
        return args


def test_hits_skip_the_function_and_keys_use_bound_arguments() -> None:
    cache_policy(ttl=60)
    seen = []

    @guarded("c")
    def f(x: int, y: int = 2) -> int:
        seen.append((x, y))
        return x + y

    assert f(1) == f(x=1) == f(1, 2) == f(1, y=2) == 3
    assert seen == [(1, 2)]
    s = guardrails.stats()["c"]
    assert (s.cache_hits, s.cache_misses, s.calls) == (3, 1, 4)


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_scalars_of_different_types_do_not_share_entries(kind: str) -> None:
    cache_policy(ttl=60)
    counter = Counter()
    f = guard_as(kind, lambda x: counter(x), "c")
    assert [f(1), f(1.0), f(True)] == [(1,), (1.0,), (True,)]
    assert type(f(1.0)[0]) is float
    assert len(counter.calls) == 3


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_ttl_expiry_on_the_clock(kind: str, clock: FakeClock) -> None:
    cache_policy(ttl="30s")
    counter = Counter()
    f = guard_as(kind, lambda x: counter(x), "c")
    f(1)
    clock.advance(29)
    f(1)
    assert len(counter.calls) == 1
    clock.advance(2)
    f(1)
    assert len(counter.calls) == 2


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_maxsize_evicts_least_recently_used(kind: str) -> None:
    cache_policy(ttl=60, maxsize=2)
    counter = Counter()
    f = guard_as(kind, lambda x: counter(x), "c")
    f(1), f(2), f(1), f(3)  # 2 is the least recently used when 3 arrives
    f(1)
    assert len(counter.calls) == 3
    f(2)
    assert len(counter.calls) == 4


def test_exceptions_are_never_cached() -> None:
    cache_policy(ttl=60)
    attempts = []

    @guarded("c")
    def f(x: int) -> int:
        attempts.append(x)
        if len(attempts) == 1:
            raise RuntimeError("boom")
        return x

    with pytest.raises(RuntimeError):
        f(1)
    assert f(1) == 1 and f(1) == 1
    assert len(attempts) == 2


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_functions_sharing_a_policy_have_their_own_caches(kind: str) -> None:
    cache_policy(ttl=60)
    f = guard_as(kind, lambda x: ("f", x), "c")
    g = guard_as(kind, lambda x: ("g", x), "c")
    assert f(1) == ("f", 1)
    assert g(1) == ("g", 1)
    assert guardrails.stats()["c"].cache_misses == 2


def test_key_subset() -> None:
    cache_policy(ttl=60, key=["user_id"])
    counter = Counter()

    @guarded("c")
    def f(user_id: str, session: object) -> Any:
        return counter(user_id)

    f("u1", object())
    f("u1", object())  # unhashable-by-value session is not part of the key
    assert len(counter.calls) == 1


def test_unhashable_argument_names_itself_and_the_fix() -> None:
    cache_policy(ttl=60)

    class Session:
        __hash__ = None  # type: ignore[assignment]

    @guarded("c")
    def f(user_id: str, session: Session) -> str:
        return user_id

    with pytest.raises(TypeError) as exc:
        f("u1", Session())
    message = str(exc.value)
    assert "argument 'session'" in message
    assert "guardrails.policies.c.cache.key" in message


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_numpy_arrays_key_by_content(kind: str) -> None:
    cache_policy(ttl=60)
    counter = Counter()
    f = guard_as(kind, lambda a: counter(float(a.sum())), "c")
    a = np.arange(10.0)
    f(a)
    f(a.copy())
    assert len(counter.calls) == 1
    b = a.copy()
    b[3] = 100
    f(b)
    assert len(counter.calls) == 2


def test_dicts_and_lists_as_arguments() -> None:
    cache_policy(ttl=60)
    counter = Counter()
    f = guarded("c")(lambda d: counter(1))
    f({"a": [1, 2], "b": 3})
    f({"b": 3, "a": [1, 2]})
    assert len(counter.calls) == 1
    f({"a": [2, 1], "b": 3})
    assert len(counter.calls) == 2


def _wait_for(condition: Any) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in 10 s"
        time.sleep(0.001)


def _waiters(f: Any) -> int:
    store = f.__guardrails__.store
    flights = list(store.inflight.values())
    return int(flights[0].waiters) if flights else 0


def _all_at_once(call: Any, f: Any, threads: int, release: threading.Event) -> None:
    """Start the callers, wait until all but the leader wait on its result, then release it."""
    pool = [threading.Thread(target=call) for _ in range(threads)]
    for t in pool:
        t.start()
    _wait_for(lambda: _waiters(f) == threads - 1)
    release.set()
    for t in pool:
        t.join()


@pytest.mark.parametrize("threads", [8, 16])
def test_concurrent_misses_on_one_key_compute_once(threads: int) -> None:
    cache_policy(ttl=60)
    release = threading.Event()
    computed = []

    @guarded("c")
    def f(x: int) -> int:
        computed.append(x)
        release.wait(10)
        return x * 10

    results: list[int] = []
    _all_at_once(lambda: results.append(f(7)), f, threads, release)
    assert computed == [7]
    assert results == [70] * threads
    s = guardrails.stats()["c"]
    assert (s.cache_misses, s.cache_hits) == (1, threads - 1)


def test_concurrent_waiters_share_the_leaders_exception_and_nothing_is_cached() -> None:
    cache_policy(ttl=60)
    release = threading.Event()
    computed = []

    @guarded("c")
    def f(x: int) -> int:
        computed.append(x)
        release.wait(10)
        if len(computed) == 1:
            raise ConnectionError("upstream down")
        return x

    errors: list[BaseException] = []

    def call() -> None:
        try:
            f(1)
        except ConnectionError as exc:
            errors.append(exc)

    _all_at_once(call, f, 8, release)
    assert len(errors) == 8 and computed == [1]
    assert f(1) == 1  # the failure was not cached
    assert len(computed) == 2


def test_async_concurrent_misses_compute_once() -> None:
    cache_policy(ttl=60)
    computed = []

    @guarded("c")
    async def f(x: int) -> int:
        computed.append(x)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        return x + 1

    async def main() -> list[int]:
        return await asyncio.gather(*[f(1) for _ in range(8)])

    assert asyncio.run(main()) == [2] * 8
    assert computed == [1]
    s = guardrails.stats()["c"]
    assert (s.cache_misses, s.cache_hits) == (1, 7)


def test_async_leader_failure_reaches_waiters_and_is_not_cached() -> None:
    cache_policy(ttl=60)
    computed = []

    @guarded("c")
    async def f(x: int) -> int:
        computed.append(x)
        await asyncio.sleep(0)
        if len(computed) == 1:
            raise ConnectionError("down")
        return x

    async def main() -> list[Any]:
        return await asyncio.gather(*[f(1) for _ in range(4)], return_exceptions=True)

    results = asyncio.run(main())
    assert all(isinstance(r, ConnectionError) for r in results)
    assert asyncio.run(f(1)) == 1


def test_async_cancelled_leader_lets_a_waiter_compute() -> None:
    cache_policy(ttl=60)
    started = []

    @guarded("c")
    async def f(x: int) -> int:
        started.append(x)
        await asyncio.sleep(0.001 if len(started) > 1 else 10)
        return x

    async def main() -> int:
        leader = asyncio.create_task(f(1))
        await asyncio.sleep(0)
        waiter = asyncio.create_task(f(1))
        await asyncio.sleep(0)
        leader.cancel()
        return await waiter

    assert asyncio.run(main()) == 1
    assert len(started) == 2


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_reconfigure_keeps_a_cache_whose_settings_did_not_change(kind: str) -> None:
    cache_policy(ttl=60)
    counter = Counter()
    f = guard_as(kind, lambda x: counter(x), "c")
    f(1)
    configure({"policies": {"c": {"cache": {"ttl": 60}, "retry": {"max_attempts": 2}}}})
    f(1)
    assert len(counter.calls) == 1
    configure({"policies": {"c": {"cache": {"ttl": 61}}}})
    f(1)
    assert len(counter.calls) == 2


def test_cache_disabled_or_removed() -> None:
    configure({"policies": {"c": {"cache": {"ttl": 60, "enabled": False}}}})
    counter = Counter()
    f = guarded("c")(lambda x: counter(x))
    f(1), f(1)
    assert len(counter.calls) == 2
    assert guardrails.stats()["c"].cache_hits == 0


# Five keys for three entries: evictions and returns to an evicted key are common; clock
# moves reach the TTL of 5 exactly.
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("call"), st.integers(min_value=0, max_value=4)),
        st.tuples(st.just("advance"), st.integers(min_value=0, max_value=6)),
    ),
    max_size=60,
)


def _expected_hits(ops: list[tuple[str, int]], ttl: float, maxsize: int) -> list[bool]:
    """A reference TTL + LRU cache: which calls hit. An entry lives while ``now < expires``;
    a miss drops the expired entries, then the least recently used beyond ``maxsize``."""
    now, model, hits = 1000.0, collections.OrderedDict[int, float](), []
    for op, n in ops:
        if op == "advance":
            now += n
            continue
        if n in model and now < model[n]:
            model.move_to_end(n)
            hits.append(True)
            continue
        for k in [k for k, expires in model.items() if expires <= now]:
            del model[k]
        model.pop(n, None)
        if len(model) >= maxsize:
            model.popitem(last=False)
        model[n] = now + ttl
        hits.append(False)
    return hits


@pytest.mark.parametrize("kind", ["sync", "async"])
@given(ops=OPS)
@settings(max_examples=150, deadline=None)
def test_the_cache_layer_hits_exactly_as_a_reference_ttl_lru_cache(
    kind: str, ops: list[tuple[str, int]]
) -> None:
    """Driven through a real guarded function: every call returns its own value, and hits and
    misses (expiry at the TTL, least-recently-used eviction) are exactly the reference's."""
    with guardrails.testing.fake_clock(FakeClock(start=1000.0)) as fake:
        configure({"policies": {"c": {"cache": {"ttl": 5, "maxsize": 3}}}})
        computed: list[int] = []

        def work(x: int) -> int:
            computed.append(x)
            return x * 10

        f = guard_as(kind, work, "c")
        hits = []
        for op, n in ops:
            if op == "advance":
                fake.advance(n)
                continue
            before = len(computed)
            assert f(n) == n * 10
            hits.append(len(computed) == before)
        assert hits == _expected_hits(ops, ttl=5, maxsize=3)


def test_threads_never_see_a_wrong_value_under_eviction_and_expiry(clock: FakeClock) -> None:
    import random

    cache_policy(ttl=5, maxsize=8)

    @guarded("c")
    def square(x: int) -> int:
        return x * x

    wrong: list[tuple[int, int]] = []
    stop = threading.Event()

    def caller(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(3000):
            x = rng.randrange(40)
            got = square(x)
            if got != x * x:
                wrong.append((x, got))

    def ticker() -> None:
        while not stop.is_set():
            clock.advance(1)
            time.sleep(0)

    tick = threading.Thread(target=ticker)
    tick.start()
    pool = [threading.Thread(target=caller, args=(i,)) for i in range(8)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    stop.set()
    tick.join()
    assert wrong == []
    s = guardrails.stats()["c"]
    assert s.cache_hits + s.cache_misses == 8 * 3000 and s.cache_hits > 0
    store = square.__guardrails__.store  # type: ignore[attr-defined]
    with store.lock:
        store.cache.expire()
        assert set(store.cache.view) == set(store.cache.keys())
        assert len(store.cache) <= 8


# --- Keys follow Python's binding: no shortcut may merge calls Python tells apart ---------


def test_star_args_calls_that_python_tells_apart_do_not_share_an_entry() -> None:
    cache_policy(ttl=60)
    counter = Counter()

    @guarded("c")
    def f(*args: Any) -> Any:
        return counter(*args)

    assert f((1, 2)) == ((1, 2),)
    assert f(1, 2) == (1, 2)
    assert f(()) == ((),)
    assert f() == ()
    assert len(counter.calls) == 4


def test_star_args_calls_that_python_tells_apart_do_not_share_an_entry_async() -> None:
    cache_policy(ttl=60)
    calls: list[Any] = []

    @guarded("c")
    async def f(*args: Any) -> Any:
        calls.append(args)
        return args

    async def main() -> list[Any]:
        return [await f((1, 2)), await f(1, 2), await f(()), await f()]

    assert asyncio.run(main()) == [((1, 2),), (1, 2), ((),), ()]
    assert len(calls) == 4


def test_a_keyword_only_parameter_passed_by_position_fails_like_python() -> None:
    cache_policy(ttl=60)

    @guarded("c")
    def f(*, a: int) -> int:
        return a * 2

    assert f(a=5) == 10
    with pytest.raises(TypeError, match="positional"):
        f(5)  # type: ignore[misc]


def test_a_keyword_only_parameter_passed_by_position_fails_like_python_async() -> None:
    cache_policy(ttl=60)

    @guarded("c")
    async def f(*, a: int) -> int:
        return a * 2

    assert asyncio.run(f(a=5)) == 10
    with pytest.raises(TypeError, match="positional"):
        asyncio.run(f(5))  # type: ignore[misc]


@pytest.mark.parametrize(
    ("cache", "path", "expected"),
    [
        ({"key": []}, "cache.key", "at least one parameter"),
        ({"key": ["x", "x"]}, "cache.key", "each parameter name once"),
        ({"maxsize": 10**19}, "cache.maxsize", "less than or equal to"),
        ({"maxsize": 1e19}, "cache.maxsize", "valid integer"),
    ],
)
def test_cache_settings_that_would_merge_every_call_or_overflow_are_refused(
    cache: dict[str, Any], path: str, expected: str
) -> None:
    @guarded("c")
    def f(x: int) -> int:
        return x

    configure({"policies": {"c": {"cache": {"ttl": 60}}}})
    with pytest.raises(guardrails.PolicyConfigError) as exc:
        configure({"policies": {"c": {"cache": cache}}})
    ((where, message),) = exc.value.problems
    assert where == f"guardrails.policies.c.{path}"
    assert expected in message
    assert guardrails.policy("c").cache is not None
    assert guardrails.policy("c").cache.maxsize == 1024  # the configuration in force stays


# --- One-shot values are never cached ------------------------------------------------------


def test_a_sync_function_returning_a_coroutine_is_refused_with_the_fix() -> None:
    cache_policy(ttl=60)
    calls = []

    async def work(x: int) -> int:
        return x

    @guarded("c")
    def f(x: int) -> Any:
        calls.append(x)
        return work(x)

    for _ in range(2):  # nothing was stored: the second call runs the function again
        with pytest.raises(TypeError) as exc:
            f(1)
        assert "policy 'c'" in str(exc.value) and "async def" in str(exc.value)
    assert calls == [1, 1]  # and the coroutines were closed: no "never awaited" warning


@pytest.mark.parametrize(
    "make",
    [
        lambda: (i for i in range(3)),
        lambda: iter([1, 2, 3]),
        lambda: map(str, [1, 2]),
        lambda: asyncio.sleep(0),
    ],
    ids=["generator", "list_iterator", "map", "coroutine"],
)
def test_one_shot_values_are_refused_and_never_stored(make: Any) -> None:
    cache_policy(ttl=60)
    f = guarded("c")(lambda x: make())
    with pytest.raises(TypeError, match="consumed only once"):
        f(1)
    assert guardrails.stats()["c"].cache_hits == 0
    with pytest.raises(TypeError, match="consumed only once"):
        f(1)


def test_an_async_function_returning_a_one_shot_value_is_refused() -> None:
    cache_policy(ttl=60)

    @guarded("c")
    async def f(x: int) -> Any:
        return (i for i in range(x))

    for _ in range(2):
        with pytest.raises(TypeError, match="consumed only once"):
            asyncio.run(f(3))
    assert guardrails.stats()["c"].cache_hits == 0


# --- Re-entry: recursion behaves as without the decorator, never waits on itself ----------


def _finishes(target: Any) -> Any:
    """Run ``target`` on a thread; fail (rather than hang the suite) if it never returns."""
    box: list[Any] = []
    thread = threading.Thread(target=lambda: box.append(target()), daemon=True)
    thread.start()
    thread.join(20)
    assert not thread.is_alive(), "the call deadlocked"
    return box[0]


def test_a_function_that_calls_itself_with_the_same_key_recurses() -> None:
    cache_policy(ttl=60)
    depth = []

    @guarded("c")
    def f(x: int) -> int:
        depth.append(x)
        return f(x) + 1 if len(depth) < 3 else 0

    assert _finishes(lambda: f(1)) == 2
    assert depth == [1, 1, 1]
    assert f(1) == 2 and len(depth) == 3  # the outermost result is the cached one


def test_same_key_recursion_through_another_guarded_function() -> None:
    configure({"policies": {"c": {"cache": {"ttl": 60}}, "d": {"cache": {"ttl": 60}}}})
    depth = []

    @guarded("c")
    def f(x: int) -> int:
        depth.append(x)
        return g(x) if len(depth) < 3 else 0

    @guarded("d")
    def g(x: int) -> int:
        return f(x) + 1

    assert _finishes(lambda: f(1)) == 2


def test_unbounded_same_key_recursion_raises_recursion_error() -> None:
    cache_policy(ttl=60)

    @guarded("c")
    def f(x: int) -> int:
        return f(x)

    def call() -> str:
        try:
            f(1)
        except RecursionError:
            return "RecursionError"
        return "returned"

    assert _finishes(call) == "RecursionError"
    assert f.__guardrails__.store.inflight == {}


def test_async_same_key_recursion_in_one_task_and_through_child_tasks() -> None:
    cache_policy(ttl=60)
    depth = []

    @guarded("c")
    async def f(x: int) -> int:
        depth.append(x)
        if len(depth) == 1:
            return await f(x) + 1  # the same task
        if len(depth) == 2:
            return await asyncio.create_task(f(x)) + 1  # a child task, awaited by its parent
        return 0

    async def main() -> int:
        return await asyncio.wait_for(f(1), 20)

    assert asyncio.run(main()) == 2
    assert depth == [1, 1, 1]


def test_async_unbounded_same_key_recursion_raises_recursion_error() -> None:
    cache_policy(ttl=60)

    @guarded("c")
    async def f(x: int) -> int:
        return await f(x)

    async def main() -> None:
        await asyncio.wait_for(f(1), 20)

    with pytest.raises(RecursionError):
        asyncio.run(main())


# --- A failed call frees its arguments at once (no exception <-> frame cycle) --------------


class _FormatAndForget(logging.Handler):
    """Formats each record, traceback included, and keeps nothing, as a production handler."""

    def emit(self, record: logging.LogRecord) -> None:
        self.format(record)


def _freed_after_failure(call: Any, *, threads: int = 1) -> bool:
    """Whether a failing call's array argument dies with the exception, without the cyclic GC."""
    import weakref

    gc_was_on = gc.isenabled()
    gc.disable()
    # pytest's log capture keeps every record, and a record keeps its exception's traceback.
    logger = logging.getLogger("guardrails")
    handler, propagate = _FormatAndForget(), logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        arr = np.ones(1000)
        ref = weakref.ref(arr)
        call(arr, threads)
        del arr
        return ref() is None
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate
        if gc_was_on:
            gc.enable()


@pytest.mark.parametrize("log", [True, False])
@pytest.mark.parametrize("threads", [1, 4])
def test_a_failed_call_keeps_no_argument_alive(log: bool, threads: int) -> None:
    configure({"policies": {"c": {"cache": {"ttl": 60}, "log": {"enabled": log}}}})
    release = threading.Event()

    @guarded("c")
    def f(a: Any) -> Any:
        release.wait(10)
        raise ConnectionError("down")

    def call(arr: Any, n: int) -> None:
        def one() -> None:
            with contextlib.suppress(ConnectionError):
                f(arr)

        if n == 1:
            release.set()
            one()
            return
        pool = [threading.Thread(target=one) for _ in range(n)]
        for t in pool:
            t.start()
        _wait_for(lambda: _waiters(f) == n - 1)
        release.set()
        for t in pool:
            t.join()

    assert _freed_after_failure(call, threads=threads)


@pytest.mark.parametrize("log", [True, False])
@pytest.mark.parametrize("tasks", [1, 4])
def test_a_failed_async_call_keeps_no_argument_alive(log: bool, tasks: int) -> None:
    configure({"policies": {"c": {"cache": {"ttl": 60}, "log": {"enabled": log}}}})

    @guarded("c")
    async def f(a: Any) -> Any:
        await asyncio.sleep(0)
        raise ConnectionError("down")

    def call(arr: Any, n: int) -> None:
        async def main() -> None:
            results = await asyncio.gather(*[f(arr) for _ in range(n)], return_exceptions=True)
            assert all(isinstance(r, ConnectionError) for r in results)

        asyncio.run(main())

    assert _freed_after_failure(call, threads=tasks)


# --- clear_caches() -------------------------------------------------------------------------


def test_clear_caches_empties_one_policy_or_all() -> None:
    configure({"policies": {"a": {"cache": {"ttl": 60}}, "b": {"cache": {"ttl": 60}}}})
    counter = Counter()
    fa = guarded("a")(lambda x: counter("a", x))
    fb = guarded("b")(lambda x: counter("b", x))
    fa(1), fb(1)
    guardrails.clear_caches("a")
    fa(1), fb(1)
    assert counter.calls == [("a", 1), ("b", 1), ("a", 1)]
    guardrails.clear_caches()
    fa(1), fb(1)
    assert len(counter.calls) == 5
    guardrails.clear_caches("no such policy")  # nothing to clear is not an error


def test_a_computation_in_flight_during_clear_caches_is_not_stored() -> None:
    cache_policy(ttl=60)
    started, release = threading.Event(), threading.Event()
    counter = Counter()

    @guarded("c")
    def f(x: int) -> Any:
        started.set()
        release.wait(10)
        return counter(x)

    thread = threading.Thread(target=f, args=(1,))
    thread.start()
    started.wait(10)
    guardrails.clear_caches()  # e.g. the data behind f changed while it ran
    release.set()
    thread.join()
    f(1)
    assert len(counter.calls) == 2


def test_a_computation_in_flight_during_clear_caches_is_not_stored_async() -> None:
    cache_policy(ttl=60)
    calls = []

    @guarded("c")
    async def f(x: int) -> int:
        calls.append(x)
        await asyncio.sleep(0)
        return x

    async def main() -> None:
        task = asyncio.create_task(f(1))
        await asyncio.sleep(0)
        guardrails.clear_caches()
        await task
        await f(1)

    asyncio.run(main())
    assert calls == [1, 1]


def test_a_new_output_type_is_never_answered_from_the_old_cache() -> None:
    cache_policy(ttl=60)

    @guarded("c")
    def f(x: int) -> Any:
        return {"score": "not a number"}

    f(1)
    configure({"policies": {"c": {"cache": {"ttl": 60}, "validate": {"output": "float"}}}})
    with pytest.raises(guardrails.OutputValidationError):
        f(1)  # the stored value was never validated as a float


def test_a_new_output_type_is_never_answered_from_the_old_cache_async() -> None:
    cache_policy(ttl=60)

    @guarded("c")
    async def f(x: int) -> Any:
        return {"score": "not a number"}

    asyncio.run(f(1))
    configure({"policies": {"c": {"cache": {"ttl": 60}, "validate": {"output": "float"}}}})
    with pytest.raises(guardrails.OutputValidationError):
        asyncio.run(f(1))


def test_an_unchanged_output_type_keeps_the_cache() -> None:
    configure({"policies": {"c": {"cache": {"ttl": 60}, "validate": {"output": "float"}}}})
    counter = Counter()
    f = guarded("c")(lambda x: counter(x) and 1.5)
    f(1)
    configure(
        {"policies": {"c": {"cache": {"ttl": 60}, "validate": {"output": "float"}, "retry": {}}}}
    )
    f(1)
    assert len(counter.calls) == 1


# --- Waiters raise their own copy of the leader's exception --------------------------------


class Upstream(ConnectionError):
    """Weakly referenceable, unlike the built-in exceptions."""


def test_each_waiter_raises_its_own_copy_caused_by_the_leaders_exception() -> None:
    cache_policy(ttl=60)
    release = threading.Event()

    @guarded("c")
    def f(x: int) -> int:
        release.wait(10)
        raise Upstream("down")

    errors: list[BaseException] = []

    def call() -> None:
        try:
            f(1)
        except Upstream as exc:
            errors.append(exc)

    _all_at_once(call, f, 4, release)
    (leader,) = [e for e in errors if e.__cause__ is None]
    waiters = [e for e in errors if e is not leader]
    assert len(waiters) == 3 and len({id(e) for e in errors}) == 4
    assert all(type(e) is Upstream and e.__cause__ is leader for e in waiters)
    assert all(str(e) == "down" for e in waiters)


def test_each_waiter_raises_its_own_copy_async() -> None:
    cache_policy(ttl=60)

    @guarded("c")
    async def f(x: int) -> int:
        await asyncio.sleep(0)
        raise Upstream("down")

    async def main() -> list[Any]:
        return await asyncio.gather(*[f(1) for _ in range(4)], return_exceptions=True)

    errors = asyncio.run(main())
    (leader,) = [e for e in errors if e.__cause__ is None]
    assert all(e.__cause__ is leader and type(e) is Upstream for e in errors if e is not leader)
    assert len({id(e) for e in errors}) == 4


def test_waiters_arguments_die_while_the_leaders_caller_keeps_its_exception() -> None:
    import weakref

    # No log block: pytest's log capture would keep every failure record, traceback and all.
    configure({"policies": {"c": {"cache": {"ttl": 60}, "log": None}}})
    release = threading.Event()
    leader_started = threading.Event()

    @guarded("c")
    def f(a: Any) -> Any:
        leader_started.set()
        release.wait(10)
        raise Upstream("down")

    kept: list[BaseException] = []
    refs = []

    def leader() -> None:
        try:
            f(np.zeros(100))
        except Upstream as exc:
            kept.append(exc)  # as an error reporter would

    def waiter() -> None:
        arr = np.zeros(100)  # an equal value: the same key, so it waits on the leader
        refs.append(weakref.ref(arr))
        with contextlib.suppress(Upstream):
            f(arr)

    gc.disable()
    try:
        first = threading.Thread(target=leader)
        first.start()
        leader_started.wait(10)
        rest = [threading.Thread(target=waiter) for _ in range(3)]
        for t in rest:
            t.start()
        _wait_for(lambda: _waiters(f) == 3)
        release.set()
        for t in [first, *rest]:
            t.join()
        assert kept and all(ref() is None for ref in refs)
    finally:
        gc.enable()


def test_same_key_re_entry_through_a_thread_that_carries_the_context() -> None:
    import concurrent.futures
    import contextvars

    cache_policy(ttl=60)
    depth = []

    @guarded("c")
    def f(x: int) -> int:
        depth.append(x)
        if len(depth) > 1:
            return 0
        ctx = contextvars.copy_context()  # as asyncio.to_thread does
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            return pool.submit(ctx.run, f, x).result() + 1

    assert _finishes(lambda: f(1)) == 1


def test_same_key_re_entry_through_asyncio_to_thread() -> None:
    cache_policy(ttl=60)
    depth = []

    @guarded("c")
    def f(x: int) -> int:
        depth.append(x)
        if len(depth) > 1:
            return 0
        return asyncio.run(asyncio.wait_for(asyncio.to_thread(f, x), 20)) + 1

    assert _finishes(lambda: f(1)) == 1


class StatusError(Exception):
    made = 0

    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")  # the message is built from the argument
        self.status = status
        StatusError.made += 1


class SlottedError(Exception):
    __slots__ = ("code",)


def _slotted() -> Exception:
    exc = SlottedError("slotted")
    exc.code = 42
    return exc


def _noted() -> Exception:
    exc = ValueError("plain")
    exc.extra = "x"  # type: ignore[attr-defined]
    exc.add_note("a note")
    return exc


class NotFound(FileNotFoundError):
    def __init__(self, path: str) -> None:
        super().__init__(2, "No such file or directory", path)


def _import_error() -> Exception:
    try:
        __import__("guardrails_no_such_module_xyz")
    except ImportError as exc:
        return exc
    raise AssertionError("imported")


def _attribute_error() -> Exception:
    try:
        object().nope  # type: ignore[attr-defined]  # noqa: B018
    except AttributeError as exc:
        return exc
    raise AssertionError("no error")


TWINNED = {
    "message_built_in_init": lambda: StatusError(503),
    "import_error_name": _import_error,
    "import_error_keywords": lambda: ImportError("no pkg", name="pkg", path="/x.py"),
    "attribute_error_name_and_obj": _attribute_error,
    "stop_iteration_value": lambda: StopIteration(5),
    "os_error_subclass_with_own_init": lambda: NotFound("/x"),
    "slots": _slotted,
    "os_error_with_filenames": lambda: FileNotFoundError(2, "No such file", "/a", None, "/b"),
    "attributes_and_notes": _noted,
    "group": lambda: ExceptionGroup("grp", [ValueError("a"), KeyError("b")]),
}


def _same_failure(waiter: BaseException, leader: BaseException) -> None:
    assert type(waiter) is type(leader)
    assert (str(waiter), repr(waiter)) == (str(leader), repr(leader))
    for name in (
        *("status", "code", "errno", "strerror", "filename", "filename2", "extra", "__notes__"),
        *("name", "path", "msg", "obj", "value"),
    ):
        assert getattr(waiter, name, None) == getattr(leader, name, None), name
    if waiter is not leader:
        assert waiter.__cause__ is leader


@pytest.mark.parametrize("make", TWINNED.values(), ids=TWINNED.keys())
def test_a_waiters_copy_is_the_same_failure(make: Any) -> None:
    cache_policy(ttl=60)
    release = threading.Event()

    @guarded("c")
    def f(x: int) -> int:
        release.wait(10)
        raise make()

    errors: list[BaseException] = []

    def call() -> None:
        try:
            f(1)
        except Exception as exc:
            errors.append(exc)

    made = StatusError.made
    _all_at_once(call, f, 3, release)
    assert StatusError.made - made <= 1  # no __init__ ran again for the waiters
    (leader,) = [e for e in errors if e.__cause__ is None]
    assert len(errors) == 3
    for error in errors:
        _same_failure(error, leader)


# A coroutine cannot raise StopIteration: Python turns it into a RuntimeError (PEP 479).
TWINNED_ASYNC = {k: v for k, v in TWINNED.items() if k != "stop_iteration_value"}


@pytest.mark.parametrize("make", TWINNED_ASYNC.values(), ids=TWINNED_ASYNC.keys())
def test_a_waiters_copy_is_the_same_failure_async(make: Any) -> None:
    cache_policy(ttl=60)

    @guarded("c")
    async def f(x: int) -> int:
        await asyncio.sleep(0)
        raise make()

    async def main() -> list[Any]:
        return await asyncio.gather(*[f(1) for _ in range(3)], return_exceptions=True)

    errors = asyncio.run(main())
    (leader,) = [e for e in errors if e.__cause__ is None]
    for error in errors:
        _same_failure(error, leader)


def test_two_threads_each_needing_the_others_key_both_finish() -> None:
    # Thread A computes "A" and needs "B"; thread B computes "B" and needs "A". Waiting on each
    # other would be a circle: the second to arrive computes for itself, as undecorated.
    cache_policy(ttl=60)
    both_leading = threading.Barrier(2)
    inner = threading.local()

    @guarded("c")
    def f(x: str) -> str:
        if getattr(inner, "depth", 0):
            return x.lower()
        inner.depth = 1
        try:
            both_leading.wait(10)
            return x + f("B" if x == "A" else "A")
        finally:
            inner.depth = 0

    results: dict[str, str] = {}
    threads = [
        threading.Thread(target=lambda x=x: results.__setitem__(x, f(x)), daemon=True) for x in "AB"
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert not any(t.is_alive() for t in threads), "the two threads deadlocked"
    assert sorted(results) == ["A", "B"]
    assert results["A"].startswith("A") and results["B"].startswith("B")
    assert f.__guardrails__.store.inflight == {}  # type: ignore[attr-defined]


def test_a_thread_woken_by_a_finished_flight_is_not_part_of_a_circle() -> None:
    # Thread Y waited on X's flight; X finished it, and asks for a key Y leads before Y has run
    # again to take its entry out. Y is no longer waiting on X: X must wait, not compute.
    from guardrails.layers.cache import _WAITING, _Flight, _waits_on

    me, y = threading.get_ident(), -12345
    finished = _Flight()  # owned by this thread, as X's flight
    finished.done.release()
    _WAITING[y] = finished
    try:
        assert not _waits_on(y, me)
        running = _Flight()
        _WAITING[y] = running  # while the flight still runs, it is a circle
        assert _waits_on(y, me)
        running.done.release()
    finally:
        del _WAITING[y]
