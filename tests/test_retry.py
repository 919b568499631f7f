from __future__ import annotations

import asyncio
from typing import Any

import pytest

import guardrails
from guardrails import configure, guarded
from guardrails._retry import tenacity
from guardrails.testing import FakeClock


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


def test_transient_failures_are_retried_with_exponential_backoff(clock: FakeClock) -> None:
    retry_policy(max_attempts=4)
    flaky = Flaky(ConnectionError("a"), TimeoutError("b"), ConnectionResetError("c"))
    f = guarded("r")(flaky)
    assert f() == "ok"
    assert flaky.calls == 4
    assert clock.sleeps == [1, 2, 4]
    assert guardrails.stats()["r"].retries == 3
    assert guardrails.stats()["r"].successes == 1


def test_success_at_once_never_enters_tenacity(monkeypatch: pytest.MonkeyPatch) -> None:
    retry_policy(max_attempts=3)
    f = guarded("r")(Flaky())

    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("tenacity entered on the success path")

    monkeypatch.setattr(tenacity, "Retrying", forbidden)
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
    for wait, base in zip(clock.sleeps, [1, 2, 3, 3, 3], strict=True):
        assert base <= wait <= min(base + 0.5, 3)


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
