from __future__ import annotations

import asyncio
import collections
import copy
import datetime
import decimal
import enum
import fractions
import functools
import os
import struct
import time
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from guardrails import configure, guarded
from guardrails._keys import UnkeyableArgument, key_of

scalars = st.one_of(
    st.integers(), st.floats(allow_nan=False), st.booleans(), st.text(), st.binary(), st.none()
)
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.tuples(children, children),
        st.dictionaries(st.text(max_size=3), children, max_size=4),
    ),
    max_leaves=12,
)


def test_scalars_are_type_tagged() -> None:
    assert len({key_of(1), key_of(1.0), key_of(True)}) == 3
    assert key_of(0) != key_of(False)
    assert key_of(1) == key_of(1)


def test_dicts_ignore_order_lists_do_not() -> None:
    assert key_of({"a": 1, "b": 2}) == key_of({"b": 2, "a": 1})
    assert key_of([1, 2]) != key_of([2, 1])
    assert key_of([1, 2]) != key_of((1, 2))
    assert key_of({"a": 1}) != key_of({"a": 1.0})


def test_arrays_key_by_dtype_shape_and_content() -> None:
    a = np.arange(12, dtype=np.float64)
    assert key_of(a) == key_of(a.copy())
    assert key_of(a) != key_of(a.astype(np.float32))
    assert key_of(a) != key_of(a.reshape(3, 4))
    b = a.copy()
    b[5] = -1
    assert key_of(a) != key_of(b)
    # A strided view keys like its contiguous copy.
    m = np.arange(20.0).reshape(4, 5)
    assert key_of(m[:, 1]) == key_of(np.ascontiguousarray(m[:, 1]))
    assert key_of(np.empty((0, 3))) == key_of(np.empty((0, 3)))
    assert key_of(np.empty((0, 3))) != key_of(np.empty((3, 0)))


def test_big_arrays_are_not_stringified() -> None:
    a = np.zeros(1_000_000)
    b = a.copy()
    b[-1] = 1.0  # str()/repr() would elide this element and collide
    assert key_of(a) != key_of(b)


class Box:
    __hash__ = None  # type: ignore[assignment]


def test_unhashable_objects_are_refused() -> None:
    with pytest.raises(UnkeyableArgument, match="unhashable"):
        key_of(Box())
    with pytest.raises(UnkeyableArgument, match="dtype object"):
        key_of(np.array([object()]))


def test_hashable_objects_use_their_own_equality() -> None:
    class Point:
        def __init__(self, x: int) -> None:
            self.x = x

        def __eq__(self, other: object) -> bool:
            return isinstance(other, Point) and other.x == self.x

        def __hash__(self) -> int:
            return hash(self.x)

    assert key_of(Point(1)) == key_of(Point(1))
    assert key_of(Point(1)) != key_of(Point(2))


@given(values)
def test_keys_are_hashable_and_stable(value: object) -> None:
    import copy

    key = key_of(value)
    hash(key)
    assert key_of(copy.deepcopy(value)) == key


@given(st.lists(st.floats(allow_nan=False, width=64), min_size=1, max_size=50))
def test_array_keys_match_equal_content(xs: list[float]) -> None:
    a = np.array(xs)
    assert key_of(a) == key_of(np.array(list(xs)))


def test_arrays_without_a_buffer_format_still_key_by_content() -> None:
    days = np.array(["2026-01-01", "2026-01-02"], dtype="datetime64[D]")
    assert key_of(days) == key_of(days.copy())
    assert key_of(days) != key_of(days + np.timedelta64(1, "D"))
    assert key_of(np.float64(2.5)) != key_of(2.5)
    zero_d = np.array(3.0)
    assert key_of(zero_d) == key_of(np.array(3.0)) != key_of(np.array(4.0))


# --- regressions: values a call can tell apart never share a key ------------------------------


class Tagged(np.ndarray):  # type: ignore[type-arg]
    """An ndarray subclass keeping state in its instance ``__dict__``, as astropy's Quantity does."""

    unit: object

    def __new__(cls, data: object, unit: object) -> Tagged:
        obj = np.asarray(data).view(cls)
        obj.unit = unit
        return obj

    def __array_finalize__(self, obj: object) -> None:
        self.unit = getattr(obj, "unit", None)


