"""Properties of cache keys: two argument values share a key exactly when a call cannot tell them apart.

``same`` below is the reference: same type at every level, equal values, ``-0.0`` distinct
from ``0.0``, a NaN equal to a NaN of the same bits; numpy scalars by type, dtype and bytes;
arrays by type, dtype, shape and content bytes (masked arrays also by mask, fill value and
hardness); a subclass of a number or container by its base's content and its state
(``__slots__`` and ``__dict__``) while its ``==`` is the base's, else by its own ``==`` as
``functools.lru_cache`` does. Every generated value is within the types whose keys claim
exactly this.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guardrails import configure, guarded
from guardrails._keys import ATOMIC, key_of


def _bits(x: float) -> bytes:
    return struct.pack("<d", x)


def same(a: Any, b: Any) -> bool:
    """The reference equivalence: could a call tell ``a`` from ``b``?"""
    t = type(a)
    if t is not type(b):
        return False
    if t in _SUBCLASSES:
        return _same_subclass(a, b)
    if t is float:
        return _bits(a) == _bits(b)
    if t is complex:
        return _bits(a.real) == _bits(b.real) and _bits(a.imag) == _bits(b.imag)
    if isinstance(a, np.ma.MaskedArray):
        return (
            same(np.ma.getdata(a), np.ma.getdata(b))
            and same(np.ma.getmaskarray(a), np.ma.getmaskarray(b))
            and same(a.fill_value, b.fill_value)
            and a.hardmask == b.hardmask
        )
    if isinstance(a, np.ndarray):
        return (
            a.dtype == b.dtype
            and a.shape == b.shape
            and np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes()
        )
    if isinstance(a, np.generic):
        return bool(a.dtype == b.dtype) and a.tobytes() == b.tobytes()
    if t is list or t is tuple:
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if t is dict:
        return _same_bag(list(a.items()), list(b.items()))
    if t is set or t is frozenset:
        return _same_bag(list(a), list(b))
    assert t in ATOMIC, t  # the generators make nothing else
    return bool(a == b)


def _same_bag(xs: list[Any], ys: list[Any]) -> bool:
    # Greedy matching is exact because ``same`` is an equivalence relation.
    if len(xs) != len(ys):
        return False
    rest = list(ys)
    for x in xs:
        for i, y in enumerate(rest):
            if same(x, y):
                del rest[i]
                break
        else:
            return False
    return True


# --- subclasses of numbers and containers ----------------------------------------------------

_MISSING = "<missing>"  # a tag slot never set


def _tag(x: Any) -> Any:
    return getattr(x, "tag", _MISSING)


def _content(x: Any) -> Any:
    """The builtin value a subclass instance holds."""
    return _BASE[type(x)](x)


def _folded(x: Any) -> Any:
    tag = _tag(x)
    return tag.lower() if isinstance(tag, str) else tag


def _own_eq(self: Any, other: Any) -> bool:
    """An equality of its own, coarser than the content and state: the tag's case is ignored."""
    return (
        type(other) is type(self)
        and same(_content(self), _content(other))
        and (_folded(self) == _folded(other))
    )


def _own_hash(self: Any) -> int:
    return hash(_folded(self))


#: Bases whose subclasses refuse nonempty ``__slots__``: the tag goes in ``__dict__``.
_NO_SLOTS = (int, bytes, tuple)


def _subclass(base: type, kind: str) -> type:
    body: dict[str, Any] = {}
    if kind != "identity" and base not in _NO_SLOTS:
        body["__slots__"] = ("tag", "__dict__") if base is dict else ("tag",)
    if kind == "own":
        body.update(__eq__=_own_eq, __hash__=_own_hash)
    if kind == "identity":
        body.update(__eq__=object.__eq__, __ne__=object.__ne__, __hash__=object.__hash__)
    return type(f"{kind.title()}{base.__name__.title()}", (base,), body)


#: kind: "state" keys by content and state, "own" by its own ==, "identity" by identity.
_KINDS = {
    "state": [int, str, bytes, float, complex, list, tuple, dict, set, frozenset],
    "own": [int, str, bytes, float, complex, list, tuple, frozenset],
    "identity": [int, float, tuple],
}
_SUBCLASSES = {_subclass(b, k): k for k, bases in _KINDS.items() for b in bases}
_BASE = {cls: next(b for b in cls.__mro__ if b in _KINDS["state"]) for cls in _SUBCLASSES}


