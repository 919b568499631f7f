"""What every layer shares: the block base model, YAML value types, and the build context."""

from __future__ import annotations

import asyncio
import builtins
import logging
import re
import types
import typing
from collections.abc import Awaitable, Callable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal, Optional, TypeAlias, Union

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    InstanceOf,
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

#: The traced call running in this context: ``(ctx, add_event)``, set by the span step for
#: the duration of the call (``ctx`` is the compiled chain's ``Context``, so a nested
#: guarded call's layers do not write into an outer call's span). ``retry`` adds an event
#: per retry through it.
CURRENT_SPAN: ContextVar[tuple[Any, Callable[[str, dict[str, Any]], None]] | None] = ContextVar(
    "guardrails_span", default=None
)


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


def _brief(obj: Any) -> str:
    """``obj`` for a message: its repr when short, else what it is (``sys:modules`` would
    put every loaded module into the message)."""
    try:
        text = repr(obj)
    except Exception:  # a repr that fails says nothing about the configuration
        text = ""
    if text and len(text) <= 80:
        return text
    return f"a {type(obj).__module__}.{type(obj).__qualname__} object".replace("builtins.", "")


def _import_type(value: object) -> Any:
    if isinstance(value, type):
        return value
    if not isinstance(value, str):
        raise ValueError(f"expected an import path like 'package.module:Name', got {shown(value)}")
    obj = resolve(value)
    if not isinstance(obj, type):
        raise ValueError(f"{value!r} names {_brief(obj)}, which is not a class")
    return obj


# --- type expressions (validate.output) ----------------------------------------------------


#: The one ``InstanceOf`` marker every parsed ``InstanceOf[X]`` carries: pydantic's marker is
#: compared by value but hashed by identity, and types are the keys of the adapter cache.
class _InstanceOfMarker(typing.cast(Any, InstanceOf)):  # type: ignore[misc]
    """pydantic's ``InstanceOf`` marker, pickled as the one ``INSTANCE_OF`` of this module (a
    new marker would hash differently, and Settings shipped to a worker would not equal
    the driver's)."""

    def __reduce__(self) -> str:
        return "INSTANCE_OF"


INSTANCE_OF: Any = _InstanceOfMarker()
#: The longest type expression read, and its deepest nesting.
MAX_TYPE_TEXT = 1000
MAX_TYPE_DEPTH = 16
#: Names a type expression may use without an import path (besides builtins).
_TYPE_NAMES: dict[str, Any] = {
    "None": type(None),
    "Any": Any,
    "Optional": Optional,
    "Union": Union,
    "Literal": Literal,
    "InstanceOf": InstanceOf,
}
_TOKEN = re.compile(
    r"""\s*(?:
        (?P<ellipsis>\.\.\.)
      | (?P<name>[A-Za-z_][\w.]*(?::[A-Za-z_][\w.]*)?)
      | (?P<str>'[^']*'|"[^"]*")  # no escapes: a backslash is itself
      | (?P<int>-?[0-9]+)
      | (?P<punct>[\[\],|])
    )""",
    re.VERBOSE,
)