def test_masked_arrays_key_by_data_mask_and_fill_value() -> None:
    plain = np.ma.array([1, 2, 3], mask=[0, 0, 0])
    assert key_of(plain) != key_of(np.ma.array([1, 2, 3], mask=[1, 0, 0]))
    assert key_of(plain) == key_of(np.ma.array([1, 2, 3]))  # nomask is an all-False mask
    assert key_of(plain) == key_of(np.ma.array([1, 2, 3], mask=[False] * 3).copy())
    assert key_of(plain) != key_of(np.ma.array([1, 2, 3], fill_value=7))
    assert key_of(plain) != key_of(np.array([1, 2, 3]))
    hidden = np.ma.array([1, 2, 3], mask=[1, 0, 0])
    assert key_of(hidden) != key_of(np.ma.array([9, 2, 3], mask=[1, 0, 0]))
    assert key_of(hidden) != key_of(np.ma.array([1, 2, 3], mask=[1, 0, 0], hard_mask=True))
    big = np.ma.array(np.arange(12.0).reshape(3, 4), mask=np.arange(12).reshape(3, 4) % 5 == 0)
    view = big[:, 1::2]
    assert not view.flags.c_contiguous
    assert key_of(view) == key_of(view.copy())
    assert key_of(view) != key_of(big[:, ::2])
    record = np.ma.array([(1, 2.0)], dtype=[("a", "i4"), ("b", "f8")], mask=[(0, 1)])
    assert key_of(record) != key_of(np.ma.array([(1, 2.0)], dtype=record.dtype, mask=[(1, 0)]))
    assert key_of(record[0]) != key_of(np.ma.array(record.data, mask=[(1, 0)])[0])
    assert key_of(np.ma.masked) == key_of(np.ma.masked)


def test_array_subclass_state_is_part_of_the_key() -> None:
    metres = Tagged([1.0, 2.0], "m")
    assert key_of(metres) == key_of(Tagged([1.0, 2.0], "m"))
    assert key_of(metres) != key_of(Tagged([1.0, 2.0], "s"))
    assert key_of(metres[::-1][::-1]) == key_of(metres)  # views carry the state along
    assert key_of(metres) != key_of(np.array([1.0, 2.0]))
    with pytest.raises(UnkeyableArgument, match="Tagged with an attribute"):
        key_of(Tagged([1.0], {"unhashable": Box()}))


def test_array_keys_hold_the_whole_dtype() -> None:
    # Zeros have the same bytes in every dtype of one size: only the dtype tells them apart.
    same_bytes = [
        "<i8",
        "<u8",
        "<f8",
        ">f8",
        "<M8[D]",
        "<M8[s]",
        "<m8[D]",
        "S8",
        "U2",
        "V8",
        [("a", "<i8")],
        [("b", "<i8")],
        [("a", "<f8")],
        [("a", "<i4"), ("b", "<i4")],
        [("a", "<i4"), ("b", "<f4")],
        [("b", "<i4"), ("a", "<i4")],
        {"names": ["a"], "formats": ["<i4"], "offsets": [4], "itemsize": 8},
        [("a", [("x", "<i8")])],
        [("a", [("y", "<i8")])],
        [("a", "<i4", (2,))],
        [(("title", "a"), "<i8")],
    ]
    keys = [key_of(np.zeros(3, dtype=d)) for d in same_bytes]
    assert len(set(keys)) == len(same_bytes)
    assert key_of(np.zeros(3, "<i8")) == key_of(np.zeros(3, np.int64))
    assert key_of(np.zeros(3, "S3")) != key_of(np.zeros(3, "S4"))


def test_object_dtypes_are_refused_wherever_the_objects_hide() -> None:
    holder = np.dtype([("n", "i4"), ("obj", "O")])
    with pytest.raises(UnkeyableArgument, match="object"):
        key_of(np.zeros(2, dtype=holder))
    with pytest.raises(UnkeyableArgument, match="object"):
        key_of(np.zeros(2, dtype=holder)[0])  # a numpy void scalar: its bytes hold a pointer
    with pytest.raises(UnkeyableArgument, match="object"):
        key_of(np.ma.array(np.zeros(2, dtype=holder)))
    with pytest.raises(UnkeyableArgument, match="object"):
        key_of(np.zeros(2, dtype=[("inner", holder)]))


def _new_float(bits: int) -> float:
    """A fresh float object with these bits (never a cached constant)."""
    return float(struct.unpack("<d", struct.pack("<Q", bits))[0])


def test_negative_zero_is_its_own_key_everywhere() -> None:
    pairs = [
        (0.0, -0.0),
        (complex(0.0, 1.0), complex(-0.0, 1.0)),
        (complex(1.0, 0.0), complex(1.0, -0.0)),
        ([0.0], [-0.0]),
        ((1, 0.0), (1, -0.0)),
        ({"x": 0.0}, {"x": -0.0}),
        (np.float64(0.0), np.float64(-0.0)),
        (np.float32(0.0), np.float32(-0.0)),
        (np.complex128(0.0), np.complex128(complex(-0.0, 0.0))),
        (slice(0.0), slice(-0.0)),
    ]
    for pos, neg in pairs:
        assert key_of(pos) != key_of(neg), (pos, neg)
        assert key_of(pos) == key_of(copy.deepcopy(pos))
    # Scalars now agree with arrays, which always told the two apart.
    assert key_of(np.array([0.0])) != key_of(np.array([-0.0]))


