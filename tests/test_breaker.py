"""The ``breaker`` layer: one circuit breaker per policy, on the fake clock, sync and async."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import guardrails
import guardrails.testing
from guardrails import (
    BulkheadFull,
    CallTimeout,
    CircuitOpenError,
    OutputValidationError,
    PolicyConfigError,
    RateLimitExceeded,
    configure,
    guarded,
)
from guardrails.layers.breaker import BUCKETS, BreakerConfig
from guardrails.testing import FakeClock
from tests.twins import guard_as
from tests.twins import reap as _reap

pytestmark = pytest.mark.filterwarnings(
    # Python 3.12+ warns on any fork from a multi-threaded process: the fork test does that.
    "ignore:This process .* is multi-threaded:DeprecationWarning"
)


@pytest.fixture(params=["sync", "async"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def use(**breaker: Any) -> dict[str, Any]:
    """A configuration whose policy ``p`` has this breaker block (and no log layer)."""
    node = {"policies": {"p": {"log": None, "breaker": breaker}}}
    configure(node)
    return node


class Dep:
    """The dependency: each call takes ``took`` seconds of the fake clock, then returns or
    raises ``what``: an exception instance, or a class or factory making one (module-level
    cases pass factories: a raised instance keeps its traceback, and with it this call's
    frames and the guarded function, for as long as the instance lives)."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.runs = 0

    def __call__(self, what: Any = None, took: float = 0.0) -> Any:
        self.runs += 1
        if took:
            self.clock.advance(took)
        if callable(what):
            what = what()
        if isinstance(what, BaseException):
            raise what
        return what


def outcome(call: Callable[..., Any], *args: Any, **kwargs: Any) -> str:
    """``"ok"``, ``"refused"`` (CircuitOpenError) or the name of the exception raised."""
    try:
        call(*args, **kwargs)
    except CircuitOpenError:
        return "refused"
    except BaseException as exc:  # KeyboardInterrupt included: the tests raise it on purpose
        return type(exc).__name__
    return "ok"


def retry_after(call: Callable[..., Any]) -> float:
    with pytest.raises(CircuitOpenError) as caught:
        call()
    return caught.value.retry_after


def state() -> str | None:
    return guardrails.stats()["p"].breaker_state


def transitions(logs: pytest.LogCaptureFixture) -> list[tuple[str, str, str]]:
    """The breaker's state changes logged so far: ``(policy, function, new state)``."""
    return [
        (r.policy, r.function, r.breaker_state)  # type: ignore[attr-defined]
        for r in logs.records
        if hasattr(r, "breaker_state")
    ]


def open_it(g: Callable[..., Any], n: int = 2) -> None:
    for _ in range(n):
        assert outcome(g, ConnectionError) == "ConnectionError"
    assert state() == "open"


# --- the cycle ------------------------------------------------------------------------------


def test_closed_open_half_open_closed(
    kind: str, clock: FakeClock, logs: pytest.LogCaptureFixture
) -> None:
    use(window=4, min_calls=4, failure_rate="50%", open_for="10s", half_open_calls=2)
    dep = Dep(clock)
    g = guard_as(kind, dep, "p")
    assert [outcome(g), outcome(g), outcome(g, ConnectionError)] == ["ok", "ok", "ConnectionError"]
    assert state() == "closed"  # 1 of 3, and fewer than min_calls anyway
    assert outcome(g, ConnectionError) == "ConnectionError"  # 2 of 4: 50%
    assert state() == "open"
    runs = dep.runs
    assert retry_after(g) == 10.0
    clock.advance(4)
    assert retry_after(g) == pytest.approx(6.0)
    assert dep.runs == runs  # refused without running
    stats = guardrails.stats()["p"]
    assert (stats.short_circuited, stats.breaker_state) == (2, "open")
    clock.advance(6)
    assert state() == "half_open"
    assert outcome(g) == "ok"
    assert state() == "half_open"  # one of two trials
    assert outcome(g) == "ok"
    assert state() == "closed"
    # The window starts empty: one failure is below min_calls.
    assert outcome(g, ConnectionError) == "ConnectionError"
    assert state() == "closed"
    assert [t[2] for t in transitions(logs)] == ["open", "half_open", "closed"]
    assert {t[0] for t in transitions(logs)} == {"p"}
    opened = next(r for r in logs.records if getattr(r, "breaker_state", None) == "open")
    assert opened.levelno == logging.WARNING
    text = opened.getMessage()
    assert "closed -> open" in text
    assert "2 of the last 4 calls failed (50%, failure_rate 50%)" in text
    assert "trial calls in 10 s" in text


