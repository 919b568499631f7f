"""Binding a call's arguments to parameter names, fast when the call is plain positional."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any

_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


class Binder:
    """Turns ``(args, kwargs)`` into every parameter's value, defaults applied, and back."""

    __slots__ = ("_n", "_simple", "names", "plain_arity", "signature")

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.signature = inspect.signature(fn)
        params = list(self.signature.parameters.values())
        self.names: tuple[str, ...] = tuple(p.name for p in params)
        self._simple = all(p.kind in _POSITIONAL for p in params)
        self._n = len(params)
        #: A call with exactly this many positional arguments and no keywords binds them in
        #: order (-1 when the signature has ``*args``, ``**kwargs`` or keyword-only parameters).
        self.plain_arity = self._n if self._simple else -1

    def values(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> tuple[Any, ...]:
        """Every parameter's value in declaration order (``*args`` as a tuple, ``**kw`` a dict)."""
        if not kwargs and self._simple and len(args) == self._n:
            return args
        bound = self.signature.bind(*args, **kwargs)
        bound.apply_defaults()
        arguments = bound.arguments
        return tuple(arguments[name] for name in self.names)

    def mapping(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """Parameter name to value, defaults applied."""
        return dict(zip(self.names, self.values(args, kwargs), strict=True))

    def call_args(self, mapping: Mapping[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The ``(args, kwargs)`` that call the function with these parameter values."""
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        for param in self.signature.parameters.values():
            if param.name not in mapping:
                continue
            value = mapping[param.name]
            if param.kind in _POSITIONAL:
                args.append(value)
            elif param.kind is inspect.Parameter.VAR_POSITIONAL:
                args.extend(value)
            elif param.kind is inspect.Parameter.KEYWORD_ONLY:
                kwargs[param.name] = value
            else:
                kwargs.update(value)
        return tuple(args), kwargs


def is_async(fn: Callable[..., Any]) -> bool:
    """Whether calling ``fn`` gives a coroutine: an ``async def``, a partial of one, or an
    object whose ``__call__`` is one (a model client); its chain awaits each call."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    if inspect.iscoroutinefunction(fn):
        return True
    if inspect.isroutine(fn) or isinstance(fn, type):
        return False
    call = getattr(type(fn), "__call__", None)  # noqa: B004 (the method, not callability)
    return inspect.iscoroutinefunction(call)
