"""retry.budget: retries capped at a share of the policy's calls (plus a reserve a second) over a
sliding window, shared by the policy's functions, on guardrails' clock."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

import guardrails
from guardrails import PolicyConfigError, configure, guarded
from guardrails._state import STATE
from guardrails.layers.retry import RetryBudget, tenacity
from guardrails.testing import FakeClock
from tests.twins import guard_as
from tests.twins import reap as _reap

NO_WAIT = {"initial": 0, "max": 1, "jitter": 0}  # waits of 0: the fake clock never moves


def budget_policy(name: str = "r", *, max_attempts: int = 3, **budget: Any) -> dict[str, Any]:
    return {
        name: {
            "log": None,
            "retry": {"max_attempts": max_attempts, "wait": NO_WAIT, "budget": budget},
        }
    }


class FailsOnce:
    """Each call's first attempt fails with ConnectionError; its retry returns 'ok'."""

    def __init__(self) -> None:
        self.attempts = 0
        self.fail_next = False

    def __call__(self) -> str:
        self.attempts += 1
        if self.fail_next:
            self.fail_next = False
            raise ConnectionError("first attempt")
        return "ok"


def calls(f: Callable[[], Any], fn: FailsOnce, n: int) -> str:
    """``n`` calls whose first attempt fails: ``r`` for one retried (and then fine), ``-`` for
    one the budget refused (it failed with its first attempt's error)."""
    out = []
    for _ in range(n):
        fn.fail_next = True
        try:
            assert f() == "ok"
            out.append("r")
        except ConnectionError as exc:
            assert "retry.budget spent" in exc.__notes__[0]
            out.append("-")
    return "".join(out)


