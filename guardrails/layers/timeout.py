"""The ``timeout`` layers: ``timeout.total`` bounds the whole call (retries and their waits
included), ``timeout.attempt`` one attempt (inside ``retry``). Both raise ``CallTimeout``, a
``TimeoutError``, so ``retry`` retries an attempt's timeout by default; each timeout is
counted once in ``stats().timeouts``.

Sync: the work runs on a worker thread, in a copy of the caller's context (context
variables, the cache's re-entry marks included, are seen by the work; what the work sets is
not seen by the caller; thread-locals are not carried). The caller stops waiting at the
deadline. Python cannot stop a thread, so the abandoned work runs on in the background: it
is counted in ``stats().abandoned`` when it is left, and its result, or its exception
(logged at DEBUG with its traceback, never reported as unhandled), is dropped when it ends.
Work that finishes as the deadline passes is not abandoned: whichever of caller and worker
claims the attempt first decides, so the result is either returned or dropped, never both.
A caller interrupted while waiting (Ctrl-C) leaves the work the same way.

The workers are a pool of our own: daemon threads (an abandoned call that never ends does
not hold up interpreter exit, as ``ThreadPoolExecutor``'s joined threads would), reused when
idle, one more started whenever all are busy (abandoned work must not starve later calls,
and a guarded call made from a worker never waits for a worker), each ending after
``IDLE_SECONDS`` without work. The hand-off is a lock per worker each way, cheaper than a
``Future``. A forked child starts with an empty pool (the parent's threads do not exist in
it); a worker thread that forked ends in the child once its work returns.

Async: the attempt runs in the caller's task and is cancelled at the deadline (a timer on
the loop, ``asyncio.timeout``'s bookkeeping: the task's cancel count tells our cancellation
from anyone else's). An outer ``cancel()`` always propagates as ``CancelledError``, even if
it races the deadline; a cancellation that is only ours becomes ``CallTimeout``, even if
the work caught it (its result, or the exception it ended with, is dropped, the latter
chained as the cause). A coroutine that never yields to the loop cannot be cancelled and
is not timed out, as with ``asyncio.timeout``.

Time: timeouts wait in real time (a lock's timed wait, the event loop's timer), never on
guardrails' clock. The fake clock of ``guardrails.testing`` does not drive them: under it,
``retry``'s waits take no real time, so ``timeout.total`` counts only the attempts' real
running time.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import logging
import os
import threading
from _thread import allocate_lock
from typing import Any

from pydantic import Field, model_validator

from guardrails._errors import CallTimeout
from guardrails._types import AsyncInner, Block, Context, Duration, Inner

#: An idle worker thread ends after this many seconds without work.
IDLE_SECONDS = 30.0


class TimeoutConfig(Block):
    """``timeout:`` — ``attempt`` (each attempt, inside retry), ``total`` (the whole call)."""

    attempt: Duration | None = Field(default=None, gt=0)
    total: Duration | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _some(self) -> TimeoutConfig:
        if self.attempt is None and self.total is None:
            raise ValueError("set attempt, total or both (durations like '2s')")
        return self


class _Pool:
    """The idle workers (most recently used last) and the fork generation."""

    __slots__ = ("generation", "idle", "names")

    def __init__(self) -> None:
        self.idle: list[_Worker] = []
        self.generation = 0
        self.names = itertools.count(1)

    def after_fork_in_child(self) -> None:
        # Only the forking thread exists in the child: no worker of the parent does.
        # Cleared in place: compiled layers hold the list's methods.
        self.idle.clear()
        self.generation += 1


_POOL = _Pool()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_POOL.after_fork_in_child)


class _Site:
    """What a worker needs to report work abandoned by one compiled layer."""

    __slots__ = ("logger", "policy", "qualname", "scope")

    def __init__(self, ctx: Context, scope: str) -> None:
        self.logger = ctx.logger
        self.policy = ctx.policy
        self.qualname = ctx.qualname
        self.scope = scope

    def dropped(self, error: BaseException | None) -> None:
        """Abandoned work ended: its result or ``error`` goes nowhere but this DEBUG record."""
        if self.logger.isEnabledFor(logging.DEBUG):
            outcome = "with an exception" if error is not None else "with a result"
            self.logger.debug(
                "%s: %s, abandoned after timeout.%s, finished %s (dropped)",
                self.policy,
                self.qualname,
                self.scope,
                outcome,
                exc_info=error,
                extra={"policy": self.policy, "function": self.qualname},
            )


class _Worker:
    """One pooled thread. ``wake`` is released to hand it a job; ``done`` is released when a
    job it ran is claimed by the caller; ``gate`` is taken by whichever of the caller (at
    the deadline: abandoned) and the worker (on finishing: finished) comes first."""

    __slots__ = ("done", "error", "gate", "generation", "job", "result", "wake")

    def __init__(self, generation: int) -> None:
        self.wake = allocate_lock()
        self.wake.acquire()
        self.done = allocate_lock()
        self.done.acquire()
        self.gate = allocate_lock()
        self.job: tuple[contextvars.Context, Inner, Any, Any, Any, _Site] | None = None
        self.result: Any = None
        self.error: BaseException | None = None
        self.generation = generation

    def run(self) -> None:
        pool = _POOL
        idle = pool.idle
        wake, done, gate = self.wake, self.done, self.gate
        while True:
            if not wake.acquire(True, IDLE_SECONDS):
                try:
                    idle.remove(self)
                except ValueError:
                    # A caller took this worker as its wait ran out, or has yet to put it
                    # back after its last job: either way a job (or retirement) comes.
                    wake.acquire()
                else:
                    return
            job = self.job
            if job is None:
                return  # retired by a caller that was interrupted
            self.job = None
            try:
                self.result = job[0].run(job[1], job[2], job[3], job[4])
            except BaseException as exc:  # handed to the caller, or logged if abandoned
                self.error = exc
            site = job[5]
            del job  # an idle worker must not keep the call's arguments alive
            if gate.acquire(False):
                done.release()  # the caller takes the result and returns this worker
            else:
                error, self.error, self.result = self.error, None, None
                # Should logging itself raise, this thread ends with that error reported by
                # threading.excepthook, and leaves the pool: no caller gets a dead worker.
                site.dropped(error)
                del error, site
                gate.release()
                if self.generation == pool.generation:
                    idle.append(self)
            if self.generation != pool.generation:
                return  # this thread forked and is in the child, or a child's leftover


def _spawn() -> _Worker:
    worker = _Worker(_POOL.generation)
    threading.Thread(
        target=worker.run, name=f"guardrails-timeout-{next(_POOL.names)}", daemon=True
    ).start()
    return worker


def _clamped(seconds: float) -> float:
    # A lock's timed wait refuses more than TIMEOUT_MAX (about 49 days on Windows).
    return min(seconds, threading.TIMEOUT_MAX)


def _build_sync(seconds: float, scope: str, inner: Inner, ctx: Context) -> Inner:
    site = _Site(ctx, scope)
    wait = _clamped(seconds)
    idle = _POOL.idle
    pop, push = idle.pop, idle.append
    copy_context = contextvars.copy_context
    timed_out, abandoned = ctx.counters.timeout, ctx.counters.abandon
    policy, qualname = ctx.policy, ctx.qualname

    def collect(worker: _Worker) -> Any:
        """The finished job's outcome; the worker goes back to the pool."""
        error = worker.error
        if error is None:
            result = worker.result
            worker.result = None
            worker.gate.release()
            push(worker)
            return result
        worker.error = None
        worker.gate.release()
        push(worker)
        try:
            raise error
        finally:
            del error  # this frame is in the traceback

    def retire(worker: _Worker) -> None:
        """The caller was interrupted after the worker finished: the outcome is dropped
        (logged at DEBUG) and the worker's thread ends. Whether the interrupted wait took
        ``done`` is unknown, so the worker is not reused."""
        error, worker.error, worker.result = worker.error, None, None
        worker.job = None
        worker.wake.release()  # it wakes to no job, and ends
        site.dropped(error)

    def late(worker: _Worker) -> Any:
        if worker.gate.acquire(False):
            abandoned()
            timed_out()
            raise CallTimeout(policy, qualname, seconds, scope)
        try:
            worker.done.acquire()  # it finished as the deadline passed: done comes at once
        except BaseException:
            retire(worker)
            raise
        return collect(worker)

    def timeout_layer(args: tuple[Any, ...], kwargs: dict[str, Any], info: Any) -> Any:
        try:
            worker = pop()
        except IndexError:
            worker = _spawn()
        worker.job = (copy_context(), inner, args, kwargs, info, site)
        worker.wake.release()
        try:
            finished = worker.done.acquire(True, wait)
        except BaseException:  # interrupted while waiting (Ctrl-C): leave the work
            if worker.gate.acquire(False):
                abandoned()
            else:
                retire(worker)  # it finished meanwhile; the interruption wins
            raise
        if finished:
            error = worker.error
            if error is None:
                result = worker.result
                worker.result = None
                worker.gate.release()
                push(worker)
                return result
            return collect(worker)
        return late(worker)

    timeout_layer.__name__ = f"timeout_{scope}"
    return timeout_layer


