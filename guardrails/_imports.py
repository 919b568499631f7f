"""Import paths written in YAML: ``package.module:Name``, ``package.module.Name`` or a builtin."""

from __future__ import annotations

import builtins
import importlib
import sys
from typing import Any


def resolve(path: str) -> Any:
    """The object an import path names; ``ValueError`` saying what failed otherwise.

    Whatever importing the module or reading the attribute raises (an ``ImportError``, a
    ``SyntaxError`` in the module, any exception its top-level code raises) becomes that
    ``ValueError``; only exceptions that are not ``Exception`` (``KeyboardInterrupt``,
    ``SystemExit``) propagate.
    """
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
    if path.startswith("."):
        raise ValueError(
            f"{path!r} is a relative import path; write the module's absolute path, "
            "like 'package.module:Name'"
        )
    if not module_name or not attr or "" in module_name.split(".") or "" in attr.split("."):
        raise ValueError(
            f"{path!r} is not an import path; write one like 'package.module:Name' "
            "(dotted names with no empty part)"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import module {module_name!r} for {path!r}: {exc}") from None
    except Exception as exc:  # the module's own code failed (SyntaxError included)
        raise ValueError(
            f"importing module {module_name!r} for {path!r} raised {_described(exc)}"
        ) from None
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(f"module {module_name!r} has no attribute {attr!r}") from None
        except Exception as exc:  # a module-level __getattr__ or a descriptor failed
            raise ValueError(
                f"reading {attr!r} from module {module_name!r} for {path!r} raised "
                f"{_described(exc)}"
            ) from None
    return obj


def _described(exc: Exception) -> str:
    """``RuntimeError: boom``: the exception's type and the first line of its message."""
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def qualified_name(obj: Any) -> str:
    """The import path that :func:`resolve` turns back into ``obj``."""
    module = getattr(obj, "__module__", None)
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", repr(obj))
    if module in (None, "builtins"):
        return str(name)
    if isinstance(module, str) and module.startswith("guardrails._"):
        # guardrails' own errors by the name users write: guardrails:CircuitOpenError.
        public = sys.modules.get("guardrails")
        if public is not None and getattr(public, str(name), None) is obj:
            return f"guardrails:{name}"
    return f"{module}:{name}"
