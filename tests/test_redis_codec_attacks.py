"""Attacks on what the Redis cache level stores (codec) and how it names it (digest): values that
would come back different, payloads that would import, allocate, crash or raise the wrong error,
and keys that would share a digest with a key they do not equal."""

from __future__ import annotations

import datetime
import decimal
import enum
import io
import struct
import subprocess
import sys
import zoneinfo
from typing import Any

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guardrails.redis import codec
from guardrails.redis.codec import BadValue, Unstorable, decoder, encoder
from guardrails.redis.digest import digest

ENCODE, DECODE = encoder("auto", None), decoder("auto", None)


def forged(codec_id: int, body: bytes) -> bytes:
    """An unsigned payload as anyone with write access to Redis can write it."""
    return codec._HEADER.pack(codec.MAGIC, codec.VERSION, codec_id, 0, 1.0) + body


def arrow_stream(table: pa.Table, **options: Any) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema, options=pa.ipc.IpcWriteOptions(**options)) as w:
        w.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


def stored_or_refused(value: Any) -> Any:
    """The value read back, or ``Unstorable``'s message; never another error."""
    try:
        data = ENCODE(value, 1.0)
    except Unstorable as exc:
        return exc
    return DECODE(data)[0]


# --- exact round trips --------------------------------------------------------------------------


def test_an_int_json_cannot_write_is_unstorable_not_a_value_error() -> None:
    for value in (10**5000, (10**5000,), {"a": [10**5000]}):
        with pytest.raises(Unstorable, match=r"int|tuple|dict"):
            ENCODE(value, 1.0)
    with pytest.raises(Unstorable, match="digits"):
        ENCODE(10**5000, 1.0)
    pickled = encoder("pickle", b"k"), decoder("pickle", b"k")
    assert pickled[1](pickled[0](10**5000, 1.0))[0] == 10**5000


@pytest.mark.parametrize(
    "value", [np.str_("a\x00"), np.bytes_(b"a\x00\x00"), (np.str_("x\x00"),)], ids=repr
)
def test_numpy_strings_with_trailing_nuls_are_never_cut(value: Any) -> None:
    back = stored_or_refused(value)
    assert isinstance(back, Unstorable) or back == value


def test_numpy_strings_without_trailing_nuls_still_round_trip() -> None:
    for value in (np.str_("a\x00b"), np.bytes_(b"\x00a"), np.str_("")):
        back = DECODE(ENCODE(value, 1.0))[0]
        assert type(back) is type(value) and back == value


class Level(enum.IntEnum):
    LOW = 1


class Loose(pydantic.BaseModel):
    x: Any = None
    when: datetime.datetime | None = None
    amount: decimal.Decimal | None = None


class Aliased(pydantic.BaseModel):
    user_id: int = pydantic.Field(alias="userId")


class WithDefaults(pydantic.BaseModel):
    a: int = 1
    b: list[int] = pydantic.Field(default_factory=list)
    inner: Loose = pydantic.Field(default_factory=Loose)


class Outer(pydantic.BaseModel):
    class Inner(pydantic.BaseModel):
        n: int

    inner: Outer.Inner


@pytest.mark.parametrize(
    "value",
    [
        Loose(x=Level.LOW),  # == 1, comes back an int
        Loose(x=[1, Level.LOW]),
        Loose(x=(1, 2)),
        Loose(x={1: "a"}),
        Loose(when=datetime.datetime(2024, 3, 31, 1, 30, tzinfo=zoneinfo.ZoneInfo("Europe/Paris"))),
    ],
    ids=["intenum", "intenum-in-list", "tuple", "int-keys", "named-zone"],
)
def test_a_pydantic_model_that_json_would_change_is_unstorable(value: Any) -> None:
    with pytest.raises(Unstorable, match=r"pydantic model .*Loose.* does not come back exactly"):
        ENCODE(value, 1.0)


def test_pydantic_models_that_do_round_trip_keep_types_zones_and_set_fields() -> None:
    utc = Loose(x=[1, 1.0, True], when=datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC))
    back = DECODE(ENCODE(utc, 1.0))[0]
    assert back == utc and [type(v) for v in back.x] == [int, float, bool]
    assert back.when.utcoffset() == datetime.timedelta(0)

    assert DECODE(ENCODE(Aliased(userId=3), 1.0))[0] == Aliased(userId=3)  # by alias
    assert DECODE(ENCODE(Outer(inner=Outer.Inner(n=1)), 1.0))[0].inner.n == 1

    partly = WithDefaults(a=1)
    back = DECODE(ENCODE(partly, 1.0))[0]
    # What model_dump(exclude_unset=True) (FastAPI's response_model_exclude_unset) shows.
    assert back.model_fields_set == {"a"} and back.inner.model_fields_set == set()
    assert back.model_dump(exclude_unset=True) == {"a": 1}


