"""The outermost layer: counts every call and, when ``log`` is on, times and logs it.

One record per call goes to the stdlib logger ``guardrails`` with structured fields in
``extra`` (``policy``, ``function``, ``outcome``, ``duration_ms``, ``attempts``,
``cache_hit``, ``call_args``). The logger's level is asked at call time, so a level or
handler set later takes effect at once; a record nobody will see is never formatted.

At the recursion limit (a runaway recursion through a guarded function) counting and logging
a failure may themselves overflow the stack: the call's own exception is raised all the
same, not our ``RecursionError`` about the bookkeeping; the failures of the deepest few calls
then go unlogged, and the very deepest may go uncounted.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable
from time import perf_counter
from typing import Any, Literal

from pydantic import field_validator

from guardrails._errors import CircuitOpenError
from guardrails._frames import for_record
from guardrails._stats import REFUSALS
from guardrails._types import AsyncInner, Block, Context, Duration, ExceptionClasses, Inner

LOGGER = logging.getLogger("guardrails")
# A library never prints: without a handler of the application's own, records go nowhere,
# not to logging's last-resort stderr handler.
LOGGER.addHandler(logging.NullHandler())
_ARG_TEXT_LIMIT = 120


class LogConfig(Block):
    """``log:`` — record ``level``, ``slow`` threshold (a WARNING above it), ``args`` detail;
    how failures are logged (``failure_level``, ``traceback``, ``expected`` exceptions that
    log at ``level`` with no traceback); ``trace``: a span per call where tracing is on."""

    level: str = "INFO"
    slow: Duration | None = None
    args: Literal["none", "shapes", "values"] = "shapes"
    failure_level: str = "ERROR"
    traceback: Literal["full", "short", "none"] = "short"
    expected: ExceptionClasses = ()
    trace: bool = False

    @field_validator("level", "failure_level", mode="before")
    @classmethod
    def _level_name(cls, value: object) -> str:
        name: object = None
        if isinstance(value, int) and not isinstance(value, bool):
            name = logging.getLevelName(value)
            if not isinstance(name, str) or name.startswith("Level "):
                name = None
        elif isinstance(value, str) and isinstance(logging.getLevelName(value.upper()), int):
            name = value.upper()
        if isinstance(name, str) and logging.getLevelName(name) <= logging.NOTSET:
            # logging never emits a record at level 0 (Logger.isEnabledFor(0) is false).
            raise ValueError(
                f"{value!r} is no level a record can be logged at (logging drops records at "
                "NOTSET); expected DEBUG, INFO, WARNING, ERROR or CRITICAL"
            )
        if isinstance(name, str):
            return name
        raise ValueError(
            f"expected a log level name (DEBUG, INFO, WARNING, ERROR, CRITICAL), got {value!r}"
        )


def describe_value(value: Any, detail: str) -> str:
    """A short text for a value in a log record: its shape, or its (truncated) repr.

    A value whose ``repr``, ``shape`` or ``len`` raises is described by its type: logging a
    call must never turn its success into an exception or replace its own exception.
    """
    try:
        return _describe(value, detail)
    except Exception:
        try:
            return f"<{type(value).__name__}: unprintable>"
        except Exception:  # even its type's name (a metaclass property) raises
            return "<unprintable>"


def _describe(value: Any, detail: str) -> str:
    if detail == "values":
        text = repr(value)
        return text if len(text) <= _ARG_TEXT_LIMIT else text[: _ARG_TEXT_LIMIT - 1] + "…"
    shape = getattr(value, "shape", None)
    dtype = getattr(value, "dtype", None)
    if isinstance(shape, tuple) and dtype is not None:
        return f"{dtype}[{', '.join(map(str, shape))}]"
    if isinstance(value, str | bytes | list | tuple | dict | set | frozenset):
        return f"{type(value).__name__}[len={len(value)}]"
    return type(value).__name__


def _exception_text(exc: BaseException) -> str:
    try:
        return str(getattr(exc, "detail", None) or f"{type(exc).__name__}: {exc}")
    except Exception:
        return f"{type(exc).__name__}: <unprintable>"


class _Emitter:
    """Builds and emits the per-call record; only reached when someone will see it."""

    __slots__ = ("args_detail", "ctx", "expected", "failure_level", "level", "traceback")

    def __init__(self, cfg: LogConfig, ctx: Context) -> None:
        self.ctx = ctx
        self.level: int = logging.getLevelName(cfg.level)
        self.failure_level: int = logging.getLevelName(cfg.failure_level)
        self.traceback = cfg.traceback
        self.expected = cfg.expected
        self.args_detail = cfg.args

    def call_args(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        if self.args_detail == "none":
            return ""
        try:
            bound = self.ctx.binder.mapping(args, kwargs)
        except TypeError:
            return "<arguments do not match the signature>"
        return ", ".join(f"{k}={describe_value(v, self.args_detail)}" for k, v in bound.items())

    def emit(
        self,
        level: int,
        outcome: str,
        seconds: float,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        info: list[Any] | None,
        exc: BaseException | None = None,
        expected: bool = False,
    ) -> None:
        ctx = self.ctx
        attempts, cache_hit = (info[0], info[1]) if info is not None else (1, False)
        call_args = self.call_args(args, kwargs)
        ms = seconds * 1000.0
        suffix = f", {attempts} attempts" if attempts > 1 else ""
        suffix += ", cache hit" if cache_hit else ""
        message = "%s: %s(%s) %s in %.2f ms%s"
        params: tuple[Any, ...] = (ctx.policy, ctx.qualname, call_args, outcome, ms, suffix)
        if exc is not None and outcome != "cancelled":
            message += ": %s"
            params += (_exception_text(exc),)
        exc_info: tuple[type[BaseException], BaseException, Any] | None = None
        if exc is not None and outcome == "failed" and not expected and self.traceback != "none":
            # The caller's frame and the function's, not the layers' (see _frames).
            exc_info = (type(exc), exc, for_record(exc, sys._getframe(), self.traceback))
        ctx.logger.log(
            level,
            message,
            *params,
            exc_info=exc_info,
            extra={
                "policy": ctx.policy,
                "function": ctx.qualname,
                "outcome": outcome,
                "duration_ms": ms,
                "attempts": attempts,
                "cache_hit": cache_hit,
                "call_args": call_args,
                "expected": expected,
            },
        )

    def fell_back(
        self, seconds: float, args: tuple[Any, ...], kwargs: dict[str, Any], info: list[Any]
    ) -> None:
        """After the fallback layer answered for a failure (``info[2]``, already counted)."""
        exc = info[2]
        expected = self.is_expected(exc)
        level = self.level if expected else logging.WARNING
        if self.ctx.logger.isEnabledFor(level):
            self.emit(level, "fallback", seconds, args, kwargs, info, exc, expected)
        info[2] = None  # the record is out: hold the answered exception no longer

    def failed(
        self,
        exc: BaseException,
        seconds: float,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        info: list[Any] | None,
    ) -> None:
        """After a call raised: record and count it, then log it if anyone will see it.

        An exception of ``log.expected`` is still a failure (counted, and its outcome is
        unchanged); only its record is quieter: the success level, no traceback.
        """
        self.ctx.counters.latencies.append(seconds)
        self.ctx.counters.failure()
        if isinstance(exc, CircuitOpenError):
            level, outcome = logging.WARNING, "short_circuited"
        elif isinstance(exc, REFUSALS):  # the breaker's among them: it was matched first
            level, outcome = logging.WARNING, "rejected"
        elif isinstance(exc, asyncio.CancelledError):
            level, outcome = self.level, "cancelled"  # control flow (timeouts), not a fault
        else:
            level, outcome = self.failure_level, "failed"
        expected = self.is_expected(exc)
        if expected:
            level = self.level
        if self.ctx.logger.isEnabledFor(level):
            self.emit(level, outcome, seconds, args, kwargs, info, exc, expected)

    def is_expected(self, exc: BaseException | None) -> bool:
        return bool(self.expected) and isinstance(exc, self.expected)


def build(
    cfg: LogConfig | None,
    inner: Inner,
    ctx: Context,
    *,
    direct: Callable[..., Any] | None,
    needs_info: bool,
) -> Inner:
    """The outermost sync layer. ``direct`` is the function itself when nothing lies between."""
    success, failure = ctx.counters.success, ctx.counters.failure
    if cfg is None or not cfg.enabled:
        if direct is not None:
            fn = direct

            def count_direct(args: tuple[Any, ...], kwargs: dict[str, Any], info: Any) -> Any:
                try:
                    result = fn(*args, **kwargs) if kwargs else fn(*args)
                except BaseException:
                    try:  # noqa: SIM105 (suppress() would need frames there is no room for)
                        failure()
                    except RecursionError:
                        pass  # the recursion limit: see the module docstring
                    raise
                success()
                return result

            return count_direct

        if needs_info:

            def count_informed(args: tuple[Any, ...], kwargs: dict[str, Any], info: Any) -> Any:
                info = [1, False, None]
                try:
                    result = inner(args, kwargs, info)
                except BaseException:
                    try:  # noqa: SIM105 (suppress() would need frames there is no room for)
                        failure()
                    except RecursionError:
                        pass  # the recursion limit: see the module docstring
                    raise
                if info[2] is None:  # a fallback answer is counted by the fallback layer
                    success()
                return result

            return count_informed

        def count(args: tuple[Any, ...], kwargs: dict[str, Any], info: Any) -> Any:
            try:
                result = inner(args, kwargs, None)
            except BaseException:
                try:  # noqa: SIM105 (suppress() would need frames there is no room for)
                    failure()
                except RecursionError:
                    pass  # the recursion limit: see the module docstring
                raise
            success()
            return result

        return count

    emitter = _Emitter(cfg, ctx)
    level, slow = emitter.level, cfg.slow if cfg.slow is not None else float("inf")
    record = ctx.counters.recorder()
    enabled, emit, failed = ctx.logger.isEnabledFor, emitter.emit, emitter.failed
    fell_back, slow_success = emitter.fell_back, ctx.counters.slow_success
    warning = logging.WARNING

    if direct is not None:
        fn = direct

        # `log` below with the call inlined: one frame less, ~50 ns of ~450 per call.
        def log_direct(args: tuple[Any, ...], kwargs: dict[str, Any], info: Any) -> Any:
            t0 = perf_counter()
            try:
                result = fn(*args, **kwargs) if kwargs else fn(*args)
            except BaseException as exc:
                try:  # noqa: SIM105 (suppress() would need frames there is no room for)
                    failed(exc, perf_counter() - t0, args, kwargs, None)
                except RecursionError:
                    pass  # the recursion limit: see the module docstring
                raise
            seconds = perf_counter() - t0
            record(seconds)
            if seconds >= slow:
                slow_success()  # one increment: a scrape never sees it half-counted
                if enabled(warning):
                    emit(warning, "slow", seconds, args, kwargs, None)
            else:
                success()
                if enabled(level):
                    emit(level, "ok", seconds, args, kwargs, None)
            return result

        return log_direct

    def log(args: tuple[Any, ...], kwargs: dict[str, Any], info: Any) -> Any:
        info = [1, False, None] if needs_info else None
        t0 = perf_counter()
        try:
            result = inner(args, kwargs, info)
        except BaseException as exc:
            try:  # noqa: SIM105 (suppress() would need frames there is no room for)
                failed(exc, perf_counter() - t0, args, kwargs, info)
            except RecursionError:
                pass  # the recursion limit: see the module docstring
            raise
        seconds = perf_counter() - t0
        record(seconds)
        if info is not None and info[2] is not None:
            fell_back(seconds, args, kwargs, info)
        elif seconds >= slow:
            slow_success()  # one increment: a scrape never sees it half-counted
            if enabled(warning):
                emit(warning, "slow", seconds, args, kwargs, info)
        else:
            success()
            if enabled(level):
                emit(level, "ok", seconds, args, kwargs, info)
        return result

    return log


def build_async(
    cfg: LogConfig | None, inner: AsyncInner, ctx: Context, *, needs_info: bool
) -> AsyncInner:
    """The outermost async layer."""
    success, failure = ctx.counters.success, ctx.counters.failure
    if cfg is None or not cfg.enabled:

        async def count(args: tuple[Any, ...], kwargs: dict[str, Any], info: Any) -> Any:
            info = [1, False, None] if needs_info else None
            try:
                result = await inner(args, kwargs, info)
            except BaseException:
                try:  # noqa: SIM105 (suppress() would need frames there is no room for)
                    failure()
                except RecursionError:
                    pass  # the recursion limit: see the module docstring
                raise
            if info is None or info[2] is None:  # the fallback layer counts its answers
                success()
            return result

        return count

    emitter = _Emitter(cfg, ctx)
    level, slow = emitter.level, cfg.slow if cfg.slow is not None else float("inf")
    record = ctx.counters.recorder()
    enabled, emit, failed = ctx.logger.isEnabledFor, emitter.emit, emitter.failed
    fell_back, slow_success = emitter.fell_back, ctx.counters.slow_success
    warning = logging.WARNING

    async def log(args: tuple[Any, ...], kwargs: dict[str, Any], info: Any) -> Any:
        info = [1, False, None] if needs_info else None
        t0 = perf_counter()
        try:
            result = await inner(args, kwargs, info)
        except BaseException as exc:
            try:  # noqa: SIM105 (suppress() would need frames there is no room for)
                failed(exc, perf_counter() - t0, args, kwargs, info)
            except RecursionError:
                pass  # the recursion limit: see the module docstring
            raise
        seconds = perf_counter() - t0
        record(seconds)
        if info is not None and info[2] is not None:
            fell_back(seconds, args, kwargs, info)
        elif seconds >= slow:
            slow_success()  # one increment: a scrape never sees it half-counted
            if enabled(warning):
                emit(warning, "slow", seconds, args, kwargs, info)
        else:
            success()
            if enabled(level):
                emit(level, "ok", seconds, args, kwargs, info)
        return result

    return log