def test_the_log_names_the_function_whose_call_changed_the_state(
    clock: FakeClock, logs: pytest.LogCaptureFixture
) -> None:
    use(window=2, min_calls=1, failure_rate=1.0)

    def lookup() -> None:
        raise ConnectionError

    g = guarded("p")(lookup)
    assert outcome(g) == "ConnectionError"
    (record,) = [r for r in logs.records if hasattr(r, "breaker_state")]
    assert record.policy == "p"  # type: ignore[attr-defined]
    assert record.function.endswith("lookup")  # type: ignore[attr-defined]
    assert record.breaker_state == "open"  # type: ignore[attr-defined]


def test_a_failed_trial_opens_it_again(
    kind: str, clock: FakeClock, logs: pytest.LogCaptureFixture
) -> None:
    use(window=2, min_calls=2, open_for="30s", half_open_calls=3)
    g = guard_as(kind, Dep(clock), "p")
    open_it(g)
    clock.advance(30)
    assert outcome(g) == "ok"
    assert outcome(g, ConnectionError("still down")) == "ConnectionError"
    assert state() == "open"
    assert retry_after(g) == 30.0  # a full open_for from the failed trial
    assert [t[2] for t in transitions(logs)] == ["open", "half_open", "open"]
    again = [r for r in logs.records if getattr(r, "breaker_state", None) == "open"][-1]
    assert "half_open -> open" in again.getMessage()
    assert "a trial call failed (ConnectionError: still down)" in again.getMessage()
    clock.advance(30)
    assert [outcome(g) for _ in range(3)] == ["ok", "ok", "ok"]
    assert state() == "closed"


class Unprintable(ConnectionError):
    def __str__(self) -> str:
        raise RuntimeError("no text")


def test_a_trial_failure_that_cannot_be_printed_is_still_the_error_raised(
    kind: str, clock: FakeClock, logs: pytest.LogCaptureFixture
) -> None:
    use(window=2, min_calls=2, open_for="1s")
    g = guard_as(kind, Dep(clock), "p")
    open_it(g)
    clock.advance(1)
    assert outcome(g, Unprintable) == "Unprintable"
    assert state() == "open"
    assert "a trial call failed (Unprintable: <unprintable>)" in logs.records[-1].getMessage()


# --- windows --------------------------------------------------------------------------------


def test_a_count_window_holds_the_last_n_calls(kind: str, clock: FakeClock) -> None:
    use(window=3, min_calls=3, failure_rate="60%")
    g = guard_as(kind, Dep(clock), "p")
    f = ConnectionError
    seen = []
    for what in [None, f, None, None, None, f]:
        outcome(g, what)
        seen.append(state())
    # Counted over every call, 2 of 6 (33%); the last 3 never held 2 failures.
    assert seen == ["closed"] * 6
    outcome(g, f)  # the last 3: ok, f, f (67%); over every call, 3 of 7 (43%)
    assert state() == "open"


@pytest.mark.parametrize(("gap", "opens"), [(30.0, True), (60.0, True), (63.0, False)])
def test_old_outcomes_leave_a_time_window(
    kind: str, clock: FakeClock, gap: float, opens: bool
) -> None:
    # 60 s in 20 buckets of 3 s: an outcome stays between 60 and 63 s.
    use(window="60s", min_calls=2, failure_rate="50%")
    g = guard_as(kind, Dep(clock), "p")
    outcome(g, ConnectionError)
    clock.advance(gap)
    outcome(g)
    assert state() == ("open" if opens else "closed")


def test_successes_leaving_a_time_window_raise_the_failure_rate(
    kind: str, clock: FakeClock
) -> None:
    use(window="60s", min_calls=3, failure_rate="60%")
    g = guard_as(kind, Dep(clock), "p")
    outcome(g)
    outcome(g)
    clock.advance(40)
    outcome(g, ConnectionError)
    outcome(g, ConnectionError)
    assert state() == "closed"  # 2 of 4
    clock.advance(23)  # the two successes are out; the failures are 23 s old
    outcome(g)  # a success, yet the window is 2 failures of 3 (67%)
    assert state() == "open"