def test_nans_share_a_key_by_bit_pattern_not_by_identity() -> None:
    quiet = 0x7FF8000000000000
    a, b = _new_float(quiet), _new_float(quiet)
    assert a is not b
    assert key_of(a) == key_of(b)
    assert key_of([a, 1]) == key_of([b, 1])
    assert key_of({"v": a}) == key_of({"v": b})
    assert key_of(complex(a, 0.0)) == key_of(complex(b, 0.0))
    assert key_of(np.float64(a)) == key_of(np.float64(b))
    assert key_of(a) != key_of(_new_float(quiet | 1 << 63))  # the negative NaN
    assert key_of(a) != key_of(_new_float(quiet | 1))  # another payload
    # Two distinct NaN objects in one set are two elements; one of them is not the same set.
    assert key_of({a, b}) != key_of({a})
    assert key_of({a: 1, b: 1}) != key_of({a: 1})
    c, d = _new_float(quiet | 1), _new_float(quiet | 1)
    assert key_of({a, b, c}) != key_of({a, c, d})


def test_numpy_scalars_key_by_type_dtype_and_bytes() -> None:
    assert key_of(np.float64(2.5)) == key_of(np.float64(2.5))
    assert key_of(np.float64(2.5)) != key_of(2.5)
    assert key_of(np.float64(2.5)) != key_of(np.float32(2.5))
    assert key_of(np.datetime64(1, "D")) != key_of(np.datetime64(1, "s"))
    assert key_of(np.str_("ab")) != key_of("ab")
    assert key_of(np.int64(1)) != key_of(np.float64(1)) != key_of(np.bool_(True))
    nan = np.float64("nan")
    assert key_of(nan) == key_of(np.float64("nan")) != key_of(-nan)


def test_slices_and_ranges_key_by_their_parts() -> None:
    assert key_of(slice(1, 2)) == key_of(slice(1, 2))
    assert key_of(slice(1, 2)) != key_of(slice(True, 2))
    assert key_of(slice(1, 2)) != key_of(slice(1.0, 2))
    assert key_of(slice(None, 2)) != key_of(slice(0, 2))
    assert key_of(range(0)) != key_of(range(5, 5))  # equal (both empty), yet .start differs
    assert key_of(range(0, 3, 2)) != key_of(range(0, 4, 2))
    assert key_of(range(1, 5)) == key_of(range(1, 5))
    assert key_of(range(1, 5)) != key_of(slice(1, 5))


class Colour(enum.IntEnum):
    RED = 1


class Flavour(enum.IntEnum):
    SWEET = 1


class Tagged2(list):  # type: ignore[type-arg]
    tag: object = None


def test_containers_python_tells_apart_never_share_a_key() -> None:
    Point = collections.namedtuple("Point", "x y")
    Pair = collections.namedtuple("Pair", "x y")
    ordered = collections.OrderedDict([("a", 1), ("b", 2)])
    tagged, other = Tagged2([1]), Tagged2([1])
    tagged.tag, other.tag = "a", "b"
    different = [
        (ordered, collections.OrderedDict([("b", 2), ("a", 1)])),
        (ordered, {"a": 1, "b": 2}),
        (collections.defaultdict(int), collections.defaultdict(list)),
        (collections.defaultdict(int), {}),
        (tagged, other),
        (tagged, [1]),
        (Point(1, 2), (1, 2)),
        (Point(1, 2), Pair(1, 2)),
        (Colour.RED, 1),
        (Colour.RED, Flavour.SWEET),
        ([Colour.RED], [1]),
        ([True], [1]),
        ((1, False), (1, 0)),
        ({"k": True}, {"k": 1}),
        ({True: "v"}, {1: "v"}),
        ({True}, {1}),
        ([b"a"], ["a"]),
        (frozenset([1]), {1}),
        ([frozenset([1])], [{1}]),
        ([(1,)], [[1]]),
        ({}, set()),
    ]
    for a, b in different:
        assert key_of(a) != key_of(b), (a, b)
        assert key_of(a) == key_of(copy.deepcopy(a)), a
    assert key_of(ordered) == key_of(collections.OrderedDict(ordered))
    assert key_of({"a": 1, "b": 2}) == key_of({"b": 2, "a": 1})