@pytest.fixture(params=["sync", "async"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_a_burst_of_failures_gets_the_share_of_retries(kind: str, clock: FakeClock) -> None:
    configure({"policies": budget_policy(ratio=0.2, min_per_second=0)})
    fn = FailsOnce()
    f = guard_as(kind, fn, "r")
    # after a retry, retries <= 0.2 * calls: the 5th and the 10th call may retry
    assert calls(f, fn, 10) == "----r----r"
    s = guardrails.stats()["r"]
    assert (s.calls, s.successes, s.failures, s.retries) == (10, 2, 8, 2)
    assert fn.attempts == 12
    assert clock.sleeps == [0, 0]  # a refused retry does not wait


def test_the_note_says_the_budget_is_spent(kind: str, clock: FakeClock) -> None:
    configure({"policies": budget_policy(ratio="20%", min_per_second=0, window="30s")})
    fn = FailsOnce()
    f = guard_as(kind, fn, "r")
    fn.fail_next = True
    with pytest.raises(ConnectionError) as exc:
        f()
    assert exc.value.__notes__ == [
        "guardrails: policy 'r' gave up after 1 attempt (retry.budget spent: 0 retries for "
        "1 call in the last 30s; ratio=0.2, min_per_second=0)"
    ]
    assert calls(f, fn, 4) == "---r"


def test_a_refusal_after_retries_names_the_attempts(kind: str, clock: FakeClock) -> None:
    # min_per_second 0.1 over 10 s: one retry in the window, whatever the calls
    configure({"policies": budget_policy(ratio=0, min_per_second=0.1, max_attempts=5)})
    f = guard_as(kind, lambda: (_ for _ in ()).throw(ConnectionError("down")), "r")
    with pytest.raises(ConnectionError) as exc:
        f()
    assert exc.value.__notes__ == [
        "guardrails: policy 'r' gave up after 2 attempts (retry.budget spent: 1 retry for "
        "1 call in the last 10s; ratio=0, min_per_second=0.1)"
    ]
    assert guardrails.stats()["r"].retries == 1


def test_the_budget_refills_as_the_window_slides(kind: str, clock: FakeClock) -> None:
    configure({"policies": budget_policy(ratio=0.2, min_per_second=0)})
    fn = FailsOnce()
    f = guard_as(kind, fn, "r")
    assert calls(f, fn, 7) == "----r--"
    clock.advance(9.5)  # the window (10 s in buckets of 1 s) still holds the burst
    assert calls(f, fn, 3) == "--r"  # 10 calls, 2 retries
    clock.advance(0.5)  # 10 s after the burst its bucket leaves: 3 calls and 1 retry stay
    # with the burst still counted, the 5th of these calls would retry (3 <= 0.2 * 15)
    assert calls(f, fn, 7) == "------r"  # 10 calls, 2 retries
    clock.advance(10)  # all gone
    assert calls(f, fn, 5) == "----r"


def test_min_per_second_alone_is_a_reserve_for_the_window(kind: str, clock: FakeClock) -> None:
    configure({"policies": budget_policy(ratio=0, min_per_second="60/min", window="5s")})
    fn = FailsOnce()
    f = guard_as(kind, fn, "r")
    assert calls(f, fn, 8) == "rrrrr---"  # 1 a second over 5 s
    clock.advance(5)
    assert calls(f, fn, 6) == "rrrrr-"


def test_the_reserve_and_the_share_add_up(clock: FakeClock) -> None:
    configure({"policies": budget_policy(ratio=0.5, min_per_second=0.2)})  # reserve: 2
    fn = FailsOnce()
    f = guarded("r")(fn)
    # retries + 1 <= 0.5 * calls + 2
    assert calls(f, fn, 8) == "rrrr-r-r"


def test_the_policy_functions_share_one_budget(kind: str, clock: FakeClock) -> None:
    configure(
        {
            "policies": {
                **budget_policy("r", ratio=0.2, min_per_second=0),
                **budget_policy("other", ratio=0.2, min_per_second=0),
            }
        }
    )
    a, b, c = FailsOnce(), FailsOnce(), FailsOnce()
    f, g = guard_as(kind, a, "r"), guard_as(kind, b, "r")
    h = guard_as(kind, c, "other")
    assert calls(f, a, 4) == "----"
    assert calls(h, c, 4) == "----"  # another policy has a budget of its own
    assert calls(g, b, 1) == "r"  # the policy's 5th call
    assert calls(f, a, 5) == "----r"
    # successes count as calls too
    assert [g() for _ in range(5)] == ["ok"] * 5
    assert calls(f, a, 1) == "r"  # 16 calls: 3 retries allowed


def test_sync_and_async_functions_of_a_policy_share_it(clock: FakeClock) -> None:
    configure({"policies": budget_policy(ratio=0.2, min_per_second=0)})
    a, b = FailsOnce(), FailsOnce()
    f, g = guard_as("sync", a, "r"), guard_as("async", b, "r")
    assert calls(f, a, 2) + calls(g, b, 2) + calls(f, a, 1) == "----r"


def test_an_unchanged_budget_survives_configure(kind: str, clock: FakeClock) -> None:
    configure({"policies": budget_policy(ratio=0.2, min_per_second=0)})
    fn = FailsOnce()
    f = guard_as(kind, fn, "r")
    assert calls(f, fn, 7) == "----r--"  # 7 calls, 1 retry
    kept = STATE.shared[("r", "retry_budget")][1]
    # other retry keys change; the budget block does not: its window is kept
    configure({"policies": budget_policy(ratio=0.2, min_per_second=0, max_attempts=4)})
    assert calls(f, fn, 3) == "--r"  # a fresh budget would refuse until its 5th call
    assert STATE.shared[("r", "retry_budget")][1] is kept


def test_a_changed_budget_starts_afresh(kind: str, clock: FakeClock) -> None:
    configure({"policies": budget_policy(ratio=0.2, min_per_second=0)})
    fn = FailsOnce()
    f = guard_as(kind, fn, "r")
    assert calls(f, fn, 7) == "----r--"
    configure({"policies": budget_policy(ratio=0.25, min_per_second=0)})
    # the old window (7 calls, 1 retry) would allow a retry at once (2 <= 0.25 * 8)
    assert calls(f, fn, 4) == "---r"


def test_a_disabled_budget_is_no_budget(clock: FakeClock) -> None:
    configure({"policies": budget_policy(ratio=0, min_per_second=0, enabled=False)})
    fn = FailsOnce()
    assert calls(guarded("r")(fn), fn, 3) == "rrr"
    assert ("r", "retry_budget") not in STATE.shared


def test_ratio_zero_and_no_reserve_never_retries(clock: FakeClock) -> None:
    configure({"policies": budget_policy(ratio=0, min_per_second=0)})
    fn = FailsOnce()
    assert calls(guarded("r")(fn), fn, 3) == "---"
    assert guardrails.stats()["r"].retries == 0


def test_retries_the_policy_would_not_make_take_nothing_from_the_budget(
    kind: str, clock: FakeClock
) -> None:
    configure({"policies": budget_policy(ratio=0, min_per_second=0.1, max_attempts=2)})
    not_retried = guard_as(kind, lambda: (_ for _ in ()).throw(KeyError("k")), "r")
    always = guard_as(kind, lambda: (_ for _ in ()).throw(ConnectionError("down")), "r")
    with pytest.raises(KeyError):
        not_retried()
    with pytest.raises(ConnectionError) as exc:
        always()  # its one retry comes from the budget; then max_attempts stops it
    assert "retry.max_attempts=2" in exc.value.__notes__[0]
    with pytest.raises(ConnectionError) as exc:
        always()
    assert "retry.budget spent: 1 retry for 3 calls" in exc.value.__notes__[0]


def test_success_at_once_with_a_budget_never_enters_tenacity(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    configure({"policies": budget_policy(ratio=0.2, min_per_second=10)})

    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("tenacity entered on the success path")

    monkeypatch.setattr(tenacity, "Retrying", forbidden)
    monkeypatch.setattr(tenacity.BaseRetrying, "iter", forbidden)
    monkeypatch.setattr(tenacity.RetryCallState, "__init__", forbidden)
    f = guard_as(kind, lambda: "ok", "r")
    assert [f() for _ in range(3)] == ["ok"] * 3


def test_calls_from_many_threads_are_all_counted(clock: FakeClock) -> None:
    configure({"policies": budget_policy(ratio=0.5, min_per_second=0)})
    fn = FailsOnce()
    f = guarded("r")(lambda: "ok")
    threads, per_thread = 8, 250
    barrier = threading.Barrier(threads)

    def run() -> None:
        barrier.wait(10)
        for _ in range(per_thread):
            f()

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    g = guarded("r")(fn)
    # after 2000 successes, k failing calls may retry while k <= 0.5 * (2000 + k): 2000 of them
    assert calls(g, fn, 2001) == "r" * 2000 + "-"


def test_the_window_turns_while_threads_call(clock: FakeClock) -> None:
    """Threads call while another moves the clock through many buckets: nothing hangs or
    raises, and every retry the budget allows is within its bound for the window."""
    configure({"policies": budget_policy(ratio=0.1, min_per_second=0, window="1s")})
    stop = threading.Event()
    errors: list[BaseException] = []
    outcomes: list[str] = []

    def caller() -> None:
        fn = FailsOnce()
        f = guarded("r")(fn)
        try:
            while not stop.is_set():
                outcomes.append(calls(f, fn, 1))
        except BaseException as exc:  # reported below
            errors.append(exc)

    workers = [threading.Thread(target=caller) for _ in range(4)]
    for w in workers:
        w.start()
    try:
        for _ in range(200):  # 20 windows, each step after the callers made progress
            before = len(outcomes)
            clock.advance(0.1)
            deadline = time.monotonic() + 10
            while len(outcomes) < before + 3 and not errors and time.monotonic() < deadline:
                time.sleep(0.0005)
            assert len(outcomes) >= before + 3 or errors
    finally:
        stop.set()
    for w in workers:
        w.join(60)
    assert not errors and not any(w.is_alive() for w in workers)
    s = guardrails.stats()["r"]
    assert s.calls == len(outcomes) and s.retries == outcomes.count("r")
    # each retry keeps retries <= 0.1 * calls within the last second, so over any time
    # no more than 0.2 of the calls retried (two windows overlap each retry's)
    assert s.retries <= 0.2 * s.calls + 4


# --- config --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [
        ("ratio", "150%", "expected a number from 0 to 1 or a percentage like '50%', got '150%'"),
        ("ratio", -0.1, "got -0.1"),
        ("ratio", True, "got True"),
        ("min_per_second", -1, "from 0 up, or a rate like '100/s'"),
        ("min_per_second", float("nan"), "got nan"),
        ("min_per_second", "ten", "expected a rate like '100/s'"),
        ("window", 0, "expected a window longer than 0 seconds, got 0.0"),
        ("window", "0ms", "expected a window longer than 0 seconds"),
        # floor(now / width) of a denormal width overflows: an OverflowError on every call
        ("window", 1e-320, "expected a window of at least 1ms"),
        ("window", "0.5ms", "expected a window of at least 1ms"),
        ("window", "soon", "expected a number of seconds"),
        ("typo", 1, "unknown key 'typo'; expected one of: enabled, ratio, min_per_second"),
    ],
)
def test_bad_budgets_are_refused_with_their_dotted_path(key: str, value: Any, says: str) -> None:
    budget: dict[str, Any] = {"ratio": 0.2, "min_per_second": 10, key: value}
    with pytest.raises(PolicyConfigError) as exc:
        configure({"policies": {"r": {"retry": {"budget": budget}}}})
    [(path, message)] = exc.value.problems
    assert path == f"guardrails.policies.r.retry.budget.{key}"
    assert says in message


def test_the_budget_keys_and_defaults() -> None:
    configure({"policies": {"r": {"retry": {"budget": {}}}, "p": {"retry": {}}}})
    budget = guardrails.policy("r").retry.budget  # type: ignore[union-attr]
    assert budget is not None
    assert (budget.ratio, budget.min_per_second, budget.window) == (0.2, 10.0, 10.0)
    assert guardrails.policy("p").retry.budget is None  # type: ignore[union-attr]


# --- fork ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_child_forked_while_the_budget_lock_is_held_can_retry(kind: str) -> None:
    configure({"policies": budget_policy(ratio=0, min_per_second=1)})
    fn = FailsOnce()
    f = guard_as(kind, fn, "r")
    assert calls(f, fn, 1) == "r"
    budget = STATE.shared[("r", "retry_budget")][1]
    assert isinstance(budget, RetryBudget)
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with budget._lock:
            held.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    assert held.wait(10)
    try:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = 0 if calls(f, fn, 1) == "r" else 2
            finally:
                os._exit(code)
        assert _reap(pid) == 0
    finally:
        release.set()
        holder.join(10)


def test_async_retries_of_many_tasks_share_the_budget(clock: FakeClock) -> None:
    configure({"policies": budget_policy(ratio=0.2, min_per_second=0)})
    attempts: dict[int, int] = {}

    @guarded("r")
    async def f(i: int) -> str:
        attempts[i] = attempts.get(i, 0) + 1
        await asyncio.sleep(0)
        if attempts[i] == 1:
            raise ConnectionError(i)
        return "ok"

    async def main() -> list[Any]:
        return await asyncio.gather(*(f(i) for i in range(20)), return_exceptions=True)

    results = asyncio.run(main())
    # all 20 calls are counted before the first failure: 20 * 0.2 = 4 retries
    assert results.count("ok") == 4
    assert sum(isinstance(r, ConnectionError) for r in results) == 16
    assert guardrails.stats()["r"].retries == 4
