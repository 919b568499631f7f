"""The Redis key of a call: equal in-process keys digest alike, unequal ones differ, and the
digest is the same in a process with another ``PYTHONHASHSEED``."""

from __future__ import annotations

import datetime
import decimal
import enum
import fractions
import hashlib
import json
import os
import pathlib
import subprocess
import sys
import uuid
import zoneinfo
from collections.abc import Hashable
from typing import Any

import hypothesis.extra.numpy as hnp
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guardrails import _keys_frames  # noqa: F401 - registers the frame keyer
from guardrails._keys import key_of
from guardrails.redis.digest import Unshareable, _encode, digest


class Color(enum.Enum):
    RED = 1
    GREEN = 2


class Shade(enum.IntEnum):
    RED = 1


atoms = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.just(-0.0),
    st.just(0.0),
    st.text(max_size=6),
    st.binary(max_size=6),
    st.booleans(),
    st.none(),
    st.sampled_from([Color.RED, Color.GREEN, Shade.RED]),
    st.sampled_from([int, str, float, Color]),
    st.complex_numbers(allow_nan=True),
    st.dates(),
    st.datetimes(),
    st.timedeltas(),
    st.decimals(allow_nan=False),
    st.fractions(),
    st.uuids(),
)
hashables = st.recursive(
    atoms,
    lambda inner: st.one_of(
        st.tuples(inner, inner),
        st.lists(inner, max_size=3).map(tuple),
        st.frozensets(inner, max_size=3),
    ),
    max_leaves=8,
)
arrays = hnp.arrays(
    dtype=st.one_of(hnp.scalar_dtypes(), hnp.byte_string_dtypes(), hnp.unicode_string_dtypes()),
    shape=hnp.array_shapes(min_dims=0, max_dims=2, min_side=0, max_side=3),
)
values = st.recursive(
    st.one_of(atoms, arrays),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.lists(inner, max_size=3).map(tuple),
        st.dictionaries(hashables, inner, max_size=3),
        st.sets(hashables, max_size=3),
        st.frozensets(hashables, max_size=3),
    ),
    max_leaves=8,
)


@settings(max_examples=400)
@given(values, values)
def test_digests_agree_exactly_when_keys_do(a: Any, b: Any) -> None:
    ka, kb = key_of(a), key_of(b)
    assert (digest(ka) == digest(kb)) == (ka == kb)
    assert digest(ka) == digest(key_of(a))


@settings(max_examples=200)
@given(values)
def test_a_value_and_its_copy_share_the_digest(a: Any) -> None:
    import copy

    assert digest(key_of(a)) == digest(key_of(copy.deepcopy(a)))


@given(hashables)
def test_the_cache_layers_tuple_of_keys(a: Any) -> None:
    one = key_of(a)
    assert digest((one,)) != digest(one)
    assert digest((one, key_of(1))) == digest((key_of(a), key_of(1)))


def test_the_fast_path_writes_what_the_general_encoding_writes() -> None:
    for key in [(int, 5), (int, -(2**80)), (str, ""), (str, "é\ud800"), (int, 0)]:
        out: list[bytes] = []
        _encode(key, out.append)
        assert digest(key) == hashlib.blake2b(b"".join(out), digest_size=20).hexdigest()


def test_ambiguous_looking_keys_differ() -> None:
    keys: list[Hashable] = [
        key_of(("ab", "c")),
        key_of(("a", "bc")),
        key_of(1),
        key_of(1.0),
        key_of(True),
        key_of("1"),
        key_of(b"1"),
        key_of(0.0),
        key_of(-0.0),
        key_of(float("nan")),
        key_of((1,)),
        key_of([1]),
        key_of(frozenset({1})),
        key_of({1}),
        key_of({1: 2}),
        key_of({(1, 2)}),
        key_of(Color.RED),
        key_of(Shade.RED),
        key_of(None),
        key_of(""),
        key_of(b""),
        key_of(()),
    ]
    digests = [digest(k) for k in keys]
    assert len(set(digests)) == len(keys)
    assert all(len(d) == 40 and int(d, 16) >= 0 for d in digests)


def test_sets_digest_alike_whatever_their_order() -> None:
    a = frozenset(f"item{i}" for i in range(50))
    b = frozenset(sorted(a, reverse=True))
    assert digest(key_of(a)) == digest(key_of(b))
    assert digest(key_of({"x": 1, "y": 2})) == digest(key_of({"y": 2, "x": 1}))


