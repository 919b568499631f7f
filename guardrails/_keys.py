"""Cache keys from argument values: two values share a key only if a call cannot tell them apart.

Scalars are tagged with their type (``1``, ``1.0`` and ``True`` differ); floats and complex
numbers by value with ``-0.0`` its own key and every NaN of one bit pattern one key; numpy
scalars by type, dtype and bytes; numpy arrays by type, dtype, shape and a 128-bit xxh3 of
their bytes (never ``str()``/``repr()``), masked arrays also by mask and fill value; dicts and
sets by their items regardless of order (``OrderedDict`` in order); lists and tuples element
by element; struct sequences (``time.struct_time``, ``os.stat_result``) by every field,
hidden ones included; other hashable objects by their own ``__hash__``/``__eq__``, as
``functools.lru_cache`` does. Anything else is refused with a ``TypeError``, and so are
values nested too deep to key within the recursion limit (a container holding itself)
and objects whose ``__hash__`` raises.

pandas, polars and pyarrow frames and arrays, torch CPU tensors and scipy sparse matrices are
keyed by ``_keys_frames`` (its docstring has the rules for each).

A subclass of a number, string or container type (or of a numpy scalar type, outside numpy)
keys like its base plus its instance state (its ``__dict__`` and every ``__slots__`` entry)
only while its ``==`` is the base's; a subclass with an ``__eq__`` of its own keys by its own
``__hash__``/``__eq__``, or is refused when it has no hash. Enum members key by identity.
"""

from __future__ import annotations

import collections
import enum
import math
import struct
import sys
import types
from collections.abc import Callable, Hashable
from typing import Any

import xxhash

_hash128 = xxhash.xxh3_128_intdigest
_isnan = math.isnan
_float_bits = struct.Struct("<q")
_pack_double = struct.Struct("<d").pack
#: Stands for -0.0 in a key: it equals no float, so ``0.0`` and ``-0.0`` never share a key.
_NEG_ZERO = "-0.0"
_COMPLEX_REAL = complex.real.__get__
_COMPLEX_IMAG = complex.imag.__get__

#: Types keyed as ``(type(value), value)``: their ``==`` holds exactly when two values of the
#: type cannot be told apart. The cache layer inlines this for one argument.
ATOMIC: frozenset[type] = frozenset({int, bool, str, bytes, type(None)})

#: MaskedArray's bookkeeping attributes, left out of the state of its subclasses.
_MASKED_ATTRIBUTES = frozenset(
    {
        "_fill_value",
        "_hardmask",
        "_sharedmask",
        "_isfield",
        "_baseclass",
        "_optinfo",
        "_basedict",
        "_mask",
    }
)


class UnkeyableArgument(TypeError):
    """An argument value that cannot be part of a cache key (internal; rewritten by the cache)."""


#: A key that ran out of stack with at least this many frames left to it when it started is
#: the value's doing (nested thousands deep, a container holding itself, a ``__hash__`` that
#: recurses): refused. With fewer left, the caller's recursion is (a function calling itself
#: through the cache): its ``RecursionError`` goes on, as it would undecorated.
MIN_STACK = 200
_TOO_DEEP = "nested too deeply to key within the recursion limit, or containing itself"


def key_of(value: Any) -> Hashable:
    """A hashable key equal for values a call cannot tell apart, different otherwise.

    Nesting costs no depth count: recursion is only checked once it fails.
    """
    t = type(value)
    if t in ATOMIC:
        return (t, value)
    if t is float:
        # The common float keys as itself; only 0.0 and NaN need a closer look.
        if value and not _isnan(value):
            return (float, value)
        return (float, _float_part(value))
    try:
        return _key(value)
    except RecursionError:
        if sys.getrecursionlimit() - _stack_depth() < MIN_STACK:
            raise
    raise UnkeyableArgument(_TOO_DEEP)


def _stack_depth() -> int:
    frame: types.FrameType | None = sys._getframe(1)
    depth = 0
    while frame is not None:
        depth += 1
        frame = frame.f_back
    return depth


def _key(value: Any) -> Hashable:
    """``key_of`` without the recursion check, for the values inside a value."""
    t = type(value)
    if t in ATOMIC:
        return (t, value)
    if t is float:
        if value and not _isnan(value):
            return (float, value)
        return (float, _float_part(value))
    if t is tuple or t is list:
        return (t, tuple([_key(v) for v in value]))
    if t is dict:
        return (t, _bag([(_key(k), _key(v)) for k, v in value.items()]))
    if t is frozenset or t is set:
        return (t, _bag([_key(v) for v in value]))
    if t is complex:
        return (t, _float_part(value.real), _float_part(value.imag))
    np = sys.modules.get("numpy")
    if np is not None:
        if isinstance(value, np.ndarray):
            return _array_key(np, value)
        if isinstance(value, np.generic):
            return _numpy_scalar_key(np, value, t)
    package = _PACKAGE.get(t) or _package_of(t)
    if package:
        found = _frames_key(value, t, package)
        if found is not None:
            return found
    return _other_key(value, t)


