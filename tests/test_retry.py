"""The retry layer: backoff, jitter, what is retried, the notes, and what a failure keeps alive."""

from __future__ import annotations

import asyncio
import contextlib
import decimal
import gc
import io
import logging
import math
import random
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import guardrails
from guardrails import CircuitOpenError, PolicyConfigError, configure, guarded
from guardrails._binding import Binder
from guardrails._stats import PolicyCounters
from guardrails._types import Context
from guardrails.layers import retry as _retry
from guardrails.layers.retry import RetryConfig, WaitConfig, tenacity
from guardrails.testing import FakeClock, fake_clock
from tests.twins import guard_as


class Flaky:
    """Fails with the given exceptions in turn, then returns 'ok'."""

    def __init__(self, *failures: BaseException) -> None:
        self.failures = list(failures)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return "ok"


def retry_policy(**retry: Any) -> None:
    retry.setdefault("wait", {"initial": 1, "max": 100, "multiplier": 2, "jitter": 0})
    configure({"policies": {"r": {"retry": retry}}})


@pytest.fixture(params=["sync", "async"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def guard(kind: str, fn: Callable[..., Any], name: str = "r") -> Callable[..., Any]:
    return guard_as(kind, fn, name)


def context(fn: Callable[..., Any], clock: FakeClock, *, is_async: bool = False) -> Context:
    return Context(
        policy="r",
        function=fn,
        qualname="tests.fn",
        is_async=is_async,
        binder=Binder(fn),
        counters=PolicyCounters("r"),
        clock=clock,
        logger=logging.getLogger("guardrails"),
        store_for=lambda cfg: None,
        shared=lambda kind, cfg, factory: factory(),
    )


def unvalidated(
    kind: str, cfg: RetryConfig, fn: Callable[[], Any], clock: FakeClock
) -> Callable[[], Any]:
    """The retry layer alone around ``fn``, built from ``cfg`` as given (never validated)."""
    ctx = context(fn, clock, is_async=kind == "async")
    if kind == "sync":
        layer = _retry.build(cfg, lambda args, kwargs, info: fn(), ctx)
        return lambda: layer((), {}, None)

    async def terminal(args: Any, kwargs: Any, info: Any) -> Any:
        await asyncio.sleep(0)
        return fn()

    async_layer = _retry.build_async(cfg, terminal, ctx)
    return lambda: asyncio.run(async_layer((), {}, None))


def our_notes(exc: BaseException) -> list[str]:
    return [n for n in getattr(exc, "__notes__", []) if n.startswith("guardrails:")]


def test_transient_failures_are_retried_with_exponential_backoff(clock: FakeClock) -> None:
    retry_policy(max_attempts=4)
    flaky = Flaky(ConnectionError("a"), TimeoutError("b"), ConnectionResetError("c"))
    f = guarded("r")(flaky)
    assert f() == "ok"
    assert flaky.calls == 4
    assert clock.sleeps == [1, 2, 4]
    assert guardrails.stats()["r"].retries == 3
    assert guardrails.stats()["r"].successes == 1


def test_success_at_once_never_enters_tenacity(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    retry_policy(max_attempts=3)
    f = guard(kind, Flaky())

    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("tenacity entered on the success path")

    monkeypatch.setattr(tenacity, "Retrying", forbidden)
    monkeypatch.setattr(tenacity, "AsyncRetrying", forbidden)
    monkeypatch.setattr(tenacity.BaseRetrying, "iter", forbidden)
    monkeypatch.setattr(tenacity.RetryCallState, "__init__", forbidden)
    assert f() == "ok"


def test_gives_up_with_the_last_original_exception_and_a_note(clock: FakeClock) -> None:
    retry_policy(max_attempts=3)
    last = ConnectionError("third")
    f = guarded("r")(Flaky(ConnectionError("1"), ConnectionError("2"), last))
    with pytest.raises(ConnectionError) as exc:
        f()
    assert exc.value is last
    assert exc.value.__notes__ == [
        "guardrails: policy 'r' gave up after 3 attempts (retry.max_attempts=3)"
    ]
    s = guardrails.stats()["r"]
    assert (s.calls, s.failures, s.retries) == (1, 1, 2)


def test_other_exceptions_are_not_retried(clock: FakeClock) -> None:
    retry_policy(max_attempts=5)
    flaky = Flaky(ValueError("bad input"))
    with pytest.raises(ValueError, match="bad input") as exc:
        guarded("r")(flaky)()
    assert flaky.calls == 1
    assert not getattr(exc.value, "__notes__", None)


def test_non_retryable_after_a_retry_says_why(clock: FakeClock) -> None:
    retry_policy(max_attempts=5)
    flaky = Flaky(ConnectionError(), KeyError("k"))
    with pytest.raises(KeyError) as exc:
        guarded("r")(flaky)()
    assert flaky.calls == 2
    assert (
        "gave up after 2 attempts (KeyError is not retried by this policy)"
        in exc.value.__notes__[0]
    )


def test_abort_on_wins_over_retry_on(clock: FakeClock) -> None:
    retry_policy(max_attempts=5, retry_on=["OSError"], abort_on=["PermissionError"])
    flaky = Flaky(FileNotFoundError(), PermissionError("denied"))
    with pytest.raises(PermissionError):
        guarded("r")(flaky)()
    assert flaky.calls == 2


def test_retry_on_by_import_path(clock: FakeClock) -> None:
    retry_policy(max_attempts=2, retry_on=["json:JSONDecodeError"])
    import json

    flaky = Flaky(json.JSONDecodeError("x", "doc", 0))
    assert guarded("r")(flaky)() == "ok"


def test_deadline_counts_waits_and_stops_before_passing_it(clock: FakeClock) -> None:
    retry_policy(max_attempts=10, deadline="5s")
    flaky = Flaky(*[ConnectionError(str(i)) for i in range(10)])
    with pytest.raises(ConnectionError) as exc:
        guarded("r")(flaky)()
    # waits 1, 2 (3 s in all); the next wait of 4 s would pass the 5 s deadline
    assert clock.sleeps == [1, 2]
    assert flaky.calls == 3
    assert "retry.deadline=5s would be passed" in exc.value.__notes__[0]


def test_wait_is_capped_and_jittered(clock: FakeClock) -> None:
    retry_policy(max_attempts=6, wait={"initial": 1, "max": 3, "multiplier": 2, "jitter": 0.5})
    guarded("r")(Flaky(*[ConnectionError()] * 5))()
    assert len(clock.sleeps) == 5
    # the backoff 1, 2, 4, 8, 16 capped at max - jitter, plus up to the jitter
    for wait, base in zip(clock.sleeps, [1, 2, 2.5, 2.5, 2.5], strict=True):
        assert base <= wait <= base + 0.5 <= 3


def test_single_attempt_policy_has_no_retry_layer() -> None:
    retry_policy(max_attempts=1)
    flaky = Flaky(ConnectionError("once"))
    with pytest.raises(ConnectionError) as exc:
        guarded("r")(flaky)()
    assert flaky.calls == 1 and not getattr(exc.value, "__notes__", None)


def test_disabled_retry(clock: FakeClock) -> None:
    retry_policy(max_attempts=5, enabled=False)
    flaky = Flaky(ConnectionError())
    with pytest.raises(ConnectionError):
        guarded("r")(flaky)()
    assert flaky.calls == 1


def test_async_retries_on_the_clock(clock: FakeClock) -> None:
    retry_policy(max_attempts=3)
    flaky = Flaky(ConnectionError(), ConnectionError())

    @guarded("r")
    async def f() -> str:
        await asyncio.sleep(0)
        return flaky()

    assert asyncio.run(f()) == "ok"
    assert clock.sleeps == [1, 2]
    assert guardrails.stats()["r"].retries == 2


def test_async_backoff_does_not_block_the_event_loop() -> None:
    configure(
        {
            "policies": {
                "r": {"retry": {"max_attempts": 3, "wait": {"initial": "20ms", "jitter": 0}}}
            }
        }
    )
    flaky = Flaky(ConnectionError(), ConnectionError())
    ticks = 0

    @guarded("r")
    async def f() -> str:
        return flaky()

    async def ticker(done: asyncio.Event) -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            await asyncio.sleep(0)

    async def main() -> str:
        done = asyncio.Event()
        task = asyncio.create_task(ticker(done))
        try:
            return await f()
        finally:
            done.set()
            await task

    assert asyncio.run(main()) == "ok"
    assert flaky.calls == 3
    assert ticks > 2  # the ticker ran while the retry waited: the loop was never blocked


def test_async_gives_up_with_note(clock: FakeClock) -> None:
    retry_policy(max_attempts=2)

    @guarded("r")
    async def f() -> None:
        raise TimeoutError("slow upstream")

    with pytest.raises(TimeoutError) as exc:
        asyncio.run(f())
    assert "gave up after 2 attempts" in exc.value.__notes__[0]


def test_jitter_defaults_to_the_initial_wait(clock: FakeClock) -> None:
    configure({"policies": {"r": {"retry": {"max_attempts": 4, "wait": {"initial": "10ms"}}}}})
    guarded("r")(Flaky(*[ConnectionError()] * 3))()
    for wait, base in zip(clock.sleeps, [0.01, 0.02, 0.04], strict=True):
        assert base <= wait <= base + 0.01
    assert guardrails.policy("r").retry.wait.jitter is None  # type: ignore[union-attr]


# --- retry_on never names control flow -----------------------------------------------------


class Halt(BaseException):
    """An application's own BaseException outside Exception."""


@pytest.mark.parametrize(
    ("name", "shown", "why"),
    [
        ("BaseException", "BaseException", "also matches KeyboardInterrupt, SystemExit"),
        ("KeyboardInterrupt", "KeyboardInterrupt", "Ctrl-C"),
        ("SystemExit", "SystemExit", "sys.exit()"),
        ("GeneratorExit", "GeneratorExit", "generator or coroutine is closed"),
        ("asyncio.CancelledError", "asyncio.exceptions:CancelledError", "task is cancelled"),
        ("tests.test_retry:Halt", "tests.test_retry:Halt", "control flow, not a failure"),
    ],
)
def test_retry_on_refuses_what_is_not_an_exception(name: str, shown: str, why: str) -> None:
    with pytest.raises(PolicyConfigError) as exc:
        retry_policy(retry_on=["ConnectionError", name])
    [(path, message)] = exc.value.problems
    assert path == "guardrails.policies.r.retry.retry_on"
    assert message.startswith(f"{shown} cannot be retried: ") and why in message
    assert "ConnectionError" not in message


def test_abort_on_may_list_control_flow(clock: FakeClock) -> None:
    retry_policy(retry_on=["Exception"], abort_on=["BaseException", "KeyboardInterrupt"])
    flaky = Flaky(ValueError())
    with pytest.raises(ValueError):
        guarded("r")(flaky)()
    assert flaky.calls == 1  # abort_on's BaseException matches every error


@pytest.mark.parametrize(
    "control", [KeyboardInterrupt, SystemExit, GeneratorExit, asyncio.CancelledError, Halt]
)
def test_control_flow_is_never_retried_whatever_the_config(
    kind: str, control: type[BaseException]
) -> None:
    cfg = RetryConfig.model_construct(
        retry_on=(BaseException, control), wait=WaitConfig(initial=1, jitter=0)
    )
    clock = FakeClock()
    flaky = Flaky(control(), control())
    with pytest.raises(control) as exc:
        unvalidated(kind, cfg, flaky, clock)()
    assert flaky.calls == 1 and clock.sleeps == []
    assert our_notes(exc.value) == []
    # BaseException there still means every error: an Exception is retried.
    flaky = Flaky(OSError())
    assert unvalidated(kind, cfg, flaky, clock)() == "ok"
    assert flaky.calls == 2


def test_task_cancel_is_never_swallowed_whatever_the_config() -> None:
    cfg = RetryConfig.model_construct(retry_on=(BaseException,), wait=WaitConfig(jitter=0))
    calls = 0

    async def fn() -> str:
        nonlocal calls
        calls += 1
        if calls > 1:
            return "ran again after the cancel"
        await asyncio.Event().wait()  # until cancelled
        return "never"

    async def main() -> None:
        layer = _retry.build_async(
            cfg, lambda args, kwargs, info: fn(), context(fn, FakeClock(), is_async=True)
        )
        task = asyncio.create_task(layer((), {}, None))
        while calls == 0:
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert task.cancelled()

    asyncio.run(main())
    assert calls == 1


@pytest.mark.parametrize("control", [KeyboardInterrupt, SystemExit, asyncio.CancelledError])
def test_control_flow_on_a_retry_attempt_propagates_at_once(
    kind: str, control: type[BaseException], clock: FakeClock
) -> None:
    retry_policy(max_attempts=5)
    flaky = Flaky(ConnectionError(), control(), ConnectionError())
    with pytest.raises(control) as exc:
        guard(kind, flaky)()
    assert flaky.calls == 2 and clock.sleeps == [1]
    assert our_notes(exc.value) == []  # interrupted, not given up on
    s = guardrails.stats()["r"]
    assert (s.calls, s.failures, s.retries) == (1, 1, 1)


def test_notes_that_are_not_a_list_do_not_hide_the_failure(kind: str, clock: FakeClock) -> None:
    retry_policy(max_attempts=2)
    err = ConnectionError("down")
    err.__notes__ = ("not a list",)  # type: ignore[assignment]
    with pytest.raises(ConnectionError) as exc:
        guard(kind, Flaky(err, err))()
    assert exc.value is err and err.__notes__ == ("not a list",)  # type: ignore[comparison-overlap]


# --- backoff arithmetic ----------------------------------------------------------------------


def test_a_thousand_attempts_do_not_overflow(kind: str, clock: FakeClock) -> None:
    retry_policy(max_attempts=1100, wait={"initial": 1, "max": 2, "multiplier": 2, "jitter": 0})
    last = ConnectionError("last")
    flaky = Flaky(*[ConnectionError()] * 1099, last)
    with pytest.raises(ConnectionError) as exc:
        guard(kind, flaky)()
    assert exc.value is last and flaky.calls == 1100
    assert clock.sleeps == [1] + [2] * 1098


@pytest.mark.parametrize(
    ("wait", "expected"),
    [
        ({"initial": 1, "max": 60, "multiplier": 1e200, "jitter": 0}, [1, 60, 60, 60]),
        ({"initial": 1, "max": 60, "multiplier": 1.7e308, "jitter": 0}, [1, 60, 60, 60]),
        ({"initial": 0, "max": 60, "multiplier": 1e300}, [0, 0, 0, 0]),
        (
            {"initial": 1e-310, "max": 1, "multiplier": 1e100, "jitter": 0},
            [1e-310, 1e-210, 1e-110, 1e-10],
        ),
        # multiplier ** 3 alone overflows, yet the wait is far below max
        (
            {"initial": 5e-324, "max": 60, "multiplier": 1e103, "jitter": 0},
            [5e-324, 5e-324 * 1e103, 5e-324 * 1e206, 4.9406564584124654e-15],
        ),
    ],
)
def test_huge_multipliers_do_not_overflow(
    kind: str, clock: FakeClock, wait: dict[str, float], expected: list[float]
) -> None:
    retry_policy(max_attempts=5, wait=wait)
    last = ConnectionError("last")
    with pytest.raises(ConnectionError) as exc:
        guard(kind, Flaky(*[ConnectionError()] * 4, last))()
    assert exc.value is last
    assert clock.sleeps == pytest.approx(expected, rel=1e-9, abs=0)


@pytest.mark.parametrize(
    ("value", "says"),
    [
        (math.inf, "finite"),
        (-math.inf, "finite"),
        (math.nan, "finite"),
        (True, "valid number"),
        ("2", "valid number"),
        (0.5, "greater than or equal to 1"),
    ],
)
def test_the_multiplier_is_a_finite_number(value: object, says: str) -> None:
    with pytest.raises(PolicyConfigError) as exc:
        retry_policy(wait={"multiplier": value})
    [(path, message)] = exc.value.problems
    assert path == "guardrails.policies.r.retry.wait.multiplier"
    assert says in message


class FixedDraw:
    """A random source whose ``uniform(a, b)`` is always ``a + share * (b - a)``."""

    def __init__(self, share: float) -> None:
        self.share = share

    def uniform(self, a: float, b: float) -> float:
        return a + self.share * (b - a)


class AttemptState:
    def __init__(self, attempt_number: int) -> None:
        self.attempt_number = attempt_number


def waits(cfg: WaitConfig, attempts: list[int], share: float) -> list[float]:
    """The waits after these attempt numbers, drawing ``share`` of the jitter each time."""
    plan = _retry._Plan(RetryConfig(wait=cfg), context(print, FakeClock()))
    original = _retry._RNG
    _retry._RNG = FixedDraw(share)  # type: ignore[assignment]
    try:
        return [plan.wait(AttemptState(n)) for n in attempts]  # type: ignore[arg-type]
    finally:
        _retry._RNG = original


def exact_backoff(initial: float, multiplier: float, attempt: int) -> decimal.Decimal:
    ctx = decimal.Context(prec=40, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN)
    return ctx.multiply(
        decimal.Decimal(initial), ctx.power(decimal.Decimal(multiplier), attempt - 1)
    )


durations = st.floats(min_value=0, max_value=3e9)  # a century, the longest duration


@given(
    initial=durations,
    multiplier=st.floats(min_value=1, max_value=1e308),
    maximum=durations,
    jitter=st.none() | durations,
    attempt=st.integers(min_value=1, max_value=10**6),
    share=st.floats(min_value=0, max_value=1),
)
def test_every_wait_follows_the_formula_within_max(
    initial: float,
    multiplier: float,
    maximum: float,
    jitter: float | None,
    attempt: int,
    share: float,
) -> None:
    cfg = WaitConfig(initial=initial, multiplier=multiplier, max=maximum, jitter=jitter)
    j = min(initial if jitter is None else jitter, maximum)
    backoff = exact_backoff(initial, multiplier, attempt)
    base = maximum - j if backoff >= decimal.Decimal(maximum - j) else float(backoff)
    expected = min(base + share * j, maximum)
    now, after = waits(cfg, [attempt, attempt + 1], share)
    assert now == pytest.approx(expected, rel=1e-9, abs=0)
    assert 0 <= now <= after <= maximum  # never past max, and the backoff never shrinks


# --- jitter at the cap -----------------------------------------------------------------------


def test_waits_at_the_cap_keep_their_jitter_and_never_pass_max(kind: str, clock: FakeClock) -> None:
    retry_policy(max_attempts=200, wait={"initial": 1, "max": 3, "multiplier": 2, "jitter": 0.5})
    guard(kind, Flaky(*[ConnectionError()] * 199))()
    at_cap = clock.sleeps[2:]  # from the third wait on, 4 s and up is past max - jitter
    assert len(at_cap) == 197
    assert all(2.5 <= w <= 3 for w in at_cap)
    # 197 uniform draws over [2.5, 3]: all distinct, and spread over most of the range.
    assert len(set(at_cap)) == len(at_cap)
    assert max(at_cap) - min(at_cap) > 0.4


@pytest.mark.parametrize("share", [0.0, 0.25, 1.0])
def test_the_jitter_formula_on_a_fixed_random_source(
    kind: str, clock: FakeClock, monkeypatch: pytest.MonkeyPatch, share: float
) -> None:
    monkeypatch.setattr(_retry, "_RNG", FixedDraw(share))
    initial, multiplier, maximum, jitter = 1, 2, 3, 0.5
    retry_policy(
        max_attempts=6,
        wait={"initial": initial, "max": maximum, "multiplier": multiplier, "jitter": jitter},
    )
    guard(kind, Flaky(*[ConnectionError()] * 5))()
    expected = [
        min(initial * multiplier ** (n - 1), maximum - jitter) + share * jitter for n in range(1, 6)
    ]
    assert clock.sleeps == pytest.approx(expected, rel=1e-12)


def test_jitter_as_wide_as_max_spreads_waits_over_all_of_it(kind: str, clock: FakeClock) -> None:
    retry_policy(max_attempts=100, wait={"initial": 1, "max": 2, "multiplier": 2, "jitter": 5})
    guard(kind, Flaky(*[ConnectionError()] * 99))()
    assert all(0 <= w <= 2 for w in clock.sleeps)
    assert min(clock.sleeps) < 0.5 and max(clock.sleeps) > 1.5


def test_seeding_the_random_module_does_not_synchronise_clients(
    kind: str, clock: FakeClock
) -> None:
    """Replicas that each call ``random.seed(42)`` must still draw different jitter."""
    retry_policy(max_attempts=4, wait={"initial": 1, "max": 10, "jitter": 1})
    runs = []
    for _ in range(2):
        random.seed(42)
        clock.sleeps.clear()
        guard(kind, Flaky(*[ConnectionError()] * 3))()
        runs.append(list(clock.sleeps))
    assert runs[0] != runs[1]


# --- one note per policy, however often an exception instance is raised ---------------------

DOWN = ConnectionError("down")  # raised on every call, as some client libraries do


def test_a_reused_exception_gets_one_note(kind: str, clock: FakeClock) -> None:
    retry_policy(max_attempts=3)
    err = ConnectionError("down")
    err.add_note("the caller's own note")

    def always() -> None:
        raise err

    f = guard(kind, always)
    for _ in range(3):
        with pytest.raises(ConnectionError):
            f()
        assert err.__notes__ == [
            "the caller's own note",
            "guardrails: policy 'r' gave up after 3 attempts (retry.max_attempts=3)",
        ]


def test_a_module_level_exception_gets_one_note_per_policy(kind: str, clock: FakeClock) -> None:
    configure(
        {
            "policies": {
                "inner": {"retry": {"max_attempts": 2, "wait": {"jitter": 0}}},
                "outer": {"retry": {"max_attempts": 3, "wait": {"jitter": 0}}},
            }
        }
    )

    def always() -> None:
        raise DOWN

    inner = guarded("inner")(always)
    outer = guard(kind, lambda: inner(), name="outer")
    try:
        for _ in range(2):
            with pytest.raises(ConnectionError) as exc:
                outer()
            assert exc.value is DOWN
            assert sorted(our_notes(DOWN)) == [
                "guardrails: policy 'inner' gave up after 2 attempts (retry.max_attempts=2)",
                "guardrails: policy 'outer' gave up after 3 attempts (retry.max_attempts=3)",
            ]
    finally:
        DOWN.__notes__ = []
        DOWN.__traceback__ = None


# --- a failed call frees its arguments at once ------------------------------------------------


@contextlib.contextmanager
def guardrails_log_to_text() -> Iterator[io.StringIO]:
    """Every guardrails record, tracebacks included, formatted into a string and dropped.

    Entered in the test body: pytest adds its capture handlers, which keep each record
    (and so each failure and its arguments), when the test function starts.
    """
    logger = logging.getLogger("guardrails")
    out = io.StringIO()
    saved = logger.handlers, logger.level, logger.propagate
    logger.handlers = [logging.StreamHandler(out)]
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        yield out
    finally:
        logger.handlers, logger.level, logger.propagate = saved


RETRY_ONLY = {"max_attempts": 3, "wait": {"initial": 1, "jitter": 0}}
#: name: (the retry block, what the attempts raise (None: return), the note it ends with)
LEAK_CASES: dict[str, tuple[dict[str, Any], list[type[Exception] | None], str | None]] = {
    "fails at once, not retryable": (RETRY_ONLY, [ValueError], None),
    "not retryable on a retry": (
        RETRY_ONLY,
        [ConnectionError, ValueError],
        "2 attempts (ValueError is not retried by this policy)",
    ),
    "exhausts its attempts": (
        RETRY_ONLY,
        [ConnectionError] * 3,
        "3 attempts (retry.max_attempts=3)",
    ),
    "gives up at the deadline": (
        {**RETRY_ONLY, "max_attempts": 10, "deadline": 2.5},
        [ConnectionError] * 2,
        "2 attempts (retry.deadline=2.5s would be passed)",
    ),
    "succeeds on a retry": (RETRY_ONLY, [ConnectionError, ConnectionError, None], None),
}


@pytest.mark.parametrize("log", ["log on", "log off"])
@pytest.mark.parametrize("case", list(LEAK_CASES))
def test_a_failed_call_frees_its_arguments_at_once(
    kind: str, case: str, log: str, clock: FakeClock
) -> None:
    block, outcomes, note = LEAK_CASES[case]
    policy: dict[str, Any] = {"retry": block}
    if log == "log off":
        policy["log"] = {"enabled": False}
    configure({"policies": {"r": policy}})
    attempts = 0

    def work(features: np.ndarray) -> float:
        nonlocal attempts
        failure = outcomes[attempts]
        attempts += 1
        if failure is not None:
            raise failure(f"attempt {attempts} on {features.shape}")
        return 1.0

    async def work_async(features: np.ndarray) -> float:
        await asyncio.sleep(0)
        return work(features)

    def sync_call() -> bool:
        features = np.ones((1000, 4))
        alive = weakref.ref(features)
        f = guarded("r")(work)
        try:
            f(features)
        except Exception as exc:
            assert our_notes(exc)[-1:] == (
                [f"guardrails: policy 'r' gave up after {note}"] if note else []
            )
        del features
        return alive() is None

    async def async_call() -> bool:
        features = np.ones((1000, 4))
        alive = weakref.ref(features)
        f = guarded("r")(work_async)
        try:
            await f(features)
        except Exception as exc:
            assert our_notes(exc)[-1:] == (
                [f"guardrails: policy 'r' gave up after {note}"] if note else []
            )
        del features
        return alive() is None

    with guardrails_log_to_text() as text:
        gc.disable()
        try:
            freed = sync_call() if kind == "sync" else asyncio.run(async_call())
        finally:
            gc.enable()
    assert attempts == len(outcomes)
    assert freed, "the call's argument outlived it: a reference cycle holds it"
    if log == "log on" and outcomes[-1] is not None:
        assert "Traceback" in text.getvalue()  # the failure was logged in full


# --- deadline on the fake clock ----------------------------------------------------------------


@given(
    kind=st.sampled_from(["sync", "async"]),
    deadline=st.floats(min_value=0, max_value=60),
    initial=st.floats(min_value=0, max_value=10),
    multiplier=st.floats(min_value=1, max_value=4),
    jitter=st.floats(min_value=0, max_value=3),
    share=st.floats(min_value=0, max_value=1),
    work=st.floats(min_value=0, max_value=5),
)
def test_no_attempt_starts_past_the_deadline_and_none_is_given_up_early(
    kind: str,
    deadline: float,
    initial: float,
    multiplier: float,
    jitter: float,
    share: float,
    work: float,
) -> None:
    wait = {"initial": initial, "max": 8, "multiplier": multiplier, "jitter": jitter}
    starts: list[float] = []
    original = _retry._RNG
    _retry._RNG = FixedDraw(share)  # type: ignore[assignment]
    try:
        with fake_clock() as clock:
            retry_policy(max_attempts=40, deadline=deadline, wait=wait)

            def attempt() -> None:
                starts.append(clock.monotonic())
                clock.advance(work)  # each attempt takes this long
                raise ConnectionError(len(starts))

            with pytest.raises(ConnectionError) as exc:
                guard(kind, attempt)()
    finally:
        _retry._RNG = original
    t0, n = starts[0], len(starts)
    assert all(start < t0 + deadline for start in starts[1:])
    assert sum(clock.sleeps) < deadline or n == 1
    if n < 40:  # stopped by the deadline: the next wait would have passed it
        j = min(jitter, 8)
        next_wait = min(min(initial * multiplier ** (n - 1), 8 - j) + share * j, 8)
        assert starts[-1] + work + next_wait >= t0 + deadline - 1e-9
        if n > 1:
            assert our_notes(exc.value) == [
                f"guardrails: policy 'r' gave up after {n} attempts "
                f"(retry.deadline={deadline:g}s would be passed)"
            ]


# --- an open circuit is never retried ------------------------------------------------------


class OpenCircuit(CircuitOpenError):
    """An application's own subclass still means "do not call now"."""


@pytest.mark.parametrize("retry_on", [["Exception"], ["guardrails:GuardrailsError"]])
@pytest.mark.parametrize("error", [CircuitOpenError, OpenCircuit])
def test_an_open_circuit_is_never_retried_whatever_retry_on_says(
    kind: str, clock: FakeClock, retry_on: list[str], error: type[CircuitOpenError]
) -> None:
    retry_policy(max_attempts=5, retry_on=retry_on)
    flaky = Flaky(error("r", "tests.fn", 30.0))
    with pytest.raises(error) as exc:
        guard(kind, flaky)()
    assert flaky.calls == 1 and clock.sleeps == []
    assert our_notes(exc.value) == []
    assert guardrails.stats()["r"].retries == 0


def test_an_open_circuit_after_a_retry_stops_at_once_and_says_why(
    kind: str, clock: FakeClock
) -> None:
    retry_policy(max_attempts=5, retry_on=["Exception"])
    flaky = Flaky(ConnectionError("down"), CircuitOpenError("r", "tests.fn", 30.0))
    with pytest.raises(CircuitOpenError) as exc:
        guard(kind, flaky)()
    assert flaky.calls == 2 and clock.sleeps == [1]
    assert our_notes(exc.value) == [
        "guardrails: policy 'r' gave up after 2 attempts "
        "(the circuit is open; CircuitOpenError is never retried)"
    ]


def test_an_open_circuit_is_not_retried_by_a_config_built_without_validation(
    kind: str,
) -> None:
    cfg = RetryConfig.model_construct(
        retry_on=(CircuitOpenError, ConnectionError), wait=WaitConfig(initial=1, jitter=0)
    )
    clock = FakeClock()
    flaky = Flaky(CircuitOpenError("r", "tests.fn", 1.0))
    with pytest.raises(CircuitOpenError):
        unvalidated(kind, cfg, flaky, clock)()
    assert flaky.calls == 1 and clock.sleeps == []


@pytest.mark.parametrize("name", ["guardrails:CircuitOpenError", "tests.test_retry:OpenCircuit"])
def test_retry_on_refuses_to_name_an_open_circuit(name: str) -> None:
    with pytest.raises(PolicyConfigError) as exc:
        retry_policy(retry_on=["ConnectionError", name])
    [(path, message)] = exc.value.problems
    assert path == "guardrails.policies.r.retry.retry_on"
    assert "cannot be retried: an open circuit means do not call now" in message