def _expire(task: asyncio.Task[Any], fired: list[bool]) -> None:
    fired.append(True)
    task.cancel()


def _build_async(seconds: float, scope: str, inner: AsyncInner, ctx: Context) -> AsyncInner:
    timed_out = ctx.counters.timeout
    policy, qualname = ctx.policy, ctx.qualname
    current_task, running_loop = asyncio.current_task, asyncio.get_running_loop
    expire = _expire

    async def timeout_layer(args: tuple[Any, ...], kwargs: dict[str, Any], info: Any) -> Any:
        task = current_task()
        if task is None:
            raise RuntimeError(f"timeout.{scope} of {qualname} needs to run inside an asyncio task")
        baseline = task.cancelling()
        fired: list[bool] = []
        handle = running_loop().call_later(seconds, expire, task, fired)
        try:
            result = await inner(args, kwargs, info)
        except BaseException as exc:
            if not fired:
                handle.cancel()
                raise
            if task.uncancel() > baseline or not isinstance(
                exc, asyncio.CancelledError | Exception
            ):
                raise  # someone else cancelled it too, or Ctrl-C / exit: theirs to see
            timed_out()
            raise CallTimeout(policy, qualname, seconds, scope) from exc
        if not fired:
            handle.cancel()
            return result
        if task.uncancel() > baseline:
            return result  # the work swallowed an outer cancellation too: its call
        del result  # the work caught our cancellation and returned: too late
        timed_out()
        raise CallTimeout(policy, qualname, seconds, scope)

    timeout_layer.__name__ = f"timeout_{scope}"
    return timeout_layer