#: Per data-container type seen by ``_key``'s last step: the package it comes from
#: (``_keys_frames.PACKAGES``). Only those are kept: a class of the application's (one made
#: in a function, say) must not be held alive, with the guarded functions it defines.
_PACKAGE: dict[type, str] = {}
_FRAME_PACKAGES = frozenset({"pandas", "polars", "pyarrow", "torch", "scipy"})


def _package_of(t: type) -> str:
    top = str(getattr(t, "__module__", "") or "").partition(".")[0]
    if top not in _FRAME_PACKAGES:
        return ""
    if len(_PACKAGE) >= _MAX_TYPES:
        _PACKAGE.clear()
    _PACKAGE[t] = top
    return top


#: The key of a DataFrame, tensor, Arrow or sparse value, ``(value, type, package) -> key``
#: or ``None``: ``guardrails._keys_frames`` puts its ``frame_key`` here when it is imported
#: (``guardrails.layers.cache`` imports it). Without it such a value has no key: refused,
#: never keyed wrongly.
FRAME_KEYERS: list[Callable[[Any, type, str], Hashable | None]] = []


def _frames_key(value: Any, t: type, package: str) -> Hashable | None:
    for keyer in FRAME_KEYERS:
        return keyer(value, t, package)
    return None


def _float_part(x: float) -> Hashable:
    """A float's key: the float itself, except -0.0 and NaN (keyed by its bits)."""
    x = float(x)
    if x and not _isnan(x):
        return x
    if x == 0.0:
        return _NEG_ZERO if math.copysign(1.0, x) < 0.0 else 0.0
    return ("nan", _float_bits.unpack(_pack_double(x))[0])


def _bag(keys: list[Any]) -> Hashable:
    """Unordered keys; counted when some coincide (distinct NaN objects in one set or dict)."""
    bag = frozenset(keys)
    if len(bag) == len(keys):
        return bag
    return ("counted", frozenset(collections.Counter(keys).items()))


#: The ``__eq__`` of each base type keyed structurally, and of the stdlib subclasses whose
#: ``==`` is no finer than their items (``Counter`` counts a missing item as zero;
#: ``OrderedDict`` is keyed in order). A subclass whose ``__eq__`` is another one defines
#: its own equality, which its elements and state may not capture (identity, say). ``bool``
#: is ATOMIC and enum members are keyed before, so neither reaches this.
_STRUCTURAL = (int, str, bytes, float, complex, list, tuple, dict, set, frozenset)
_STRUCTURAL_EQ: tuple[object, ...] = tuple(
    t.__eq__ for t in (*_STRUCTURAL, collections.OrderedDict, collections.Counter)
)

#: Per subclass of a type in ``_STRUCTURAL``, or of a numpy scalar type (filled on first
#: sight): ``None`` when it has an ``__eq__`` of its own, ``_STRUCT_SEQUENCE`` for a struct
#: sequence, else the descriptors of its ``__slots__`` along the MRO.
_SUBCLASSES: dict[type, Any] = {}
_UNSEEN = object()
#: The verdict for a struct sequence (``time.struct_time``, ``os.stat_result``): fields
#: past ``n_sequence_fields`` (``tm_zone``, ``st_mtime_ns``) are in neither the tuple nor a
#: ``__dict__``, but ``__reduce__`` hands them all out.
_STRUCT_SEQUENCE = "struct sequence"
#: Past this many types the verdicts start over: classes made at run time must not pile up.
_MAX_TYPES = 4096
#: Per other type whose instance state is keyed (ndarray subclasses): its slot descriptors.
_SLOTS: dict[type, tuple[Any, ...]] = {}


def _slot_descriptors(t: type) -> tuple[Any, ...]:
    """Every ``__slots__`` entry along the MRO (``__dict__``/``__weakref__`` hold no state)."""
    found: list[Any] = []
    for cls in t.__mro__:
        if "__slots__" not in vars(cls):
            continue  # builtins and classes without slots
        for attr in vars(cls).values():
            # Mangled names (``__x`` becomes ``_C__x``) need no parsing this way, and a slot a
            # subclass shadows with the same name is still read through its own descriptor.
            if isinstance(attr, types.MemberDescriptorType) and attr.__objclass__ is cls:
                found.append(attr)
    return tuple(found)