def _same_subclass(a: Any, b: Any) -> bool:
    kind = _SUBCLASSES[type(a)]
    if kind == "identity":
        return a is b
    if kind == "own":
        return a is b or bool(a == b)  # as a dict lookup (lru_cache) compares: NaN tags
    return same(_content(a), _content(b)) and same(_tag(a), _tag(b))


def _make(cls: type, content: Any, tag: Any) -> Any:
    obj = cls(content)
    if tag is not _MISSING:
        obj.tag = tag
    return obj


# --- generators: small domains, so values that look alike meet often -----------------------

# Each generator is drawn through a composite of its own, so a filter's retry notes (and a
# failing draw) show "one_scalar()", not a 30 kB repr that hypothesis warns about.


@st.composite
def one_small_float(draw: st.DrawFn) -> Any:
    return draw(_small_floats)


@st.composite
def one_float(draw: st.DrawFn) -> Any:
    return draw(_floats)


@st.composite
def one_numpy_scalar(draw: st.DrawFn) -> Any:
    return draw(_numpy_scalars)


@st.composite
def one_scalar(draw: st.DrawFn) -> Any:
    return draw(_scalars)


@st.composite
def one_array(draw: st.DrawFn) -> Any:
    return draw(_arrays)


@st.composite
def one_hashable(draw: st.DrawFn) -> Any:
    return draw(_hashables)


@st.composite
def one_value(draw: st.DrawFn) -> Any:
    return draw(_values)


@st.composite
def one_subclassed(draw: st.DrawFn) -> Any:
    cls = draw(st.sampled_from(sorted(_SUBCLASSES, key=lambda c: c.__name__)))
    content = draw(_CONTENTS[_BASE[cls]])
    return _make(cls, content, draw(_TAGS))


small_floats = one_small_float()
floats = one_float()
numpy_scalars = one_numpy_scalar()
scalars = one_scalar()
arrays = one_array()
hashables = one_hashable()
values = one_value()
subclassed = one_subclassed()

_FLOAT_BITS = [
    _bits(x) for x in (0.0, -0.0, 1.0, -1.5, float("inf"), float("-inf"), float("nan"))
] + [
    struct.pack("<Q", 0xFFF8000000000000),  # the negative NaN
    struct.pack("<Q", 0x7FF0000000000001),  # a signalling NaN with a payload
]
# A new float object on every draw: a NaN must not share a key only by being the same object.
_small_floats = st.sampled_from(_FLOAT_BITS).map(lambda b: struct.unpack("<d", b)[0])
_floats = st.one_of(small_floats, st.floats())
_numpy_scalars = st.one_of(
    small_floats.map(np.float64),
    st.sampled_from([0.0, -0.0, 1.0, float("inf"), float("nan")]).map(np.float32),
    st.builds(np.complex128, small_floats, small_floats),
    st.integers(-2, 2).map(np.int8),
    st.integers(0, 2).map(np.uint64),
    st.booleans().map(np.bool_),
    st.builds(np.datetime64, st.integers(0, 2), st.sampled_from(["D", "s"])),
    st.builds(np.timedelta64, st.integers(0, 2), st.sampled_from(["D", "s"])),
    st.text("ab", max_size=2).map(np.str_),
    # np.bytes_(b"\0") has dtype S1 but reads as b"": no NUL ends, so each value has one dtype.
    st.binary(max_size=2).filter(lambda b: not b.endswith(b"\0")).map(np.bytes_),
)
_scalars = st.one_of(
    st.integers(-2, 2),
    st.integers(),
    st.booleans(),
    floats,
    st.builds(complex, small_floats, small_floats),
    st.text("ab", max_size=2),
    st.binary(max_size=2),
    st.none(),
    numpy_scalars,
)


def _void_dtypes(itemsize: int) -> list[np.dtype[Any]]:
    """Dtypes of one item size that ``.str`` cannot tell apart (all ``|V<n>``), no padding."""
    out = [np.dtype(f"V{itemsize}"), np.dtype([("a", f"V{itemsize}")])]
    out.append(np.dtype([("b", f"V{itemsize}")]))
    out.append(np.dtype([("a", [("x", f"V{itemsize}")])]))
    if itemsize > 1:
        out.append(np.dtype([("a", "u1"), ("b", f"V{itemsize - 1}")]))
        out.append(np.dtype([("a", f"V{itemsize - 1}"), ("b", "u1")]))
    return out