def build_total(cfg: TimeoutConfig, inner: Inner, ctx: Context) -> Inner:
    """``timeout.total``: the whole call on a worker thread; ``inner`` when unset."""
    return inner if cfg.total is None else _build_sync(cfg.total, "total", inner, ctx)


def build_total_async(cfg: TimeoutConfig, inner: AsyncInner, ctx: Context) -> AsyncInner:
    """``timeout.total`` for a coroutine function: cancelled at the deadline."""
    return inner if cfg.total is None else _build_async(cfg.total, "total", inner, ctx)


def build_attempt(cfg: TimeoutConfig, inner: Inner, ctx: Context) -> Inner:
    """``timeout.attempt``: each attempt on a worker thread; ``inner`` when unset."""
    return inner if cfg.attempt is None else _build_sync(cfg.attempt, "attempt", inner, ctx)


def build_attempt_async(cfg: TimeoutConfig, inner: AsyncInner, ctx: Context) -> AsyncInner:
    """``timeout.attempt`` for a coroutine function: each attempt cancelled at its deadline."""
    return inner if cfg.attempt is None else _build_async(cfg.attempt, "attempt", inner, ctx)


__all__ = [
    "IDLE_SECONDS",
    "TimeoutConfig",
    "build_attempt",
    "build_attempt_async",
    "build_total",
    "build_total_async",
]