def test_a_decimal_keeps_its_exponent_in_a_model() -> None:
    value = Loose(amount=decimal.Decimal("1.10"))
    back = DECODE(ENCODE(value, 1.0))[0]
    assert str(back.amount) == "1.10"


@pytest.mark.parametrize(
    "column",
    [
        [{"a": 1}, {"a": 1.5}],  # Arrow makes both doubles: {"a": 1.0}
        [decimal.Decimal("1.0"), decimal.Decimal("1.00")],  # one scale for the column
        [[1, 2.5]],
    ],
    ids=["dict-int-float", "decimal-scale", "list"],
)
def test_an_object_column_arrow_would_change_is_unstorable(column: list[Any]) -> None:
    frame = pd.DataFrame({"a": pd.Series(column, dtype=object)})
    with pytest.raises(Unstorable, match="does not come back unchanged"):
        ENCODE(frame, 1.0)
    with pytest.raises(Unstorable, match="does not come back unchanged"):
        ENCODE(frame["a"], 1.0)


def test_object_columns_arrow_keeps_exactly_still_round_trip() -> None:
    frame = pd.DataFrame(
        {
            "b": pd.Series([b"x", None], dtype=object),
            "d": pd.Series([datetime.date(2020, 1, 1), None], dtype=object),
            "m": pd.Series([decimal.Decimal("1.50"), decimal.Decimal("2.25")], dtype=object),
        }
    )
    back = DECODE(ENCODE(frame, 1.0))[0]
    pd.testing.assert_frame_equal(back, frame)
    assert [str(v) for v in back["m"]] == ["1.50", "2.25"]


# --- hostile payloads ---------------------------------------------------------------------------


def test_a_forged_pydantic_class_path_imports_nothing() -> None:
    # A module's __getattr__ imports submodules on demand: numpy.testing, numpy.f2py,
    # pydantic.v1. Run where none of them is imported yet.
    script = """
import sys
import numpy, pydantic
from guardrails.redis.codec import BadValue, decoder
from tests.test_redis_codec_attacks import forged
decode = decoder("auto", None)
before = set(sys.modules)
for path in (b"numpy:testing.X", b"numpy:f2py.X", b"pydantic:v1.BaseModel", b"numpy:typing.X"):
    try:
        decode(forged(8, path + b"\\n{}"))
    except BadValue:
        pass
    else:
        raise SystemExit(f"{path} read")
print(sorted(m for m in set(sys.modules) - before if m.startswith(("numpy", "pydantic"))))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_deeply_nested_json_from_redis_is_a_bad_value() -> None:
    for codec_id in (codec.JSON, codec.TAGGED):
        with pytest.raises(BadValue, match=r"RecursionError|corrupt"):
            DECODE(forged(codec_id, b"[" * 200_000 + b"]" * 200_000))


def test_a_null_column_claiming_millions_of_rows_is_a_bad_value_before_it_is_built() -> None:
    body = arrow_stream(pa.table({"a": pa.nulls(20_000_000)}))  # 224 bytes, 160 MB in pandas
    for codec_id in (codec.PANDAS_FRAME, codec.POLARS_FRAME):
        with pytest.raises(BadValue, match="too much to read"):
            DECODE(forged(codec_id, body))
    # Run-end encoded: two tiny buffers, a logical length in the metadata.
    ree = pa.RunEndEncodedArray.from_arrays(pa.array([20_000_000], pa.int32()), pa.array([1.5]))
    with pytest.raises(BadValue, match="too much to read"):
        DECODE(forged(codec.PANDAS_FRAME, arrow_stream(pa.table({"a": ree}))))


def test_a_frame_of_mostly_nulls_is_refused_when_written_not_when_read() -> None:
    frame = pd.DataFrame({"a": pd.Series([None] * 3_000_000, dtype=object)})
    with pytest.raises(Unstorable):
        ENCODE(frame, 1.0)
    small = pd.DataFrame({"a": pd.Series([None] * 1000, dtype=object)})
    pd.testing.assert_frame_equal(DECODE(ENCODE(small, 1.0))[0], small)


@pytest.mark.parametrize("compression", ["zstd", "lz4"])
def test_a_compressed_arrow_stream_is_a_bad_value_before_it_is_decompressed(
    compression: str,
) -> None:
    table = pa.table({"a": pa.array(np.zeros(5_000_000))})  # 40 MB from a few KB
    body = arrow_stream(table, compression=compression)
    assert len(body) < 200_000
    for codec_id in (codec.PANDAS_FRAME, codec.PANDAS_SERIES, codec.POLARS_FRAME):
        with pytest.raises(BadValue, match="compressed"):
            DECODE(forged(codec_id, body))


def test_string_offsets_past_their_bytes_are_a_bad_value_not_a_segfault() -> None:
    # The IPC reader checks buffer sizes only; to_pandas (or printing the frame) then read
    # a gigabyte past a 4-byte buffer. In a subprocess: the failure was a segfault.
    script = """