def test_min_calls_a_success_can_be_the_call_that_opens(kind: str, clock: FakeClock) -> None:
    use(window=10, min_calls=5, failure_rate="50%")
    g = guard_as(kind, Dep(clock), "p")
    for _ in range(4):
        outcome(g, ConnectionError)
    assert state() == "closed"  # 4 failures, but fewer than min_calls
    outcome(g)  # 4 of 5
    assert state() == "open"


def test_slow_calls_open_it(kind: str, clock: FakeClock, logs: pytest.LogCaptureFixture) -> None:
    use(window=4, min_calls=2, slow_call="2s", slow_rate="50%", open_for="5s")
    dep = Dep(clock)
    g = guard_as(kind, dep, "p")
    outcome(g, took=1.9)
    outcome(g, took=0.1)
    assert state() == "closed"
    outcome(g, took=2.0)  # 1 of 3 slow
    assert state() == "closed"
    outcome(g, took=5.0)  # 2 of 4
    assert state() == "open"
    assert "2 of the last 4 calls took 2 s or longer (50%, slow_rate 50%)" in (
        logs.records[-1].getMessage()
    )
    clock.advance(5)
    outcome(g, took=3.0)  # a slow trial call: still slow, open again
    assert state() == "open"
    assert "a trial call took 3 s, slow_call 2 s" in logs.records[-1].getMessage()


def test_a_slow_failure_is_a_failure_and_slow(kind: str, clock: FakeClock) -> None:
    use(window=4, min_calls=2, failure_rate=1.0, slow_call="1s", slow_rate=1.0)
    g = guard_as(kind, Dep(clock), "p")
    outcome(g, ValueError, took=1.5)  # not a failure (failure_on), but slow
    assert state() == "closed"
    outcome(g, ConnectionError, took=1.5)  # a failure and slow: 2 of 2 slow
    assert state() == "open"


# --- what counts ------------------------------------------------------------------------------


def test_failure_on_and_ignore_on(kind: str, clock: FakeClock) -> None:
    use(
        window=2,
        min_calls=2,
        failure_rate="50%",
        failure_on=["ConnectionError"],
        ignore_on=["ConnectionAbortedError"],
    )
    g = guard_as(kind, Dep(clock), "p")
    outcome(g, ConnectionAbortedError)  # ignored, though a ConnectionError
    outcome(g, ConnectionAbortedError)
    assert state() == "closed"
    outcome(g, ValueError)  # the dependency answered: a success
    outcome(g, ValueError)
    assert state() == "closed"
    outcome(g, ConnectionResetError)  # a subclass: a failure; 1 of 2
    assert state() == "open"


def test_guardrails_refusals_and_control_flow_never_count(kind: str, clock: FakeClock) -> None:
    use(window=2, min_calls=2, failure_rate="50%")
    g = guard_as(kind, Dep(clock), "p")
    for refusal in [
        RateLimitExceeded("p", "f", 1.0),
        BulkheadFull("p", "f", 4),
        CircuitOpenError("other", "f", 1.0),
        KeyboardInterrupt,
    ]:
        outcome(g, refusal)
    outcome(g, ConnectionError)
    assert state() == "closed"  # one call in the window: the refusals were not calls
    outcome(g, ConnectionError)
    assert state() == "open"


@pytest.mark.parametrize(
    "failure",
    [
        lambda: CallTimeout("p", "f", 1.0, "attempt"),
        lambda: OutputValidationError("p", "f", [("", "not an int")]),
        lambda: ConnectionError("injected by chaos"),
    ],
    ids=["timeout", "output", "chaos"],
)
def test_timeouts_invalid_outputs_and_injected_errors_are_failures(
    kind: str, clock: FakeClock, failure: Callable[[], Exception]
) -> None:
    use(window=1, min_calls=1, failure_rate=1.0)
    g = guard_as(kind, Dep(clock), "p")
    outcome(g, failure)
    assert state() == "open"


