"""The ``fallback`` layer: turns a failure into a configured value or another function's
result.

It sits below ``validate.input`` and above ``cache``, once per call: a fallback answer is
never cached, and an input that fails validation is refused before it is reached (an
``InputValidationError`` raised deeper, by a nested guarded call, still propagates).
Control flow (Ctrl-C, ``sys.exit()``, cancellation, a closed generator) never falls back,
whatever built the configuration. A call answered by the fallback is counted as a fallback
(not a success) and logged at WARNING with outcome ``"fallback"``: the layer puts the
caught exception in ``info[2]`` for the log layer.

An exception the fallback answered for loses its traceback: nobody will raise it again,
and its frames hold the call's arguments (and ``info``, which holds the exception: a cycle
only the garbage collector would break), so they are freed when the call returns.

A container value (a list or dict from YAML) is copied all the way down for every answer,
so a caller that mutates the answer cannot change the next one; scalars, strings and
``None`` are returned as they are.
"""

from __future__ import annotations

import copy
import functools
import inspect
from collections.abc import Callable
from typing import Any

from pydantic import field_validator, model_validator

from guardrails._binding import is_async
from guardrails._errors import InputValidationError, PolicyConfigError
from guardrails._imports import qualified_name
from guardrails._types import (
    AsyncInner,
    Block,
    Context,
    ExceptionClasses,
    ImportedCallable,
    Inner,
    control_flow_problem,
    failures_only,
)
from guardrails.layers.retry import replace_note

#: Values returned as they are: nothing a caller can do to them changes the next answer.
_IMMUTABLE = (type(None), bool, int, float, complex, str, bytes, range, frozenset)


def _not_catchable_reason(cls: type[BaseException]) -> str:
    return control_flow_problem(
        cls,
        "cannot fall back",
        "would be answered with the fallback; list Exception to fall back on every error",
        "catch takes subclasses of Exception only",
    )


class FallbackConfig(Block):
    """``fallback:`` — ``value`` or ``function`` (same arguments), for the failures in ``catch``."""

    value: Any = None
    function: ImportedCallable | None = None
    catch: ExceptionClasses = (Exception,)

    @field_validator("catch")
    @classmethod
    def _only_exceptions(
        cls, value: tuple[type[BaseException], ...]
    ) -> tuple[type[BaseException], ...]:
        if not value:
            raise ValueError(
                "is empty, so nothing would ever fall back; list the exceptions to answer "
                "for (Exception for every error), or set enabled: false"
            )
        bad = [c for c in value if not issubclass(c, Exception)]
        if bad:
            raise ValueError("; ".join(_not_catchable_reason(c) for c in bad))
        return value

    @model_validator(mode="after")
    def _one(self) -> FallbackConfig:
        if self.function is not None and self.value is not None:
            raise ValueError("set value or function, not both")
        return self


_P = inspect.Parameter


def _sample_calls(
    signature: inspect.Signature,
) -> list[tuple[str, tuple[Any, ...], dict[str, Any]]]:
    """Calls the guarded function accepts, one per way of passing its parameters: the
    required ones alone or all of them, by position where allowed or by keyword, with extra
    positional and keyword arguments when it takes ``*args`` / ``**kwargs``."""
    params = list(signature.parameters.values())
    calls = []
    for required_only in (True, False):
        for by_position in (True, False):
            args: list[Any] = []
            kwargs: dict[str, Any] = {}
            for p in params:
                if p.kind is _P.VAR_POSITIONAL:
                    if by_position:
                        args += [None, None]
                elif p.kind is _P.VAR_KEYWORD:
                    kwargs["guardrails_extra_keyword"] = None
                elif required_only and p.default is not _P.empty:
                    continue
                elif p.kind is _P.POSITIONAL_ONLY or (
                    p.kind is _P.POSITIONAL_OR_KEYWORD and by_position
                ):
                    args.append(None)
                else:
                    kwargs[p.name] = None
            shown = ", ".join([*("_" for _ in args), *(f"{k}=_" for k in kwargs)])
            calls.append((shown, tuple(args), kwargs))
    return calls


def _check_function(fn: Callable[..., Any], ctx: Context) -> None:
    """Refuse, at ``guardrails.policies.<policy>.fallback.function``, a fallback function
    that cannot take every call the guarded function takes, or an async one for a sync
    guarded function."""
    where = f"guardrails.policies.{ctx.policy}.fallback.function"
    name = qualified_name(fn)
    slot = getattr(fn, "__guardrails__", None)
    if getattr(fn, "__wrapped__", None) is ctx.function and getattr(slot, "name", None) == (
        ctx.policy
    ):
        raise PolicyConfigError(
            [
                (
                    where,
                    f"{name} is {ctx.qualname} itself, guarded by this policy: while it "
                    "fails, each fallback would call it again, until RecursionError; name "
                    "another function (use retry to try the same one again)",
                )
            ]
        )
    if is_async(fn) and not ctx.is_async:
        raise PolicyConfigError(
            [
                (
                    where,
                    f"{name} is async but {ctx.qualname} is not: a sync call cannot await "
                    "its fallback; use a sync function",
                )
            ]
        )
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return  # no readable signature (a C builtin): nothing to check against
    for shown, args, kwargs in _sample_calls(ctx.binder.signature):
        try:
            signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise PolicyConfigError(
                [
                    (
                        where,
                        f"{name}{signature} cannot take the arguments of "
                        f"{ctx.qualname}{ctx.binder.signature}, which it is called with "
                        f"(a call like f({shown}) fails: {exc})",
                    )
                ]
            ) from None