def test_stdlib_values_and_zones() -> None:
    paris = zoneinfo.ZoneInfo("Europe/Paris")
    noon = datetime.datetime(2024, 3, 1, 12, tzinfo=datetime.UTC)
    same_instant = noon.astimezone(paris)
    assert key_of(noon) == key_of(same_instant)
    # Finer than ==: the zone is part of the digest (two Redis entries, never a wrong one).
    assert digest(key_of(noon)) != digest(key_of(same_instant))
    for v in [
        noon,
        datetime.time(1, 2, tzinfo=datetime.timezone(datetime.timedelta(hours=2))),
        decimal.Decimal("1.10"),
        fractions.Fraction(1, 3),
        uuid.UUID(int=5),
        pathlib.PurePosixPath("/a/b"),
        datetime.UTC,
    ]:
        assert digest(key_of(v)) == digest(key_of(v))


def test_frames_and_arrow() -> None:
    df = pd.DataFrame(
        {
            "a": [1.0, float("nan")],
            "t": pd.date_range("2024", periods=2, tz="Europe/Paris"),
            "c": pd.Categorical(["x", "y"]),
            "n": pd.array([1, None], dtype="Int64"),
        },
        index=pd.Index([3, 4], name="i"),
    )
    assert digest(key_of(df)) == digest(key_of(df.copy()))
    other = df.copy()
    other.iloc[0, 0] = 2.0
    assert digest(key_of(df)) != digest(key_of(other))
    assert digest(key_of(df["t"])) != digest(key_of(df["t"].dt.tz_convert("UTC")))
    table = pa.table({"x": [1, None, 3], "s": ["a", "b", None]})
    assert digest(key_of(table)) == digest(key_of(pa.Table.from_batches(table.to_batches(1))))
    assert digest(key_of(table)) != digest(key_of(table.slice(1)))


def test_numpy_dtypes_structured_and_byte_order() -> None:
    a = np.zeros(2, dtype=[("a", "<i4"), ("b", "<f4")])
    b = np.zeros(2, dtype=[("a", "<f4"), ("b", "<i4")])
    assert key_of(a) != key_of(b)
    assert digest(key_of(a)) != digest(key_of(b))
    le, be = np.arange(3, dtype="<i4"), np.arange(3, dtype=">i4")
    assert digest(key_of(le)) != digest(key_of(be))
    assert digest(key_of(np.float32(1))) != digest(key_of(np.float64(1)))


class Opaque:
    """Keyed by its own ``__hash__``: fine in one process, meaningless in another."""

    def __hash__(self) -> int:
        return 1

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Opaque)


@pytest.mark.parametrize(
    "value",
    [Opaque(), (1, Opaque()), frozenset({Opaque()}), {"k": Opaque()}, lambda: 1],
)
def test_an_object_keyed_by_its_own_hash_is_unshareable(value: Any) -> None:
    key = key_of(value)
    with pytest.raises(Unshareable) as caught:
        digest(key)
    assert isinstance(caught.value, TypeError)
    name = type(value).__qualname__ if not isinstance(value, (tuple, frozenset, dict)) else ""
    assert name in str(caught.value)
    assert "__hash__" in str(caught.value)


def test_unshareable_names_the_type() -> None:
    with pytest.raises(Unshareable, match=r"test_redis_digest\.Opaque is keyed by its own"):
        digest(key_of((1, Opaque())))


def test_deep_key_is_unshareable_not_a_crash() -> None:
    key: Any = (int, 1)
    for _ in range(sys.getrecursionlimit() * 2):
        key = (key,)
    with pytest.raises(Unshareable, match="nested too deeply"):
        digest(key)


_SAMPLE = """
import json, sys, datetime, decimal, uuid
import numpy as np, pandas as pd
from guardrails import _keys_frames
from guardrails._keys import key_of
from guardrails.redis.digest import digest
sys.path.insert(0, {tests!r})
values = [
    1, "x", 2.5, -0.0, float("nan"), b"raw", None, True, (1, "a"), frozenset(range(40)),
    {{"b": 1, "a": 2}}, {{3, 1, 2}}, np.arange(6.0).reshape(2, 3), np.int16(4),
    datetime.datetime(2024, 1, 2, 3, 4, 5), decimal.Decimal("1.5"), uuid.UUID(int=9),
    pd.DataFrame({{"a": [1, 2], "s": ["x", "y"]}}), int, frozenset({{"p", "q", "r"}}),
]
print(json.dumps([digest(key_of(v)) for v in values]))
"""


def test_the_same_digests_under_another_hash_seed() -> None:
    tests = os.path.dirname(os.path.abspath(__file__))
    code = _SAMPLE.format(tests=tests)
    found = []
    for seed in ("1", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run(
            [sys.executable, "-c", code],
            check=False,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        found.append(json.loads(done.stdout))
    assert found[0] == found[1]
    ns: dict[str, Any] = {}
    exec(code.replace("print(json.dumps(", "result = (("), ns)
    assert [str(d) for d in ns["result"]] == found[0]
    assert len(set(found[0])) == len(found[0])
