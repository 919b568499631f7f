"""Helpers the tests share: sync and async twins of one test body (the same function
guarded either way), reaping a forked child without ever hanging, and waiting for an
observable condition with a generous deadline."""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest

from guardrails import guarded


def guard_as(kind: str, fn: Callable[..., Any], name: str) -> Callable[..., Any]:
    """``fn`` guarded as a sync function, or (``kind`` starting with ``async``) as an async
    one run to completion per call."""
    if not kind.startswith("async"):
        return guarded(name)(fn)

    @functools.wraps(fn)  # the same signature, so the same bound arguments and call_args
    async def native(*args: Any, **kwargs: Any) -> Any:
        # A real suspension: the layers must handle the awaited coroutine, not its creation.
        await asyncio.sleep(0)
        return fn(*args, **kwargs)

    g = guarded(name)(native)
    return lambda *args, **kwargs: asyncio.run(g(*args, **kwargs))


def reap(pid: int, seconds: float = 60.0) -> int | None:
    """A forked child's exit status, or ``None`` (after killing it) if it did not finish in
    ``seconds``: a hang fails the test instead of hanging it."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.005)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return None


def wait_until(condition: Callable[[], object], what: str, seconds: float = 30.0) -> None:
    """Poll ``condition`` until it holds; fail the test naming ``what`` after ``seconds``
    (a deadline generous enough for a loaded machine, never a sleep hoping for timing)."""
    end = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > end:
            pytest.fail(f"not within {seconds} s: {what}")
        time.sleep(0.002)
