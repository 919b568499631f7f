"""Tracebacks of failed guarded calls: the caller's frames and the function's, never
guardrails' or tenacity's (nor the asyncio plumbing a layer called), in the exception the
caller catches and in the log record; the exception itself (identity, chain, notes, group
members) unchanged; control-flow exceptions untouched; ``GUARDRAILS_FULL_TRACEBACKS=1``.

Each test reads tracebacks the way a user does: ``traceback.format_exception`` and
``traceback.extract_tb``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import subprocess
import sys
import textwrap
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest
import tenacity
from hypothesis import given
from hypothesis import strategies as st

import guardrails
from guardrails import _config, _frames, configure, guarded
from guardrails._frames import ENV_VAR
from guardrails.layers import cache as cache_layer
from guardrails.layers.log import describe_value

OURS = (
    str(Path(guardrails.__file__).resolve().parent),
    str(Path(tenacity.__file__).resolve().parent),
)
ASYNCIO = str(Path(asyncio.__file__).resolve().parent)
NO_RETRY_WAIT = {"initial": 0, "jitter": 0}

# The function raises KeyError; every setup lets it through, each through other layers.
SETUPS: dict[str, dict[str, Any]] = {
    "plain": {},
    "log-off": {"log": None},
    "retry": {"retry": {"max_attempts": 3, "retry_on": ["KeyError"], "wait": NO_RETRY_WAIT}},
    "timeout": {"timeout": {"attempt": "30s", "total": "60s"}},
    "cache": {"cache": {"ttl": 60}},
    "validate": {"validate": {"args": {"x": {"min": 0}}, "output": "int"}},
    "fallback": {"fallback": {"value": 0, "catch": ["ConnectionError"]}},
    "breaker": {"breaker": {"window": 10, "min_calls": 10, "open_for": "1h"}},
    "everything": {
        "retry": {"max_attempts": 2, "retry_on": ["KeyError"], "wait": NO_RETRY_WAIT},
        "timeout": {"attempt": "30s", "total": "60s"},
        "cache": {"ttl": 60},
        "validate": {"args": {"x": {"min": 0}}},
        "fallback": {"value": 0, "catch": ["ConnectionError"]},
        "breaker": {"window": 10, "min_calls": 10, "open_for": "1h"},
        "bulkhead": {"max_concurrent": 4},
        "rate_limit": {"rate": "1000/s", "burst": 100},
        "memory": {"max_rss": "1TB"},
    },
}


def use(**policies: dict[str, Any]) -> None:
    configure(
        {"policies": {name: {"log": {"level": "DEBUG"}, **p} for name, p in policies.items()}}
    )


def files_shown(exc: BaseException) -> list[str]:
    """Every file named in the printed traceback, chained exceptions and groups included."""
    text = "".join(traceback.format_exception(exc))
    return re.findall(r'File "([^"]+)", line \d+, in ', text)


def assert_none_of_ours(exc: BaseException) -> None:
    shown = [str(Path(f).resolve()) for f in files_shown(exc)]
    assert not [f for f in shown if f.startswith(OURS)], "".join(traceback.format_exception(exc))


def names(tb: Any) -> list[str]:
    return [frame.name for frame in traceback.extract_tb(tb)]


def failed_records(logs: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in logs.records if getattr(r, "outcome", None) == "failed"]


def deeper(x: int) -> int:
    raise KeyError(f"no row {x}")


def work(x: int) -> int:
    return deeper(x)


async def awork(x: int) -> int:
    await asyncio.sleep(0)  # a real suspension first
    return deeper(x)


def call_site(f: Callable[[int], int]) -> int:
    return f(1)


async def acall_site(f: Callable[[int], Any]) -> Any:
    return await f(1)


def raised_by(call: Callable[[], Any]) -> BaseException:
    try:
        call()
    except BaseException as exc:  # the test inspects whatever came out
        return exc
    raise AssertionError("the call did not raise")


@pytest.mark.parametrize("setup", list(SETUPS))
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_caller_and_function_frames_only(
    kind: str, setup: str, logs: pytest.LogCaptureFixture
) -> None:
    use(p=SETUPS[setup])
    if kind == "sync":
        f = guarded("p")(work)
        exc = raised_by(lambda: call_site(f))
    else:
        g = guarded("p")(awork)
        exc = raised_by(lambda: asyncio.run(acall_site(g)))
    assert isinstance(exc, KeyError)
    assert_none_of_ours(exc)
    expected_tail = ["call_site", "work", "deeper"]
    if kind == "async":
        expected_tail = ["acall_site", "awork", "deeper"]
    # The caller's frames above (the test, and asyncio.run's, which the test called), then
    # the function's, in order.
    shown = names(exc.__traceback__)
    assert shown[-3:] == expected_tail
    assert shown[0] == "raised_by"
    if setup == "log-off":
        assert failed_records(logs) == []
        return
    (record,) = failed_records(logs)
    assert record.levelname == "ERROR" and record.exc_info is not None
    assert record.exc_info[1] is exc
    # The record shows the frame that called the guarded function, then the function's.
    assert names(record.exc_info[2]) == expected_tail
    formatted = logging.Formatter().formatException(record.exc_info)
    assert not [f for f in re.findall(r'File "([^"]+)"', formatted) if f.startswith(OURS)]


def test_the_exception_is_the_one_raised_with_its_notes_and_no_retry_error() -> None:
    use(p=SETUPS["retry"])
    raised: list[BaseException] = []

    @guarded("p")
    def f() -> None:
        error = ConnectionError("down")
        raised.append(error)
        raise error

    use(p={"retry": {"max_attempts": 3, "retry_on": ["ConnectionError"], "wait": NO_RETRY_WAIT}})
    exc = raised_by(f)
    assert exc is raised[-1] and len(raised) == 3
    text = "".join(traceback.format_exception(exc))
    assert "gave up after 3 attempts" in text  # the retry's note stays
    assert "RetryError" not in text and exc.__cause__ is None
    assert exc.__context__ is None  # the earlier attempts are not chained onto the last
    assert_none_of_ours(exc)


def test_a_cause_raised_in_the_function_is_kept(logs: pytest.LogCaptureFixture) -> None:
    use(p=SETUPS["everything"])

    @guarded("p")
    def lookup(x: int) -> int:
        try:
            return work(x)
        except KeyError as missing:
            raise LookupError(f"entity {x} unknown") from missing

    exc = raised_by(lambda: lookup(1))
    assert isinstance(exc, LookupError) and isinstance(exc.__cause__, KeyError)
    assert exc.__suppress_context__
    assert names(exc.__cause__.__traceback__) == ["lookup", "work", "deeper"]
    assert names(exc.__traceback__)[-1] == "lookup"
    assert_none_of_ours(exc)
    text = "".join(traceback.format_exception(exc))
    assert "The above exception was the direct cause" in text
    (record,) = failed_records(logs)
    assert record.exc_info is not None
    assert names(record.exc_info[2]) == ["<lambda>", "lookup"]


def test_a_guarded_function_calling_itself(logs: pytest.LogCaptureFixture) -> None:
    use(countdown={"retry": {"max_attempts": 2, "retry_on": ["OSError"]}, "cache": {"ttl": 60}})

    @guarded("countdown")
    def countdown(n: int) -> int:
        if n == 0:
            raise KeyError("bottom")
        return countdown(n - 1) + 1

    exc = raised_by(lambda: countdown(30))
    assert_none_of_ours(exc)
    assert names(exc.__traceback__) == ["raised_by", "<lambda>"] + ["countdown"] * 31
    # Each level logged it; the record of level k shows its caller and the 31-k below.
    records = failed_records(logs)
    assert len(records) == 31
    innermost, outermost = records[0], records[-1]
    assert innermost.exc_info is not None and outermost.exc_info is not None
    assert names(innermost.exc_info[2]) == ["countdown", "countdown"]
    assert names(outermost.exc_info[2]) == ["<lambda>"] + ["countdown"] * 31


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_an_exception_re_raised_across_two_guarded_functions(kind: str) -> None:
    use(
        outer={"retry": {"max_attempts": 2, "retry_on": ["KeyError"], "wait": NO_RETRY_WAIT}},
        inner={"cache": {"ttl": 60}, "timeout": {"attempt": "30s"}},
    )
    if kind == "sync":
        inner_fn = guarded("inner")(work)

        @guarded("outer")
        def outer(x: int) -> int:
            try:
                return inner_fn(x)
            except KeyError:
                raise  # seen, then passed on

        exc = raised_by(lambda: call_site(outer))
        assert names(exc.__traceback__)[-4:] == ["call_site", "outer", "work", "deeper"]
    else:
        inner_afn = guarded("inner")(awork)

        @guarded("outer")
        async def aouter(x: int) -> int:
            try:
                return await inner_afn(x)  # type: ignore[no-any-return]
            except KeyError:
                raise

        exc = raised_by(lambda: asyncio.run(acall_site(aouter)))
        assert names(exc.__traceback__)[-4:] == ["acall_site", "aouter", "awork", "deeper"]
    assert_none_of_ours(exc)


def test_asyncio_frames_the_function_called_are_kept() -> None:
    use(p={"timeout": {"attempt": "30s"}})

    async def failing() -> None:
        await asyncio.sleep(0)
        raise KeyError("in a task")

    @guarded("p")
    async def f(x: int) -> None:
        # The function's own task and wait_for: asyncio's frames here are its own.
        await asyncio.wait_for(asyncio.ensure_future(failing()), 30)

    exc = raised_by(lambda: asyncio.run(acall_site(f)))
    assert_none_of_ours(exc)
    files = [str(Path(x.filename).resolve()) for x in traceback.extract_tb(exc.__traceback__)]
    f_at = names(exc.__traceback__).index("f")
    assert any(path.startswith(ASYNCIO) for path in files[f_at + 1 :])
    assert names(exc.__traceback__)[-1] == "failing"


def test_a_constant_exception_raised_on_every_call_costs_the_same_each_time(
    monkeypatch: pytest.MonkeyPatch, logs: pytest.LogCaptureFixture
) -> None:
    # Python keeps a raised instance's old traceback and adds to it: after n calls a
    # module-level constant drags n calls' frames along. A trim reads a bounded part of it.
    use(p={"retry": {"max_attempts": 2, "retry_on": ["KeyError"], "wait": NO_RETRY_WAIT}})
    always = KeyError("always")

    @guarded("p")
    def f(x: int) -> None:
        raise always

    for _ in range(100):
        raised_by(lambda: call_site(f))
    read: list[object] = []
    real = _frames._kind

    def counting(frame: Any) -> int:
        read.append(frame)
        return real(frame)

    monkeypatch.setattr(_frames, "_kind", counting)
    exc = raised_by(lambda: call_site(f))
    assert exc is always
    # The log record's trim and the wrapper's: each reads this call's frames and at most
    # SCAN_PAST more, never the 100 earlier calls' (over 500 frames) below.
    assert 0 < len(read) <= 2 * (_frames.SCAN_PAST + 20)
    shown = names(exc.__traceback__)
    assert shown[:4] == ["raised_by", "<lambda>", "call_site", "f"]
    assert_none_of_ours(exc)


# --- guardrails' own errors: the caller's line alone --------------------------------------


def _breaker_open() -> Callable[[], Any]:
    use(p={"breaker": {"window": 2, "min_calls": 2, "failure_rate": "50%", "open_for": "1h"}})
    f = guarded("p")(work)
    for _ in range(2):
        with pytest.raises(KeyError):
            f(1)
    return lambda: call_site(f)


def _refused() -> Callable[[], Any]:
    use(p={"validate": {"args": {"x": {"max": 0}}}})
    f = guarded("p")(work)
    return lambda: call_site(f)


def _rate_limited() -> Callable[[], Any]:
    use(p={"rate_limit": {"rate": "1/h", "burst": 1}})
    f = guarded("p")(lambda x: x)
    f(0)
    return lambda: call_site(f)


def _sync_timeout(gate: threading.Event) -> Callable[[], Any]:
    use(p={"timeout": {"attempt": "50ms"}})
    f = guarded("p")(lambda x: gate.wait(30))
    return lambda: call_site(f)


@pytest.mark.parametrize(
    ("make", "error"),
    [
        (_breaker_open, guardrails.CircuitOpenError),
        (_refused, guardrails.InputValidationError),
        (_rate_limited, guardrails.RateLimitExceeded),
    ],
    ids=["breaker", "validate", "rate_limit"],
)
def test_errors_of_guardrails_show_the_callers_line(
    make: Callable[[], Callable[[], Any]], error: type[Exception]
) -> None:
    exc = raised_by(make())
    assert isinstance(exc, error)
    assert names(exc.__traceback__) == ["raised_by", "<lambda>", "call_site"]
    assert_none_of_ours(exc)


def test_a_sync_timeout_shows_the_callers_line() -> None:
    gate = threading.Event()
    try:
        exc = raised_by(_sync_timeout(gate))
    finally:
        gate.set()
    assert isinstance(exc, guardrails.CallTimeout)
    assert names(exc.__traceback__) == ["raised_by", "<lambda>", "call_site"]
    assert_none_of_ours(exc)


def test_an_async_timeout_keeps_its_cause_with_the_functions_frame() -> None:
    use(p={"timeout": {"attempt": "50ms"}, "retry": {"max_attempts": 1}})

    @guarded("p")
    async def hangs(x: int) -> None:
        await asyncio.sleep(30)

    exc = raised_by(lambda: asyncio.run(acall_site(hangs)))
    assert isinstance(exc, guardrails.CallTimeout)
    assert names(exc.__traceback__)[-1] == "acall_site"
    cause = exc.__cause__
    assert isinstance(cause, asyncio.CancelledError)
    # Where the work was when its deadline passed: the function's await, not the layers.
    assert "hangs" in names(cause.__traceback__)
    assert_none_of_ours(exc)


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_failing_fallback_keeps_the_failure_it_answered_as_context(kind: str) -> None:
    def broken_fallback(x: int) -> int:
        raise RuntimeError("the fallback is down too")

    sys.modules[__name__].broken_fallback = broken_fallback  # type: ignore[attr-defined]
    use(p={"fallback": {"function": f"{__name__}:broken_fallback", "catch": ["KeyError"]}})
    if kind == "sync":
        exc = raised_by(lambda: call_site(guarded("p")(work)))
        caller = "call_site"
    else:
        exc = raised_by(lambda: asyncio.run(acall_site(guarded("p")(awork))))
        caller = "acall_site"
    assert isinstance(exc, RuntimeError) and isinstance(exc.__context__, KeyError)
    assert names(exc.__traceback__)[-2:] == [caller, "broken_fallback"]
    assert names(exc.__context__.__traceback__)[-2:] == [
        "work" if kind == "sync" else "awork",
        "deeper",
    ]
    assert_none_of_ours(exc)


@pytest.mark.parametrize("round_", range(5))  # each round races the two threads' trimming
def test_a_cache_waiter_gets_the_leaders_failure_without_our_frames(round_: int) -> None:
    use(p={"cache": {"ttl": 60}})
    entered, release = threading.Event(), threading.Event()

    @guarded("p")
    def slow(x: int) -> int:
        entered.set()
        release.wait(30)
        return work(x)

    caught: dict[str, BaseException] = {}

    def run(who: str) -> None:
        caught[who] = raised_by(lambda: call_site(slow))

    leader = threading.Thread(target=run, args=("leader",))
    leader.start()
    assert entered.wait(30)
    waiter = threading.Thread(target=run, args=("waiter",))
    waiter.start()
    deadline = time.monotonic() + 30
    while waiter.ident not in cache_layer._WAITING:  # the waiter waits on the leader's flight
        assert time.monotonic() < deadline and waiter.is_alive()
        time.sleep(0.001)
    release.set()
    leader.join(30), waiter.join(30)
    assert not leader.is_alive() and not waiter.is_alive()
    first, second = caught["leader"], caught["waiter"]
    assert isinstance(first, KeyError) and isinstance(second, KeyError)
    assert names(first.__traceback__)[-4:] == ["call_site", "slow", "work", "deeper"]
    # The waiter's exception: its own call site; the leader's failure as its cause.
    assert names(second.__traceback__)[-1] == "call_site"
    assert second.__cause__ is first
    assert_none_of_ours(first)
    assert_none_of_ours(second)


def test_exception_groups_keep_their_members_and_their_frames() -> None:
    use(p=SETUPS["everything"])
    inner = guarded("p")(work)

    @guarded("p")
    def fan_out(x: int) -> None:
        errors: list[Exception] = []
        for i in (1, 2):
            try:
                inner(i)
            except KeyError as exc:
                errors.append(exc)
        raise ExceptionGroup("both lookups failed", errors)

    exc = raised_by(lambda: call_site(fan_out))
    assert isinstance(exc, ExceptionGroup) and len(exc.exceptions) == 2
    assert names(exc.__traceback__)[-2:] == ["call_site", "fan_out"]
    for member in exc.exceptions:
        assert names(member.__traceback__) == ["fan_out", "work", "deeper"]
    assert_none_of_ours(exc)
    assert exc.subgroup(KeyError) is not None


@pytest.mark.parametrize("error", [KeyboardInterrupt, SystemExit, GeneratorExit])
def test_control_flow_exceptions_are_untouched(error: type[BaseException]) -> None:
    use(p=SETUPS["retry"])
    raised: list[BaseException] = []

    @guarded("p")
    def f(x: int) -> None:
        raised.append(error())
        raise raised[-1]

    exc = raised_by(lambda: call_site(f))
    assert exc is raised[0] and len(raised) == 1
    # Where it struck, every frame: a Ctrl-C inside a layer must say so.
    assert [p for p in files_shown(exc) if str(Path(p).resolve()).startswith(OURS)]


def test_a_cancellation_is_raised_as_itself() -> None:
    use(p={"retry": {"max_attempts": 3, "retry_on": ["KeyError"]}})
    started = asyncio.Event()

    @guarded("p")
    async def waits(x: int) -> None:
        started.set()
        await asyncio.Event().wait()

    async def main() -> BaseException:
        task = asyncio.create_task(acall_site(waits))
        await started.wait()
        task.cancel()
        try:
            await task
        except asyncio.CancelledError as exc:
            return exc
        raise AssertionError("not cancelled")

    assert isinstance(asyncio.run(main()), asyncio.CancelledError)


def test_full_tracebacks_on_request(
    monkeypatch: pytest.MonkeyPatch, logs: pytest.LogCaptureFixture
) -> None:
    use(p=SETUPS["everything"])
    f = guarded("p")(work)
    monkeypatch.setenv(ENV_VAR, "1")
    exc = raised_by(lambda: call_site(f))
    shown = names(exc.__traceback__)
    assert shown[-2:] == ["work", "deeper"] and "call_site" in shown
    assert "sync_wrapper" in shown and "retry_layer" in shown
    (record,) = failed_records(logs)
    assert record.exc_info is not None and "retry_layer" in names(record.exc_info[2])
    # Set to 0 (or unset), trimmed again: read at each failure.
    monkeypatch.setenv(ENV_VAR, "0")
    assert_none_of_ours(raised_by(lambda: call_site(f)))


def test_an_uncaught_failure_prints_the_short_traceback(tmp_path: Path) -> None:
    # What a user sees at the terminal when nothing catches it.
    script = tmp_path / "app.py"
    script.write_text(
        textwrap.dedent(
            """
            import guardrails

            guardrails.configure({"policies": {"p": {
                "retry": {"max_attempts": 2, "retry_on": ["KeyError"], "wait": {"initial": 0}},
                "timeout": {"attempt": "30s"},
                "cache": {"ttl": 60},
            }}})

            @guardrails.guarded("p")
            def lookup(key):
                return {}[key]

            def handler():
                return lookup("k")

            handler()
            """
        )
    )
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 1
    frames = re.findall(r'File "([^"]+)", line \d+, in (\S+)', out.stderr)
    assert [name for _, name in frames] == ["<module>", "handler", "lookup"], out.stderr
    assert out.stderr.rstrip().endswith(
        "KeyError: 'k'\nguardrails: policy 'p' gave up after 2 attempts (retry.max_attempts=2)"
    )


# --- The example: handled failures are quiet ---------------------------------------------

ROOT = Path(__file__).resolve().parents[1]


def test_the_policy_sets_expect_what_the_example_handles() -> None:
    for policy_set in ("default", "production"):
        # Loaded, not installed: strict production would check every guarded function.
        settings = _config.load(ROOT / "conf", overrides=[f"guardrails={policy_set}"])
        block = settings.policies["fetch_features"].log
        assert block is not None
        assert {ConnectionError, TimeoutError} <= set(block.expected)


def test_the_examples_handled_failures_log_no_traceback(tmp_path: Path) -> None:
    # The app counts a feature store still down after the retries as "unavailable": the
    # policy sets list ConnectionError and TimeoutError under log.expected, so each such
    # failure is one line at the policy's level, not an ERROR with a traceback. (The
    # production set does the same, with 6 patient attempts a failure: not run here.)
    policy_set = "default"
    env = {k: v for k, v in os.environ.items() if k != "GUARDRAILS_CONFIG"}
    env["COLUMNS"] = "500"  # rich wraps lines at the terminal's width
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "pipeline.py"),
            f"guardrails={policy_set}",
            "++hydra.job_logging.loggers.guardrails.level=DEBUG",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        check=False,
        timeout=300,
    )
    output = out.stdout + out.stderr
    assert out.returncode == 0, output
    unavailable = int(re.search(r"(\d+) unavailable after retries", output)[1])  # type: ignore[index]
    assert unavailable > 0  # the outage's first calls fail after their retries
    failed = [line for line in output.splitlines() if " failed in " in line]
    assert len(failed) == unavailable, output
    assert all(" DEBUG " in line and "fetch_features" in line for line in failed), failed
    assert "Traceback" not in output and " ERROR " not in output


# --- The trim itself, against a model -----------------------------------------------------


class _Grab:
    """Notes the frame that asks for its repr."""

    def __init__(self, found: dict[str, Any]) -> None:
        self.found = found

    def __repr__(self) -> str:
        self.found["O"] = sys._getframe().f_back
        return "grab"


@pytest.fixture(scope="module")
def sample_frames() -> dict[str, Any]:
    """One frame of each kind: the user's, guardrails' (the log layer's describe_value
    asking for a repr) and plumbing (threading's Thread.run, calling a thread's target)."""
    found: dict[str, Any] = {"U": sys._getframe()}
    describe_value(_Grab(found), "values")
    thread = threading.Thread(target=lambda: found.setdefault("P", sys._getframe().f_back))
    thread.start()
    thread.join(30)
    assert [_frames._kind(found[k]) for k in "UOP"] == [0, 1, 2]
    return found


def _model(kinds: list[str]) -> list[int]:
    """Indices kept: the user's always, ours never, plumbing unless ours called it."""
    kept, called_by_ours = [], False
    for i, kind in enumerate(kinds):
        if kind == "O":
            called_by_ours = True
        elif kind == "P":
            if not called_by_ours:
                kept.append(i)
        else:
            called_by_ours = False
            kept.append(i)
    return kept