def test_hashable_objects_keep_their_own_equality_like_lru_cache() -> None:
    """Deliberate: an object that says it equals another shares its key, as with lru_cache."""
    utc = datetime.datetime(2026, 1, 1, 12, tzinfo=datetime.UTC)
    paris = utc.astimezone(datetime.timezone(datetime.timedelta(hours=1)))
    pairs = [
        (decimal.Decimal("0"), decimal.Decimal("-0")),
        (decimal.Decimal("1.0"), decimal.Decimal("1.00")),
        (utc, paris),
        (fractions.Fraction(1, 2), fractions.Fraction(2, 4)),
        (decimal.Decimal("1"), decimal.Decimal("2")),
        (utc, utc.replace(tzinfo=None)),
    ]
    for a, b in pairs:

        @functools.lru_cache
        def seen(x: object) -> object:
            return x

        lru_shares = seen(a) is seen(b)
        assert (key_of(a) == key_of(b)) is lru_shares, (a, b)
    assert key_of(decimal.Decimal("0")) == key_of(decimal.Decimal("-0"))
    assert key_of(utc) == key_of(paris)
    # Inside containers too; still type-tagged (a Decimal is never an int).
    assert key_of([decimal.Decimal("-0")]) == key_of([decimal.Decimal("0")])
    assert key_of(decimal.Decimal("1")) != key_of(1)


def _told_apart() -> list[tuple[object, object]]:
    """Pairs of arguments each of which a function can tell from the other."""
    return [
        (0.0, -0.0),
        (complex(0.0, 0.0), complex(0.0, -0.0)),
        (np.float64(0.0), np.float64(-0.0)),
        ([0.0], [-0.0]),
        (np.ma.array([1, 2, 3], mask=[0, 0, 0]), np.ma.array([1, 2, 3], mask=[1, 0, 0])),
        (np.zeros(2, dtype=[("a", "<i4")]), np.zeros(2, dtype=[("b", "<f4")])),
        (np.zeros(2, dtype=np.int64), np.zeros(2, dtype=np.float64)),
        (collections.OrderedDict(a=1, b=2), collections.OrderedDict(b=2, a=1)),
        (slice(1, 2), slice(True, 2)),
        (range(0), range(5, 5)),
        (Tagged([1.0], "m"), Tagged([1.0], "s")),
    ]


def _call_twice(a: object, b: object, asynchronous: bool) -> tuple[list[object], list[object]]:
    """Cached one- and two-parameter functions called with ``a`` then ``b``: (results, runs)."""
    ran: list[object] = []
    if asynchronous:

        @guarded("keyed")
        async def aone(x: object) -> object:
            ran.append(x)
            return x

        @guarded("keyed")
        async def atwo(x: object, y: int = 1) -> object:
            ran.append(x)
            return x

        async def calls() -> list[object]:
            return [await aone(a), await aone(b), await aone(x=b), await atwo(a), await atwo(b, 1)]

        return asyncio.run(calls()), ran

    @guarded("keyed")
    def one(x: object) -> object:
        ran.append(x)
        return x

    @guarded("keyed")
    def two(x: object, y: int = 1) -> object:
        ran.append(x)
        return x

    return [one(a), one(b), one(x=b), two(a), two(b, 1)], ran


def _run_pairs(asynchronous: bool) -> None:
    configure({"policies": {"keyed": {"cache": {"ttl": 60}}}})
    for a, b in _told_apart():
        got, ran = _call_twice(a, b, asynchronous)
        # Each result is the object the function returned for that very argument.
        assert [g is v for g, v in zip(got, [a, b, b, a, b], strict=True)] == [True] * 5, (a, b)
        assert [x is v for x, v in zip(ran, [a, b, a, b], strict=True)] == [True] * 4, (a, b)


def test_a_cached_function_runs_again_for_an_argument_it_can_tell_apart() -> None:
    _run_pairs(asynchronous=False)


def test_an_async_cached_function_runs_again_for_an_argument_it_can_tell_apart() -> None:
    _run_pairs(asynchronous=True)


# --- subclasses of numbers and containers: their own equality, their slots ----------------------
# A subclass keys like its base plus its state only while its == is the base's; state in
# __slots__ counts as much as state in __dict__; an __eq__ of its own is the key's equality.


class TaggedFloat(float):
    """The reviewer's case: state in a slot, and an __eq__/__hash__ that read it."""

    __slots__ = ("tag",)
    tag: object

    def __new__(cls, value: float, tag: object) -> TaggedFloat:
        obj = super().__new__(cls, value)
        obj.tag = tag
        return obj

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, TaggedFloat) and float(self) == float(other) and self.tag == other.tag
        )

    def __hash__(self) -> int:
        return hash((float(self), self.tag))


