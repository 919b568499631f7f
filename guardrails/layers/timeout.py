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
A caller interrupted while waiting (Ctrl-C) leaves the work the same way; interrupted at any
other step, it leaves no thread waiting for a job and no outcome held: a worker's handle
that its caller drops wakes the thread, which ends. The work's exception reaches the caller
without the worker's own frame in its traceback (that frame runs on, serving other callers),
and without a reference cycle: a failed call's arguments are freed with the exception.
Calls nested through sync timeouts each wait for a thread of their own, with a fresh stack:
so that runaway recursion through a guarded function ends in ``RecursionError`` rather than
in thousands of threads, each nested timeout counts as ``FRAMES_PER_HOP`` frames of
``sys.getrecursionlimit()`` (125 nested calls by default).

The workers are a pool of our own: daemon threads (an abandoned call that never ends does
not hold up interpreter exit, as ``ThreadPoolExecutor``'s joined threads would), reused when
idle, one more started whenever all are busy (abandoned work must not starve later calls,
and a guarded call made from a worker never waits for a worker), each ending after
``IDLE_SECONDS`` without work. The hand-off is a pipe per worker each way, the caller waiting
with ``select.poll`` (``os.write`` lets go of the GIL, so the woken thread runs at once): about
half the cost of a lock each way, and far cheaper than a ``Future``. Where pipes or
``poll`` are missing (Windows), or file descriptors run out, a lock does the same. Each
worker's descriptors are closed by its thread as it ends; no worker whose hand-off was
interrupted is used again, so no stale byte reaches a later caller. A forked child starts
with an empty pool and closes the parent's workers' descriptors (their threads do not exist
in it); a worker thread that forked ends in the child once its work returns, signalling
nothing (its pipes are the parent worker's too).

Async: the attempt runs in the caller's task and is cancelled at the deadline (a timer on
the loop, ``asyncio.timeout``'s bookkeeping: the task's cancel count tells our cancellation
from anyone else's). An outer ``cancel()`` always propagates as ``CancelledError``, even if
it races the deadline; a cancellation that is only ours becomes ``CallTimeout``, even if
the work caught it (its result, or the exception it ended with, is dropped, the latter
chained as the cause). A coroutine that never yields to the loop cannot be cancelled and
is not timed out, as with ``asyncio.timeout``.

Time: timeouts wait in real time (``poll``'s timeout in milliseconds rounded up, or a lock's
timed wait; the event loop's timer), never on
guardrails' clock. The fake clock of ``guardrails.testing`` does not drive them: under it,
``retry``'s waits take no real time, so ``timeout.total`` counts only the attempts' real
running time.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import itertools
import logging
import math
import os
import select
import sys
import threading
import time
import weakref
from _thread import allocate_lock
from collections.abc import Callable
from functools import partial
from typing import Any

from pydantic import Field, model_validator

from guardrails._errors import CallTimeout
from guardrails._types import CALLER_GONE, AsyncInner, Block, Context, Duration, Inner

#: An idle worker thread ends after this many seconds without work.
IDLE_SECONDS = 30.0

#: Hand-offs through pipes watched by ``select.poll`` (else locks: Windows).
_PIPES = hasattr(os, "pipe") and hasattr(select, "poll")
#: The longest wait ``poll`` takes at once, in milliseconds (a C int).
_POLL_MAX_MS = 2**31 - 1
#: A wait's timeout that never ends.
_FOREVER = -1

#: Wake a thread: ``set()``. Wait to be woken: ``wait(milliseconds) -> woken``, each set()
#: waking one wait(); a timeout of ``_FOREVER`` never ends.
Set = Callable[[], object]
Wait = Callable[[int], bool]


def _millis(seconds: float) -> int:
    """A timeout in whole milliseconds, rounded up: a wait never ends early."""
    return max(0, math.ceil(seconds * 1000))


def _lock_signal() -> tuple[Set, Wait]:
    lock = allocate_lock()
    lock.acquire()
    acquire, most = lock.acquire, threading.TIMEOUT_MAX

    def wait(ms: int) -> bool:
        return acquire(True, -1 if ms < 0 else min(ms / 1000, most))

    return lock.release, wait


def _pipe_wait(fd: int) -> Wait:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    poll, read = poller.poll, os.read

    def wait(ms: int) -> bool:
        if ms > _POLL_MAX_MS:
            return _wait_long(poll, ms) and bool(read(fd, 1))
        if poll(ms):
            read(fd, 1)
            return True
        return False

    return wait


def _wait_long(poll: Callable[[int], list[Any]], ms: int) -> bool:
    """``poll`` for longer than it takes at once (about 24.8 days)."""
    deadline = time.monotonic() + ms / 1000
    while not poll(min(ms, _POLL_MAX_MS)):
        ms = _millis(deadline - time.monotonic())
        if not ms:
            return False
    return True


class _Files:
    """A worker's file descriptors, closed once: by its thread as it ends, or in a forked
    child (where the thread does not exist), or by the caller starting the thread if it is
    interrupted before the thread takes them (``owned``). ``lock`` keeps a dropped handle's
    wake-up from writing to a descriptor being closed (its number may be reused at once),
    and settles which of thread and starter has them."""

    __slots__ = ("fds", "lock", "open", "owned")

    def __init__(self) -> None:
        self.fds: tuple[int, ...] = ()
        self.lock = allocate_lock()
        self.open = True
        self.owned = False

    def take(self) -> bool:
        """The thread, as it starts: its descriptors are its own (False: closed already)."""
        with self.lock:
            self.owned = self.open
            return self.open

    def abandon(self) -> None:
        """The starter, interrupted: close them unless the thread runs with them (its
        dropped handle wakes it, and it closes them as it ends)."""
        with self.lock:
            if self.owned:
                return
            self.open = False
        self.close()

    def signal(self) -> tuple[Set, Wait]:
        """A one-way signal: a pipe if it can, else a lock."""
        if _PIPES:
            try:
                # One step: no interrupt falls between making and keeping them.
                self.fds += os.pipe()  # not inherited by child processes
            except OSError:  # out of file descriptors: a lock does the same, slower
                pass
            else:
                r, w = self.fds[-2:]
                return partial(os.write, w, b"\0"), _pipe_wait(r)
        return _lock_signal()

    def close(self) -> None:
        with self.lock:
            self.open = False
            fds, self.fds = self.fds, ()
        _POOL.files.pop(id(self), None)
        for fd in fds:
            os.close(fd)

    def forget(self) -> None:
        """In a forked child: the thread is gone, and no lock may be held by another."""
        self.lock = allocate_lock()
        self.close()


class TimeoutConfig(Block):
    """``timeout:`` — ``attempt`` (each attempt, inside retry), ``total`` (the whole call)."""

    attempt: Duration | None = Field(default=None, gt=0)
    total: Duration | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _some(self) -> TimeoutConfig:
        if self.attempt is None and self.total is None and self.enabled:
            raise ValueError("set attempt, total or both (durations like '2s')")
        return self


class _Pool:
    """The idle workers (most recently used last) and the fork generation."""

    __slots__ = ("files", "generation", "idle", "names")

    def __init__(self) -> None:
        self.idle: list[_Worker] = []
        self.generation = 0
        self.names = itertools.count(1)
        #: Each worker's descriptors, until its thread closes them (by ``id``).
        self.files: dict[int, _Files] = {}

    def after_fork_in_child(self) -> None:
        # Only the forking thread exists in the child: no worker of the parent does, and
        # their descriptors are closed, except the forking worker's own (its thread closes
        # them when its work returns). Cleared in place: compiled layers hold the list's
        # methods.
        mine = _NESTING.files
        for files in list(self.files.values()):
            if files is not mine:
                files.forget()
        if mine is not None:
            mine.open = False  # a dropped handle wakes nothing: the pipes are the parent's
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


class _Nesting(threading.local):
    """How deep the work running on this thread is nested in sync timeouts (0: not ours),
    and the descriptors of the worker this thread is (None: not a worker)."""

    depth = 0
    files: _Files | None = None


_NESTING = _Nesting()
#: Each sync timeout a call is nested in counts as this many frames of the recursion limit.
FRAMES_PER_HOP = 8


class _Worker:
    """The handle of one pooled thread: whoever holds it may hand the thread a job.

    ``hand()`` hands it a job; ``wait(ms)`` returns when a job it ran is claimed by the
    caller (False: the timeout passed first); ``gate`` is taken by whichever of the caller
    (at the deadline: abandoned) and the thread (on finishing: finished) comes first. The
    thread holds the handle only while it runs a job: a handle that nobody holds (a caller
    interrupted at any point drops it) wakes its thread, which ends. So no thread waits
    forever for a job that will never come, no outcome outlives its call on a lost worker,
    and no byte left in a pipe by an interrupted hand-off reaches a later caller."""

    __slots__ = ("__weakref__", "error", "gate", "hand", "job", "result", "wait")

    def __init__(self, hand: Set, wait: Wait) -> None:
        self.hand = hand
        self.wait = wait
        self.gate = allocate_lock()
        self.job: tuple[contextvars.Context, Inner, Any, Any, Any, _Site, int] | None = None
        self.result: Any = None
        self.error: BaseException | None = None


def _on_drop(hand: Set, files: _Files) -> Any:
    def dropped(_: Any) -> None:
        # The thread wakes to no handle, and ends. (Woken already when a job was handed
        # and not yet taken: it wakes anyway.) Never once its descriptors are closed.
        with files.lock, contextlib.suppress(RuntimeError, OSError):
            if files.open:
                hand()

    return dropped


def _serve(ref: Any, ready: Wait, finish: Set, gate: Any, files: _Files, generation: int) -> None:
    """A pooled thread: its descriptors are closed as it ends, whatever ends it."""
    if not files.take():
        # Its starter was interrupted and closes them (again here, in case that too was
        # interrupted: closed once either way); they are never used, their numbers may be
        # another file's already.
        files.close()
        return
    _NESTING.files = files
    try:
        _loop(ref, ready, finish, gate, generation)
    finally:
        files.close()


def _loop(ref: Any, ready: Wait, finish: Set, gate: Any, generation: int) -> None:
    """A pooled thread's loop. ``worker`` (the handle) is held only while running a job."""
    pool = _POOL
    idle = pool.idle
    nesting = _NESTING
    while True:
        if not ready(_millis(IDLE_SECONDS)):
            worker = ref()
            if worker is None:
                return
            try:
                idle.remove(worker)
            except ValueError:
                # A caller holds the handle: it hands a job, or drops the handle.
                del worker
                ready(_FOREVER)
            else:
                return
        worker = ref()
        job = None if worker is None else worker.job
        if job is None:
            return  # the handle was dropped: its caller was interrupted
        worker.job = None
        nesting.depth = job[6]
        try:
            worker.result = job[0].run(job[1], job[2], job[3], job[4])
        except BaseException as exc:  # handed to the caller, or logged if abandoned
            # Not this frame: it runs on, and its locals are the next caller's job.
            worker.error = exc.with_traceback(exc.__traceback__.tb_next)  # type: ignore[union-attr]
        site = job[5]
        del job  # an idle thread must not keep the call's arguments alive
        if generation != pool.generation:
            # This thread forked and is in the child: its caller is in the parent, and the
            # pipes are shared with the parent's worker, whose caller a signal would wake.
            worker.error = worker.result = None
            return
        if gate.acquire(False):
            finish()  # the caller takes the outcome and returns the handle to the pool
        else:
            error, worker.error, worker.result = worker.error, None, None
            # Should logging itself raise, this thread ends with that error reported by
            # threading.excepthook, and leaves the pool: no caller gets a dead worker.
            site.dropped(error)
            del error
            gate.release()
            if generation == pool.generation:
                idle.append(worker)
        del worker, site
        if generation != pool.generation:
            return  # it forked in site.dropped (a logging handler): it is in the child


def _spawn() -> _Worker:
    files = _Files()
    try:
        _POOL.files[id(files)] = files  # registered first: a fork now closes them in the child
        hand, ready = files.signal()
        finish, wait = files.signal()
        worker = _Worker(hand, wait)
        ref = weakref.ref(worker, _on_drop(hand, files))
        threading.Thread(
            target=_serve,
            args=(ref, ready, finish, worker.gate, files, _POOL.generation),
            name=f"guardrails-timeout-{next(_POOL.names)}",
            daemon=True,
        ).start()
    except BaseException:
        # Interrupted, maybe inside Thread.start() once the thread runs: closed here only
        # if the thread has not taken them (it would poll closed, maybe reused, numbers).
        files.abandon()
        raise
    return worker


def _build_sync(seconds: float, scope: str, inner: Inner, ctx: Context) -> Inner:
    site = _Site(ctx, scope)
    wait = _millis(seconds)
    idle = _POOL.idle
    pop, push = idle.pop, idle.append
    copy_context = contextvars.copy_context
    nesting, recursion_limit = _NESTING, sys.getrecursionlimit
    timed_out, abandoned = ctx.counters.timeout, ctx.counters.abandon
    policy, qualname = ctx.policy, ctx.qualname
    # A total timeout tells the work when its caller has left, so a retry loop inside it
    # stops instead of going on retrying for nobody (see CALLER_GONE).
    marks, caller_gone = scope == "total", CALLER_GONE.set

    def too_deep(depth: int) -> RecursionError:
        return RecursionError(
            f"{qualname} (policy {policy!r}): {depth} calls nested through sync timeouts, "
            "each waiting for a thread of its own (recursion through a guarded function "
            "with a timeout?); sys.setrecursionlimit() raises the bound"
        )

    def interrupted(worker: _Worker) -> None:
        """The caller was interrupted (Ctrl-C) after handing the job: the work is left."""
        if worker.gate.acquire(False):
            abandoned()  # the thread drops the outcome when it ends, and rejoins the pool
            return
        # It finished; whether the interrupted wait took its signal is unknown (a byte may
        # be left in the pipe), so the caller drops the handle and the thread ends. The
        # outcome goes to the log.
        error, worker.error, worker.result = worker.error, None, None
        site.dropped(error)

    def timeout_layer(args: tuple[Any, ...], kwargs: dict[str, Any], info: Any) -> Any:
        # Whatever is raised between two steps here (a signal's handler runs there), the
        # handle is dropped or returned to the pool, and the thread is never left waiting.
        depth = nesting.depth
        if depth and depth * FRAMES_PER_HOP >= recursion_limit():
            raise too_deep(depth)
        try:
            worker = pop()
        except IndexError:
            worker = _spawn()
        context = copy_context()
        gone: list[bool] | None = None
        if marks:
            gone = [False]
            context.run(caller_gone, gone)
        worker.job = (context, inner, args, kwargs, info, site, depth + 1)
        try:
            worker.hand()
            if not worker.wait(wait):
                if worker.gate.acquire(False):
                    finished = False
                else:
                    worker.wait(_FOREVER)  # it finished as the deadline passed: at once
                    finished = True
            else:
                finished = True
        except BaseException:
            if gone is not None:
                gone[0] = True
            interrupted(worker)
            del worker  # a finished thread ends once the handle is gone
            raise
        if not finished:
            if gone is not None:
                gone[0] = True
            del worker  # the thread holds the handle while the work runs on
            abandoned()
            timed_out()
            raise CallTimeout(policy, qualname, seconds, scope)
        result, error = worker.result, worker.error
        worker.result = worker.error = None
        worker.gate.release()
        push(worker)
        if error is None:
            return result
        try:
            raise error
        finally:
            del error  # this frame is in its traceback

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