def _copier(value: Any) -> Callable[[], Any] | None:
    """A maker of fresh copies of a plain value (lists, dicts and tuples of scalars, as YAML
    gives them), built once; ``None`` for an immutable value; ``copy.deepcopy`` for any
    other kind of value. A YAML list copies in about a tenth of ``deepcopy``'s time."""
    if isinstance(value, _IMMUTABLE):
        return None
    kind = type(value)
    if kind is list or kind is tuple:
        items = [(_copier(v), v) for v in value]
        if all(make is None for make, _ in items):
            return (
                None if kind is tuple else functools.partial(list.copy, value)
            )  # a tuple of scalars is immutable
        parts = [make or functools.partial(_same, v) for make, v in items]
        return lambda: kind(make() for make in parts)
    if kind is dict:
        entries = [(k, _copier(v), v) for k, v in value.items()]
        if all(make is None for _, make, _ in entries):
            return functools.partial(dict.copy, value)
        pairs = [(k, make or functools.partial(_same, v)) for k, make, v in entries]
        return lambda: {k: make() for k, make in pairs}
    return functools.partial(copy.deepcopy, value)


def _same(value: Any) -> Any:
    return value


def _answer_of(cfg: FallbackConfig, ctx: Context) -> Callable[[], Any]:
    """What answers a failure: the value itself when immutable, else a fresh copy."""
    value = cfg.value
    try:
        copier = _copier(value)
        if copier is not None:
            copier()  # once now: a value that cannot be copied fails here, not on a call
    except Exception as exc:
        raise PolicyConfigError(
            [
                (
                    f"guardrails.policies.{ctx.policy}.fallback.value",
                    f"the value cannot be copied for each answer ({type(exc).__name__}: "
                    f"{exc}); use a plain value (YAML scalars, lists and mappings) or a function",
                )
            ]
        ) from None
    return copier if copier is not None else functools.partial(_same, value)


def _note_failed_fallback(exc: BaseException, prefix: str, note: str) -> None:
    """Note on ``exc`` (raised by the fallback function) which policy's fallback it was,
    replacing an earlier note of this policy (an exception instance raised on every call
    gains one note, not one per call). Control flow gets none."""
    if isinstance(exc, Exception):
        replace_note(exc, prefix, note)


def _plan(
    cfg: FallbackConfig, ctx: Context
) -> tuple[tuple[type[Exception], ...], Callable[..., Any] | None, Callable[[], Any], str, str]:
    catch = failures_only(cfg.catch)
    fn = cfg.function
    if fn is not None:
        _check_function(fn, ctx)
    prefix = f"guardrails: policy {ctx.policy!r} "
    note = f"{prefix}fell back to {qualified_name(fn)}, which raised this" if fn is not None else ""
    return catch, fn, _answer_of(cfg, ctx), prefix, note


def build(cfg: FallbackConfig, inner: Inner, ctx: Context) -> Inner:
    """The sync fallback layer around ``inner``."""
    catch, fn, answer, prefix, note = _plan(cfg, ctx)
    if not catch:
        return inner
    fell_back = ctx.counters.fallback

    if fn is None:

        def fallback_value(args: tuple[Any, ...], kwargs: dict[str, Any], info: Any) -> Any:
            try:
                return inner(args, kwargs, info)
            except catch as exc:
                if isinstance(exc, InputValidationError):
                    raise
                result = answer()
                fell_back()
                exc.__traceback__ = None  # handled: see the module's docstring
                if info is not None:
                    info[2] = exc
                return result

        return fallback_value

    function = fn

    def fallback_function(args: tuple[Any, ...], kwargs: dict[str, Any], info: Any) -> Any:
        try:
            return inner(args, kwargs, info)
        except catch as exc:
            if isinstance(exc, InputValidationError):
                raise
            try:
                result = function(*args, **kwargs)
            except BaseException as failure:
                _note_failed_fallback(failure, prefix, note)
                raise  # with `exc` as its __context__
            fell_back()
            exc.__traceback__ = None  # handled: see the module's docstring
            if info is not None:
                info[2] = exc
            return result

    return fallback_function


def build_async(cfg: FallbackConfig, inner: AsyncInner, ctx: Context) -> AsyncInner:
    """The async fallback layer: the fallback function may be sync or async."""
    catch, fn, answer, prefix, note = _plan(cfg, ctx)
    if not catch:
        return inner
    fell_back = ctx.counters.fallback

    if fn is None:

        async def fallback_value(args: tuple[Any, ...], kwargs: dict[str, Any], info: Any) -> Any:
            try:
                return await inner(args, kwargs, info)
            except catch as exc:
                if isinstance(exc, InputValidationError):
                    raise
                result = answer()
                fell_back()
                exc.__traceback__ = None  # handled: see the module's docstring
                if info is not None:
                    info[2] = exc
                return result

        return fallback_value

    function = fn
    awaited = is_async(fn)

    async def fallback_function(args: tuple[Any, ...], kwargs: dict[str, Any], info: Any) -> Any:
        try:
            return await inner(args, kwargs, info)
        except catch as exc:
            if isinstance(exc, InputValidationError):
                raise
            try:
                result = function(*args, **kwargs)
                if awaited or inspect.isawaitable(result):
                    result = await result
            except BaseException as failure:
                _note_failed_fallback(failure, prefix, note)
                raise  # with `exc` as its __context__
            fell_back()
            exc.__traceback__ = None  # handled: see the module's docstring
            if info is not None:
                info[2] = exc
            return result

    return fallback_function