def _own_eq(base: type) -> type:
    """A subclass of ``base`` with a ``tag`` slot read by its own ``__eq__`` and ``__hash__``.

    ``tuple`` takes no slots: its subclass keeps the tag in ``__dict__``.
    """

    def __eq__(self: object, other: object) -> bool:
        return (
            type(other) is type(self)
            and base.__eq__(self, other) is True  # type: ignore[call-arg]
            and getattr(self, "tag", None) == getattr(other, "tag", None)
        )

    def __hash__(self: object) -> int:
        return hash(getattr(self, "tag", None))

    body: dict[str, object] = {"__eq__": __eq__, "__hash__": __hash__}
    if base is not tuple:
        body["__slots__"] = ("tag",)
    return type(f"OwnEq{base.__name__.title()}", (base,), body)


def _identity(base: type) -> type:
    """A subclass of ``base`` whose instances are equal only to themselves."""
    return type(
        f"Identity{base.__name__.title()}",
        (base,),
        {"__eq__": object.__eq__, "__ne__": object.__ne__, "__hash__": object.__hash__},
    )


def _slotted(base: type) -> type:
    """A subclass of ``base`` that keeps ``tag`` in a slot, with the base's own equality."""
    return type(f"Slotted{base.__name__.title()}", (base,), {"__slots__": ("tag",)})


def _both(base: type) -> type:
    """Slots and a ``__dict__``: ``tag`` in the slot, ``note`` in the dict."""
    return type(f"Both{base.__name__.title()}", (base,), {"__slots__": ("tag", "__dict__")})


_CONTENT: dict[type, object] = {
    float: 1.0,
    complex: 1 + 2j,
    list: [1, 2],
    tuple: (1, 2),
    dict: {"k": 1},
    set: {1, 2},
    frozenset: frozenset({1, 2}),
}
_BASES = list(_CONTENT)
_SLOTTABLE = [b for b in _BASES if b is not tuple]  # nonempty __slots__ are refused on tuple


def _tagged(cls: type, tag: object = None, **attrs: object) -> object:
    base = next(b for b in cls.__mro__ if b in _CONTENT)
    obj = cls(copy.deepcopy(_CONTENT[base]))
    if tag is not None:
        obj.tag = tag
    for name, value in attrs.items():
        setattr(obj, name, value)
    return obj


def test_the_reviewers_tagged_float_keys_by_its_own_equality() -> None:
    a, b = TaggedFloat(1.0, "a"), TaggedFloat(1.0, "b")
    assert key_of(a) != key_of(b)
    assert key_of(a) == key_of(TaggedFloat(1.0, "a"))
    assert key_of([a]) != key_of([b])  # inside containers too
    assert key_of(a) != key_of(1.0)


@pytest.mark.parametrize("base", _BASES, ids=lambda b: b.__name__)
def test_a_subclass_with_its_own_eq_keys_by_it(base: type) -> None:
    cls = _own_eq(base)
    a, b = _tagged(cls, "a"), _tagged(cls, "b")
    # These subclasses all define __hash__, so even the list, dict and set ones are hashable.
    assert key_of(a) != key_of(b)
    assert key_of(a) == key_of(_tagged(cls, "a"))
    assert key_of(a) != key_of(_CONTENT[base])
    # The same rule lru_cache follows: one entry exactly when the arguments are ==.
    seen = functools.lru_cache(lambda x: object())
    assert (key_of(a) == key_of(b)) is (seen(a) is seen(b))


@pytest.mark.parametrize("base", [list, dict, set], ids=lambda b: b.__name__)
def test_an_unhashable_subclass_with_its_own_eq_is_refused(base: type) -> None:
    def __eq__(self: object, other: object) -> bool:
        return self is other

    cls = type(f"Unhashable{base.__name__.title()}", (base,), {"__eq__": __eq__})
    assert cls.__hash__ is None
    with pytest.raises(UnkeyableArgument, match="unhashable"):
        key_of(cls(_CONTENT[base]))


@pytest.mark.parametrize("base", _BASES, ids=lambda b: b.__name__)
def test_a_subclass_equal_only_to_itself_never_shares_a_key(base: type) -> None:
    cls = _identity(base)
    a, b = _tagged(cls), _tagged(cls)
    assert key_of(a) != key_of(b)
    assert key_of(a) == key_of(a)


@pytest.mark.parametrize("base", _SLOTTABLE, ids=lambda b: b.__name__)
def test_state_in_slots_is_part_of_the_key(base: type) -> None:
    cls = _slotted(base)
    a, b = _tagged(cls, "a"), _tagged(cls, "b")
    assert key_of(a) != key_of(b)
    assert key_of(a) == key_of(_tagged(cls, "a"))
    assert key_of(a) != key_of(_tagged(cls))  # a slot never set is a state of its own
    assert key_of(_tagged(cls)) == key_of(_tagged(cls))
    assert key_of(a) != key_of(copy.deepcopy(_CONTENT[base]))
    with pytest.raises(UnkeyableArgument, match="with an attribute that has no key"):
        key_of(_tagged(cls, Box()))