def _code_points_ok(raw: bytes) -> bool:
    """Whether ``raw`` read as UCS4 holds only code points a Python str can (numpy's repr fails)."""
    return len(raw) % 4 == 0 and int(np.frombuffer(raw, "<u4").max(initial=0)) < 0x110000


def same_size_dtypes(itemsize: int, raw: bytes = b"") -> list[np.dtype[Any]]:
    """Every dtype of this item size that a view can reinterpret an array's bytes as."""
    names = [f"V{itemsize}", f"S{itemsize}"]
    if itemsize in (1, 2, 4, 8):
        names += [f"<i{itemsize}", f"<u{itemsize}", f">i{itemsize}"]
    if itemsize in (2, 4, 8):
        names += [f"<f{itemsize}", f">f{itemsize}"]
    if itemsize in (8, 16):
        names.append(f"<c{itemsize}")
    if itemsize == 8:
        names += ["<M8[D]", "<M8[s]", "<m8[D]", "<m8[ns]"]
    if itemsize == 1:
        names.append("?")
    if itemsize % 4 == 0 and _code_points_ok(raw):
        names.append(f"<U{itemsize // 4}")
    return [np.dtype(n) for n in names] + _void_dtypes(itemsize)


dtypes = st.one_of(
    hnp.boolean_dtypes(),
    hnp.integer_dtypes(),
    hnp.unsigned_integer_dtypes(),
    hnp.floating_dtypes(),
    hnp.complex_number_dtypes(),
    hnp.datetime64_dtypes(max_period="s"),
    hnp.timedelta64_dtypes(max_period="s"),
    hnp.byte_string_dtypes(max_len=3),
    hnp.unicode_string_dtypes(max_len=3),
    hnp.array_dtypes(max_size=3),
    hnp.nested_dtypes(max_itemsize=24),
)
shapes = hnp.array_shapes(min_dims=0, max_dims=2, min_side=0, max_side=3)


@st.composite
def plain_arrays(draw: st.DrawFn) -> np.ndarray[Any, Any]:
    if draw(st.booleans()):
        return draw(hnp.arrays(draw(dtypes), draw(shapes)))
    # Raw bytes reach what value strategies do not: unstructured void, NaN payloads.
    itemsize = draw(st.sampled_from([1, 2, 4, 8, 16]))
    shape = draw(shapes)
    n = int(np.prod(shape)) * itemsize
    # Few distinct bytes, so equal arrays meet often; these make zeros, signs and NaNs.
    byte = st.sampled_from([0x00, 0x01, 0x7F, 0x80, 0xF8, 0xFF])
    raw = bytes(draw(st.lists(byte, min_size=n, max_size=n)))
    dtype = draw(st.sampled_from(same_size_dtypes(itemsize, raw)))
    return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()


@st.composite
def masked_arrays(draw: st.DrawFn) -> np.ma.MaskedArray[Any, Any]:
    data = draw(plain_arrays())
    mask = draw(st.none() | hnp.arrays(np.bool_, data.shape))
    fill = None
    if data.size and draw(st.booleans()):
        fill = data.reshape(-1)[0]
    return _masked(data, np.ma.nomask if mask is None else mask, fill)


def _masked(data: Any, mask: Any = np.ma.nomask, fill: Any = None) -> Any:
    # numpy casts the default fill value 1e20 into float16 fields of a structured dtype.
    with np.errstate(over="ignore"):
        return np.ma.array(
            data,
            mask=np.reshape(mask, data.shape) if mask is not np.ma.nomask else mask,
            fill_value=fill,
        )


_arrays = st.one_of(plain_arrays(), masked_arrays())
# Tags an own == still finds equal to themselves (no NaN): "a" and "A", 0.0 and -0.0 are
# told apart by the state, not by the own == below.
_TAGS = st.sampled_from(["a", "A", "b", _MISSING, 0.0, -0.0])
_CONTENTS: dict[type, st.SearchStrategy[Any]] = {
    int: st.integers(-2, 2),
    str: st.text("ab", max_size=2),
    bytes: st.binary(max_size=2),
    float: small_floats,
    complex: st.builds(complex, small_floats, small_floats),
    list: st.lists(scalars, max_size=2),
    tuple: st.lists(scalars, max_size=2).map(tuple),
    dict: st.dictionaries(hashables, scalars, max_size=2),
    set: st.sets(hashables, max_size=2),
    frozenset: st.frozensets(hashables, max_size=2),
}
_hashables = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.tuples(inner, inner), st.frozensets(inner, max_size=3), st.tuples(inner)
    ),
    max_leaves=6,
)
_values = st.recursive(
    st.one_of(scalars, arrays, subclassed),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.tuples(inner, inner),
        st.dictionaries(hashables, inner, max_size=3),
        st.sets(hashables, max_size=3),
        st.frozensets(hashables, max_size=3),
    ),
    max_leaves=8,
)


