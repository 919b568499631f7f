"""What goes into Redis: exact round trips without pickle, signed values, and no code run from
bytes an attacker wrote."""

from __future__ import annotations

import collections
import contextlib
import enum
import os
import pickle
import struct
import sys
from pathlib import Path
from typing import Any

import hypothesis.extra.numpy as hnp
import numpy as np
import pandas as pd
import polars as pl
import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guardrails.redis import codec
from guardrails.redis.codec import BadValue, Unstorable, decoder, encoder

SECRET = b"s3cret-key-for-tests"
PLAIN = (encoder("auto", None), decoder("auto", None))
SIGNED = (encoder("auto", SECRET), decoder("auto", SECRET))
PICKLED = (encoder("pickle", SECRET), decoder("pickle", SECRET))
ALL = [PLAIN, SIGNED, PICKLED]


def same(a: Any, b: Any) -> bool:
    """Equal and of the same type at every level; floats by bits (-0.0), any NaN a NaN (JSON
    writes every NaN as ``NaN``: its sign and payload bits are not kept)."""
    t = type(a)
    if t is not type(b):
        return False
    if t is float:
        return struct.pack("<d", a) == struct.pack("<d", b) or (a != a and b != b)  # noqa: PLR0124
    if t is list or t is tuple:
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if t is dict:
        # Keys by same() too: a NaN key read back is another NaN object, != the one stored.
        return len(a) == len(b) and all(
            same(ka, kb) and same(va, vb)
            for (ka, va), (kb, vb) in zip(a.items(), b.items(), strict=True)
        )
    if isinstance(a, np.ndarray):
        return (
            a.dtype == b.dtype
            and a.shape == b.shape
            and np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes()
        )
    if isinstance(a, np.generic):
        return bool(a.dtype == b.dtype) and a.tobytes() == b.tobytes()
    return bool(a == b)


def roundtrip(value: Any, pair: Any = PLAIN, fresh_until: float = 12.5) -> Any:
    encode, decode = pair
    back, fresh = decode(encode(value, fresh_until))
    assert fresh == fresh_until
    return back


json_atoms = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**100), max_value=2**100),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(),
)
json_values = st.recursive(
    json_atoms,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)
arrays = hnp.arrays(
    dtype=st.one_of(
        hnp.scalar_dtypes(),
        hnp.byte_string_dtypes(),
        hnp.unicode_string_dtypes(),
        hnp.scalar_dtypes().map(lambda d: d.newbyteorder(">")),
    ),
    shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4),
)
np_scalars = hnp.arrays(dtype=hnp.scalar_dtypes(), shape=()).map(lambda a: a[()])
key_atoms = st.one_of(json_atoms, st.tuples(json_atoms, json_atoms))
tagged_values = st.recursive(
    st.one_of(json_atoms, arrays, np_scalars),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.lists(inner, max_size=3).map(tuple),
        st.dictionaries(st.text(max_size=3), inner, max_size=3),
        st.dictionaries(key_atoms, inner, max_size=3),
    ),
    max_leaves=12,
)


@settings(max_examples=300)
@given(json_values)
def test_json_values_round_trip_as_plain_json(value: Any) -> None:
    encode, _ = PLAIN
    data = encode(value, 0.0)
    assert data[3] == codec.JSON
    for pair in ALL:
        assert same(roundtrip(value, pair), value)


@settings(max_examples=300)
@given(tagged_values)
def test_tuples_odd_keys_and_arrays_round_trip(value: Any) -> None:
    for pair in ALL:
        back = roundtrip(value, pair)
        assert same(back, value), (back, value)


@settings(max_examples=300)
@given(arrays)
def test_arrays_of_every_dtype_and_shape(arr: Any) -> None:
    back = roundtrip(arr)
    assert same(back, arr)
    assert back.flags.writeable
    view = arr.T if arr.ndim > 1 else (arr[::2] if arr.ndim else arr)
    assert same(roundtrip(view), view)  # non-contiguous views
    if arr.ndim:
        assert same(roundtrip(np.asfortranarray(arr)), arr)


def test_a_user_dict_that_looks_like_a_tag_round_trips_as_that_dict() -> None:
    forged = [
        {"t": [1, 2]},
        {"d": [[1, 2]]},
        {"a": "k05VTVBZ"},
        {"s": "AAAA"},
        ({"t": [1]}, {"x": 1}),
        {1: {"d": []}},
        [{"a": "not base64 %%"}],
    ]
    for value in forged:
        for pair in ALL:
            assert same(roundtrip(value, pair), value)


def test_containers_keep_their_exact_types() -> None:
    value = {(1, "a"): [1, (2.5, None)], 3: np.float32(2), "x": np.arange(3)}
    back = roundtrip(value)
    assert same(back, value)
    assert type(back[(1, "a")][1]) is tuple


