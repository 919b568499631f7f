"""The ``fallback`` layer: a failure answered with a value or another function's result."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import guardrails
from guardrails import (
    InputValidationError,
    PolicyConfigError,
    configure,
    guarded,
)
from guardrails._binding import Binder
from guardrails._stats import PolicyCounters
from guardrails._types import Context
from guardrails.layers import fallback as _fallback
from guardrails.layers.fallback import FallbackConfig
from guardrails.testing import FakeClock
from tests.twins import guard_as


@pytest.fixture(params=["sync", "async"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def guard(kind: str, fn: Callable[..., Any], name: str = "p") -> Callable[..., Any]:
    return guard_as(kind, fn, name)


def policy(**blocks: Any) -> None:
    configure({"policies": {"p": blocks}})


class Down(ConnectionError):
    pass


def down(*args: Any, **kwargs: Any) -> Any:
    raise Down("the feature store is down")


def counts() -> dict[str, int]:
    s = guardrails.stats()["p"]
    return {k: getattr(s, k) for k in ("calls", "successes", "failures", "fallbacks")}


def ours(logs: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in logs.records if r.name == "guardrails"]


# --- a value ----------------------------------------------------------------------------------


@pytest.mark.parametrize("log", ["log on", "log off"])
def test_a_failure_is_answered_with_the_value_and_counted_as_a_fallback(
    kind: str, log: str
) -> None:
    blocks: dict[str, Any] = {"fallback": {"value": 0.5}}
    if log == "log off":
        blocks["log"] = {"enabled": False}
    policy(**blocks)
    outcomes = [Down("x"), None, Down("y")]

    def score(x: int) -> float:
        failure = outcomes.pop(0)
        if failure is not None:
            raise failure
        return float(x)

    f = guard(kind, score)
    assert [f(3), f(3), f(3)] == [0.5, 3.0, 0.5]
    assert counts() == {"calls": 3, "successes": 1, "failures": 0, "fallbacks": 2}


def test_value_null_answers_none(kind: str) -> None:
    policy(fallback={"value": None})
    assert guard(kind, down)() is None
    assert counts()["fallbacks"] == 1


def test_the_record_of_a_fallback_says_so_at_warning(
    kind: str, logs: pytest.LogCaptureFixture
) -> None:
    policy(fallback={"value": -1}, log={"level": "DEBUG"})
    f = guard(kind, lambda x: down() if x < 0 else x)
    assert f(-5) == -1
    assert f(5) == 5
    fell, ok = ours(logs)
    assert (fell.levelname, fell.outcome) == ("WARNING", "fallback")  # type: ignore[attr-defined]
    assert fell.exc_info is None  # answered: not a failure with a traceback
    assert "fallback" in fell.getMessage()
    assert "Down: the feature store is down" in fell.getMessage()
    assert (ok.levelname, ok.outcome) == ("DEBUG", "ok")  # type: ignore[attr-defined]
    assert counts() == {"calls": 2, "successes": 1, "failures": 0, "fallbacks": 1}


def test_a_mutable_value_is_never_shared_between_answers(kind: str) -> None:
    policy(fallback={"value": {"scores": [0.0, 0.0], "meta": {"source": "fallback"}}})
    f = guard(kind, down)
    first = f()
    first["scores"].append(1.0)
    first["meta"]["source"] = "mutated by a caller"
    first["new"] = True
    assert f() == {"scores": [0.0, 0.0], "meta": {"source": "fallback"}}
    assert guardrails.policy("p").fallback.value == {  # type: ignore[union-attr]
        "scores": [0.0, 0.0],
        "meta": {"source": "fallback"},
    }


@dataclasses.dataclass
class Box:
    items: list[int] = dataclasses.field(default_factory=list)


@pytest.mark.parametrize(
    "value",
    [
        [1, 2.5, "x", None, True],
        [[1, 2], {"a": [3]}, (4, [5])],
        {"a": 1, "b": "two"},
        {"nested": {"deeper": {"list": [1, 2]}}, "tuple": (1, [2])},
        (1, 2, 3),
        ([1], {"a": 2}),
        {1, 2},
        Box(),
        [Box(), {"box": Box()}],
    ],
)
def test_every_answer_is_an_equal_copy_that_shares_nothing_mutable(kind: str, value: Any) -> None:
    policy(fallback={"value": value})
    value = guardrails.policy("p").fallback.value  # type: ignore[union-attr]
    f = guard(kind, down)
    first, second = f(), f()
    assert first == value and second == value
    assert type(first) is type(value)

    def mutable_parts(obj: Any) -> list[Any]:
        if isinstance(obj, list | dict | set | Box):
            inner = (
                obj.values()
                if isinstance(obj, dict)
                else obj.items
                if isinstance(obj, Box)
                else obj
            )
            return [obj, *(p for item in inner for p in mutable_parts(item))]
        if isinstance(obj, tuple):
            return [p for item in obj for p in mutable_parts(item)]
        return []

    ids = {id(p) for p in mutable_parts(value)}
    assert not ids & {id(p) for p in mutable_parts(first)}
    assert not {id(p) for p in mutable_parts(first)} & {id(p) for p in mutable_parts(second)}


def test_a_list_value_from_a_yaml_file(kind: str, tmp_path: Path) -> None:
    path = tmp_path / "guardrails.yaml"
    path.write_text("policies:\n  p:\n    fallback: {value: [1, 2, 3]}\n")
    configure(path)
    f = guard(kind, down)
    answer = f()
    assert answer == [1, 2, 3] and type(answer) is list
    answer.clear()
    assert f() == [1, 2, 3]


def test_a_value_that_cannot_be_copied_is_a_config_error() -> None:
    f = guarded("p")(down)  # registered (held: the registry holds guarded functions weakly)
    with pytest.raises(PolicyConfigError) as err:
        policy(fallback={"value": [threading.Lock()]})
    ((path, message),) = err.value.problems
    assert path == "guardrails.policies.p.fallback.value"
    assert "cannot be copied" in message
    with pytest.raises(Down):
        f()  # the refused configuration replaced nothing


def test_value_and_function_together_are_refused() -> None:
    with pytest.raises(PolicyConfigError) as err:
        policy(fallback={"value": 1, "function": "builtins:print"})
    ((path, message),) = err.value.problems
    assert path == "guardrails.policies.p.fallback"
    assert "set value or function, not both" in message


# --- a function -------------------------------------------------------------------------------

answered: list[tuple[Any, ...]] = []


def stale_features(user: str, days: int = 7, *, fresh: bool = True) -> str:
    answered.append((user, days, fresh))
    return f"stale {user} {days} {fresh}"


def fetch(user: str, days: int = 7, *, fresh: bool = True) -> str:
    raise Down(user)


def test_the_function_gets_the_same_arguments(kind: str) -> None:
    answered.clear()
    policy(fallback={"function": f"{__name__}:stale_features"})
    f = guard(kind, fetch)
    assert f("ann") == "stale ann 7 True"
    assert f("bob", 3) == "stale bob 3 True"
    assert f(user="cy", days=1, fresh=False) == "stale cy 1 False"
    assert answered == [("ann", 7, True), ("bob", 3, True), ("cy", 1, False)]
    assert counts() == {"calls": 3, "successes": 0, "failures": 0, "fallbacks": 3}


def test_an_async_function_may_fall_back_to_a_sync_or_an_async_function() -> None:
    calls: list[str] = []

    def sync_answer(x: int) -> str:
        calls.append("sync")
        return f"sync {x}"

    async def async_answer(x: int) -> str:
        await asyncio.sleep(0)
        calls.append("async")
        return f"async {x}"

    class Client:
        async def __call__(self, x: int) -> str:
            await asyncio.sleep(0)
            return f"client {x}"

    @guarded("p")
    async def predict(x: int) -> str:
        await asyncio.sleep(0)
        raise Down("model server")

    for answer, expected in [
        (sync_answer, "sync 1"),
        (async_answer, "async 1"),
        (Client(), "client 1"),
        (lambda x: async_answer(x), "async 1"),  # a sync function returning an awaitable
    ]:
        policy(fallback={"function": answer})
        assert asyncio.run(predict(1)) == expected
    assert calls == ["sync", "async", "async"]
    assert counts()["fallbacks"] == 4


def test_a_sync_function_cannot_fall_back_to_an_async_one() -> None:
    async def async_answer(x: int) -> str:
        return "never"

    f = guarded("p")(lambda x: x)
    with pytest.raises(PolicyConfigError) as err:
        policy(fallback={"function": async_answer})
    ((path, message),) = err.value.problems
    assert path == "guardrails.policies.p.fallback.function"
    assert "is async but" in message and "use a sync function" in message
    assert f(3) == 3


def _takes_x(x: Any) -> None: ...
def _takes_x_y(x: Any, y: Any) -> None: ...
def _takes_x_y_default(x: Any, y: Any = 0) -> None: ...
def _takes_anything(*args: Any, **kwargs: Any) -> None: ...
def _takes_x_args(x: Any, *args: Any) -> None: ...
def _positional_only(x: Any, y: Any = 0, /) -> None: ...
def _keyword_only(*, x: Any, y: Any = 0) -> None: ...


@pytest.mark.parametrize(
    ("guarded_fn", "fallback_fn", "fails_with"),
    [
        (lambda x, y=2: x, _takes_x_y_default, None),
        (lambda x, y=2: x, _takes_anything, None),
        (lambda x, y=2: x, _takes_x, "too many positional arguments"),
        (lambda x, y=2: x, _takes_x_y, "missing a required argument: 'y'"),
        (lambda x, *rest: x, _takes_x_y_default, "too many positional arguments"),
        (lambda x, *rest: x, _takes_x_args, None),
        (lambda x, **kw: x, _takes_x, "unexpected keyword argument"),
        (lambda x, y=2: x, _positional_only, "positional only"),
        (lambda x, y=2: x, _keyword_only, "too many positional arguments"),
        (lambda *, x, y=2: x, _keyword_only, None),
        (lambda x, /: x, _takes_x, None),
        (lambda: 1, _takes_x, "missing a required argument: 'x'"),
    ],
)
def test_the_function_must_take_every_call_of_the_guarded_one(
    guarded_fn: Callable[..., Any], fallback_fn: Callable[..., Any], fails_with: str | None
) -> None:
    f = guarded("p")(guarded_fn)
    if fails_with is None:
        policy(fallback={"function": fallback_fn})
        assert guardrails.policy("p").fallback.function is fallback_fn  # type: ignore[union-attr]
        return
    with pytest.raises(PolicyConfigError) as err:
        policy(fallback={"function": fallback_fn})
    ((path, message),) = err.value.problems
    assert path == "guardrails.policies.p.fallback.function"
    assert fails_with in message
    assert f"{__name__}:{fallback_fn.__name__}" in message and "which it is called with" in message
    assert guardrails.policy("p").fallback is None  # the failed configure replaced nothing
    assert callable(f)  # held until here: a dropped guarded function is not checked


def test_an_unresolvable_function_is_a_config_error() -> None:
    with pytest.raises(PolicyConfigError) as err:
        policy(fallback={"function": f"{__name__}:no_such_function"})
    ((path, message),) = err.value.problems
    assert path == "guardrails.policies.p.fallback.function"
    assert "no attribute 'no_such_function'" in message


def test_a_raising_fallback_function_propagates_with_the_original_as_context(
    kind: str, logs: pytest.LogCaptureFixture
) -> None:
    broken = RuntimeError("the stale store is down too")

    def also_down(x: int) -> int:
        raise broken

    policy(fallback={"function": also_down})
    f = guard(kind, lambda x: down())
    for _ in range(2):  # the same instance each time: one note, not one per call
        with pytest.raises(RuntimeError) as exc:
            f(1)
        assert exc.value is broken
        assert isinstance(exc.value.__context__, Down)
        assert [n for n in exc.value.__notes__ if n.startswith("guardrails:")] == [
            f"guardrails: policy 'p' fell back to {__name__}:"
            "test_a_raising_fallback_function_propagates_with_the_original"
            "_as_context.<locals>.also_down, which raised this"
        ]
    assert counts() == {"calls": 2, "successes": 0, "failures": 2, "fallbacks": 0}
    assert [r.outcome for r in ours(logs)] == ["failed", "failed"]  # type: ignore[attr-defined]


# --- what falls back --------------------------------------------------------------------------


def test_catch_narrows_what_falls_back_and_subclasses_match(kind: str) -> None:
    policy(fallback={"value": "stale", "catch": ["OSError", f"{__name__}:Down"]})
    errors = [ConnectionRefusedError(), Down(), ValueError("bad")]

    def call() -> str:
        raise errors.pop(0)

    f = guard(kind, call)
    assert f() == "stale"  # a subclass of OSError
    assert f() == "stale"
    with pytest.raises(ValueError, match="bad"):
        f()
    assert counts() == {"calls": 3, "successes": 0, "failures": 1, "fallbacks": 2}


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("BaseException", "list Exception to fall back on every error"),
        ("KeyboardInterrupt", "Ctrl-C"),
        ("SystemExit", "sys.exit()"),
        ("GeneratorExit", "closed"),
        ("asyncio.CancelledError", "cancelled"),
    ],
)
def test_catch_refuses_control_flow(name: str, says: str) -> None:
    with pytest.raises(PolicyConfigError) as err:
        policy(fallback={"catch": ["ValueError", name]})
    ((path, message),) = err.value.problems
    assert path == "guardrails.policies.p.fallback.catch"
    assert "cannot fall back" in message and says in message


def test_an_empty_catch_is_refused_not_silently_inert() -> None:
    # It built no layer at all: a policy that looked degraded-safe never fell back.
    with pytest.raises(PolicyConfigError) as err:
        policy(fallback={"value": "stale", "catch": []})
    ((path, message),) = err.value.problems
    assert path == "guardrails.policies.p.fallback.catch"
    assert "is empty, so nothing would ever fall back" in message


def _unvalidated(kind: str, catch: tuple[type[BaseException], ...], fn: Callable[[], Any]) -> Any:
    """The layer alone, built from a config that skipped validation."""
    cfg = FallbackConfig.model_construct(value="answer", function=None, catch=catch, enabled=True)
    ctx = Context(
        policy="p",
        function=fn,
        qualname="tests.fn",
        is_async=kind == "async",
        binder=Binder(fn),
        counters=PolicyCounters("p"),
        clock=FakeClock(),
        logger=logging.getLogger("guardrails"),
        store_for=lambda cfg: None,
        shared=lambda kind, cfg, factory: factory(),
    )
    if kind == "sync":
        layer = _fallback.build(cfg, lambda args, kwargs, info: fn(), ctx)
        return layer((), {}, None)

    async def terminal(args: Any, kwargs: Any, info: Any) -> Any:
        await asyncio.sleep(0)
        return fn()

    return asyncio.run(_fallback.build_async(cfg, terminal, ctx)((), {}, None))


@pytest.mark.parametrize("control", [KeyboardInterrupt, SystemExit, GeneratorExit])
def test_control_flow_never_falls_back_whatever_the_config(
    kind: str, control: type[BaseException]
) -> None:
    def stop() -> None:
        raise control()

    with pytest.raises(control):
        _unvalidated(kind, (BaseException,), stop)
    assert _unvalidated(kind, (BaseException,), down) == "answer"  # Exception still does


def test_a_cancelled_call_is_cancelled_not_answered(logs: pytest.LogCaptureFixture) -> None:
    policy(fallback={"value": "stale"})
    started = asyncio.Event()

    @guarded("p")
    async def slow() -> str:
        started.set()
        await asyncio.Event().wait()  # until cancelled
        return "never"

    async def main() -> None:
        task = asyncio.create_task(slow())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert counts() == {"calls": 1, "successes": 0, "failures": 1, "fallbacks": 0}
    assert [r.outcome for r in ours(logs)] == ["cancelled"]  # type: ignore[attr-defined]


def test_input_validation_never_falls_back(kind: str) -> None:
    configure(
        {
            "policies": {
                "p": {"fallback": {"value": "stale"}, "validate": {"args": {"x": {"min": 0}}}},
                "inner": {"validate": {"args": {"x": {"min": 0}}}},
            }
        }
    )
    nested = guarded("inner")(lambda x: x)
    f = guard(kind, lambda x: nested(x - 10))
    with pytest.raises(InputValidationError):
        f(-1)  # refused above the fallback
    with pytest.raises(InputValidationError):
        f(5)  # a nested guarded call refused its input inside the function
    assert f(20) == 10
    assert counts() == {"calls": 3, "successes": 1, "failures": 2, "fallbacks": 0}


# --- where it sits ----------------------------------------------------------------------------


def test_a_fallback_answer_is_never_cached(kind: str) -> None:
    policy(fallback={"value": "stale"}, cache={"ttl": 60})
    outcomes: list[Exception | None] = [Down(), None]
    runs = 0

    def features(user: str) -> str:
        nonlocal runs
        runs += 1
        failure = outcomes.pop(0)
        if failure is not None:
            raise failure
        return f"fresh {user}"

    f = guard(kind, features)
    assert f("ann") == "stale"  # the failure is answered, and not cached
    assert f("ann") == "fresh ann"  # a miss: the function runs again
    assert f("ann") == "fresh ann"  # a hit of the real answer
    assert runs == 2
    s = guardrails.stats()["p"]
    assert (s.cache_hits, s.cache_misses, s.fallbacks, s.successes) == (1, 2, 1, 2)


def test_retries_come_first_then_the_fallback(
    kind: str, clock: FakeClock, logs: pytest.LogCaptureFixture
) -> None:
    policy(
        fallback={"value": "stale"},
        retry={"max_attempts": 3, "wait": {"initial": 1, "jitter": 0}},
    )
    runs = 0

    def flaky() -> str:
        nonlocal runs
        runs += 1
        raise Down()

    assert guard(kind, flaky)() == "stale"
    assert runs == 3 and clock.sleeps == [1, 2]
    (record,) = ours(logs)[-1:]
    assert record.outcome == "fallback" and record.attempts == 3  # type: ignore[attr-defined]
    s = guardrails.stats()["p"]
    assert (s.calls, s.retries, s.fallbacks, s.failures) == (1, 2, 1, 0)


def test_a_disabled_fallback_is_not_in_the_chain(kind: str) -> None:
    policy(fallback={"value": "stale", "enabled": False})
    with pytest.raises(Down):
        guard(kind, down)()
    assert counts()["failures"] == 1


def test_many_threads_count_exactly() -> None:
    policy(fallback={"value": 0})
    f = guarded("p")(lambda i: i if i % 2 else down())
    barrier = threading.Barrier(8)

    def work() -> None:
        barrier.wait()
        for i in range(500):
            assert f(i) == (i if i % 2 else 0)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert counts() == {"calls": 4000, "successes": 2000, "failures": 0, "fallbacks": 2000}


@pytest.mark.parametrize("log", ["log on", "log off"])
@pytest.mark.parametrize("answer", ["value", "function"])
def test_an_answered_call_frees_its_arguments_at_once(kind: str, log: str, answer: str) -> None:
    blocks: dict[str, Any] = {
        "fallback": {"value": [0.0]} if answer == "value" else {"function": lambda features: [0.0]}
    }
    if log == "log off":
        blocks["log"] = {"enabled": False}
    policy(**blocks)

    def work(features: np.ndarray) -> list[float]:
        raise Down(f"no features for {features.shape}")

    async def work_async(features: np.ndarray) -> list[float]:
        await asyncio.sleep(0)
        return work(features)

    def sync_call() -> bool:
        features = np.ones((1000, 4))
        alive = weakref.ref(features)
        assert guarded("p")(work)(features) == [0.0]
        del features
        return alive() is None

    async def async_call() -> bool:
        features = np.ones((1000, 4))
        alive = weakref.ref(features)
        assert await guarded("p")(work_async)(features) == [0.0]
        del features
        return alive() is None

    gc.collect()
    gc.disable()
    try:
        freed = sync_call() if kind == "sync" else asyncio.run(async_call())
    finally:
        gc.enable()
    assert freed, "the call's argument outlived it: a reference cycle holds it"
    assert counts()["fallbacks"] == 1
