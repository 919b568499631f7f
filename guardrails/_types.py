"""What every layer shares: the block base model, YAML value types, and the build context."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, TypeAlias

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    PlainSerializer,
    StrictBool,
    model_validator,
)

from guardrails._binding import Binder
from guardrails._clock import Clock
from guardrails._errors import PolicyConfigError
from guardrails._imports import qualified_name, resolve
from guardrails._stats import PolicyCounters
from guardrails._units import parse_duration, parse_per_second, parse_share, parse_size, shown

#: A compiled layer: takes the call's positional tuple, keyword dict and per-call info.
#: ``info`` is ``None`` or a list ``[attempts, cache_hit, outcome]`` the log layer reads
#: (``outcome`` is ``None``, or ``"fallback"`` when the fallback layer answered).
Inner: TypeAlias = Callable[[tuple[Any, ...], dict[str, Any], list[Any] | None], Any]
AsyncInner: TypeAlias = Callable[
    [tuple[Any, ...], dict[str, Any], list[Any] | None], Awaitable[Any]
]


#: Set by a sync ``timeout.total`` in the context of the work it runs on a worker thread: a
#: one-item list, ``[True]`` once the caller has stopped waiting. ``retry`` stops there.
CALLER_GONE: ContextVar[list[bool] | None] = ContextVar("guardrails_caller_gone", default=None)


class Section(BaseModel):
    """A YAML mapping: frozen, keyword-only, unknown keys rejected, no type coercion surprises."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)


class Block(Section):
    """A policy block; ``enabled: false`` turns it off (and takes it out of the chain).

    A block that is off needs none of its settings (``memory: {enabled: false}`` is
    complete); the settings it does have are still checked, so a typo is caught before the
    block is turned back on. ``OFF_DEFAULTS`` stand in for the required ones.
    """

    enabled: StrictBool = True
    #: Values for the block's required settings while it is off and they are not written.
    OFF_DEFAULTS: ClassVar[dict[str, Any]] = {}

    @model_validator(mode="before")
    @classmethod
    def _off_needs_nothing(cls, data: Any) -> Any:
        if cls.OFF_DEFAULTS and isinstance(data, dict) and data.get("enabled") is False:
            return {**cls.OFF_DEFAULTS, **data}
        return data


def _seconds(value: object) -> float:
    return parse_duration(value)


def _bytes(value: object) -> int:
    return parse_size(value)


def _memory_bytes(value: object) -> int:
    return parse_size(value, allow_percent=True)


def _import_type(value: object) -> Any:
    if isinstance(value, type):
        return value
    if not isinstance(value, str):
        raise ValueError(f"expected an import path like 'package.module:Name', got {shown(value)}")
    obj = resolve(value)
    if not isinstance(obj, type):
        raise ValueError(f"{value!r} names {obj!r}, which is not a class")
    return obj


def _import_model(value: object) -> Any:
    obj = _import_type(value)
    if not issubclass(obj, BaseModel):
        raise ValueError(f"{value!r} is not a pydantic model (a subclass of pydantic.BaseModel)")
    return obj


def _import_exceptions(value: object) -> tuple[type[BaseException], ...]:
    items = [value] if isinstance(value, str | type) else value
    if not isinstance(items, list | tuple):
        raise ValueError(f"expected a list of exception class names, got {shown(value)}")
    classes: list[type[BaseException]] = []
    for item in items:
        cls = _import_type(item)
        if not issubclass(cls, BaseException):
            raise ValueError(f"{item!r} is not an exception class")
        classes.append(cls)
    return tuple(classes)


def _import_callable(value: object) -> Any:
    if callable(value) and not isinstance(value, str):
        return value
    if not isinstance(value, str):
        raise ValueError(
            f"expected an import path like 'package.module:function', got {shown(value)}"
        )
    obj = resolve(value)
    if not callable(obj):
        raise ValueError(f"{value!r} names {obj!r}, which is not callable")
    return obj


def _import_exception(value: object) -> type[BaseException]:
    (cls,) = _import_exceptions([value]) if isinstance(value, str | type) else (None,)
    if cls is None:
        raise ValueError(f"expected one exception class name, got {shown(value)}")
    return cls


#: Control flow: exceptions that stop a call on purpose, never a failure to retry or answer.
CONTROL_FLOW: tuple[tuple[type[BaseException], str], ...] = (
    (KeyboardInterrupt, "it is how Ctrl-C interrupts a program"),
    (SystemExit, "it is how sys.exit() ends a program"),
    (GeneratorExit, "it is how a generator or coroutine is closed"),
    (asyncio.CancelledError, "it is how an asyncio task is cancelled (timeouts included)"),
)


