"""Cache keys made from argument values.

Scalars are tagged with their type (``1``, ``1.0`` and ``True`` differ); numpy arrays key by
dtype, shape and a 128-bit xxh3 of their bytes (never ``str()``/``repr()``); dicts by their
items regardless of order; lists and tuples element by element; other hashable objects by
their own ``__hash__``/``__eq__``. Anything else is refused with a ``TypeError``.
"""

from __future__ import annotations

import sys
from collections.abc import Hashable
from typing import Any

import xxhash

_hash128 = xxhash.xxh3_128_intdigest
#: Types keyed as ``(type(value), value)``; the cache layer inlines this for one argument.
ATOMIC: frozenset[type] = frozenset(
    {int, float, bool, str, bytes, complex, type(None), range, slice}
)


class UnkeyableArgument(TypeError):
    """An argument value that cannot be part of a cache key (internal; rewritten by the cache)."""


def key_of(value: Any) -> Hashable:
    """A hashable key equal for equal values of the same type, different otherwise."""
    t = type(value)
    if t in ATOMIC:
        return (t, value)
    if t is tuple or t is list:
        return (t, tuple([key_of(v) for v in value]))
    if t is dict:
        return (t, frozenset([(key_of(k), key_of(v)) for k, v in value.items()]))
    if t is frozenset or t is set:
        return (t, frozenset([key_of(v) for v in value]))
    np = sys.modules.get("numpy")
    if np is not None and isinstance(value, np.ndarray):
        return _array_key(np, value)
    if isinstance(value, tuple | list):
        return (t, tuple([key_of(v) for v in value]))
    if isinstance(value, dict):
        return (t, frozenset([(key_of(k), key_of(v)) for k, v in value.items()]))
    try:
        hash(value)
    except TypeError:
        raise UnkeyableArgument(f"unhashable {t.__module__}.{t.__qualname__}") from None
    return (t, value)


def _array_key(np: Any, arr: Any) -> Hashable:
    if arr.dtype.hasobject:
        raise UnkeyableArgument("numpy array of dtype object (its bytes are pointers)")
    contiguous = arr if arr.flags.c_contiguous else np.ascontiguousarray(arr)
    if not contiguous.size:
        digest = 0
    else:
        try:
            digest = _hash128(contiguous.data)  # the buffer itself: no copy, no new array
        except (ValueError, TypeError):  # dtypes with no buffer format (datetime64, ...)
            digest = _hash128(contiguous.reshape(-1).view(np.uint8))
    return (type(arr), arr.dtype.str, arr.shape, digest)
