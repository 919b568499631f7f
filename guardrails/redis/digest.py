"""The Redis key of a call: a stable digest of its in-process cache key.

``digest(key)`` takes a key as ``guardrails._keys.key_of`` and ``_keys_frames`` build them
(or the cache layer's tuple of them) and returns 40 hex digits: blake2b (20 bytes) over an
unambiguous canonical encoding of the key. The same key gives the same digest in every
process and on every machine (never Python's salted ``hash()``); keys that are not equal
give different ones.

The encoding tags every element with its kind and prefixes every variable-length part with
its length, so ``("ab", "c")`` and ``("a", "bc")`` differ, and ``1``, ``1.0``, ``True``,
``"1"`` and ``b"1"`` too. Types are written as their module and qualname (each length-
prefixed), enum members as their class and name (flags by value: a combination may have no
name), pyarrow types that nest others by their IPC schema bytes, floats by their bits,
frozensets by their elements' encodings sorted (so their order of iteration does not count),
numpy dtypes by their ``str`` (or ``repr`` when
structured), and the stdlib value types a key holds by their fields (``datetime``,
``date``, ``time``, ``timedelta``, ``timezone``, ``Decimal``, ``Fraction``, ``UUID``,
``PurePath``). An aware ``datetime`` or ``time`` is written with its zone, finer than its
``==`` (one instant in two zones is equal): such equal keys go to two Redis entries, never
two different keys to one.

Anything else in a key is an object keyed by its own ``__hash__``/``__eq__`` (what
``key_of`` does with an arbitrary hashable object): its hash is salted per process and its
equality unknown elsewhere, so ``digest`` refuses it with ``Unshareable``.
"""

from __future__ import annotations

import datetime
import decimal
import enum
import fractions
import hashlib
import pathlib
import struct
import sys
import uuid
from collections.abc import Callable, Hashable
from typing import Any

__all__ = ["Unshareable", "digest"]


class Unshareable(TypeError):
    """The key holds an object keyed by its own ``__hash__``: it has no digest."""


_blake2b = hashlib.blake2b
_pack_double = struct.Struct("<d").pack
_pack_len = struct.Struct("<I").pack
_TUPLE = b"T"
_FROZENSET = b"S"
_NONE = b"N"
_TRUE = b"b\x01"
_FALSE = b"b\x00"


def digest(key: Hashable) -> str:
    """40 hex digits naming ``key`` in every process; ``Unshareable`` if it can't."""
    k: Any = key
    # The key of one int or str argument, ``(int, 5)``: the common case, encoded inline.
    if type(k) is tuple and len(k) == 2:
        first, second = k
        kind = type(second)
        if first is kind and (kind is int or kind is str):
            data = _INT_PREFIX + _int(second) if kind is int else _STR_PREFIX + _str(second)
            return _blake2b(data, digest_size=20).hexdigest()
    out: list[bytes] = []
    try:
        _encode(key, out.append)
    except RecursionError:
        raise Unshareable("a key nested too deeply to digest") from None
    return _blake2b(b"".join(out), digest_size=20).hexdigest()