@pytest.mark.parametrize("base", _SLOTTABLE, ids=lambda b: b.__name__)
def test_slots_and_dict_are_both_part_of_the_key(base: type) -> None:
    cls = _both(base)
    ref = _tagged(cls, "a", note=1)
    assert key_of(ref) == key_of(_tagged(cls, "a", note=1))
    assert key_of(ref) != key_of(_tagged(cls, "b", note=1))
    assert key_of(ref) != key_of(_tagged(cls, "a", note=2))
    assert key_of(ref) != key_of(_tagged(cls, "a"))
    assert key_of(ref) != key_of(_tagged(cls, note=1))


def test_slots_along_the_mro_and_private_names_count() -> None:
    class Base(list):  # type: ignore[type-arg]
        __slots__ = ("__private",)

    class Child(Base):
        __slots__ = ("__private", "public")  # the same private name, another slot
        public: object

    def child(outer: object, inner: object, public: object) -> Child:
        obj = Child([1])
        obj._Base__private = outer  # type: ignore[attr-defined]
        obj._Child__private = inner  # type: ignore[attr-defined]
        obj.public = public
        return obj

    assert key_of(child(1, 2, 3)) == key_of(child(1, 2, 3))
    assert len({key_of(child(*abc)) for abc in [(1, 2, 3), (9, 2, 3), (1, 9, 3), (1, 2, 9)]}) == 4
    assert key_of(child(1, 2, 3)) != key_of(child(2, 1, 3))


def test_tuple_subclasses_key_by_their_dict_or_their_own_eq() -> None:
    Point = collections.namedtuple("Point", "x y")
    assert key_of(Point(1, 2)) == key_of(Point(1, 2)) != key_of((1, 2))
    cls = _own_eq(tuple)
    assert key_of(_tagged(cls, "a")) != key_of(_tagged(cls, "b"))


def test_contents_are_read_as_the_base_type_compares_them() -> None:
    """Overriding how a value is read (iteration, items, __float__, .real) hides nothing."""

    class Hiding(list):  # type: ignore[type-arg]
        def __iter__(self) -> object:  # type: ignore[override]
            return iter(())

    class HidingDict(dict):  # type: ignore[type-arg]
        def items(self) -> object:  # type: ignore[override]
            return []

    class HidingSet(frozenset):  # type: ignore[type-arg]
        def __iter__(self) -> object:  # type: ignore[override]
            return iter(())

    class Rounded(float):
        def __float__(self) -> float:
            return 0.0

    class Real(complex):
        @property
        def real(self) -> float:
            return 0.0

    assert key_of(Hiding([1])) != key_of(Hiding([2]))
    assert key_of(HidingDict(a=1)) != key_of(HidingDict(a=2))
    assert key_of(HidingSet({1})) != key_of(HidingSet({2}))
    assert key_of(Rounded(1.0)) != key_of(Rounded(2.0))
    assert key_of(Real(1 + 1j)) != key_of(Real(2 + 1j))


def test_stdlib_container_subclasses_still_key_by_their_items() -> None:
    # Counter has an __eq__ of its own (a missing item counts as zero), no finer than its items.
    counted = collections.Counter(a=1)
    assert key_of(counted) == key_of(collections.Counter(a=1))
    assert key_of(counted) != key_of(collections.Counter(a=1, b=0))  # `"b" in c` tells
    assert key_of(counted) != key_of({"a": 1})
    ordered = collections.OrderedDict(a=1, b=2)
    ordered.move_to_end("a")
    assert key_of(ordered) == key_of(collections.OrderedDict(b=2, a=1))
    assert key_of(ordered) != key_of(collections.OrderedDict(a=1, b=2))


def _subclass_pairs() -> list[tuple[object, object]]:
    """Subclass arguments a function can tell apart (and lru_cache keeps apart)."""
    pairs: list[tuple[object, object]] = [(TaggedFloat(1.0, "a"), TaggedFloat(1.0, "b"))]
    for base in _BASES:
        pairs.append((_tagged(_own_eq(base), "a"), _tagged(_own_eq(base), "b")))
        identity = _identity(base)
        pairs.append((_tagged(identity), _tagged(identity)))
    for base in _SLOTTABLE:
        pairs.append((_tagged(_slotted(base), "a"), _tagged(_slotted(base), "b")))
        both = _both(base)
        pairs.append((_tagged(both, "a", note=1), _tagged(both, "a", note=2)))
    return pairs


