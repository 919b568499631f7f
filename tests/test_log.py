from __future__ import annotations

import asyncio
import logging
from typing import Any

import numpy as np
import pytest

import guardrails
from guardrails import configure, guarded


def log_policy(**log: Any) -> None:
    configure({"policies": {"l": {"log": log}}})


def ours(logs: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in logs.records if r.name == "guardrails"]


def test_one_record_per_call_with_structured_fields(logs: pytest.LogCaptureFixture) -> None:
    log_policy(level="INFO")

    @guarded("l")
    def score(features: Any, threshold: float = 0.5) -> int:
        return 1

    score(np.zeros((2, 3)))
    (record,) = ours(logs)
    assert record.levelname == "INFO"
    assert record.policy == "l"  # type: ignore[attr-defined]
    assert record.function.endswith("score")  # type: ignore[attr-defined]
    assert record.outcome == "ok"  # type: ignore[attr-defined]
    assert record.attempts == 1 and record.cache_hit is False  # type: ignore[attr-defined]
    assert record.duration_ms >= 0  # type: ignore[attr-defined]
    assert record.call_args == "features=float64[2, 3], threshold=float"  # type: ignore[attr-defined]


def test_args_detail(logs: pytest.LogCaptureFixture) -> None:
    log_policy(args="values")
    guarded("l")(lambda secret: 1)("hunter2")
    log_policy(args="none")
    guarded("l")(lambda secret: 1)("hunter2")
    first, second = ours(logs)
    assert "hunter2" in first.getMessage()
    assert "hunter2" not in second.getMessage() and second.call_args == ""  # type: ignore[attr-defined]


def test_shapes_never_leak_values(logs: pytest.LogCaptureFixture) -> None:
    log_policy()
    guarded("l")(lambda token, rows: 1)("s3cr3t-token", [1, 2, 3])
    (record,) = ours(logs)
    assert "s3cr3t" not in record.getMessage()
    assert "token=str[len=12], rows=list[len=3]" in record.getMessage()


def test_attempts_and_cache_hits_reach_the_record(logs: pytest.LogCaptureFixture) -> None:
    configure(
        {
            "policies": {
                "l": {
                    "log": {"level": "INFO"},
                    "cache": {"ttl": 60},
                    "retry": {"max_attempts": 3, "wait": {"initial": 0, "jitter": 0}},
                }
            }
        }
    )
    failures = [ConnectionError()]

    @guarded("l")
    def f(x: int) -> int:
        if failures:
            raise failures.pop()
        return x

    f(1)
    f(1)
    first, second = [r for r in ours(logs) if r.levelname == "INFO"]
    assert (first.attempts, first.cache_hit) == (2, False)  # type: ignore[attr-defined]
    assert (second.attempts, second.cache_hit) == (1, True)  # type: ignore[attr-defined]


def test_level_is_honoured_at_call_time(logs: pytest.LogCaptureFixture) -> None:
    log_policy(level="DEBUG")
    f = guarded("l")(lambda: 1)
    logger = logging.getLogger("guardrails")
    logger.setLevel(logging.INFO)
    f()
    assert ours(logs) == []
    logger.setLevel(logging.DEBUG)
    f()
    assert len(ours(logs)) == 1


def test_slow_calls_are_warnings(logs: pytest.LogCaptureFixture) -> None:
    log_policy(level="DEBUG", slow=0)
    guarded("l")(lambda: 1)()
    (record,) = ours(logs)
    assert record.levelname == "WARNING" and record.outcome == "slow"  # type: ignore[attr-defined]


def test_failures_log_at_error_with_the_exception(logs: pytest.LogCaptureFixture) -> None:
    log_policy()

    @guarded("l")
    def f() -> None:
        raise KeyError("missing")

    with pytest.raises(KeyError):
        f()
    (record,) = ours(logs)
    assert record.levelname == "ERROR" and record.outcome == "failed"  # type: ignore[attr-defined]
    assert record.exc_info is not None and record.exc_info[0] is KeyError


def test_rejections_are_warnings_without_traceback(logs: pytest.LogCaptureFixture) -> None:
    configure({"policies": {"l": {"log": {}, "validate": {"args": {"x": {"min": 0}}}}}})
    with pytest.raises(guardrails.InputValidationError):
        guarded("l")(lambda x: x)(-1)
    (record,) = ours(logs)
    assert record.levelname == "WARNING" and record.outcome == "rejected"  # type: ignore[attr-defined]
    assert record.exc_info is None
    assert "x: expected >= 0, got -1" in record.getMessage()


def test_disabled_log_still_counts_but_records_no_latency(logs: pytest.LogCaptureFixture) -> None:
    log_policy(enabled=False)
    f = guarded("l")(lambda: 1)
    f(), f()
    assert ours(logs) == []
    s = guardrails.stats()["l"]
    assert s.calls == 2 and s.p50_ms is None


def test_async_records(logs: pytest.LogCaptureFixture) -> None:
    log_policy()

    @guarded("l")
    async def f() -> int:
        return 1

    asyncio.run(f())
    assert [r.outcome for r in ours(logs)] == ["ok"]  # type: ignore[attr-defined]


def test_the_library_never_configures_the_root_logger() -> None:
    root = logging.getLogger()
    before = (list(root.handlers), root.level)
    configure({"policies": {"l": {"log": {}}}})
    guarded("l")(lambda: 1)()
    assert (list(root.handlers), root.level) == before
    assert logging.getLogger("guardrails").handlers == []


def test_bad_level_is_a_config_error() -> None:
    with pytest.raises(guardrails.PolicyConfigError, match="expected a log level name"):
        log_policy(level="LOUD")
    log_policy(level=10)
    assert guardrails.policy("l").log.level == "DEBUG"  # type: ignore[union-attr]


def test_cancellation_is_not_logged_as_an_error(logs: pytest.LogCaptureFixture) -> None:
    log_policy(level="INFO")

    @guarded("l")
    async def slow() -> None:
        await asyncio.Event().wait()

    async def main() -> None:
        task = asyncio.create_task(slow())
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    (record,) = ours(logs)
    assert (record.levelname, record.outcome, record.exc_info) == ("INFO", "cancelled", None)  # type: ignore[attr-defined]
