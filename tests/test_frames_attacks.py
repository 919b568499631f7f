"""Attacks on trimmed tracebacks and the log layer: the caller always gets the function's own
exception, with its frames, whatever the failure path runs into; records show what ran; a
level no record can be logged at is refused."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import sys
import threading
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import guardrails
from guardrails import _frames, configure, guarded, stats

OURS = str(Path(guardrails.__file__).resolve().parent)


def chain_of(exc: BaseException) -> list[BaseException]:
    found: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None:
        found.append(current)
        current = current.__cause__ or current.__context__
    return found


def files_shown(exc: BaseException) -> list[str]:
    return [str(Path(f.filename).resolve()) for f in traceback.extract_tb(exc.__traceback__)]


@pytest.fixture
def low_recursion_limit() -> Iterator[None]:
    # The limit well above pytest's own frames, low enough that logging every level's
    # failure (with its traceback) stays quick.
    before = sys.getrecursionlimit()
    sys.setrecursionlimit(len(traceback.extract_stack()) + 250)
    try:
        yield
    finally:
        sys.setrecursionlimit(before)


@pytest.mark.parametrize("log", [{"level": "DEBUG"}, {"level": "DEBUG", "traceback": "full"}, None])
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_runaway_recursion_raises_the_functions_own_recursion_error(
    kind: str, log: dict[str, Any] | None, logs: pytest.LogCaptureFixture, low_recursion_limit: None
) -> None:
    # At the limit, the failure path (counting, logging the record with its traceback,
    # trimming) overflowed the stack too, and its RecursionError -- raised in logging's,
    # linecache's or posixpath's frames -- replaced the function's, "During handling of the
    # above exception" up to a dozen times.
    configure({"policies": {"rec": {"log": log}}})
    runs = 0

    if kind == "sync":

        @guarded("rec")
        def rec(n: int) -> int:
            nonlocal runs
            runs += 1
            return rec(n + 1)  # type: ignore[no-any-return]

        with pytest.raises(RecursionError) as caught:
            rec(0)
    else:

        @guarded("rec")
        async def arec(n: int) -> int:
            nonlocal runs
            runs += 1
            return await arec(n + 1)  # type: ignore[no-any-return]

        with pytest.raises(RecursionError) as caught:
            asyncio.run(arec(0))

    exc = caught.value
    assert chain_of(exc) == [exc], "".join(traceback.format_exception(exc))[-3000:]
    shown = files_shown(exc)
    assert not [f for f in shown if f.startswith(OURS)]
    assert shown[-1] == str(Path(__file__).resolve())  # the innermost frame is the function's
    assert runs > 10
    # Every call but the very deepest is counted (counting needs a frame there is no room
    # for at the limit itself).
    assert stats()["rec"].failures in (runs, runs - 1)


STDLIB_PLUMBING = (
    str(Path(asyncio.__file__).resolve().parent) + os.sep,
    str(Path(concurrent.futures.__file__).resolve().parent) + os.sep,
    str(Path(threading.__file__).resolve()),
)


def deeper(x: int) -> int:
    raise KeyError(f"no row {x}")


async def afail(x: int) -> int:
    await asyncio.sleep(0)
    return deeper(x)


def fail(x: int) -> int:
    return deeper(x)


def record_frames(logs: pytest.LogCaptureFixture) -> list[traceback.FrameSummary]:
    (record,) = [r for r in logs.records if getattr(r, "outcome", None) == "failed"]
    assert record.exc_info is not None
    return list(traceback.extract_tb(record.exc_info[2]))


@pytest.mark.parametrize("how", ["gather", "create_task", "thread", "executor"])
def test_a_function_run_as_a_task_or_a_thread_logs_its_own_frames(
    how: str, logs: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The record prepended the frame that called the guarded function: for a task that was
    # asyncio's Handle._run ("self._context.run(self._callback, *self._args)"), for a thread
    # threading's run, for an executor its _WorkItem.run -- a frame the caller awaiting the
    # task never sees, the very plumbing the trim removes.
    configure({"policies": {"p": {"log": {"level": "DEBUG"}}}})
    caught: list[BaseException] = []
    if how in ("gather", "create_task"):
        g = guarded("p")(afail)

        async def main() -> None:
            try:
                if how == "gather":
                    await asyncio.gather(g(1))
                else:
                    await asyncio.create_task(g(1))
            except KeyError as exc:
                caught.append(exc)

        asyncio.run(main())
        (exc,) = caught
        seen = [f.name for f in traceback.extract_tb(exc.__traceback__)]
        assert seen == ["main", "afail", "deeper"]
        expected = ["afail", "deeper"]
    else:
        f = guarded("p")(fail)
        if how == "thread":
            # The guarded function is the thread's target: threading's run calls it.
            monkeypatch.setattr(threading, "excepthook", lambda args: caught.append(args.exc_value))
            thread = threading.Thread(target=f, args=(1,))
            thread.start()
            thread.join(30)
            assert not thread.is_alive()
        else:
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                caught.append(pool.submit(f, 1).exception(30))  # type: ignore[arg-type]
        (exc,) = caught
        assert isinstance(exc, KeyError)
        expected = ["fail", "deeper"]
    frames = record_frames(logs)
    assert [f.name for f in frames] == expected
    assert not [f for f in frames if str(Path(f.filename).resolve()).startswith(STDLIB_PLUMBING)]


@pytest.mark.parametrize("level", ["NOTSET", "notset", 0])
@pytest.mark.parametrize("key", ["level", "failure_level"])
def test_notset_is_refused_as_a_level_records_would_never_be_logged_at(
    key: str, level: object
) -> None:
    # NOTSET was accepted, and then no record of the policy was ever logged, whatever the
    # logger's level: logging drops records at level 0 (Logger.isEnabledFor(0) is false).
    with pytest.raises(guardrails.PolicyConfigError) as caught:
        configure({"policies": {"p": {"log": {key: level}}}})
    ((where, says),) = caught.value.problems
    assert where == f"guardrails.policies.p.log.{key}"
    assert "NOTSET" in says and "DEBUG" in says


def test_the_lowest_levels_a_record_can_have_are_taken(logs: pytest.LogCaptureFixture) -> None:
    configure({"policies": {"p": {"log": {"level": "DEBUG", "failure_level": "debug"}}}})
    f = guarded("p")(fail)
    with pytest.raises(KeyError):
        f(1)
    assert [r.levelno for r in logs.records if getattr(r, "policy", None) == "p"] == [10]


def long_chain(links: int) -> ValueError:
    exc: ValueError | None = None
    for i in range(links):
        try:
            raise ValueError(i) from exc
        except ValueError as caught:
            exc = caught
    assert exc is not None
    return exc


@pytest.mark.parametrize("shape", ["chain", "group"])
def test_a_huge_exception_costs_a_bounded_trim(shape: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Every link of a cause chain (and every member of a group) was read on each raise: a
    # stored failure with 100,000 causes cost 100 ms per call that raised it again.
    configure({"policies": {"p": {"log": {"traceback": "none"}}}})
    reads = [0]
    real = _frames._trim_one

    def counted(exc: BaseException) -> None:
        reads[0] += 1
        real(exc)

    monkeypatch.setattr(_frames, "_trim_one", counted)
    if shape == "chain":
        big: Exception = long_chain(20_000)
    else:
        big = ExceptionGroup("many", [ValueError(i) for i in range(20_000)])

    @guarded("p")
    def f() -> None:
        raise big

    for _ in range(3):
        with pytest.raises(type(big)) as caught:
            f()
        assert caught.value is big
        assert not [n for n in files_shown(big) if n.startswith(OURS)]
    assert reads[0] <= 3 * _frames.SCAN_LINKS


def test_the_links_nearest_the_head_are_trimmed_first() -> None:
    # A fallback's failure keeps the failure it answered as its context: that link holds
    # our frames and is trimmed even when the exception is a group of many members.
    configure(
        {"policies": {"p": {"fallback": {"function": f"{__name__}.many_failures"}}}},
    )
    f = guarded("p")(fail)
    with pytest.raises(ExceptionGroup) as caught:
        f(1)
    context = caught.value.__context__
    assert isinstance(context, KeyError)
    assert not [n for n in files_shown(context) if n.startswith(OURS)]
    assert [n.name for n in traceback.extract_tb(context.__traceback__)] == ["fail", "deeper"]


def many_failures(x: int) -> int:
    raise ExceptionGroup("all shards failed", [ValueError(i) for i in range(5 * 1000)])