# --- a separately built equal value, and a value that almost equals ------------------------


def _noncontiguous(arr: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """The same content as a strided view into a bigger buffer."""
    if arr.ndim == 0:
        return arr.copy()
    shape = (*arr.shape[:-1], arr.shape[-1] * 2)
    big = np.zeros(shape, dtype=arr.dtype)
    view = big[..., ::2]
    view[...] = arr
    return view


def _with_fill(arr: np.ma.MaskedArray[Any, Any], like: np.ma.MaskedArray[Any, Any]) -> Any:
    """``arr`` with the fill value of ``like`` exactly: passing it in would cast it to the dtype."""
    fill = like._fill_value
    arr._fill_value = None if fill is None else fill.copy()
    return arr


def rebuilt(value: Any, how: int) -> Any:
    """An equal value built apart from ``value`` (``how`` picks views, copies, orders)."""
    t = type(value)
    if t in _SUBCLASSES:
        if _SUBCLASSES[t] == "identity":
            return value  # equal to itself only
        return _make(t, rebuilt(_content(value), how), rebuilt(_tag(value), how))
    if t is float:
        return struct.unpack("<d", _bits(value))[0]
    if t is complex:
        return complex(rebuilt(value.real, how), rebuilt(value.imag, how))
    if isinstance(value, np.ma.MaskedArray):
        data = rebuilt(np.ma.getdata(value), how)
        mask = rebuilt(np.ma.getmaskarray(value), how + 1)
        if how % 3 == 0 and not any(mask.tobytes()):
            mask = np.ma.nomask  # no mask at all keys like an all-False one
        return _with_fill(_masked(data, mask), value)
    if isinstance(value, np.ndarray):
        if how % 3 == 0:
            return _noncontiguous(value)
        if how % 3 == 1:
            return np.asfortranarray(value) if value.ndim else value.copy()
        return np.frombuffer(value.tobytes(), dtype=value.dtype).reshape(value.shape)
    if isinstance(value, np.bytes_ | np.str_):
        return type(value)(value.item())  # np.array() would widen b"" (dtype S0) to S1
    if isinstance(value, np.generic):
        return np.array(value)[()]
    if t is list or t is tuple:
        return t(rebuilt(v, how) for v in value)
    if t is dict:
        return {rebuilt(k, how): rebuilt(v, how) for k, v in reversed(value.items())}
    if t is set or t is frozenset:
        return t(rebuilt(v, how) for v in reversed(list(value)))
    return t(value) if t is not type(None) else None


def order_key(value: Any) -> tuple[str, Any]:
    """A sort key for a hashable value that depends only on what ``same`` compares.

    Not ``repr``: NaN hashes by identity, so a set holding one iterates, and prints, its items
    in another order on each draw, and every NaN prints as ``nan`` whatever its bits. A set's
    items sorted by ``repr`` then come in another order when hypothesis replays a draw, and
    ``variants`` varies another item: another strategy, so a replay draws differently than
    the first run (``FlakyStrategyDefinition``), a failure that reproduces only by chance.
    """
    t = type(value)
    name = f"{t.__module__}.{t.__qualname__}"
    if t is set or t is frozenset:
        return (name, tuple(sorted(order_key(v) for v in value)))
    if t is tuple:
        return (name, tuple(order_key(v) for v in value))
    if t is float:
        return (name, _bits(value).hex())
    if t is complex:
        return (name, _bits(value.real).hex() + _bits(value.imag).hex())
    if isinstance(value, np.generic):
        return (name, f"{value.dtype.str}:{value.tobytes().hex()}")
    return (name, repr(value))


def variants(
    value: Any, domain: st.SearchStrategy[Any], hashable: bool = False
) -> st.SearchStrategy[Any]:
    """Values close to ``value``: one bit, one type, one field name, one mask bit away.

    ``domain`` (where ``value`` came from) adds unrelated values, which meet it by chance;
    ``hashable`` keeps to values a set or a dict key can hold.
    """
    options: list[st.SearchStrategy[Any]] = [domain, st.just(rebuilt(value, 0))]
    t = type(value)
    if t in _SUBCLASSES:
        base, content, tag = _BASE[t], _content(value), _tag(value)
        siblings = sorted((c for c in _SUBCLASSES if _BASE[c] is base), key=lambda c: c.__name__)
        options += [
            st.just(content),  # the bare builtin value
            _TAGS.map(lambda other: _make(t, rebuilt(content, 0), other)),
            st.sampled_from(siblings).map(lambda c: _make(c, rebuilt(content, 0), tag)),
            variants(content, _CONTENTS[base]).map(
                lambda v: _make(t, v, tag) if type(v) is base else v
            ),
        ]
        return st.one_of(options)
    if t is float or t is complex:
        negated = -value
        options.append(
            st.sampled_from([negated, rebuilt(negated, 0), np.float64(value.real)])
            | small_floats.map(lambda x: t(x))
        )
    if isinstance(value, np.generic):
        as_array = np.array(value)
        size = as_array.dtype.itemsize
        dtypes = same_size_dtypes(size, as_array.tobytes()) if size else []
        if value.dtype.kind in "fc":
            options.append(st.just(-value))
        if value.dtype.kind in "mM":  # the same count of another unit
            units = st.sampled_from([f"{value.dtype.kind}8[{u}]" for u in ("D", "s", "ns")])
            options.append(units.map(lambda d: as_array.view(d)[()]))
        if hashable:
            dtypes = [d for d in dtypes if d.kind != "V"]  # void scalars are unhashable
        if dtypes:
            options.append(st.sampled_from(dtypes).map(lambda d: as_array.view(d)[()]))
    if isinstance(value, np.ma.MaskedArray):
        data = np.ma.getdata(value)
        mask = np.ma.getmaskarray(value)
        hard = _with_fill(_masked(data.copy(), mask), value)
        hard.harden_mask()
        options += [
            st.just(_with_fill(_masked(data.copy()), value)),
            st.just(hard),
            st.just(data.copy()),
        ]
        if data.size:
            flipped_mask = mask.copy()
            flipped_mask.reshape(-1).view(np.uint8)[-1] ^= 1
            flipped_data = data.copy()
            flipped_data.reshape(-1).view(np.uint8)[-1] ^= 1
            options += [
                st.just(_with_fill(_masked(data.copy(), flipped_mask), value)),
                st.just(_with_fill(_masked(flipped_data, mask), value)),
                st.just(_masked(data.copy(), mask, fill=data.reshape(-1)[-1])),
            ]
    elif isinstance(value, np.ndarray):
        size = value.dtype.itemsize
        dtypes = same_size_dtypes(size, value.tobytes()) if size else []
        if dtypes:
            options.append(st.sampled_from(dtypes).map(value.view))
        if value.ndim != 1:
            options.append(st.just(value.reshape(-1)))
        if value.size and value.dtype.itemsize:
            for bit in (0x80, 0x01):
                flipped = value.copy()
                flipped.reshape(-1).view(np.uint8)[-1] ^= bit
                options.append(st.just(flipped))
        options.append(st.just(_masked(value.copy())))
    if t is list or t is tuple:
        if not hashable:
            options.append(st.just(tuple(value) if t is list else list(value)))
        if value:
            rest = list(value)[1:]
            first = variants(value[0], domain, hashable)
            options.append(first.map(lambda v: t([v, *rest])))
    if t is dict and not hashable:
        options.append(st.just(set(value)))
    if t is dict and value:
        k = next(iter(value))
        options.append(
            variants(value[k], domain).map(lambda v: {**value, k: v})
            | variants(k, hashables, hashable=True).map(lambda new: {new: value[k]})
        )
    if t is set or t is frozenset:
        if not hashable:
            options.append(st.just((frozenset if t is set else set)(value)))
            options.append(st.just(dict.fromkeys(value)))
        if value:
            first, *others = sorted(value, key=order_key)
            changed = variants(first, hashables, hashable=True)
            options.append(changed.map(lambda v: t([v, *others])))
    if t is bool:
        options.append(st.just(int(value)))
    if t is int:
        options.append(st.sampled_from([bool(value), float(value), np.int64(value % 2**63)]))
    if t is str:
        options.append(st.just(value.encode()) | st.just(np.str_(value)))
    return st.one_of(options)


# --- the properties --------------------------------------------------------------------------


def test_a_set_variant_varies_the_same_item_however_the_set_iterates() -> None:
    # NaN hashes by identity: sets built alike iterate, and print, their items in other orders.
    copies = [frozenset({frozenset({"b", float("nan")}), frozenset({1})}) for _ in range(64)]
    assert len({repr(c) for c in copies}) > 1  # else this test would show nothing
    firsts = [sorted(c, key=order_key)[0] for c in copies]
    # By repr, {'b', nan} came first when it printed 'b' first, {1} when it printed nan first:
    # replaying a draw then varied another item, and hypothesis failed the run as flaky.
    assert all(same(f, firsts[0]) for f in firsts)


@given(values, st.integers(0, 5))
def test_equal_values_built_apart_share_a_key(value: Any, how: int) -> None:
    twin = rebuilt(value, how)
    assert same(value, twin)
    assert key_of(twin) == key_of(value)
    assert hash(key_of(twin)) == hash(key_of(value))


_DOMAINS = {"scalars": scalars, "arrays": arrays, "nested": values, "subclassed": subclassed}


@pytest.mark.parametrize("name", sorted(_DOMAINS))
@settings(max_examples=300)
@given(data=st.data())
def test_values_share_a_key_exactly_when_a_call_cannot_tell_them_apart(
    name: str, data: st.DataObject
) -> None:
    domain = _DOMAINS[name]
    a = data.draw(domain, label="a")
    b = data.draw(variants(a, domain), label="b")
    assert (key_of(a) == key_of(b)) is same(a, b)


#: A strategy for each type ATOMIC may hold: a type added without one fails the test below.
_BY_TYPE: dict[type, st.SearchStrategy[Any]] = {
    int: st.integers(-2, 2) | st.integers(),
    bool: st.booleans(),
    str: st.text("ab", max_size=2),
    bytes: st.binary(max_size=2),
    type(None): st.none(),
    float: floats,
    complex: st.builds(complex, small_floats, small_floats),
}


@given(st.data())
def test_atomic_types_are_those_keyed_by_type_and_value(data: st.DataObject) -> None:
    # The cache layer inlines ``(type(x), x)`` for ATOMIC types: that must be their key, and
    # it must tell apart exactly what ``same`` tells apart.
    t = data.draw(st.sampled_from(sorted(ATOMIC, key=lambda t: t.__name__)), label="type")
    a = data.draw(_BY_TYPE[t], label="a")
    b = data.draw(variants(a, _BY_TYPE[t]), label="b")
    assert key_of(a) == (t, a)
    assert ((t, a) == (type(b), b)) is same(a, b)


def _guarded_pair(a: Any, b: Any, asynchronous: bool) -> list[Any]:
    """Call one cached guarded function with ``a`` then ``b``; the arguments it really ran with."""
    configure({"policies": {"keyed": {"cache": {"ttl": 60}}}})
    ran: list[Any] = []

    if asynchronous:

        @guarded("keyed")
        async def afn(x: Any) -> Any:
            ran.append(x)
            return x

        async def both() -> list[Any]:
            return [await afn(a), await afn(b)]

        got = asyncio.run(both())
    else:

        @guarded("keyed")
        def fn(x: Any) -> Any:
            ran.append(x)
            return x

        got = [fn(a), fn(b)]
    assert got[0] is a
    assert got[1] is (a if len(ran) == 1 else b)
    return ran


def _check_guarded(data: st.DataObject, asynchronous: bool) -> None:
    a = data.draw(values, label="a")
    b = data.draw(variants(a, values), label="b")
    ran = _guarded_pair(a, b, asynchronous)
    assert len(ran) == (1 if same(a, b) else 2)


@settings(max_examples=50)
@given(st.data())
def test_a_cached_function_runs_again_for_an_argument_it_can_tell_apart(
    data: st.DataObject,
) -> None:
    _check_guarded(data, asynchronous=False)


@settings(max_examples=50)
@given(st.data())
def test_an_async_cached_function_runs_again_for_an_argument_it_can_tell_apart(
    data: st.DataObject,
) -> None:
    _check_guarded(data, asynchronous=True)