def _int(v: int) -> bytes:
    raw = v.to_bytes((v.bit_length() + 8) // 8, "little", signed=True)
    return _pack_len(len(raw)) + raw


def _str(v: str) -> bytes:
    raw = v.encode("utf-8", "surrogatepass")
    return _pack_len(len(raw)) + raw


#: The encoding of ``(int, v)`` and ``(str, v)`` up to ``v``'s own bytes (the fast path).
_INT_PREFIX = b"T" + _pack_len(2) + b"c" + _str("builtins") + _str("int") + b"i"
_STR_PREFIX = b"T" + _pack_len(2) + b"c" + _str("builtins") + _str("str") + b"s"


def _encode(v: Any, put: Callable[[bytes], Any]) -> None:
    t = type(v)
    if t is tuple:
        put(_TUPLE + _pack_len(len(v)))
        for item in v:
            _encode(item, put)
        return
    if t is int:
        put(b"i" + _int(v))
        return
    if t is str:
        put(b"s" + _str(v))
        return
    if t is float:
        put(b"f" + _pack_double(v))
        return
    if v is None:
        put(_NONE)
        return
    if t is bool:
        put(_TRUE if v else _FALSE)
        return
    if t is bytes:
        put(b"y" + _pack_len(len(v)) + v)
        return
    if t is frozenset:
        parts = []
        for item in v:
            found: list[bytes] = []
            _encode(item, found.append)
            parts.append(b"".join(found))
        parts.sort()
        put(_FROZENSET + _pack_len(len(parts)))
        for part in parts:
            put(_pack_len(len(part)) + part)
        return
    if isinstance(v, type):
        put(b"c" + _type_id(v))
        return
    if isinstance(v, enum.Flag):
        # A combination of flags (or none) may have no name: a flag is its class and value.
        put(b"F" + _type_id(t))
        _encode(v._value_, put)
        return
    if isinstance(v, enum.Enum):
        put(b"e" + _type_id(t) + _str(v.name))
        return
    other = _OTHER.get(t)
    if other is not None:
        put(other(v))
        return
    _encode_foreign(v, t, put)


def _type_path(t: type) -> str:
    module = getattr(t, "__module__", None)
    qualname = getattr(t, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str):
        raise Unshareable(f"a type without a module and qualified name ({t!r})")
    return f"{module}.{qualname}"


def _type_id(t: type) -> bytes:
    """A type's module and qualified name, each length-prefixed: ``a.b`` + ``C`` and ``a`` +
    ``b.C`` (a class ``C`` nested in a class ``b``) are two classes, one dotted path."""
    module = getattr(t, "__module__", None)
    qualname = getattr(t, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str):
        raise Unshareable(f"a type without a module and qualified name ({t!r})")
    return _str(module) + _str(qualname)


def _naive_fields(v: datetime.datetime) -> bytes:
    return struct.pack(
        "<iBBBBBI", v.year, v.month, v.day, v.hour, v.minute, v.second, v.microsecond
    )


def _zone(v: Any) -> bytes:
    """An aware ``datetime``/``time``'s zone: type, name and offsets (finer than its ``==``)."""
    tz = v.tzinfo
    if tz is None:
        return b"z"
    offset, dst = v.utcoffset(), v.dst()
    return (
        b"Z"
        + _type_id(type(tz))
        + _str(str(tz))
        + _str(str(v.tzname()))
        + _timedelta(offset)
        + _timedelta(dst)
    )


def _timedelta(v: datetime.timedelta | None) -> bytes:
    if v is None:
        return b"n"
    return b"t" + struct.pack("<iiI", v.days, v.seconds, v.microseconds)


def _datetime(v: datetime.datetime) -> bytes:
    # A naive datetime's == ignores fold; an aware one is written with fold and zone.
    if v.tzinfo is None:
        return b"D" + _naive_fields(v)
    return b"A" + _naive_fields(v) + bytes([v.fold]) + _zone(v)


def _date(v: datetime.date) -> bytes:
    return b"d" + struct.pack("<iBB", v.year, v.month, v.day)


def _time(v: datetime.time) -> bytes:
    fields = struct.pack("<BBBI", v.hour, v.minute, v.second, v.microsecond)
    if v.tzinfo is None:
        return b"H" + fields
    return b"h" + fields + bytes([v.fold]) + _zone(v)


def _timezone(v: datetime.timezone) -> bytes:
    return b"O" + _timedelta(v.utcoffset(None)) + _str(v.tzname(None))


def _decimal(v: decimal.Decimal) -> bytes:
    """By value, as its ``==`` compares: ``1.0`` and ``1.00`` alike, ``-0`` as ``0``."""
    if not v.is_finite():
        return b"m" + _str(str(v))  # infinities; a NaN by its sign and payload
    if not v:
        return b"m" + _str("0")
    sign, digits, exponent = v.as_tuple()
    assert isinstance(exponent, int)
    text = "".join(map(str, digits)).lstrip("0")
    stripped = text.rstrip("0")
    exponent += len(text) - len(stripped)
    return b"m" + _str(f"{'-' if sign else ''}{stripped}E{exponent}")


def _fraction(v: fractions.Fraction) -> bytes:
    return b"q" + _int(v.numerator) + _int(v.denominator)


def _uuid(v: uuid.UUID) -> bytes:
    return b"u" + v.bytes


def _path(v: pathlib.PurePath) -> bytes:
    return b"p" + _type_id(type(v)) + _str(str(v))


_OTHER: dict[type, Callable[[Any], bytes]] = {
    datetime.datetime: _datetime,
    datetime.date: _date,
    datetime.time: _time,
    datetime.timedelta: lambda v: b"t" + _timedelta(v),
    datetime.timezone: _timezone,
    decimal.Decimal: _decimal,
    fractions.Fraction: _fraction,
    uuid.UUID: _uuid,
    pathlib.PurePosixPath: _path,
    pathlib.PureWindowsPath: _path,
    pathlib.PosixPath: _path,
    pathlib.WindowsPath: _path,
}


def _encode_foreign(v: Any, t: type, put: Callable[[bytes], Any]) -> None:
    """dtypes and scalars of numpy, pyarrow types, torch dtypes; else ``Unshareable``."""
    top = (getattr(t, "__module__", "") or "").partition(".")[0]
    if top == "numpy":
        np = sys.modules["numpy"]
        if isinstance(v, np.dtype):
            put(b"n" + _str(_dtype_text(v)))
            return
        if isinstance(v, np.generic) and not v.dtype.hasobject and type(v).__module__ == "numpy":
            put(b"g" + _str(_dtype_text(v.dtype)) + _type_id(t))
            raw = v.tobytes()
            put(_pack_len(len(raw)) + raw)
            return
    elif top == "pyarrow":
        pa = sys.modules["pyarrow"]
        if isinstance(v, pa.DataType):
            put(b"a" + _type_id(t) + _arrow_type(pa, v))
            return
    elif top == "torch":
        torch = sys.modules["torch"]
        if isinstance(v, torch.dtype):
            put(b"r" + _str(str(v)))
            return
    raise Unshareable(
        f"{_type_path(t)} is keyed by its own __hash__, which differs between processes; "
        "it cannot name a value shared through Redis"
    )


def _dtype_text(dtype: Any) -> str:
    """A numpy dtype as text: ``str`` names byte order, kind, size and unit; a structured or
    subarray dtype also needs its fields, shapes and offsets (``repr``)."""
    if dtype.fields is None and dtype.subdtype is None and dtype.metadata is None:
        return str(dtype.str)
    return f"{dtype.str}|{dtype!r}"


def _arrow_type(pa: Any, typ: Any) -> bytes:
    """A pyarrow type: its ``str`` when it nests no other type (names units and zones); else,
    and for extension types, its IPC schema bytes, since ``str`` writes field names as they are
    (``struct<a: int64, b: int64>`` is also one field named ``"a: int64, b"``)."""
    text = str(typ)
    if "<" not in text and not isinstance(typ, pa.BaseExtensionType):
        return b"s" + _str(text)
    raw: bytes = pa.schema([pa.field("", typ)]).serialize().to_pybytes()
    return b"b" + _pack_len(len(raw)) + raw
