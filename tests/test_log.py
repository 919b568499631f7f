"""The log layer: one record per call, its level and fields, and what it must never do.

Every behaviour is checked through three compiled shapes of the outermost layer: a sync
function with nothing between log and the call (the inlined ``log_direct``), a sync
function with another layer between them, and an async function.
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from time import perf_counter
from typing import Any

import numpy as np
import pytest

import guardrails
from guardrails import configure, guarded
from tests.twins import guard_as

KINDS = ("sync", "sync-chained", "async")
# A retry layer that never retries: it puts a layer between log and the function (so the
# sync log layer is the general one, not the inlined one) without changing any outcome.
NOOP_RETRY = {"max_attempts": 2, "retry_on": ["ZeroDivisionError"], "wait": {"initial": 0}}


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def log_policy(kind: str, /, **log: Any) -> None:
    policy: dict[str, Any] = {"log": log}
    if kind == "sync-chained":
        policy["retry"] = NOOP_RETRY
    configure({"policies": {"l": policy}})


def guard(kind: str, fn: Callable[..., Any], name: str = "l") -> Callable[..., Any]:
    return guard_as(kind, fn, name)


def ours(logs: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in logs.records if r.name == "guardrails"]


def spin(seconds: float) -> float:
    """Busy for at least ``seconds`` of perf_counter time; returns the time it measured."""
    t0 = perf_counter()
    while perf_counter() - t0 < seconds:
        pass
    return perf_counter() - t0


@pytest.fixture
def logger_level() -> Iterator[Callable[[int], None]]:
    logger = logging.getLogger("guardrails")
    before = logger.level
    yield logger.setLevel
    logger.setLevel(before)


def fails_if(fail: bool) -> int:
    if fail:
        raise KeyError("asked to")
    return 1


def test_one_record_per_call_with_structured_fields(
    kind: str, logs: pytest.LogCaptureFixture
) -> None:
    log_policy(kind, level="INFO")

    def score(features: Any, threshold: float = 0.5) -> int:
        return 1

    assert guard(kind, score)(np.zeros((2, 3))) == 1
    (record,) = ours(logs)
    assert record.levelname == "INFO"
    assert record.policy == "l"  # type: ignore[attr-defined]
    assert record.function == f"{score.__module__}.{score.__qualname__}"  # type: ignore[attr-defined]
    assert record.outcome == "ok"  # type: ignore[attr-defined]
    assert record.attempts == 1 and record.cache_hit is False  # type: ignore[attr-defined]
    assert record.call_args == "features=float64[2, 3], threshold=float"  # type: ignore[attr-defined]
    message = record.getMessage()
    ms = record.duration_ms  # type: ignore[attr-defined]
    assert message.endswith(f"(features=float64[2, 3], threshold=float) ok in {ms:.2f} ms")


@pytest.mark.parametrize("fails", [False, True], ids=["ok", "failed"])
def test_duration_is_the_measured_call(
    kind: str, fails: bool, logs: pytest.LogCaptureFixture
) -> None:
    # No timing assertion: the record's duration must lie between what the function
    # demonstrably ran (measured inside it) and what the caller waited (measured around).
    log_policy(kind)
    inside: list[float] = []

    def work() -> None:
        inside.append(spin(0.002))
        if fails:
            raise KeyError("after the work")

    f = guard(kind, work)
    t0 = perf_counter()
    try:
        f()
    except KeyError:
        assert fails
    around = perf_counter() - t0
    (record,) = ours(logs)
    assert record.outcome == ("failed" if fails else "ok")  # type: ignore[attr-defined]
    assert inside[0] * 1000 <= record.duration_ms <= around * 1000  # type: ignore[attr-defined]
    # The statistics time the same call: one latency, the record's.
    s = guardrails.stats()["l"]
    assert s.p50_ms == s.p95_ms == s.p99_ms == record.duration_ms  # type: ignore[attr-defined]


@pytest.mark.parametrize("level", ["DEBUG", "INFO", "WARNING", "ERROR"])
def test_ok_records_use_the_policy_level(
    kind: str, level: str, logs: pytest.LogCaptureFixture
) -> None:
    log_policy(kind, level=level)
    guard(kind, lambda: 1)()
    (record,) = ours(logs)
    assert (record.levelname, record.outcome) == (level, "ok")  # type: ignore[attr-defined]


def test_args_detail(kind: str, logs: pytest.LogCaptureFixture) -> None:
    log_policy(kind, args="values")
    guard(kind, lambda secret: 1)("hunter2")
    log_policy(kind, args="none")
    guard(kind, lambda secret: 1)("hunter2")
    first, second = ours(logs)
    assert first.call_args == "secret='hunter2'"  # type: ignore[attr-defined]
    assert "hunter2" in first.getMessage()
    assert "hunter2" not in second.getMessage() and second.call_args == ""  # type: ignore[attr-defined]


def test_values_are_truncated(kind: str, logs: pytest.LogCaptureFixture) -> None:
    log_policy(kind, args="values")
    long = "x" * 10_000
    guard(kind, lambda blob: 1)(long)
    (record,) = ours(logs)
    shown = record.call_args.removeprefix("blob=")  # type: ignore[attr-defined]
    assert shown.endswith("…") and repr(long).startswith(shown[:-1])
    assert len(shown) < 200


def test_shapes_never_leak_values(kind: str, logs: pytest.LogCaptureFixture) -> None:
    log_policy(kind)
    guard(kind, lambda token, rows, n: 1)("s3cr3t-token", [1, 2, 3], 424242)
    (record,) = ours(logs)
    assert "s3cr3t" not in record.getMessage() and "424242" not in record.getMessage()
    assert record.call_args == "token=str[len=12], rows=list[len=3], n=int"  # type: ignore[attr-defined]


def test_arguments_that_do_not_bind(kind: str, logs: pytest.LogCaptureFixture) -> None:
    log_policy(kind)
    f = guard(kind, lambda x: x)
    with pytest.raises(TypeError):
        f(1, 2, 3)
    (record,) = ours(logs)
    assert record.outcome == "failed"  # type: ignore[attr-defined]
    assert record.call_args == "<arguments do not match the signature>"  # type: ignore[attr-defined]


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_attempts_and_cache_hits_reach_the_record(
    kind: str, logs: pytest.LogCaptureFixture
) -> None:
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
    failures = [ConnectionError(), ConnectionError()]

    def f(x: int) -> int:
        if failures:
            raise failures.pop()
        return x

    g = guard(kind, f)
    g(1)
    g(1)
    first, second = [r for r in ours(logs) if r.levelname == "INFO"]
    assert (first.attempts, first.cache_hit) == (3, False)  # type: ignore[attr-defined]
    assert (second.attempts, second.cache_hit) == (1, True)  # type: ignore[attr-defined]
    assert first.getMessage().endswith(", 3 attempts")
    assert second.getMessage().endswith(", cache hit")


def test_level_is_honoured_at_call_time(
    kind: str, logs: pytest.LogCaptureFixture, logger_level: Callable[[int], None]
) -> None:
    log_policy(kind, level="DEBUG")
    f = guard(kind, lambda: 1)
    logger_level(logging.INFO)
    f()
    assert ours(logs) == []
    logger_level(logging.DEBUG)
    f()
    assert [r.levelname for r in ours(logs)] == ["DEBUG"]


class Spy:
    """An argument that notes every time a log record describes it."""

    def __init__(self) -> None:
        self.described = 0

    def __repr__(self) -> str:
        self.described += 1
        return "Spy()"


@pytest.mark.parametrize("outcome", ["ok", "slow", "failed", "rejected"])
def test_a_record_nobody_will_see_is_never_built(
    kind: str,
    outcome: str,
    logs: pytest.LogCaptureFixture,
    logger_level: Callable[[int], None],
) -> None:
    # Each outcome's level is one step below the logger's: the record would be dropped
    # anyway, but describing the arguments first would cost every call.
    level, logger_at = {
        "ok": ("DEBUG", logging.INFO),
        "slow": ("DEBUG", logging.ERROR),
        "failed": ("INFO", logging.CRITICAL),
        "rejected": ("INFO", logging.ERROR),
    }[outcome]
    policy: dict[str, Any] = {"log": {"level": level, "args": "values"}}
    if outcome == "slow":
        policy["log"]["slow"] = 0
    if outcome == "rejected":
        policy["memory"] = {"max_rss": 1024}
    if kind == "sync-chained":
        policy["retry"] = NOOP_RETRY
    configure({"policies": {"l": policy}})

    def f(arg: Spy) -> None:
        if outcome == "failed":
            raise KeyError("boom")

    g = guard(kind, f)
    spy = Spy()

    def call() -> None:
        if outcome in ("failed", "rejected"):
            with pytest.raises((KeyError, guardrails.MemoryBudgetExceeded)):
                g(spy)
        else:
            g(spy)

    logger_level(logger_at)
    call()
    assert spy.described == 0 and ours(logs) == []
    # The same call with the logger open does describe it: the spy can see.
    logger_level(logging.DEBUG)
    call()
    assert spy.described == 1
    assert [r.outcome for r in ours(logs)] == [outcome]  # type: ignore[attr-defined]
    # Counted either way.
    assert guardrails.stats()["l"].calls == 2


def test_slow_calls_are_warnings(kind: str, logs: pytest.LogCaptureFixture) -> None:
    # The function runs at least as long as the threshold, so the call is slow for sure.
    log_policy(kind, level="DEBUG", slow="1ms")
    guard(kind, lambda: spin(0.001))()
    (record,) = ours(logs)
    assert record.levelname == "WARNING" and record.outcome == "slow"  # type: ignore[attr-defined]
    assert record.duration_ms >= 1  # type: ignore[attr-defined]
    s = guardrails.stats()["l"]
    assert (s.calls, s.successes, s.failures) == (1, 1, 0)


def test_calls_under_the_threshold_are_not_slow(kind: str, logs: pytest.LogCaptureFixture) -> None:
    log_policy(kind, level="DEBUG", slow="1h")
    guard(kind, lambda: 1)()
    (record,) = ours(logs)
    assert (record.levelname, record.outcome) == ("DEBUG", "ok")  # type: ignore[attr-defined]


def test_failures_log_at_error_with_the_exception(
    kind: str, logs: pytest.LogCaptureFixture
) -> None:
    log_policy(kind, level="DEBUG", slow=0)

    def f() -> None:
        raise KeyError("missing")

    with pytest.raises(KeyError):
        guard(kind, f)()
    # A failure is an ERROR whatever the policy level, and never "slow".
    (record,) = ours(logs)
    assert record.levelname == "ERROR" and record.outcome == "failed"  # type: ignore[attr-defined]
    assert record.exc_info is not None and record.exc_info[0] is KeyError
    message = record.getMessage()
    assert message.endswith(f"failed in {record.duration_ms:.2f} ms: KeyError: 'missing'")  # type: ignore[attr-defined]
    s = guardrails.stats()["l"]
    assert (s.calls, s.successes, s.failures, s.rejected) == (1, 0, 1, 0)


REFUSALS: dict[str, tuple[dict[str, Any], type[Exception], str]] = {
    "input": (
        {"validate": {"args": {"x": {"min": 0}}}},
        guardrails.InputValidationError,
        "x: expected >= 0, got -1",
    ),
    "output": (
        {"validate": {"output": "str"}},
        guardrails.OutputValidationError,
        "return: Input should be a valid string",
    ),
    "memory": (
        {"memory": {"max_rss": 1024}},
        guardrails.MemoryBudgetExceeded,
        "over memory.max_rss",
    ),
}


@pytest.mark.parametrize("refusal", list(REFUSALS))
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_refusals_are_warnings_without_traceback(
    kind: str, refusal: str, logs: pytest.LogCaptureFixture
) -> None:
    blocks, error, detail = REFUSALS[refusal]
    configure({"policies": {"l": {"log": {"level": "DEBUG", "slow": 0}, **blocks}}})
    with pytest.raises(error) as refused:
        guard(kind, lambda x: x)(-1)
    (record,) = ours(logs)
    assert record.levelname == "WARNING" and record.outcome == "rejected"  # type: ignore[attr-defined]
    assert record.exc_info is None
    # The record names policy and function once: it ends with the refusal's detail alone.
    ms = record.duration_ms  # type: ignore[attr-defined]
    assert record.getMessage().endswith(f"rejected in {ms:.2f} ms: {refused.value.detail}")  # type: ignore[attr-defined]
    assert detail in refused.value.detail  # type: ignore[attr-defined]
    s = guardrails.stats()["l"]
    assert (s.calls, s.failures, s.rejected) == (1, 1, 1)


def test_disabled_log_still_counts_but_records_no_latency(
    kind: str, logs: pytest.LogCaptureFixture
) -> None:
    log_policy(kind, enabled=False)
    f = guard(kind, fails_if)
    f(False), f(False)
    with pytest.raises(KeyError):
        f(True)
    assert ours(logs) == []
    s = guardrails.stats()["l"]
    assert (s.calls, s.successes, s.failures) == (3, 2, 1)
    assert (s.p50_ms, s.p95_ms, s.p99_ms) == (None, None, None)


def test_the_library_never_configures_the_root_logger(kind: str) -> None:
    root = logging.getLogger()
    before = (list(root.handlers), root.level)
    log_policy(kind)
    guard(kind, lambda: 1)()
    assert (list(root.handlers), root.level) == before
    # Only the NullHandler every library adds, so records never reach the last resort.
    (handler,) = logging.getLogger("guardrails").handlers
    assert type(handler) is logging.NullHandler


def test_bad_level_is_a_config_error() -> None:
    with pytest.raises(guardrails.PolicyConfigError, match="expected a log level name"):
        log_policy("sync", level="LOUD")
    log_policy("sync", level=10)
    assert guardrails.policy("l").log.level == "DEBUG"  # type: ignore[union-attr]


@pytest.mark.parametrize("level", ["DEBUG", "INFO"])
@pytest.mark.parametrize("chained", [False, True])
def test_cancellation_is_not_logged_as_an_error(
    level: str, chained: bool, logs: pytest.LogCaptureFixture
) -> None:
    # Only async calls can be cancelled; a cancellation is control flow (a timeout, a
    # shutdown), so it is logged at the policy's level, without a traceback.
    policy: dict[str, Any] = {"log": {"level": level, "slow": 0}}
    if chained:
        policy["retry"] = NOOP_RETRY
    configure({"policies": {"l": policy}})
    started = asyncio.Event()

    @guarded("l")
    async def waits() -> None:
        started.set()
        await asyncio.Event().wait()

    async def main() -> None:
        task = asyncio.create_task(waits())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    (record,) = ours(logs)
    assert (record.levelname, record.outcome, record.exc_info) == (level, "cancelled", None)  # type: ignore[attr-defined]
    s = guardrails.stats()["l"]
    assert (s.calls, s.successes, s.rejected) == (1, 0, 0)


# --- Logging a call never changes its outcome ---------------------------------------------


class _BadRepr:
    def __repr__(self) -> str:
        raise RuntimeError("repr exploded")


class _BadShape:
    @property
    def shape(self) -> Any:
        raise RuntimeError("shape exploded")


class _BadStr(Exception):
    def __str__(self) -> str:
        raise RuntimeError("str exploded")


@pytest.mark.parametrize(
    ("detail", "argument"), [("values", _BadRepr()), ("shapes", _BadShape())], ids=["repr", "shape"]
)
def test_an_argument_that_cannot_be_described_does_not_fail_the_call(
    kind: str, detail: str, argument: Any, logs: pytest.LogCaptureFixture
) -> None:
    log_policy(kind, level="INFO", args=detail)
    f = guard(kind, lambda a: "ran")
    assert f(argument) == "ran"
    (record,) = ours(logs)
    assert "unprintable" in record.call_args  # type: ignore[attr-defined]
    assert guardrails.stats()["l"].successes == 1


def test_an_exception_that_cannot_be_printed_reaches_the_caller(
    kind: str, logs: pytest.LogCaptureFixture
) -> None:
    log_policy(kind, level="INFO")

    def raise_it() -> None:
        raise _BadStr

    with pytest.raises(_BadStr):
        guard(kind, raise_it)()
    (record,) = ours(logs)
    assert record.outcome == "failed"  # type: ignore[attr-defined]


def test_without_a_handler_of_the_application_nothing_is_printed(tmp_path: Any) -> None:
    import subprocess
    import sys

    script = tmp_path / "app.py"
    script.write_text(
        "import guardrails\n"
        "guardrails.configure({'policies': {'p': {'log': {'level': 'WARNING'}}}})\n"
        "@guardrails.guarded('p')\n"
        "def f():\n"
        "    raise ConnectionError('down')\n"
        "try:\n"
        "    f()\n"
        "except ConnectionError:\n"
        "    pass\n"
        "print('done')\n"
    )
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout == "done\n"
    assert out.stderr == ""  # not logging's last-resort handler: a library never prints


# --- How failures are logged: failure_level, traceback, expected --------------------------


def _frames_of(record: logging.LogRecord) -> list[tuple[str, str]]:
    assert record.exc_info is not None
    return [(f.filename, f.name) for f in traceback.extract_tb(record.exc_info[2])]


def _guardrails_files(frames: list[tuple[str, str]]) -> list[str]:
    package = str(Path(guardrails.__file__).resolve().parent)
    return [f for f, _ in frames if str(Path(f).resolve()).startswith(package)]


@pytest.mark.parametrize("failure_level", ["DEBUG", "INFO", "WARNING", "CRITICAL"])
def test_failure_level_is_the_level_of_failed_records(
    kind: str, failure_level: str, logs: pytest.LogCaptureFixture
) -> None:
    log_policy(kind, level="INFO", failure_level=failure_level)
    f = guard(kind, fails_if)
    with pytest.raises(KeyError):
        f(True)
    (record,) = ours(logs)
    assert (record.levelname, record.outcome) == (failure_level, "failed")  # type: ignore[attr-defined]
    assert record.exc_info is not None and record.expected is False  # type: ignore[attr-defined]


def test_failure_level_leaves_refusals_and_successes_alone(
    kind: str, logs: pytest.LogCaptureFixture
) -> None:
    policy: dict[str, Any] = {
        "log": {"level": "DEBUG", "failure_level": "CRITICAL"},
        "validate": {"args": {"n": {"min": 0}}},
    }
    if kind == "sync-chained":
        policy["retry"] = NOOP_RETRY
    # Its own policy name: a function of an earlier test guarded by "l" may still be alive
    # (held by a traceback), and validate checks its parameters against every function.
    configure({"policies": {"v": policy}})
    f = guard(kind, lambda n: n, "v")
    f(1)
    with pytest.raises(guardrails.InputValidationError):
        f(-1)
    assert [(r.levelname, r.outcome) for r in ours(logs)] == [  # type: ignore[attr-defined]
        ("DEBUG", "ok"),
        ("WARNING", "rejected"),
    ]


def test_a_failure_below_the_loggers_level_is_not_logged(
    kind: str, logs: pytest.LogCaptureFixture, logger_level: Callable[[int], None]
) -> None:
    log_policy(kind, level="INFO", failure_level="INFO")
    logger_level(logging.WARNING)
    with pytest.raises(KeyError):
        guard(kind, fails_if)(True)
    assert ours(logs) == []
    assert guardrails.stats()["l"].failures == 1


def test_traceback_short_shows_the_caller_and_the_function(
    kind: str, logs: pytest.LogCaptureFixture
) -> None:
    log_policy(kind)  # short is the default
    f = guard(kind, fails_if)

    def caller() -> int:
        return int(f(True))

    with pytest.raises(KeyError):
        caller()
    (record,) = ours(logs)
    frames = _frames_of(record)
    assert _guardrails_files(frames) == []
    if kind == "async":  # the twin's runner (tests/twins.py) calls the function
        assert [name for _, name in frames][-2:] == ["native", "fails_if"]
    else:
        assert [name for _, name in frames] == ["caller", "fails_if"]


def test_traceback_full_shows_every_frame(kind: str, logs: pytest.LogCaptureFixture) -> None:
    log_policy(kind, traceback="full")
    f = guard(kind, fails_if)
    with pytest.raises(KeyError) as caught:
        f(True)
    (record,) = ours(logs)
    frames = _frames_of(record)
    assert _guardrails_files(frames) != []  # the log layer's own frame at least
    assert frames[-1][1] == "fails_if"
    # The exception the caller got is trimmed all the same.
    shown = traceback.extract_tb(caught.value.__traceback__)
    assert _guardrails_files([(s.filename, s.name) for s in shown]) == []


def test_traceback_none_logs_the_message_alone(kind: str, logs: pytest.LogCaptureFixture) -> None:
    log_policy(kind, traceback="none")
    with pytest.raises(KeyError):
        guard(kind, fails_if)(True)
    (record,) = ours(logs)
    assert (record.levelname, record.outcome, record.exc_info) == ("ERROR", "failed", None)  # type: ignore[attr-defined]
    assert record.getMessage().endswith("KeyError: 'asked to'")
    assert "Traceback" not in logs.text


class _Gone(LookupError):
    pass


def test_expected_exceptions_log_at_the_success_level_without_traceback(
    kind: str, logs: pytest.LogCaptureFixture
) -> None:
    # LookupError names a base class: its subclasses (KeyError, _Gone) match.
    log_policy(kind, level="INFO", expected=["LookupError"])
    errors: list[Exception] = [KeyError("k"), _Gone("g"), ValueError("v")]

    def f() -> None:
        raise errors.pop(0)

    g = guard(kind, f)
    for _ in range(3):
        with pytest.raises(Exception):  # noqa: B017 - three kinds, checked below
            g()
    key, gone, value = ours(logs)
    for record in (key, gone):
        assert (record.levelname, record.outcome, record.exc_info) == ("INFO", "failed", None)  # type: ignore[attr-defined]
        assert record.expected is True  # type: ignore[attr-defined]
    assert gone.getMessage().endswith("_Gone: g")
    # Not expected: the failure level, with its traceback.
    assert (value.levelname, value.expected) == ("ERROR", False)  # type: ignore[attr-defined]
    assert value.exc_info is not None
    # Still failures for the statistics.
    s = guardrails.stats()["l"]
    assert (s.calls, s.successes, s.failures) == (3, 0, 3)


def test_expected_refusals_and_fallbacks_are_quiet_too(logs: pytest.LogCaptureFixture) -> None:
    configure(
        {
            "policies": {
                "l": {
                    "log": {
                        "level": "DEBUG",
                        "expected": ["guardrails.InputValidationError", "ConnectionError"],
                    },
                    "validate": {"args": {"x": {"min": 0}}},
                    "fallback": {"value": -1, "catch": ["ConnectionError", "TimeoutError"]},
                }
            }
        }
    )

    @guarded("l")
    def f(x: int) -> int:
        raise ConnectionError("down") if x == 1 else TimeoutError("slow")

    with pytest.raises(guardrails.InputValidationError):
        f(-1)
    assert f(1) == -1 and f(2) == -1
    rejected, expected_fallback, fallback = ours(logs)
    assert (rejected.levelname, rejected.outcome) == ("DEBUG", "rejected")  # type: ignore[attr-defined]
    assert (expected_fallback.levelname, expected_fallback.outcome) == ("DEBUG", "fallback")  # type: ignore[attr-defined]
    assert expected_fallback.expected is True  # type: ignore[attr-defined]
    assert (fallback.levelname, fallback.expected) == ("WARNING", False)  # type: ignore[attr-defined]


def test_expected_does_not_hide_a_cancellation(logs: pytest.LogCaptureFixture) -> None:
    # A cancellation is logged as it always is (the policy level, outcome cancelled).
    configure({"policies": {"l": {"log": {"level": "INFO", "expected": ["KeyError"]}}}})
    started = asyncio.Event()

    @guarded("l")
    async def waits() -> None:
        started.set()
        await asyncio.Event().wait()

    async def main() -> None:
        task = asyncio.create_task(waits())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    (record,) = ours(logs)
    assert (record.levelname, record.outcome, record.expected) == ("INFO", "cancelled", False)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("log", "key", "says"),
    [
        ({"traceback": "long"}, "log.traceback", "'full', 'short' or 'none'"),
        ({"traceback": None}, "log.traceback", "'full', 'short' or 'none'"),
        ({"failure_level": "LOUD"}, "log.failure_level", "expected a log level name"),
        ({"expected": ["NoSuchError"]}, "log.expected", "not a builtin name"),
        ({"expected": ["builtins:len"]}, "log.expected", ""),
    ],
)
def test_failure_settings_are_checked(log: dict[str, Any], key: str, says: str) -> None:
    with pytest.raises(guardrails.PolicyConfigError) as refused:
        configure({"policies": {"l": {"log": log}}})
    (problem,) = refused.value.problems
    assert problem[0] == f"guardrails.policies.l.{key}" and says in problem[1]


def test_failure_settings_from_yaml(tmp_path: Path, logs: pytest.LogCaptureFixture) -> None:
    # `none` is a string in YAML (null is `null` or `~`), and levels may be lower case.
    path = tmp_path / "guardrails.yaml"
    path.write_text(
        "policies:\n  l:\n    log: {failure_level: warning, traceback: none, expected: [OSError]}\n"
    )
    configure(str(path))
    block = guardrails.policy("l").log
    assert block is not None
    assert (block.failure_level, block.traceback, block.expected) == ("WARNING", "none", (OSError,))
