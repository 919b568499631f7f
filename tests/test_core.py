from __future__ import annotations

import asyncio
import inspect
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import guardrails
from guardrails import configure, guarded


def test_keeps_name_doc_signature_and_wrapped() -> None:
    def score(features: list[float], *, threshold: float = 0.5) -> float:
        """Score a row."""
        return sum(features) * threshold

    wrapped = guarded("p")(score)
    assert wrapped.__name__ == "score" and wrapped.__doc__ == "Score a row."
    assert wrapped.__wrapped__ is score  # type: ignore[attr-defined]
    assert inspect.signature(wrapped) == inspect.signature(score)
    assert wrapped([1.0, 3.0], threshold=0.25) == 1.0


def test_bare_and_empty_forms_use_the_function_name() -> None:
    @guarded
    def alpha() -> str:
        return "a"

    @guarded()
    def beta() -> str:
        return "b"

    assert (alpha(), beta()) == ("a", "b")
    assert set(guardrails.stats()) == {"alpha", "beta"}


def test_bad_names_are_type_errors() -> None:
    with pytest.raises(TypeError, match="policy name"):
        guarded("")
    with pytest.raises(TypeError, match="policy name"):
        guarded(3)  # type: ignore[call-overload]


def test_async_functions_stay_coroutine_functions() -> None:
    @guarded("p")
    async def f(x: int) -> int:
        await asyncio.sleep(0)
        return x

    assert inspect.iscoroutinefunction(f)
    assert asyncio.run(f(5)) == 5


def test_methods_bind_self() -> None:
    configure({"policies": {"m": {"cache": {"ttl": 60, "key": ["self", "x"]}}}})

    class Model:
        def __init__(self, k: int) -> None:
            self.k = k
            self.calls = 0

        @guarded("m")
        def predict(self, x: int) -> int:
            self.calls += 1
            return self.k * x

    a, b = Model(2), Model(3)
    assert (a.predict(5), a.predict(5), b.predict(5)) == (10, 10, 15)
    assert (a.calls, b.calls) == (1, 1)


def test_decoration_needs_no_configuration_and_reads_it_late() -> None:
    @guarded("late")
    def f(x: int) -> int:
        return x

    configure({"policies": {"late": {"validate": {"args": {"x": {"min": 0}}}}}})
    with pytest.raises(guardrails.InputValidationError):
        f(-1)


def test_wrong_arguments_fail_like_the_plain_function() -> None:
    configure({"policies": {"p": {"cache": {"ttl": 1}}}})
    f = guarded("p")(lambda x: x)
    with pytest.raises(TypeError):
        f(1, 2)


