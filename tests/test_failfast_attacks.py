"""Attacks on the fail-fast layers together (breaker, fallback, chaos, retry budget and
Retry-After): clocks set back, self-referring fallbacks, the smallest windows."""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
import types
from collections.abc import Iterator
from typing import Any

import pytest

import guardrails
from guardrails import CircuitOpenError, PolicyConfigError, configure, guarded
from guardrails.testing import FakeClock
from tests.test_retry_budget import FailsOnce, budget_policy, calls
from tests.twins import guard_as


@pytest.fixture(params=["sync", "async"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def fails() -> None:
    raise ConnectionError("down")


# --- a clock set back ---------------------------------------------------------------------------


def test_a_clock_set_back_keeps_the_breaker_open_for_open_for_not_longer(
    kind: str, clock: FakeClock
) -> None:
    configure({"policies": {"p": {"log": None, "breaker": {"window": 2, "min_calls": 1}}}})
    f = guard_as(kind, fails, "p")
    with pytest.raises(ConnectionError):
        f()
    assert guardrails.stats()["p"].breaker_state == "open"
    clock.advance(-3600)  # set back an hour
    with pytest.raises(CircuitOpenError) as refused:
        f()
    assert refused.value.retry_after == 30.0  # open_for from now, not an hour and 30 s
    clock.advance(30)
    assert guardrails.stats()["p"].breaker_state == "half_open"


def test_a_clock_set_back_counts_in_the_newest_budget_bucket(kind: str, clock: FakeClock) -> None:
    configure({"policies": budget_policy(ratio=0.2, min_per_second=0)})
    fn = FailsOnce()
    f = guard_as(kind, fn, "r")
    assert calls(f, fn, 10) == "----r----r"
    clock.advance(-100)  # time stands still for the budget: 20 calls, then 4 retries
    assert calls(f, fn, 10) == "----r----r"
    clock.advance(100)  # back where it was: still the same bucket
    assert calls(f, fn, 10) == "----r----r"
    clock.advance(10)  # a window later all of it has left
    assert calls(f, fn, 5) == "----r"


# --- the smallest windows -----------------------------------------------------------------------


def test_the_shortest_windows_work_on_the_real_clock(kind: str) -> None:
    # 1 ms cut into 20 (breaker) or 10 (budget) buckets: numbered floor(now / width) on
    # time.monotonic(), which a window of 1e-320 s overflowed.
    configure(
        {
            "policies": {
                "p": {"log": None, "breaker": {"window": "1ms", "min_calls": 1000}},
                "r": budget_policy("r", window="1ms")["r"],
            }
        }
    )
    f = guard_as(kind, fails, "p")
    for _ in range(3):
        with pytest.raises(ConnectionError):
            f()
    assert guardrails.stats()["p"].breaker_state == "closed"
    fn = FailsOnce()
    g = guard_as(kind, fn, "r")
    # retried or refused (which depends on how much real time passes), never an OverflowError
    assert set(calls(g, fn, 3)) <= {"r", "-"}


# --- fallback recursion -------------------------------------------------------------------------


@pytest.fixture
def module() -> Iterator[types.ModuleType]:
    mod = types.ModuleType("guardrails_attack_module")
    sys.modules[mod.__name__] = mod
    try:
        yield mod
    finally:
        del sys.modules[mod.__name__]


def test_a_fallback_to_the_guarded_function_itself_is_refused(
    kind: str, module: types.ModuleType
) -> None:
    # While the dependency is down each fallback would call it again: RecursionError after
    # ~330 calls, each counted as a failure.
    if kind == "sync":

        def fetch(x: int) -> int:
            raise ConnectionError("down")

        module.fetch = guarded("p")(fetch)
    else:

        async def afetch(x: int) -> int:
            raise ConnectionError("down")

        module.fetch = guarded("p")(afetch)
    with pytest.raises(PolicyConfigError) as refused:
        configure({"policies": {"p": {"fallback": {"function": f"{module.__name__}:fetch"}}}})
    [(path, message)] = refused.value.problems
    assert path == "guardrails.policies.p.fallback.function"
    assert "itself" in message and "RecursionError" in message


def test_a_fallback_to_the_same_function_under_another_policy_is_allowed(
    module: types.ModuleType,
) -> None:
    def fetch(x: int) -> Any:
        if x < 0:
            raise ConnectionError("down")
        return x

    module.fetch_p = guarded("p")(fetch)
    module.fetch_q = guarded("q")(fetch)
    configure(
        {
            "policies": {
                "p": {"fallback": {"function": f"{module.__name__}:fetch_q"}},
                "q": {"fallback": {"value": "q answered"}},
            }
        }
    )
    assert module.fetch_p(-1) == "q answered"
    assert guardrails.stats()["p"].fallbacks == 1
    assert guardrails.stats()["q"].fallbacks == 1


# --- exceptions whose notes misbehave -----------------------------------------------------------


class NotesRaise(ConnectionError):
    @property
    def __notes__(self) -> list[str]:
        raise RuntimeError("__notes__ raised")


class AddNoteRaises(ConnectionError):
    def add_note(self, note: str) -> None:
        raise RuntimeError("add_note raised")


NO_WAIT = {"initial": 0, "max": 0, "jitter": 0}


@pytest.mark.parametrize("error", [NotesRaise, AddNoteRaises])
@pytest.mark.parametrize("where", ["max_attempts", "budget", "fallback function"])
def test_an_exception_whose_notes_raise_is_still_the_one_raised(
    kind: str, where: str, error: type[ConnectionError], module: types.ModuleType, clock: FakeClock
) -> None:
    # The note saying why retrying stopped (or whose fallback raised) is added to the
    # caller's exception; a failure to add it must not replace that exception.
    def failing() -> None:
        raise error("the dependency's own error")

    retry: dict[str, Any] = {"max_attempts": 2, "wait": NO_WAIT}
    blocks: dict[str, Any] = {"log": None, "retry": retry}
    if where == "budget":
        retry["budget"] = {"ratio": 0, "min_per_second": 0}
    elif where == "fallback function":
        module.answer = failing
        blocks = {"log": None, "fallback": {"function": f"{module.__name__}:answer"}}
    configure({"policies": {"p": blocks}})
    f = guard_as(kind, failing, "p")
    # Not pytest.raises: it reads __notes__ too, and so would fail on NotesRaise itself.
    raised: BaseException | None = None
    try:
        f()
    except BaseException as exc:  # whatever it is, compared below
        raised = exc
    assert type(raised) is error, repr(raised)
    assert raised.args == ("the dependency's own error",)
    assert guardrails.stats()["p"].failures == 1


# --- a breaker's trial permit and Ctrl-C -------------------------------------------------------


class CtrlCOnHalfOpen(logging.Handler):
    """Ctrl-C landing while the breaker's "open -> half_open" line is being written (a slow
    handler is where a process spends its time when a signal arrives)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.fired = 0

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "breaker_state", None) == "half_open" and not self.fired:
            self.fired += 1
            raise KeyboardInterrupt


def test_ctrl_c_while_the_half_open_transition_is_logged_leaks_no_trial_permit(
    kind: str, clock: FakeClock
) -> None:
    configure(
        {
            "policies": {
                "p": {
                    "log": None,
                    "breaker": {"window": 2, "min_calls": 1, "open_for": 1, "half_open_calls": 1},
                }
            }
        }
    )
    healthy = [False]

    def dep() -> str:
        if not healthy[0]:
            raise ConnectionError("down")
        return "ok"

    f = guard_as(kind, dep, "p")
    with pytest.raises(ConnectionError):
        f()
    clock.advance(1)
    healthy[0] = True
    handler = CtrlCOnHalfOpen()
    logger = logging.getLogger("guardrails")
    logger.addHandler(handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            f()  # admitted as the one trial, then interrupted before it ran
    finally:
        logger.removeHandler(handler)
    assert handler.fired == 1
    # The interrupted call gave its permit back: the next call is the trial, and closes it
    # (with the permit leaked, every call was refused with retry_after 0, forever).
    assert f() == "ok"
    assert guardrails.stats()["p"].breaker_state == "closed"


def test_threads_and_an_event_loop_in_half_open_admit_exactly_the_trials(
    clock: FakeClock,
) -> None:
    # 16 threads and 16 tasks (a sync and an async function of one policy) arrive at once;
    # 4 of the tasks are cancelled while they hold or wait. Exactly half_open_calls enter;
    # a cancelled trial's permit comes back, and the breaker still closes.
    configure(
        {
            "policies": {
                "p": {
                    "log": None,
                    "breaker": {"window": 2, "min_calls": 1, "open_for": 1, "half_open_calls": 3},
                }
            }
        }
    )
    release = threading.Event()
    lock = threading.Lock()
    inside: list[str] = []  # every call that entered the function
    now_inside = [0, 0]  # [inside now, most ever inside at once]
    outcomes: list[str] = []

    def enter(who: str) -> None:
        with lock:
            inside.append(who)
            now_inside[0] += 1
            now_inside[1] = max(now_inside)

    def leave() -> None:
        with lock:
            now_inside[0] -= 1

    @guarded("p")
    def sync_call(hold: bool) -> str:
        if hold:
            enter("thread")
            try:
                assert release.wait(30)
            finally:
                leave()
        return "ok"

    @guarded("p")
    async def async_call(hold: bool, failing: bool = False) -> str:
        if failing:
            raise ConnectionError("down")
        if hold:
            enter("task")
            try:
                while not release.is_set():
                    await asyncio.sleep(0.001)
            finally:
                leave()
        return "ok"

    with pytest.raises(ConnectionError):
        asyncio.run(async_call(False, failing=True))
    assert guardrails.stats()["p"].breaker_state == "open"
    clock.advance(1)
    start = threading.Barrier(17)

    def record(what: str) -> None:
        with lock:
            outcomes.append(what)

    def thread() -> None:
        start.wait(30)
        try:
            record(sync_call(True))
        except CircuitOpenError:
            record("refused")

    async def tasks() -> None:
        async def one() -> None:
            try:
                record(await async_call(True))
            except CircuitOpenError:
                record("refused")
            except asyncio.CancelledError:
                record("cancelled")
                raise

        start.wait(30)
        running = [asyncio.create_task(one()) for _ in range(16)]
        await asyncio.sleep(0)  # every task has called (and been admitted or refused)
        for t in running[:4]:
            t.cancel()
        await asyncio.gather(*running, return_exceptions=True)

    threads = [threading.Thread(target=thread) for _ in range(16)]
    loop_thread = threading.Thread(target=lambda: asyncio.run(tasks()))
    for t in [*threads, loop_thread]:
        t.start()
    deadline = time.monotonic() + 30
    while len(outcomes) + now_inside[0] < 32 and time.monotonic() < deadline:
        time.sleep(0.001)  # bounded polling: every caller refused, cancelled or inside
    release.set()
    for t in [*threads, loop_thread]:
        t.join(30)
    assert len(outcomes) == 32
    # Never more than 3 inside at once (a cancelled trial's permit may admit a later one).
    assert now_inside[1] == 3
    # Every caller that entered returned or was cancelled; everyone else was refused.
    assert outcomes.count("ok") + outcomes.count("cancelled") == len(inside)
    # Whatever happened, the trials' permits are all back: healthy calls close it.
    for _ in range(3):
        if guardrails.stats()["p"].breaker_state == "closed":
            break
        assert sync_call(False) == "ok"
    assert guardrails.stats()["p"].breaker_state == "closed"