@given(kinds=st.lists(st.sampled_from("UOP"), max_size=60))
def test_trimmed_agrees_with_the_model_and_changes_no_traceback(
    sample_frames: dict[str, Any], kinds: list[str]
) -> None:
    frames = sample_frames
    tb = None
    for lineno, kind in reversed(list(enumerate(kinds, start=1))):
        tb = TracebackType(tb, frames[kind], 0, lineno)  # line numbers tell the nodes apart
    before = []
    node = tb
    while node is not None:
        before.append((node, node.tb_next))
        node = node.tb_next
    result = _frames.trimmed(tb)
    got = []
    node = result
    while node is not None:
        got.append(node.tb_lineno - 1)
        node = node.tb_next
    assert got == _model(kinds)
    if got == list(range(len(kinds))):
        assert result is tb  # nothing dropped: the traceback itself
    node = tb
    for original, its_next in before:  # no node of the original was changed
        assert node is original and node.tb_next is its_next
        node = node.tb_next


def test_many_threads_raising_one_shared_exception() -> None:
    # Each raise adds to the one object's traceback from its own thread while others trim
    # it: every caller still gets that exception, and it still prints.
    use(p={"retry": {"max_attempts": 2, "retry_on": ["KeyError"], "wait": NO_RETRY_WAIT}})
    shared = KeyError("shared")

    @guarded("p")
    def f(x: int) -> None:
        raise shared

    got: list[BaseException] = []

    def worker() -> None:
        for _ in range(30):
            got.append(raised_by(lambda: call_site(f)))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads)
    assert len(got) == 240 and all(exc is shared for exc in got)
    # Printed whole (Python keeps every raise's frames on the one object: no cycle, and
    # none of ours).
    assert "KeyError: 'shared'" in "".join(traceback.format_exception(shared))
    assert_none_of_ours(shared)
