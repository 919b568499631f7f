"""Import paths written in YAML: ``package.module:Name``, ``package.module.Name`` or a builtin."""

from __future__ import annotations

import builtins
import importlib
from typing import Any


def resolve(path: str) -> Any:
    """The object an import path names; ``ValueError`` saying what failed otherwise."""
    if not isinstance(path, str) or not path.strip():
        raise ValueError(f"expected an import path like 'package.module:Name', got {path!r}")
    path = path.strip()
    if ":" in path:
        module_name, _, attr = path.partition(":")
    elif "." in path:
        module_name, _, attr = path.rpartition(".")
    else:
        if hasattr(builtins, path):
            return getattr(builtins, path)
        raise ValueError(
            f"{path!r} is not a builtin name; write an import path like 'package.module:{path}'"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import module {module_name!r} for {path!r}: {exc}") from None
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(f"module {module_name!r} has no attribute {attr!r}") from None
    return obj


def qualified_name(obj: Any) -> str:
    """The import path that :func:`resolve` turns back into ``obj``."""
    module = getattr(obj, "__module__", None)
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", repr(obj))
    if module in (None, "builtins"):
        return str(name)
    return f"{module}:{name}"