import struct
import pyarrow as pa
from guardrails.redis import codec
from guardrails.redis.codec import BadValue, decoder
from tests.test_redis_codec_attacks import arrow_stream, forged
body = arrow_stream(pa.table({"a": pa.array(["ab", "cd"])}))
good = struct.pack("<3i", 0, 2, 4)
assert body.count(good) == 1
bad = body.replace(good, struct.pack("<3i", 0, 2, 1 << 30))
for codec_id in (codec.PANDAS_FRAME, codec.PANDAS_SERIES, codec.POLARS_FRAME):
    try:
        value = decoder("auto", None)(forged(codec_id, bad))[0]
    except BadValue:
        continue
    print(repr(value))
print("ok")
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert done.stdout.strip() == "ok"


def test_bytes_after_the_end_of_an_arrow_stream_are_a_bad_value() -> None:
    body = ENCODE(pd.DataFrame({"a": [1, 2]}), 1.0)
    with pytest.raises(BadValue, match=r"end marker|after"):
        DECODE(body + b"\xff\xff\xff\xff\x00\x00\x00\x00")


FRAMES = [
    pd.DataFrame({"a": [1, 2, 3], "s": ["x", "y", None]}, index=pd.Index([3, 1, 2], name="i")),
    pd.Series([1.5, None], name="v"),
    pl.DataFrame({"a": [1, 2], "s": ["x", None], "l": [[1], [2, 3]]}),
]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(range(len(FRAMES))), st.data())
def test_mutated_frame_payloads_are_bad_values_or_values_never_a_crash(
    which: int, data: st.DataObject
) -> None:
    payload = bytearray(ENCODE(FRAMES[which], 1.0))
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(codec.HEADER_SIZE, len(payload) - 1))
        payload[at] = data.draw(st.integers(0, 255))
    try:
        value = DECODE(bytes(payload))[0]
    except BadValue:
        return
    repr(value)  # built and readable: no out-of-bounds buffer inside


# --- digests ------------------------------------------------------------------------------------


class Perm(enum.Flag):
    R = 1
    W = 2


class Bits(enum.IntFlag):
    A = 1


def test_flag_members_without_a_name_have_digests() -> None:
    values = [Perm(0), Perm.R, Perm.W, Perm.R | Perm.W, Bits(0), Bits(8), Bits(9)]
    digests = [digest((type(v), v)) for v in values]
    assert len(set(digests)) == len(values)
    assert digest((Perm, Perm.R | Perm.W)) == digest((Perm, Perm.W | Perm.R))


def _class(module: str, qualname: str) -> type:
    cls = type(qualname.rpartition(".")[2], (), {})
    cls.__module__, cls.__qualname__ = module, qualname
    return cls


def test_a_module_and_a_nested_class_with_one_dotted_path_differ() -> None:
    a, b = _class("pkg.models", "Config"), _class("pkg", "models.Config")
    assert digest(a) != digest(b)
    assert digest((a, "x")) != digest((b, "x"))


def test_arrow_struct_field_names_that_look_like_fields_differ() -> None:
    one = pa.struct([("a: int64, b", pa.int64())])
    two = pa.struct([("a", pa.int64()), ("b", pa.int64())])
    assert str(one) == str(two) and one != two
    assert digest(one) != digest(two)
    assert digest(pa.struct([("a", pa.int64())])) == digest(pa.struct([("a", pa.int64())]))
    assert digest(pa.list_(pa.int64())) != digest(pa.list_(pa.int32()))
    in_dict = pa.dictionary(pa.int32(), one), pa.dictionary(pa.int32(), two)
    assert str(in_dict[0]) == str(in_dict[1]) and digest(in_dict[0]) != digest(in_dict[1])


def test_frames_written_by_polars_and_pyarrow_pass_the_stream_check() -> None:
    out = io.BytesIO()
    pl.DataFrame({"a": [1, 2]}).write_ipc_stream(out)
    codec._check_arrow(out.getvalue(), 0)
    codec._check_arrow(arrow_stream(pa.table({"a": [1, 2]})), 0)
    with pytest.raises(BadValue):
        codec._check_arrow(struct.pack("<Ii", 0xFFFFFFFF, 1 << 30) + b"\x00" * 64, 0)