def _subclass_slots(t: type, base_eq: tuple[object, ...] = _STRUCTURAL_EQ) -> Any:
    """``_SUBCLASSES[t]``: ``None`` if ``t`` defines its own equality, else how to key it."""
    eq: object = t.__eq__
    verdict: Any = None
    if any(eq is e for e in base_eq):
        if issubclass(t, tuple) and hasattr(t, "n_sequence_fields"):
            verdict = _STRUCT_SEQUENCE
        else:
            verdict = _slot_descriptors(t)
    if len(_SUBCLASSES) >= _MAX_TYPES:
        _SUBCLASSES.clear()
    _SUBCLASSES[t] = verdict
    return verdict


def _state(
    value: Any, t: type, skip: frozenset[str] = frozenset(), slots: tuple[Any, ...] | None = None
) -> Hashable:
    """The key of an instance's own attributes: a subclass may keep value-defining state there.

    Its ``__dict__`` (less ``skip``) and every ``__slots__`` entry it has set, by position.
    """
    if slots is None:
        slots = _SLOTS.get(t)
        if slots is None:
            if len(_SLOTS) >= _MAX_TYPES:
                _SLOTS.clear()
            slots = _SLOTS[t] = _slot_descriptors(t)
    attrs = getattr(value, "__dict__", None)
    try:
        if attrs and skip:
            attrs = {k: v for k, v in attrs.items() if k not in skip}
        state = _key(attrs) if attrs else ()
        if not slots:
            return state
        filled = []
        for i, slot in enumerate(slots):
            try:
                item = slot.__get__(value, t)
            except AttributeError:
                continue  # never set: told apart from any value by its absence
            filled.append((i, _key(item)))
        return (state, tuple(filled))
    except UnkeyableArgument as exc:
        raise UnkeyableArgument(
            f"{t.__module__}.{t.__qualname__} with an attribute that has no key ({exc})"
        ) from None


def _other_key(value: Any, t: type) -> Hashable:
    """The key of a value none of ``key_of``'s own cases covers."""
    if isinstance(value, enum.Enum):
        return (t, value)  # members are singletons: identity is the value
    if t is slice:
        return (t, _key(value.start), _key(value.stop), _key(value.step))
    if t is range:
        # range(0) == range(5, 5), yet a function can read .start.
        return (t, value.start, value.stop, value.step)
    if isinstance(value, _STRUCTURAL):
        slots = _SUBCLASSES.get(t, _UNSEEN)
        if slots is _UNSEEN:
            slots = _subclass_slots(t)
        if slots is _STRUCT_SEQUENCE:
            # (visible fields as a tuple, hidden fields as a dict): every field, by value.
            return (t, _key(value.__reduce__()[1]))
        if slots is not None:
            return _structural_key(value, t, slots)
    return _hashed_key(value, t)


def _structural_key(value: Any, t: type, slots: tuple[Any, ...]) -> Hashable:
    """A subclass whose ``==`` is its base's: its base's key, its type and its instance state.

    The contents are read through the base type, as its ``==`` reads them, never through an
    override (``__iter__``, ``items``, ``__int__``, ``__float__``, ``real``) that could hide
    some; ``int.__int__``, ``str.__str__`` and ``bytes.__bytes__`` copy an exact base value.
    """
    state = _state(value, t, slots=slots)
    if isinstance(value, int):
        return (t, int.__int__(value), state)
    if isinstance(value, str):
        return (t, str.__str__(value), state)
    if isinstance(value, bytes):
        return (t, bytes.__bytes__(value), state)
    if isinstance(value, float):
        return (t, _float_part(float.__float__(value)), state)
    if isinstance(value, complex):
        real, imag = _COMPLEX_REAL(value), _COMPLEX_IMAG(value)
        return (t, _float_part(real), _float_part(imag), state)
    if isinstance(value, tuple):
        return (t, tuple([_key(v) for v in tuple.__iter__(value)]), state)
    if isinstance(value, list):
        return (t, tuple([_key(v) for v in list.__iter__(value)]), state)
    if isinstance(value, dict):
        if isinstance(value, collections.OrderedDict):
            items = collections.OrderedDict.items(value)
            pairs = [(_key(k), _key(v)) for k, v in items]
            return (t, tuple(pairs), state)  # its == is order-sensitive
        pairs = [(_key(k), _key(v)) for k, v in dict.items(value)]
        if isinstance(value, collections.defaultdict):
            extra = _key(value.default_factory)
            return (t, _bag(pairs), extra, state)
        return (t, _bag(pairs), state)
    base = set if isinstance(value, set) else frozenset
    return (t, _bag([_key(v) for v in base.__iter__(value)]), state)