def _call_a_b_a_b(a: object, b: object, asynchronous: bool) -> tuple[list[object], list[object]]:
    """A new cached function called with a, b, a, x=b: (its results, the arguments it ran with)."""
    ran: list[object] = []
    if asynchronous:

        @guarded("c")
        async def afn(x: object) -> object:
            ran.append(x)
            return x

        async def calls() -> list[object]:
            return [await afn(a), await afn(b), await afn(a), await afn(x=b)]

        return asyncio.run(calls()), ran

    @guarded("c")
    def fn(x: object) -> object:
        ran.append(x)
        return x

    return [fn(a), fn(b), fn(a), fn(x=b)], ran


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_a_cached_function_runs_again_for_subclass_arguments_it_can_tell_apart(
    asynchronous: bool,
) -> None:
    configure({"policies": {"c": {"cache": {"ttl": 60}}}})
    for a, b in _subclass_pairs():
        got, ran = _call_a_b_a_b(a, b, asynchronous)
        assert [g is v for g, v in zip(got, [a, b, a, b], strict=True)] == [True] * 4, (a, b)
        assert [x is v for x, v in zip(ran, [a, b], strict=True)] == [True] * 2, (a, b)


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_a_cached_function_refuses_an_unhashable_subclass_with_its_own_eq(
    asynchronous: bool,
) -> None:
    configure({"policies": {"c": {"cache": {"ttl": 60}}}})

    class Loose(list):  # type: ignore[type-arg]  # noqa: PLW1641
        def __eq__(self, other: object) -> bool:
            return isinstance(other, list) and len(self) == len(other)

    if asynchronous:

        @guarded("c")
        async def afn(x: object) -> object:
            return x

        with pytest.raises(TypeError, match=r"argument 'x'.*cache\.key"):
            asyncio.run(afn(Loose([1])))
    else:

        @guarded("c")
        def fn(x: object) -> object:
            return x

        with pytest.raises(TypeError, match=r"argument 'x'.*cache\.key"):
            fn(Loose([1]))


def test_array_subclass_state_in_slots_is_part_of_the_key() -> None:
    class Slotted(np.ndarray):
        __slots__ = ("unit",)

    class SlottedMasked(np.ma.MaskedArray):
        __slots__ = ("unit",)

    for cls in (Slotted, SlottedMasked):
        a, b, c = (np.asarray([1.0, 2.0]).view(cls) for _ in range(3))
        for arr, unit in ((a, "m"), (b, "s"), (c, "m")):
            setattr(arr, "unit", unit)  # noqa: B010
        assert key_of(a) != key_of(b), cls
        assert key_of(a) == key_of(c), cls


# --- struct sequences, int/str/bytes and numpy scalar subclasses, values with no key ------------


def test_struct_sequences_key_by_every_field_hidden_ones_included() -> None:
    fields = (2024, 1, 1, 0, 0, 0, 0, 1, 0)
    utc = time.struct_time((*fields, "UTC", 0))
    cet = time.struct_time((*fields, "CET", 3600))
    assert utc == cet  # == compares only the nine visible fields
    assert key_of(utc) != key_of(cet)
    assert key_of(utc) == key_of(time.struct_time((*fields, "UTC", 0)))
    assert key_of(utc) != key_of(fields)
    visible = tuple(range(10))
    early = os.stat_result(visible, {"st_mtime_ns": 10_000_000_123})
    late = os.stat_result(visible, {"st_mtime_ns": 10_000_000_999})
    assert early == late
    assert key_of(early) != key_of(late)
    assert key_of(early) == key_of(os.stat_result(visible, {"st_mtime_ns": 10_000_000_123}))


class Qty(int):
    unit: object


class Lang(str):
    lang: object


class SlottedLang(str):
    __slots__ = ("lang",)


class Blob(bytes):
    codec: object


