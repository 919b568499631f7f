"""Tracebacks without guardrails' own frames.

A failed guarded call would otherwise show a dozen frames of the layers (and of tenacity,
and of the asyncio machinery a layer called) between the caller and the function. The
wrappers ``@guarded`` makes drop them from the exception they re-raise, and the log layer
from the traceback of its record, so both read: the caller's frame, then the function's.

- Only frames are dropped: the exception object, its ``__cause__``/``__context__`` (whose
  tracebacks are trimmed too), its notes and an exception group's members stay as they are.
  Traceback objects are never changed in place (new ones are built): a log record that took
  the full traceback keeps it.
- A frame is ours when its code lives in the guardrails package or in tenacity; a frame of
  asyncio, ``concurrent.futures``, ``threading`` or ``contextlib`` is dropped when ours
  called it (a layer's plumbing), kept when the function did (the function's own work).
- An exception raised by guardrails itself (``CircuitOpenError``, ``CallTimeout``, a
  refusal, a cache waiter's copy of the leader's error) shows the caller's line alone: its
  message says what happened.
- ``KeyboardInterrupt``, ``SystemExit``, ``GeneratorExit`` and ``asyncio.CancelledError``
  (not ``Exception``) pass the wrappers untouched: a Ctrl-C inside a layer says where.
- The wrappers re-raise with a bare ``raise``, which adds no frame: theirs goes too.
- ``GUARDRAILS_FULL_TRACEBACKS=1`` in the environment turns all of it off (read at each
  failure, so a debugging session can set it at any time): every frame, raised and logged.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sys
from types import FrameType, TracebackType

ENV_VAR = "GUARDRAILS_FULL_TRACEBACKS"

_USER, _OURS, _PLUMBING = 0, 1, 2
_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep
#: co_filename -> its kind; filenames are few (one per module), so this stays small.
_KINDS: dict[str, int] = {}
#: How far past our last frame a trim looks for more. Below the function's frames lies only
#: what an earlier raise of the same exception object left (Python keeps a raised instance's
#: old traceback and adds to it: a module-level constant raised on every call drags every
#: earlier call's frames along, trimmed when they went by): walking all of it would make each
#: failure cost as much as all the earlier ones together.
SCAN_PAST = 100
#: How many exceptions of a chain (causes, contexts, group members) a trim reads. Ours
#: frames sit near the head: links further down were trimmed by their own wrapper when they
#: went by (a group's members, each a guarded call that failed) or never met guardrails (a
#: chain built by hand); reading a 100,000-link chain cost 100 ms on every raise of it.
SCAN_LINKS = 1000


def full_tracebacks() -> bool:
    """Whether ``GUARDRAILS_FULL_TRACEBACKS`` asks for every frame (any value but ``0``)."""
    return os.environ.get(ENV_VAR, "") not in ("", "0")


def _module_dir(name: str) -> str | None:
    module = sys.modules.get(name)  # not imported: none of its frames can be on a stack
    path = getattr(module, "__file__", None)
    return os.path.dirname(os.path.abspath(path)) + os.sep if isinstance(path, str) else None


def _module_file(name: str) -> str | None:
    module = sys.modules.get(name)
    path = getattr(module, "__file__", None)
    return os.path.abspath(path) if isinstance(path, str) else None


def _classify(filename: str) -> int:
    path = os.path.abspath(filename) if filename and not filename.startswith("<") else filename
    if path.startswith(_PACKAGE):
        return _OURS
    tenacity = _module_dir("tenacity")
    if tenacity is not None and path.startswith(tenacity):
        return _OURS
    for name in ("asyncio", "concurrent.futures"):
        directory = _module_dir(name)
        if directory is not None and path.startswith(directory):
            return _PLUMBING
    if path in (_module_file("threading"), _module_file("contextlib")):
        return _PLUMBING
    return _USER


def _kind(frame: FrameType) -> int:
    filename = frame.f_code.co_filename
    found = _KINDS.get(filename)
    if found is None:
        found = _KINDS[filename] = _classify(filename)
    return found


def trimmed(tb: TracebackType | None) -> TracebackType | None:
    """``tb`` without our frames (and the plumbing ours called); ``tb`` itself when nothing
    is dropped."""
    nodes: list[TracebackType] = []
    keep: list[bool] = []
    called_by_ours = False
    since_ours = 0
    while tb is not None and since_ours < SCAN_PAST:
        nodes.append(tb)
        kind = _kind(tb.tb_frame)
        if kind == _OURS:
            called_by_ours = True
            since_ours = 0
            keep.append(False)
        else:
            since_ours += 1
            if kind == _PLUMBING:
                keep.append(not called_by_ours)
            else:
                called_by_ours = False
                keep.append(True)
        tb = tb.tb_next
    if all(keep):
        return nodes[0] if nodes else None
    last_dropped = max(i for i, kept in enumerate(keep) if not kept)
    # Past the last dropped frame the original chain serves as it is (unread beyond the scan).
    head = nodes[last_dropped].tb_next
    for i in range(last_dropped - 1, -1, -1):
        if keep[i]:
            node = nodes[i]
            head = TracebackType(head, node.tb_frame, node.tb_lasti, node.tb_lineno)
    return head


def _trim_one(exc: BaseException) -> None:
    tb = exc.__traceback__
    if tb is not None:
        new = trimmed(tb)
        # Only over the traceback it was made from. A chained exception may be propagating
        # in another thread at the same time (a cache waiter's cause is the leader's own
        # failure), gaining that thread's frames: a trim of an older traceback would drop
        # them. No thread switch can fall between this test and the store (no eval-breaker
        # check there), and the exception's own thread trims it again on its way out.
        if new is not tb and exc.__traceback__ is tb:
            exc.__traceback__ = new


def trim_chain(exc: BaseException, *, itself: bool = True) -> None:
    """Trim the tracebacks of ``exc`` (unless ``itself`` is false), of the exceptions
    chained to it (``__cause__``, ``__context__``) and of an exception group's members
    (the first ``SCAN_LINKS`` of them).

    Never raises: should an exception refuse a new traceback, it keeps its own.
    """
    seen: set[int] = set()
    todo: list[BaseException] = [exc]  # nearest the head first
    read = 0
    while read < len(todo) and len(seen) < SCAN_LINKS:
        current = todo[read]
        read += 1
        if id(current) in seen:
            continue
        seen.add(id(current))
        if current is not exc or itself:
            # An exception whose __traceback__ refuses a new value keeps its frames.
            with contextlib.suppress(Exception):
                _trim_one(current)
        for linked in (current.__cause__, current.__context__):
            if isinstance(linked, BaseException):
                todo.append(linked)
        if isinstance(current, BaseExceptionGroup):
            members = (e for e in current.exceptions if isinstance(e, BaseException))
            todo.extend(itertools.islice(members, SCAN_LINKS))


def trim_raised(exc: BaseException) -> None:
    """What the ``@guarded`` wrappers call on an exception leaving the guarded call."""
    if not full_tracebacks():
        trim_chain(exc)


def caller_of(frame: FrameType | None) -> FrameType | None:
    """The first frame above ``frame`` (going out) that is not ours: who called the
    guarded function."""
    while frame is not None and _kind(frame) == _OURS:
        frame = frame.f_back
    return frame


def for_record(exc: BaseException, here: FrameType | None, mode: str) -> TracebackType | None:
    """The traceback a log record shows for ``exc``, caught in the log layer at ``here``:
    the caller's frame, then the function's (``short``), or every frame (``full``). The
    caller's frame is left out when it is the plumbing's (the function ran as a task, or
    as a thread's or an executor's work): the function's frames alone.

    With ``short`` the chained exceptions are trimmed in place (the wrapper would do it on
    the way out anyway); ``exc``'s own traceback is left to the wrapper.
    """
    full = mode == "full" or full_tracebacks() or not isinstance(exc, Exception)
    tb = exc.__traceback__
    if not full:
        trim_chain(exc, itself=False)
        tb = trimmed(tb)
    caller = caller_of(here)
    # A task's step, a thread's or an executor's run called it (asyncio.gather, create_task,
    # Thread(target=...)): no line of the application's called it, and the caller that
    # awaits the task sees no such frame either.
    if caller is not None and caller.f_lineno is not None and _kind(caller) == _USER:
        tb = TracebackType(tb, caller, caller.f_lasti, caller.f_lineno)
    return tb