def control_flow_problem(cls: type[BaseException], cannot: str, instead: str, takes: str) -> str:
    """Why ``cls`` (not an ``Exception``) cannot be listed where failures are: ``cannot`` is
    the verb phrase ("cannot be retried"), ``instead`` what Ctrl-C and cancellation would then
    do ("would run the function again"), ``takes`` the rule of the key."""
    name = qualified_name(cls)
    if issubclass(Exception, cls):
        return (
            f"{name} {cannot}: it also matches KeyboardInterrupt, SystemExit, GeneratorExit "
            f"and asyncio.CancelledError, so Ctrl-C, sys.exit() and task cancellation {instead}"
        )
    why = next(
        (text for base, text in CONTROL_FLOW if issubclass(cls, base)),
        "a BaseException that is not an Exception signals control flow, not a failure",
    )
    return f"{name} {cannot}: {why}, so it must stop the call at once; {takes}"


def failures_only(classes: tuple[type[BaseException], ...]) -> tuple[type[Exception], ...]:
    """``classes`` narrowed to ``Exception``: ``BaseException`` becomes ``Exception`` and
    control flow (Ctrl-C, exit, cancellation) is dropped, whatever built the config."""
    kept: list[type[Exception]] = []
    for cls in classes:
        if issubclass(cls, Exception):
            kept.append(cls)
        elif issubclass(Exception, cls):
            kept.append(Exception)
    return tuple(dict.fromkeys(kept))


_as_path = PlainSerializer(qualified_name, return_type=str)

#: Seconds, written as a number or ``"250ms"``, ``"30s"``, ``"5m"``, ``"PT5M"``.
Duration = Annotated[float, BeforeValidator(_seconds)]
#: Bytes, written as a number or ``"512MiB"``, ``"2GB"``.
Size = Annotated[int, BeforeValidator(_bytes)]
#: Bytes, or a percentage of the effective memory limit (``"80%"``).
MemorySize = Annotated[int, BeforeValidator(_memory_bytes)]
#: A class named by import path, for ``validate.output``.
ImportedType = Annotated[Any, BeforeValidator(_import_type), _as_path]
#: A pydantic model named by import path, for ``validate.input``.
ImportedModel = Annotated[Any, BeforeValidator(_import_model), _as_path]
#: A callable named by import path (``package.module:function``).
ImportedCallable = Annotated[Any, BeforeValidator(_import_callable), _as_path]
#: One exception class named by builtin name or import path.
ExceptionClass = Annotated[type[BaseException], BeforeValidator(_import_exception), _as_path]
#: A share in [0, 1]: ``0.25`` or ``"25%"``.
Share = Annotated[float, BeforeValidator(parse_share)]
#: Events per second: ``"100/s"``, ``"600/min"``, ``"5/100ms"``.
PerSecond = Annotated[float, BeforeValidator(parse_per_second)]
#: Exception classes named by builtin name or import path.
ExceptionClasses = Annotated[
    tuple[type[BaseException], ...],
    BeforeValidator(_import_exceptions),
    PlainSerializer(lambda cs: [qualified_name(c) for c in cs], return_type=list[str]),
]


@dataclass(frozen=True, slots=True)
class Context:
    """What a layer builder knows about the guarded function it wraps."""

    policy: str
    function: Callable[..., Any]
    qualname: str
    is_async: bool
    binder: Binder
    counters: PolicyCounters
    clock: Clock
    logger: logging.Logger
    #: The cache store for this function under a cache block (kept when settings match).
    store_for: Callable[[Any], Any]
    #: ``shared(kind, settings, factory)``: the policy's state object of ``kind`` (a breaker,
    #: a bucket): the one in force when it was made for equal ``settings`` (and the same
    #: clock), else a new one from ``factory()``. Every function of the policy compiled in
    #: one ``configure()`` gets the same object. An object with ``after_fork_in_child()``
    #: has it called in a forked child.
    shared: Callable[[str, Any, Callable[[], Any]], Any]

    def check_parameters(self, names: Iterable[str], key: str) -> None:
        """Raise ``PolicyConfigError`` at ``guardrails.policies.<policy>.<key>`` for names
        that are not parameters of the guarded function."""
        params = self.binder.names
        missing = [n for n in names if n not in params]
        if missing:
            raise PolicyConfigError(
                [
                    (
                        f"guardrails.policies.{self.policy}.{key}",
                        f"{self.qualname} has no parameter {', '.join(map(repr, missing))}; "
                        f"its parameters are {', '.join(params) or '(none)'}",
                    )
                ]
            )