class LooseInt(int):
    """Its own ==: equal to any int of the same parity, so one key for both."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, int) and int(self) % 2 == int(other) % 2

    def __hash__(self) -> int:
        return int(self) % 2


class Unit(np.float64):
    unit: object


class OwnEqUnit(np.float64):
    def __eq__(self, other: object) -> bool:
        return isinstance(other, OwnEqUnit) and getattr(self, "unit", None) == getattr(
            other, "unit", None
        )

    def __hash__(self) -> int:
        return hash(getattr(self, "unit", None))


def _with(cls: type, value: object, **attrs: object) -> object:
    obj = cls(value)
    for name, attr in attrs.items():
        setattr(obj, name, attr)
    return obj


def _state_pairs() -> list[tuple[object, object]]:
    """Subclass values equal by ==, told apart by their instance state."""
    return [
        (_with(Qty, 5, unit="m"), _with(Qty, 5, unit="s")),
        (_with(Lang, "hi", lang="en"), _with(Lang, "hi", lang="fr")),
        (_with(SlottedLang, "hi", lang="en"), _with(SlottedLang, "hi", lang="fr")),
        (_with(Blob, b"x", codec="a"), _with(Blob, b"x", codec="b")),
        (_with(Unit, 1.0, unit="m"), _with(Unit, 1.0, unit="s")),
    ]


@pytest.mark.parametrize("pair", range(5))
def test_int_str_bytes_and_numpy_scalar_subclasses_key_by_their_state(pair: int) -> None:
    a, b = _state_pairs()[pair]
    again, _ = _state_pairs()[pair]
    assert a == b
    assert key_of(a) != key_of(b)
    assert key_of(a) == key_of(again)
    assert key_of(a) != key_of(type(a).__mro__[1](a))  # the base value alone
    assert key_of([a]) != key_of([b])


def test_int_and_numpy_scalar_subclasses_with_their_own_eq_key_by_it() -> None:
    assert key_of(LooseInt(1)) == key_of(LooseInt(3))  # lru_cache would share them too
    assert key_of(LooseInt(1)) != key_of(LooseInt(2))
    assert key_of(_with(OwnEqUnit, 1.0, unit="m")) == key_of(_with(OwnEqUnit, 2.0, unit="m"))
    assert key_of(_with(OwnEqUnit, 1.0, unit="m")) != key_of(_with(OwnEqUnit, 1.0, unit="s"))
    assert key_of(Colour.RED) != key_of(Flavour.SWEET)  # enum members still by identity
    assert key_of(Qty(5)) != key_of(5)
    assert key_of(Qty(5)) == key_of(Qty(5))


class BadHash:
    def __hash__(self) -> int:
        raise ValueError("no hash today")


def _self_list() -> list[object]:
    cycle: list[object] = [1]
    cycle.append(cycle)
    return cycle


def _self_dict() -> dict[str, object]:
    cycle: dict[str, object] = {}
    cycle["me"] = cycle
    return cycle


def _deep_list() -> list[object]:
    deep: list[object] = []
    for _ in range(5000):
        deep = [deep]
    return deep


def _self_subclass() -> object:
    obj = Tagged2([1])
    obj.me = obj  # type: ignore[attr-defined]
    return obj


_UNKEYABLE = {
    "self-referencing list": _self_list,
    "self-referencing dict": _self_dict,
    "list nested 5000 deep": _deep_list,
    "list subclass holding itself as state": _self_subclass,
    "__hash__ raising ValueError": BadHash,
}


@pytest.mark.parametrize("make", list(_UNKEYABLE.values()), ids=list(_UNKEYABLE))
def test_values_that_break_key_building_are_refused_with_the_documented_error(
    make: Callable[[], object],
) -> None:
    with pytest.raises(UnkeyableArgument):
        key_of(make())
    with pytest.raises(UnkeyableArgument):
        key_of({"inside": [make()]})


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("make", list(_UNKEYABLE.values()), ids=list(_UNKEYABLE))
def test_a_cached_function_refuses_them_with_a_type_error_naming_the_argument(
    make: Callable[[], object], asynchronous: bool
) -> None:
    configure({"policies": {"c": {"cache": {"ttl": 60}}}})

    def plain(n: int, x: object) -> str:
        return "ran"

    assert plain(1, make()) == "ran"  # undecorated, it works
    if asynchronous:

        async def native(n: int, x: object) -> str:
            return "ran"

        afn = guarded("c")(native)
        with pytest.raises(TypeError, match=r"argument 'x'.*cache\.key"):
            asyncio.run(afn(1, make()))
    else:
        fn = guarded("c")(plain)
        with pytest.raises(TypeError, match=r"argument 'x'.*cache\.key"):
            fn(1, make())


def test_a_cached_function_recursing_on_a_nested_argument_still_raises_recursion_error() -> None:
    # The stack runs out in the caller's recursion, wherever key building happens to be.
    configure({"policies": {"c": {"cache": {"ttl": 60}}}})
    nested: list[object] = []
    for _ in range(30):
        nested = [nested, 1.5, "a"]

    @guarded("c")
    def f(x: object) -> object:
        return f(x)

    with pytest.raises(RecursionError):
        f(nested)


def test_keying_an_instance_does_not_keep_its_class_alive() -> None:
    # A class made at run time (in a function, a test) and the guarded methods it defines
    # must be freed once unused: no per-type cache of the keys may hold it.
    import gc
    import weakref

    from guardrails._keys import key_of

    def make() -> weakref.ref[type]:
        class Local:
            pass

        key_of(Local())
        return weakref.ref(Local)

    gone = make()
    gc.collect()
    assert gone() is None
