from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

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


def test_unhashable_objects_are_refused() -> None:
    class Box:
        __hash__ = None  # type: ignore[assignment]

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


@given(values, values)
def test_different_values_give_different_keys(a: object, b: object) -> None:
    if key_of(a) == key_of(b):
        assert a == b and _types(a) == _types(b)


def _types(value: object) -> object:
    if isinstance(value, list | tuple):
        return (type(value), tuple(_types(v) for v in value))
    if isinstance(value, dict):
        return (dict, frozenset((k, _types(v)) for k, v in value.items()))
    return type(value)


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
