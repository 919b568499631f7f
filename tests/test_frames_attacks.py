"""Attacks on trimmed tracebacks and the log layer's failure path: the caller always gets the
function's own exception, with its frames, whatever the failure path runs into."""

from __future__ import annotations

import asyncio
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import guardrails
from guardrails import configure, guarded, stats

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