def test_a_keyboard_interrupt_trial_gives_its_permit_back(kind: str, clock: FakeClock) -> None:
    use(window=2, min_calls=2, half_open_calls=1, open_for="1s")
    g = guard_as(kind, Dep(clock), "p")
    open_it(g)
    clock.advance(1)
    assert outcome(g, KeyboardInterrupt) == "KeyboardInterrupt"
    assert state() == "half_open"  # neither success nor failure ...
    assert outcome(g) == "ok"  # ... and the next call is the trial
    assert state() == "closed"


def test_a_cancelled_async_trial_gives_its_permit_back(clock: FakeClock) -> None:
    use(window=2, min_calls=2, half_open_calls=1, open_for="1s")
    started = asyncio.Event()

    @guarded("p")
    async def call(what: Any = None, hang: bool = False) -> Any:
        if hang:
            started.set()
            await asyncio.Event().wait()
        if what is not None:
            raise what
        return what

    async def main() -> None:
        for _ in range(2):
            with pytest.raises(ConnectionError):
                await call(ConnectionError)
        clock.advance(1)
        trial = asyncio.create_task(call(hang=True))
        await started.wait()
        with pytest.raises(CircuitOpenError) as caught:
            await call()  # the one permit is taken
        assert caught.value.retry_after == 0.0
        trial.cancel()
        with pytest.raises(asyncio.CancelledError):
            await trial
        assert state() == "half_open"
        assert await call() is None  # admitted as the trial
        assert state() == "closed"

    asyncio.run(main())


# --- half-open limits, sharing, reconfiguration -----------------------------------------------


def test_calls_beyond_the_trials_are_refused_sync(clock: FakeClock) -> None:
    use(window=2, min_calls=2, half_open_calls=3, open_for="1s")
    release = threading.Event()
    entered = threading.Semaphore(0)

    @guarded("p")
    def call(what: Any = None, hold: bool = False) -> Any:
        if hold:
            entered.release()
            assert release.wait(30)
        if what is not None:
            raise what
        return "ok"

    open_it(call)
    clock.advance(1)
    threads = [threading.Thread(target=call, kwargs={"hold": True}) for _ in range(3)]
    for t in threads:
        t.start()
    for _ in range(3):
        assert entered.acquire(timeout=30)
    assert retry_after(call) == 0.0
    assert outcome(call) == "refused"
    release.set()
    for t in threads:
        t.join(30)
    assert state() == "closed"
    assert guardrails.stats()["p"].short_circuited == 2


def test_calls_beyond_the_trials_are_refused_async(clock: FakeClock) -> None:
    use(window=2, min_calls=2, half_open_calls=3, open_for="1s")

    async def main() -> None:
        release = asyncio.Event()
        entered = asyncio.Semaphore(0)

        @guarded("p")
        async def call(what: Any = None, hold: bool = False) -> Any:
            if hold:
                entered.release()
                await release.wait()
            if what is not None:
                raise what
            return "ok"

        for _ in range(2):
            with pytest.raises(ConnectionError):
                await call(ConnectionError)
        clock.advance(1)
        trials = [asyncio.create_task(call(hold=True)) for _ in range(3)]
        for _ in range(3):
            await entered.acquire()
        with pytest.raises(CircuitOpenError):
            await call()
        release.set()
        assert await asyncio.gather(*trials) == ["ok"] * 3
        assert state() == "closed"

    asyncio.run(main())
    assert guardrails.stats()["p"].short_circuited == 1


def test_the_functions_of_a_policy_share_one_breaker_sync_and_async(clock: FakeClock) -> None:
    use(window=2, min_calls=2)
    dep = Dep(clock)
    sync = guard_as("sync", dep, "p")
    async_ = guard_as("async", dep, "p")
    outcome(sync, ConnectionError)
    outcome(async_, ConnectionError)
    assert state() == "open"
    assert outcome(sync) == outcome(async_) == "refused"
    other = guard_as("sync", dep, "q")  # another policy, its own breaker (none here)
    assert outcome(other) == "ok"


def test_an_unchanged_configure_keeps_the_state_a_changed_one_resets_it(
    kind: str, clock: FakeClock
) -> None:
    node = use(window=2, min_calls=2, open_for="10s")
    g = guard_as(kind, Dep(clock), "p")
    open_it(g)
    configure(node)
    assert state() == "open"
    assert outcome(g) == "refused"
    use(window=2, min_calls=2, open_for="20s")
    assert state() == "closed"
    assert outcome(g) == "ok"