class _TypeParser:
    """A recursive-descent reader of type expressions written in YAML.

    Grammar: ``union := primary ('|' primary)*``, ``primary := NAME ['[' args ']']``,
    ``args := arg (',' arg)* [',']`` where an argument is a union or ``...``; inside
    ``Literal[...]`` the arguments are quoted strings, integers, ``True``, ``False`` and
    ``None``. Names are builtins, ``Any``/``Optional``/``Union``/``Literal``/``InstanceOf``,
    ``None``, or import paths. Nothing is evaluated: names are imported with the import-path
    rules, and ``X[...]`` is Python's subscription of what ``X`` names.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens: list[tuple[str, str, int]] = []
        pos = 0
        while pos < len(text):
            if text[pos:].strip() == "":
                break
            match = _TOKEN.match(text, pos)
            if match is None or match.end() == pos:
                self.fail(
                    f"unexpected {text[pos:].lstrip()[:1]!r}", len(text) - len(text[pos:].lstrip())
                )
            kind = match.lastgroup
            assert kind is not None
            self.tokens.append((kind, match.group(kind), match.start(kind)))
            pos = match.end()
        self.i = 0

    def fail(self, what: str, at: int | None = None) -> typing.NoReturn:
        where = f" at position {at + 1}" if at is not None else " at the end"
        raise ValueError(f"cannot read {self.text!r} as a type: {what}{where}")

    def peek(self) -> tuple[str, str, int] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self, value: str | None = None) -> tuple[str, str, int]:
        token = self.peek()
        if token is None:
            self.fail(f"expected {value!r}" if value else "expected a type")
        if value is not None and token[1] != value:
            self.fail(f"expected {value!r}, found {token[1]!r}", token[2])
        self.i += 1
        return token

    def parse(self) -> Any:
        if not self.tokens:
            raise ValueError("expected a type, got an empty string")
        result = self.union(0)
        token = self.peek()
        if token is not None:
            self.fail(f"unexpected {token[1]!r}", token[2])
        return result

    def union(self, depth: int) -> Any:
        items = [self.primary(depth)]
        while (token := self.peek()) is not None and token[1] == "|":
            self.take("|")
            items.append(self.primary(depth))
        if len(items) == 1:
            return items[0]
        return self.subscript(Union, tuple(items), "|".join(map(type_text, items)), None)

    def primary(self, depth: int) -> Any:
        if depth > MAX_TYPE_DEPTH:
            token = self.peek()
            self.fail(
                f"nested more than {MAX_TYPE_DEPTH} levels deep",
                token[2] if token is not None else None,
            )
        kind, word, at = self.take()
        if kind != "name":
            self.fail(f"expected a type name, found {word!r}", at)
        origin = self.name(word, at)
        token = self.peek()
        if token is None or token[1] != "[":
            if origin in (Optional, Union, Literal, InstanceOf):
                self.fail(f"{word} takes parameters, like {word}[int]", at)
            if not _is_type(origin):
                self.fail(f"{word!r} names {_brief(origin)}, which is not a type", at)
            return _canonical(origin)
        self.take("[")
        args: list[Any] = []
        literal = origin is Literal
        while True:
            token = self.peek()
            if token is not None and token[1] == "]":
                break
            args.append(self.literal() if literal else self.argument(depth + 1))
            token = self.peek()
            if token is not None and token[1] == ",":
                self.take(",")
                continue
            break
        self.take("]")
        if not args:
            self.fail(f"{word}[] needs parameters", at)
        return self.subscript(origin, tuple(args), word, at)

    def argument(self, depth: int) -> Any:
        token = self.peek()
        if token is not None and token[0] == "ellipsis":
            self.take()
            return Ellipsis
        return self.union(depth)

    def literal(self) -> Any:
        kind, word, at = self.take()
        if kind == "str":
            return word[1:-1]
        if kind == "int":
            return int(word)
        if kind == "name" and word in ("True", "False", "None"):
            return {"True": True, "False": False, "None": None}[word]
        self.fail(
            f"a Literal takes quoted strings, integers, True, False or None, not {word!r}", at
        )

    def name(self, word: str, at: int) -> Any:
        if word in _TYPE_NAMES:
            return _TYPE_NAMES[word]
        try:
            return resolve(word)
        except ValueError as exc:
            self.fail(str(exc), at)

    def subscript(self, origin: Any, args: tuple[Any, ...], word: str, at: int | None) -> Any:
        if origin is InstanceOf:
            if len(args) != 1 or not isinstance(args[0], type):
                self.fail("InstanceOf takes one class, like InstanceOf[numpy.ndarray]", at)
            return Annotated[args[0], INSTANCE_OF]
        if not (_is_type(origin) or isinstance(origin, typing._SpecialForm)):
            # Only a class or a typing form is subscripted: `module:registry[int]` would
            # otherwise run a mapping's __getitem__ and take whatever it returns as the type.
            self.fail(f"{word!r} names {_brief(origin)}, which is not a type", at)
        try:
            found = origin[args if len(args) > 1 else args[0]]
        except Exception as exc:  # a class that takes no parameters, or not these
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            self.fail(f"{word}[...] is not a type ({reason})", at)
        if not _is_type(found):
            self.fail(f"{word}[...] is {_brief(found)}, not a type", at)
        return _canonical(found)


def _canonical(tp: Any) -> Any:
    """``typing.List[int]`` as ``list[int]`` (``typing.Sequence[int]`` as
    ``collections.abc.Sequence[int]``): the same check, and the form :func:`type_text` writes
    and reads back equal (``typing.List[int] != list[int]``, and settings are compared)."""
    origin = typing.get_origin(tp)
    if (
        isinstance(tp, typing._BaseGenericAlias)  # type: ignore[attr-defined]
        and isinstance(origin, type)
        and origin.__module__ in ("builtins", "collections.abc", "collections", "re")
    ):
        args = typing.get_args(tp)
        if not any(isinstance(a, list) for a in args):  # Callable[[int], str] stays
            try:
                subscripted: Any = origin
                # typing.List alone is list (the parameters pydantic assumes are the same).
                return subscripted[args if len(args) != 1 else args[0]] if args else origin
            except TypeError:
                return tp
    return tp


def _is_type(obj: Any) -> bool:
    return isinstance(obj, type) or obj is Any or typing.get_origin(obj) is not None


def parse_type(value: object) -> Any:
    """A type from a YAML type expression (``list[list[float]]``, ``dict[str, float]``,
    ``int | None``, ``Literal['a', 'b']``, ``package.module:Model``), or a type given as one."""
    if not isinstance(value, str):
        if _is_type(value):
            return value
        raise ValueError(
            f"expected a type like 'list[float]' or an import path like "
            f"'package.module:Name', got {shown(value)}"
        )
    if len(value) > MAX_TYPE_TEXT:
        raise ValueError(f"a type expression is at most {MAX_TYPE_TEXT} characters long")
    if not any(c in value for c in "[]|,") and value.strip() not in _TYPE_NAMES:
        return _import_type(value)  # a plain name: the import-path rules and their messages
    return _TypeParser(value).parse()


def type_text(tp: Any) -> str:
    """A type written as :func:`parse_type` reads it back (``list[list[float]]``,
    ``int | None``, ``numpy:ndarray``)."""
    if tp is type(None) or tp is None:
        return "None"
    if tp is Any:
        return "Any"
    if tp is Ellipsis:
        return "..."
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Annotated and len(args) == 2 and args[1] == INSTANCE_OF:
        return f"InstanceOf[{type_text(args[0])}]"
    if origin in (Union, types.UnionType):
        return " | ".join(type_text(a) for a in args)
    if origin is Literal:
        return f"Literal[{', '.join(_literal_text(a) for a in args)}]"
    if origin is not None and args:
        return f"{type_text(origin)}[{', '.join(type_text(a) for a in args)}]"
    name = str(getattr(tp, "__name__", ""))
    if isinstance(tp, type) and getattr(builtins, name, None) is tp:
        return name
    return qualified_name(tp)


def _literal_text(value: Any) -> str:
    """A ``Literal`` argument as the parser reads it: a string between quotes it does not
    hold, with no escapes (the parser reads none: ``repr('a\\nb')`` would not read back)."""
    if isinstance(value, str):
        if "'" not in value:
            return f"'{value}'"
        if '"' not in value:
            return f'"{value}"'
    return repr(value)


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
        raise ValueError(f"{value!r} names {_brief(obj)}, which is not callable")
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
#: A type for ``validate.output``: a class by import path, or a type expression
#: (``list[list[float]]``, ``dict[str, float]``, ``int | None``); shown as written back.
ImportedType = Annotated[
    Any, BeforeValidator(parse_type), PlainSerializer(type_text, return_type=str)
]
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
    #: ``in_force(kind)``: the policy's state object of ``kind`` in force now, or ``None``
    #: (a bulkhead hands its pool of slots on to the one that replaces it).
    in_force: Callable[[str], Any] = lambda kind: None
    #: Whether error messages may show argument values (the policy's ``log.args: values``).
    show_values: bool = False
    #: The Redis URL in force (``redis_url``, else ``$GUARDRAILS_REDIS_URL``), or ``None``.
    redis_url: str | None = None
    #: The function's whole effective policy (a ``guardrails._policy.Policy``), for a layer
    #: whose behaviour depends on another block (the cache's lock expiry on ``timeout``).
    policy_blocks: Any = None

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