def test_frames_with_nullable_categorical_and_zoned_columns() -> None:
    df = pd.DataFrame(
        {
            "f": [1.5, float("nan"), -0.0],
            "i": pd.array([1, None, 3], dtype="Int64"),
            "b": pd.array([True, None, False], dtype="boolean"),
            "c": pd.Categorical(["x", "y", "x"], categories=["y", "x"], ordered=True),
            "t": pd.date_range("2024-03-30", periods=3, tz="Europe/Paris"),
            "s": ["a", None, "c"],
        },
        index=pd.Index([10, 20, 30], name="row"),
    )
    for pair in ALL:
        back = roundtrip(df, pair)
        pd.testing.assert_frame_equal(back, df, check_exact=True)
        assert type(back) is pd.DataFrame
    for s in (df["c"], df["t"], pd.Series([1, 2], name=None), pd.Series([1.0], name=("a", 1))):
        back = roundtrip(s)
        pd.testing.assert_series_equal(back, s, check_exact=True)
        assert back.name == s.name
    ranged = pd.DataFrame({"a": [1, 2]}, index=pd.RangeIndex(5, 7))
    assert type(roundtrip(ranged).index) is pd.RangeIndex
    multi = df.set_index("s", append=True)
    pd.testing.assert_frame_equal(roundtrip(multi), multi, check_exact=True)


def test_polars_frames() -> None:
    df = pl.DataFrame({"a": [1, None, 3], "s": ["x", "y", None], "f": [1.5, float("nan"), 0.0]})
    for pair in ALL:
        back = roundtrip(df, pair)
        assert type(back) is pl.DataFrame and back.schema == df.schema
        assert back.equals(df)


def test_a_frame_that_would_not_come_back_the_same_is_refused() -> None:
    df = pd.DataFrame({1: [1.0], "x": [2]})  # Arrow names columns by strings
    with pytest.raises(Unstorable, match="does not come back unchanged through Arrow"):
        PLAIN[0](df, 0.0)
    encode, decode = PICKLED
    back = decode(encode(df, 0.0))[0]  # with pickle configured, it is pickled
    assert list(back.columns) == [1, "x"]


class Point(pydantic.BaseModel):
    x: int
    y: float
    tags: list[str] = []


class Outer(pydantic.BaseModel):
    p: Point
    n: int | None = None


def test_pydantic_models_round_trip_by_class_path() -> None:
    for value in (Point(x=1, y=2.5, tags=["a"]), Outer(p=Point(x=0, y=-0.0), n=3)):
        for pair in ALL:
            back = roundtrip(value, pair)
            assert type(back) is type(value) and back == value
    data = PLAIN[0](Point(x=1, y=2.0), 0.0)
    assert b"test_redis_codec:Point\n" in data


def test_a_pydantic_class_whose_module_is_not_imported_is_a_bad_value() -> None:
    encode, decode = PLAIN
    data = encode(Point(x=1, y=2.0), 0.0)
    path = f"{Point.__module__}:Point".encode()
    forged = data.replace(path, b"some_module_nobody_imported:Point")
    with pytest.raises(BadValue, match="is not imported"):
        decode(forged)
    assert "some_module_nobody_imported" not in sys.modules
    not_model = data.replace(path, b"os:path")
    with pytest.raises(BadValue, match="not a pydantic model class"):
        decode(not_model)


class Kind(enum.Enum):
    A = 1


@pytest.mark.parametrize(
    ("value", "named"),
    [
        ({1, 2}, "a set"),
        (frozenset(), "a frozenset"),
        (b"raw", "bytes"),
        (Kind.A, "test_redis_codec.Kind"),
        (collections.OrderedDict(a=1), "collections.OrderedDict"),
        (np.array([object()]), "dtype object"),
        ([1, {2}], "list"),
        (1 + 2j, "complex"),
    ],
)
def test_unstorable_names_the_type_and_the_fix(value: Any, named: str) -> None:
    for pair in (PLAIN, SIGNED):
        with pytest.raises(Unstorable) as caught:
            pair[0](value, 0.0)
        message = str(caught.value)
        assert named in message
        assert "cache.serializer: pickle with cache.secret" in message
    back = roundtrip(value, PICKLED)
    assert type(back) is type(value)


def test_a_value_containing_itself_is_unstorable_not_a_crash() -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(Unstorable, match="nested too deeply"):
        PLAIN[0](loop, 0.0)


def test_pickle_needs_a_secret() -> None:
    with pytest.raises(ValueError, match="needs a secret"):
        encoder("pickle", None)
    with pytest.raises(ValueError, match="needs a secret"):
        decoder("pickle", None)
    with pytest.raises(ValueError, match="'auto' or 'pickle'"):
        encoder("json", None)  # type: ignore[arg-type]


# --- tampering -----------------------------------------------------------------------------------