def test_a_count_window_and_a_time_window_of_the_same_number_are_different_breakers(
    clock: FakeClock,
) -> None:
    use(window=20, min_calls=2)
    g = guard_as("sync", Dep(clock), "p")
    open_it(g)
    use(window="20s", min_calls=2)
    assert state() == "closed"
    assert BreakerConfig(window=20) != BreakerConfig(window="20s")


def test_no_breaker_no_state(clock: FakeClock) -> None:
    configure({"policies": {"p": {"log": None}}})
    g = guard_as("sync", Dep(clock), "p")
    g()
    assert state() is None


# --- many threads, forks ------------------------------------------------------------------------


def test_sixteen_threads_open_it_exactly_once(
    clock: FakeClock, logs: pytest.LogCaptureFixture
) -> None:
    use(window=100, min_calls=20, failure_rate="50%", open_for="1h")
    runs = []
    start = threading.Barrier(16)

    @guarded("p")
    def call(i: int) -> None:
        runs.append(i)
        if i % 2:
            raise ConnectionError

    seen: list[str] = []

    def hammer() -> None:
        start.wait(30)
        seen.extend(outcome(call, i) for i in range(200))

    threads = [threading.Thread(target=hammer) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(seen) == 16 * 200
    assert [t[2] for t in transitions(logs)] == ["open"]
    refused = seen.count("refused")
    assert refused == guardrails.stats()["p"].short_circuited
    assert len(runs) == len(seen) - refused
    assert 20 <= len(runs) < len(seen)


def test_sixteen_threads_in_half_open_admit_exactly_the_trials(
    clock: FakeClock, logs: pytest.LogCaptureFixture
) -> None:
    use(window=2, min_calls=2, half_open_calls=3, open_for="1s")
    release = threading.Event()
    inside = []

    @guarded("p")
    def call(what: Any = None, hold: bool = False) -> Any:
        if hold:
            inside.append(1)
            assert release.wait(30)
        if what is not None:
            raise what
        return "ok"

    open_it(call)
    clock.advance(1)
    start = threading.Barrier(16)
    seen: list[str] = []

    def one() -> None:
        start.wait(30)
        seen.append(outcome(call, hold=True))

    threads = [threading.Thread(target=one) for _ in range(16)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while seen.count("refused") < 13 and time.monotonic() < deadline:
        time.sleep(0.001)  # bounded polling on an observable condition
    release.set()
    for t in threads:
        t.join(30)
    assert sorted(seen) == ["ok"] * 3 + ["refused"] * 13
    assert len(inside) == 3
    assert [t[2] for t in transitions(logs)] == ["open", "half_open", "closed"]


def test_a_child_forked_while_a_trial_runs_can_make_its_own_trial(clock: FakeClock) -> None:
    use(window=2, min_calls=2, half_open_calls=1, open_for="1s")
    release = threading.Event()
    entered = threading.Event()

    @guarded("p")
    def call(what: Any = None, hold: bool = False) -> Any:
        if hold:
            entered.set()
            assert release.wait(30)
        if what is not None:
            raise what
        return "ok"

    open_it(call)
    clock.advance(1)
    trial = threading.Thread(target=call, kwargs={"hold": True})
    trial.start()
    assert entered.wait(30)
    assert outcome(call) == "refused"  # the parent's one permit is taken
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            # The trial's thread does not exist here: this call is the child's trial.
            code = 0 if outcome(call) == "ok" and state() == "closed" else 2
        finally:
            os._exit(code)
    try:
        assert _reap(pid) == 0
    finally:
        release.set()
        trial.join(30)
    assert state() == "closed"


# --- configuration ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("block", "key", "message"),
    [
        ({"window": 60.0}, "window", "60.0 is ambiguous (a number of calls or of seconds?)"),
        ({"window": "60"}, "window", "'60' is ambiguous"),
        ({"window": 0}, "window", "a window of calls holds at least 1 call"),
        ({"window": "0s"}, "window", "a time window must be longer than 0 s"),
        # floor(now / width) of a denormal width overflows: an OverflowError on every call
        ({"window": "0." + "0" * 320 + "1s"}, "window", "a time window must be at least 1ms"),
        ({"window": "0.5ms"}, "window", "a time window must be at least 1ms"),
        ({"window": "soon"}, "window", "expected"),
        ({"window": True}, "window", "expected an integer for a window"),
        ({"window": 5}, "min_calls", "10 is more than the window holds (5 calls)"),
        ({"window": 5, "min_calls": 6}, "min_calls", "6 is more than the window holds"),
        ({"failure_rate": 0}, "failure_rate", "must be above 0"),
        ({"failure_rate": "150%"}, "failure_rate", "expected"),
        ({"slow_rate": "50%"}, "slow_rate", "has no effect without slow_call"),
        ({"slow_call": "1s", "slow_rate": 0}, "slow_rate", "must be above 0"),
        ({"slow_call": 0}, "slow_call", "greater than 0"),
        ({"open_for": 0}, "open_for", "greater than 0"),
        ({"half_open_calls": 0}, "half_open_calls", "greater than or equal to 1"),
        ({"min_calls": 2.5}, "min_calls", "valid integer"),
        ({"failure_on": ["KeyboardInterrupt"]}, "failure_on", "cannot count as a failure"),
        ({"failure_on": ["BaseException"]}, "failure_on", "cannot count as a failure"),
        ({"failure_on": []}, "failure_on", "nothing could ever open the breaker"),
        (
            {"failure_on": ["ConnectionError"], "ignore_on": ["OSError"]},
            "ignore_on",
            "the breaker could never open",
        ),
        ({"failure_on": ["no.such:Error"]}, "failure_on", "no.such"),
        ({"windw": 20}, "windw", "window"),
    ],
)
def test_config_errors_name_the_key(block: dict[str, Any], key: str, message: str) -> None:
    with pytest.raises(PolicyConfigError) as caught:
        configure({"policies": {"p": {"breaker": block}}})
    (path, text), *_ = caught.value.problems
    assert path == f"guardrails.policies.p.breaker.{key}"
    assert message in text


def test_configs_that_can_open_are_accepted() -> None:
    BreakerConfig(failure_on=[], slow_call="1s")  # slow calls alone
    BreakerConfig(failure_on=["OSError"], ignore_on=["ConnectionError"])  # a carve-out
    BreakerConfig(window="1m", min_calls=1000)  # a time window holds any number
    BreakerConfig(window=5, min_calls=5)


def test_a_time_window_is_shown_with_its_unit_and_reads_back() -> None:
    cfg = BreakerConfig(window="1m", min_calls=3)
    shown = cfg.model_dump(mode="json")
    assert shown["window"] == "60s"
    assert BreakerConfig.model_validate(shown) == cfg
    assert BreakerConfig(window=20).model_dump(mode="json")["window"] == 20
    assert BreakerConfig(window="250ms").model_dump(mode="json")["window"] == "0.25s"


# --- against a reference model ------------------------------------------------------------------

#: What the dependency does in one call: (exception to raise or None, is it a failure?).
OUTCOMES: dict[str, Any] = {
    "ok": None,
    "fail": ConnectionError,
    "answered": ValueError,  # not in failure_on: the dependency answered
    "ignored": ConnectionAbortedError,  # in ignore_on (though a ConnectionError)
    "refusal": lambda: RateLimitExceeded("p", "f", 1.0),
    "interrupt": KeyboardInterrupt,
}


class Model:
    """The breaker as the contract states it, evaluated after every outcome, with no regard
    for speed: every outcome kept, the window recomputed from scratch."""

    def __init__(self, cfg: BreakerConfig, now: float) -> None:
        self.cfg = cfg
        self.state = "closed"
        self.outcomes: list[tuple[float, bool, bool]] = []  # (time, failed, slow)
        self.open_until = -math.inf
        self.trials_ok = 0
        self.now = now

    def effective(self) -> str:
        if self.state == "open" and self.now >= self.open_until:
            return "half_open"
        return self.state

    def call(self, what: str, took: float) -> tuple[str, float | None]:
        """``("refused", retry_after)`` or ``("ran", None)``; the clock moves by ``took``."""
        cfg = self.cfg
        if self.state == "open":
            if self.now < self.open_until:
                return "refused", self.open_until - self.now
            self.state, self.trials_ok = "half_open", 0
        if self.state == "half_open" and self.trials_ok >= cfg.half_open_calls:
            return "refused", 0.0
        started = self.now
        self.now += took
        if what in ("ignored", "refusal", "interrupt"):
            return "ran", None
        failed = what == "fail"
        # The breaker times a call by the clock, as the model must: 1023.7 + 0.5 - 1023.7
        # is 0.49999999999977 in floats, which is not slow_call 0.5 or longer.
        slow = cfg.slow_call is not None and self.now - started >= cfg.slow_call
        if self.state == "half_open":
            if failed or slow:
                self.state, self.open_until = "open", self.now + cfg.open_for
            else:
                self.trials_ok += 1
                if self.trials_ok >= cfg.half_open_calls:
                    self.state, self.outcomes = "closed", []
            return "ran", None
        self.outcomes.append((self.now, failed, slow))
        if isinstance(cfg.window, int):
            window = self.outcomes[-cfg.window :]
        else:
            width = cfg.window / BUCKETS
            oldest = math.floor(self.now / width) - BUCKETS
            window = [o for o in self.outcomes if math.floor(o[0] / width) >= oldest]
        calls = len(window)
        nf = sum(o[1] for o in window)
        ns = sum(o[2] for o in window)
        if calls >= cfg.min_calls and (
            (nf and nf / calls >= cfg.failure_rate)
            or (ns and cfg.slow_call is not None and ns / calls >= cfg.slow_rate)
        ):
            self.state, self.open_until, self.outcomes = "open", self.now + cfg.open_for, []
        return "ran", None


@st.composite
def breakers(draw: st.DrawFn) -> dict[str, Any]:
    timed = draw(st.booleans())
    size = draw(st.integers(1, 6))
    block: dict[str, Any] = {
        # Time windows of buckets from 0.15 s to 3 s: shorter and longer than open_for.
        "window": draw(st.sampled_from(["3s", "6s", "12s", "30s", "1m"])) if timed else size,
        "min_calls": draw(st.integers(1, 6 if timed else size)),
        "failure_rate": draw(st.sampled_from([0.25, "30%", 0.5, "60%", 1.0])),
        "open_for": draw(st.sampled_from([1, 2.5, 5])),
        "half_open_calls": draw(st.integers(1, 3)),
        "failure_on": ["ConnectionError"],
        "ignore_on": ["ConnectionAbortedError"],
    }
    if draw(st.booleans()):
        block["slow_call"] = draw(st.sampled_from([0.5, 1.0]))
        block["slow_rate"] = draw(st.sampled_from([0.5, "75%", 1.0]))
    return block


STEPS = st.lists(
    st.tuples(
        st.sampled_from([0.0, 0.0, 0.1, 0.4, 1.0, 2.5, 7.0, 20.0]),  # time before the call
        st.sampled_from(sorted(OUTCOMES)),
        st.sampled_from([0.0, 0.0, 0.3, 0.5, 1.2]),  # how long the call takes
    ),
    min_size=20,  # long enough to open, recover and open again
    max_size=100,
)


@pytest.mark.parametrize("twin", ["sync", "async"])
@settings(max_examples=300)
@given(block=breakers(), steps=STEPS)
def test_the_breaker_agrees_with_a_reference_model(
    twin: str, block: dict[str, Any], steps: list[tuple[float, str, float]]
) -> None:
    guardrails.testing.reset()
    with guardrails.testing.fake_clock() as clock:
        dep = Dep(clock)
        g = guard_as(twin, dep, "p")
        use(**block)  # compiles g: its policy's statistics exist from here on
        model = Model(BreakerConfig(**block), clock.monotonic())
        refused = 0
        for i, (gap, what, took) in enumerate(steps):
            clock.advance(gap)
            model.now += gap
            assert clock.monotonic() == model.now
            assert state() == model.effective(), f"step {i} before"
            expected, after = model.call(what, took)
            runs = dep.runs
            try:
                g(OUTCOMES[what], took=took)
            except CircuitOpenError as exc:
                assert expected == "refused", f"step {i}: refused, the model ran it"
                assert exc.retry_after == after, f"step {i}"
                assert dep.runs == runs
                refused += 1
                continue
            except BaseException:  # the dependency's own exception, as told
                pass
            assert expected == "ran", f"step {i}: ran, the model refused it"
            assert clock.monotonic() == model.now
        assert state() == model.effective()
        assert guardrails.stats()["p"].short_circuited == refused