def _hashed_key(value: Any, t: type) -> Hashable:
    """``(type, value)``: a value keyed by its own ``__hash__``/``__eq__``, as lru_cache does."""
    try:
        hash(value)
    except TypeError:
        raise UnkeyableArgument(f"unhashable {t.__module__}.{t.__qualname__}") from None
    except RecursionError:
        raise  # key_of tells the value's recursion from the caller's
    except Exception as exc:  # the documented TypeError, never the hash's own error
        raise UnkeyableArgument(
            f"{t.__module__}.{t.__qualname__} whose __hash__ raised {type(exc).__name__}: {exc}"
        ) from None
    return (t, value)


def _numpy_scalar_key(np: Any, value: Any, t: type) -> Hashable:
    # Never by ==: np.float64(-0.0) == np.float64(0.0), and NaN equals nothing.
    if t is np.float64:
        return (t, _float_part(value))  # a float subclass: float() copies its bits exactly
    if t in (_lazy.get("integers") or _integer_types(np)):
        return (t, int(value))  # the type fixes the dtype; int() is 4x faster than tobytes()
    dtype = value.dtype
    if dtype.hasobject:
        raise UnkeyableArgument("numpy scalar holding objects (its bytes are pointers)")
    if _is_numpys_own(t):
        return (t, dtype, value.tobytes())
    # A subclass from elsewhere: its bytes, read as numpy's own type reads them, and its state
    # while its == is its numpy base's (else its own, as for subclasses of builtins).
    slots = _SUBCLASSES.get(t, _UNSEEN)
    if slots is _UNSEEN:
        base = next(c for c in t.__mro__ if _is_numpys_own(c))
        slots = _subclass_slots(t, (base.__eq__,))
    if slots is None:
        return _hashed_key(value, t)
    return (t, dtype, np.generic.tobytes(value), _state(value, t, slots=slots))


#: Values computed on first use: this module never imports numpy itself.
_lazy: dict[str, frozenset[type]] = {}


def _integer_types(np: Any) -> frozenset[type]:
    """numpy's bool and integer scalar types, whose type alone fixes their dtype."""
    found = _lazy["integers"] = frozenset(np.dtype(c).type for c in "?bhilqpBHILQP")
    return found


def _array_key(np: Any, arr: Any) -> Hashable:
    t = type(arr)
    dtype = arr.dtype
    if dtype.hasobject:
        raise UnkeyableArgument("numpy array of dtype object (its bytes are pointers)")
    ma = sys.modules.get("numpy.ma")  # not imported: no masked array can exist
    if ma is not None and isinstance(arr, ma.MaskedArray):
        return _masked_key(ma, arr, t)
    contiguous = arr if arr.flags.c_contiguous else np.ascontiguousarray(arr)
    if not contiguous.size:
        digest = 0
    else:
        try:
            digest = _hash128(contiguous.data)  # the buffer itself: no copy, no new array
        except (ValueError, TypeError):  # dtypes with no buffer format (datetime64, ...)
            digest = _hash128(contiguous.reshape(-1).view(np.uint8))
    # The dtype itself, not dtype.str: "|V4" is every 4-byte structured dtype.
    if t is np.ndarray or _is_numpys_own(t):
        return (t, dtype, arr.shape, digest)
    return (t, dtype, arr.shape, digest, _state(arr, t))


def _masked_key(ma: Any, arr: Any, t: type) -> Hashable:
    if t is ma.core.MaskedConstant:
        return (t,)  # np.ma.masked, a singleton whose fill_value cannot be read
    key = (
        t,
        _key(ma.getdata(arr)),
        _key(ma.getmaskarray(arr)),  # nomask and an all-False mask agree
        _key(arr.fill_value),
        bool(arr.hardmask),
    )
    if t is ma.MaskedArray or t is ma.core.mvoid:
        return key
    return (*key, _state(arr, t, _MASKED_ATTRIBUTES))


def _is_numpys_own(t: type) -> bool:
    """Whether numpy defines this ndarray subclass (matrix, memmap, recarray, chararray).

    Their instance ``__dict__`` holds no part of the value (memmap's file name, matrix's
    indexing flag); a subclass defined elsewhere may keep some there, as astropy's units.
    """
    return t.__module__.partition(".")[0] == "numpy"