class _Plant:
    """Unpickling it creates the file at ``path``: proof that pickle.loads ran."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> Any:
        return (Path.touch, (Path(self.path),))


def _pickle_payload(path: Path, secret: bytes | None, mac: bytes | None = None) -> bytes:
    body = pickle.dumps(_Plant(str(path)))
    header = struct.pack("<2sBBBd", b"gR", 1, codec.PICKLE, 1 if mac or secret else 0, 0.0)
    if secret is not None:
        import hashlib
        import hmac

        h = hmac.new(secret, digestmod=hashlib.sha256)
        h.update(header + struct.pack("<Q", 0) + body)
        mac = h.digest()
    return header + (mac or b"") + body


def test_a_forged_pickle_never_reaches_pickle_loads(tmp_path: Path) -> None:
    planted = tmp_path / "planted"
    # The test's own payload works: signed with the right secret, a pickle reader runs it.
    _, pickle_reader = PICKLED
    pickle_reader(_pickle_payload(planted, SECRET))
    assert planted.exists()
    planted.unlink()
    attempts = [
        (PICKLED[1], _pickle_payload(planted, None)),  # unsigned
        (PICKLED[1], _pickle_payload(planted, None, mac=os.urandom(32))),  # a made-up MAC
        (PICKLED[1], _pickle_payload(planted, b"another secret")),  # signed with another key
        (SIGNED[1], _pickle_payload(planted, SECRET)),  # valid MAC, reader says auto
        (PLAIN[1], _pickle_payload(planted, None)),  # no secret, reader says auto
        (PLAIN[1], _pickle_payload(planted, SECRET)),
    ]
    for decode, payload in attempts:
        with pytest.raises(BadValue):
            decode(payload)
        assert not planted.exists()


@settings(max_examples=200)
@given(st.data())
def test_flipping_any_byte_of_a_signed_value_is_a_bad_value(data: st.DataObject) -> None:
    value = data.draw(st.sampled_from([{"a": [1, 2.5]}, (1, "x"), np.arange(5.0), {1, 2}]))
    encode, decode = PICKLED
    payload = bytearray(encode(value, 99.0))
    i = data.draw(st.integers(0, len(payload) - 1))
    payload[i] ^= data.draw(st.integers(1, 255))
    with pytest.raises(BadValue):
        decode(bytes(payload))


def test_a_signed_value_under_another_key_does_not_verify() -> None:
    encode, decode = SIGNED
    data = encode([1, 2], 5.0, b"guardrails:p:f:1:aaaa")
    assert decode(data, b"guardrails:p:f:1:aaaa") == ([1, 2], 5.0)
    with pytest.raises(BadValue, match="signature mismatch"):
        decode(data, b"guardrails:p:f:1:bbbb")


def test_unsigned_value_read_with_a_secret_is_a_bad_value() -> None:
    data = PLAIN[0]({"a": 1}, 0.0)
    with pytest.raises(BadValue, match="not signed"):
        SIGNED[1](data)
    # A reader without a secret reads a signed value (it would read it unsigned anyway).
    assert PLAIN[1](SIGNED[0]({"a": 1}, 3.0)) == ({"a": 1}, 3.0)


def test_other_format_versions_and_codecs_are_bad_values() -> None:
    data = bytearray(PLAIN[0]([1], 0.0))
    data[2] = 2
    with pytest.raises(BadValue, match="format version 2"):
        PLAIN[1](bytes(data))
    data[2] = 1
    data[3] = 77
    with pytest.raises(BadValue, match="unknown codec id 77"):
        PLAIN[1](bytes(data))


@settings(max_examples=500)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_are_bad_values_never_another_error(raw: bytes) -> None:
    for _, decode in ALL:
        for data in (raw, b"gR\x01" + raw, struct.pack("<2sBBBd", b"gR", 1, 1, 0, 0.0) + raw):
            with contextlib.suppress(BadValue):
                decode(data)


@settings(max_examples=300)
@given(st.sampled_from(range(1, 9)), st.binary(max_size=300))
def test_garbage_bodies_of_every_codec_are_bad_values(codec_id: int, body: bytes) -> None:
    data = struct.pack("<2sBBBd", b"gR", 1, codec_id, 0, 0.0) + body
    with contextlib.suppress(BadValue):
        PLAIN[1](data)


def test_an_array_header_claiming_more_than_follows_is_a_bad_value() -> None:
    data = PLAIN[0](np.arange(4.0), 0.0)
    forged = data.replace(b"(4,)", b"(9999999999,)".ljust(4))
    with pytest.raises(BadValue):
        PLAIN[1](forged)
    with pytest.raises(BadValue, match="needs"):
        PLAIN[1](data[:-8])


def test_truncated_values_are_bad_values() -> None:
    for value in ({"a": [1, 2]}, np.arange(10), pd.DataFrame({"a": [1]}), (1, 2)):
        for encode, decode in ALL:
            data = encode(value, 0.0)
            for cut in range(len(data) - 1, -1, -max(1, len(data) // 40)):
                with pytest.raises(BadValue):
                    decode(data[:cut])