@pytest.fixture
def fine_grained_switching() -> Iterator[None]:
    """Hand the GIL over often, so the configuring thread is not starved by eight callers."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    yield
    sys.setswitchinterval(before)


@pytest.mark.usefixtures("fine_grained_switching")
def test_reconfiguration_while_eight_threads_call() -> None:
    policies = [
        {"policies": {"p": {"cache": {"ttl": 60}, "retry": {"max_attempts": 2}}}},
        {"policies": {"p": {"validate": {"args": {"x": {"min": 0}}}, "log": None}}},
        {"policies": {"p": {"memory": {"max_rss": "100%"}, "cache": {"ttl": 1, "maxsize": 2}}}},
    ]
    configure(policies[0])

    @guarded("p")
    def square(x: int) -> int:
        return x * x

    stop = threading.Event()
    errors: list[BaseException] = []
    done = [0] * 8

    def worker(i: int) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            try:
                assert square(n % 17) == (n % 17) ** 2
            except BaseException as exc:
                errors.append(exc)
                return
            done[i] += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for round_ in range(60):
        configure(policies[round_ % 3])
    stop.set()
    for t in threads:
        t.join()
    assert errors == []
    assert all(done)
    assert guardrails.stats()["p"].calls == sum(done)


def test_a_call_in_flight_finishes_on_the_chain_it_started_with() -> None:
    configure(
        {"policies": {"p": {"retry": {"max_attempts": 3, "wait": {"initial": 0, "jitter": 0}}}}}
    )
    entered, release = threading.Event(), threading.Event()
    attempts = []

    @guarded("p")
    def f() -> str:
        attempts.append(1)
        if len(attempts) == 1:
            entered.set()
            release.wait(10)
            raise ConnectionError("first attempt fails")
        return "ok"

    result: list[Any] = []
    t = threading.Thread(target=lambda: result.append(f()))
    t.start()
    assert entered.wait(10)
    configure({"policies": {"p": {"retry": {"max_attempts": 1}}}})
    release.set()
    t.join()
    assert result == ["ok"]  # retried under the old policy, though the new one has no retry
    assert len(attempts) == 2


def test_new_calls_get_the_new_chain() -> None:
    configure(
        {"policies": {"p": {"retry": {"max_attempts": 3, "wait": {"initial": 0, "jitter": 0}}}}}
    )
    failures = [ConnectionError(), ConnectionError()]

    @guarded("p")
    def f() -> str:
        if failures:
            raise failures.pop()
        return "ok"

    configure({"policies": {"p": {"retry": {"max_attempts": 1}}}})
    with pytest.raises(ConnectionError):
        f()
    assert len(failures) == 1


def test_generator_functions_are_refused_at_decoration() -> None:
    def rows() -> Iterator[int]:
        yield 1

    async def stream() -> Any:
        yield 1

    with pytest.raises(TypeError, match=r"generator function .*rows"):
        guarded("p")(rows)
    with pytest.raises(TypeError, match="generator function"):
        guarded("p")(stream)


def test_a_callable_without_a_signature_is_refused_at_decoration() -> None:
    with pytest.raises(TypeError, match="no signature"):
        guarded("x")(max)
    # Nothing was registered, so configurations keep working.
    guardrails.configure({"policies": {"x": {"cache": {"ttl": 60}}}})
    assert guarded("x")(lambda a: a)(3) == 3


class AsyncClient:
    """A model client called like a function: ``await client(x)``."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, x: int) -> int:
        self.calls += 1
        await asyncio.sleep(0)
        if self.calls < 3:
            raise ConnectionError("flaky")
        return x * 2


def test_an_object_with_an_async_call_is_guarded_as_async() -> None:
    guardrails.configure(
        {"policies": {"client": {"retry": {"max_attempts": 5, "wait": {"initial": 0}}}}}
    )
    client = AsyncClient()
    g = guarded("client")(client)
    assert inspect.iscoroutinefunction(g)
    assert asyncio.run(g(21)) == 42
    assert client.calls == 3  # retried: the failures were awaited, not handed back unawaited
    s = guardrails.stats()["client"]
    assert (s.successes, s.retries) == (1, 2)


def test_a_partial_of_an_async_function_is_guarded_as_async() -> None:
    import functools

    async def scale(factor: int, x: int) -> int:
        return factor * x

    g = guarded("p")(functools.partial(scale, 3))
    assert inspect.iscoroutinefunction(g)
    assert asyncio.run(g(2)) == 6


def test_a_partial_of_an_async_callable_object_is_guarded_as_async() -> None:
    import functools

    guardrails.configure(
        {"policies": {"client": {"retry": {"max_attempts": 5, "wait": {"initial": 0}}}}}
    )
    client = AsyncClient()
    g = guarded("client")(functools.partial(client))
    assert inspect.iscoroutinefunction(g)
    assert asyncio.run(g(21)) == 42 and client.calls == 3
    assert g.__guardrails__.qualname == "partial(test_core.AsyncClient)"  # type: ignore[attr-defined]


@pytest.mark.parametrize("kind", [staticmethod, classmethod])
def test_guarded_above_staticmethod_or_classmethod_says_where_it_goes(kind: Any) -> None:
    def f(*args: Any) -> None: ...

    with pytest.raises(TypeError, match=f"below @{kind.__name__}"):
        guarded("p")(kind(f))


def test_recompile_rebuilds_what_compiles_and_leaves_a_function_without_policy_to_its_call() -> (
    None
):
    from guardrails import _core

    configure({"strict": True, "policies": {"known": {"cache": {"ttl": 60}}}})
    calls = []
    f = guarded("known")(lambda x: calls.append(x) or x)
    assert f(1) == 1
    late = guarded("unknown")(lambda: None)  # guarded after configure(), no policy
    _core.recompile()  # e.g. a metrics exporter registering: must not fail for `late`
    assert f(1) == 1 and calls == [1]  # rebuilt, its cache kept
    assert f(1) == 1 and calls == [1]
    with pytest.raises(guardrails.PolicyConfigError, match="unknown"):
        late()
