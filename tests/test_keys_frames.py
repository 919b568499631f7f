"""Cache keys for DataFrames, Series, Index, polars, pyarrow, torch tensors and scipy sparse.

Objects that differ in values, index, column names or dtypes never share a key; equal ones
share it whatever their memory layout (a slice, a view, another chunking or block layout).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Hashable
from typing import Any

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa  # type: ignore[import-untyped]
import pytest
import scipy.sparse as sp  # type: ignore[import-untyped]

from guardrails import configure, guarded
from guardrails._keys import UnkeyableArgument, key_of


def same_key(a: Any, b: Any) -> bool:
    ka, kb = key_of(a), key_of(b)
    if ka == kb:
        assert hash(ka) == hash(kb)
        return True
    return False


def all_distinct(values: list[Any]) -> None:
    keys: list[Hashable] = [key_of(v) for v in values]
    for i, k in enumerate(keys):
        for j in range(i + 1, len(keys)):
            assert k != keys[j], (i, j, values[i], values[j])


# --- pandas DataFrame -------------------------------------------------------------------------


def _frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "x": np.arange(6, dtype=np.float64) / 3,
            "n": np.arange(6, dtype=np.int64),
            "s": ["a", "bb", "", "d", "e", "ff"],
            "c": pd.Categorical(["u", "v", "u", "w", "v", "u"]),
            "m": pd.array([1, None, 3, 4, None, 6], dtype="Int64"),
            "t": pd.date_range("2024-01-01", periods=6, tz="Europe/Paris"),
        },
        index=pd.Index([10, 11, 12, 13, 14, 15], name="row"),
    )


def test_an_equal_frame_shares_the_key_whatever_its_layout() -> None:
    df = _frame()
    assert same_key(df, df.copy())
    assert same_key(df, df.copy(deep=True).iloc[:, :])
    # One block per column against consolidated blocks.
    piecewise = pd.DataFrame(index=df.index)
    for name in df.columns:
        piecewise[name] = df[name].copy()
    assert df.equals(piecewise)
    assert same_key(df, piecewise)
    # A slice, and the same rows copied into fresh memory.
    assert same_key(df.iloc[1:4], df.iloc[1:4].copy())
    # A Fortran-ordered float block against a C-ordered one.
    data = np.random.default_rng(1).random((50, 4))
    c = pd.DataFrame(np.ascontiguousarray(data), columns=list("abcd"))
    f = pd.DataFrame(np.asfortranarray(data), columns=list("abcd"))
    assert same_key(c, f)
    # Strided views of a bigger array.
    big = np.random.default_rng(2).random((100, 8))
    assert same_key(pd.DataFrame(big[::2, ::2]), pd.DataFrame(big[::2, ::2].copy()))


def test_frames_differing_in_anything_a_call_can_read_never_share_a_key() -> None:
    df = _frame()
    changed = df.copy()
    changed.iloc[3, 0] = 99.0
    renamed = df.rename(columns={"x": "y"})
    reordered = df[["n", "x", "s", "c", "m", "t"]]
    reindexed = df.set_axis(pd.Index([10, 11, 12, 13, 14, 16], name="row"), axis=0)
    index_renamed = df.rename_axis("other")
    float_index = df.set_axis(df.index.astype("float64"), axis=0)
    columns_named = df.rename_axis("features", axis=1)
    int_as_float = df.astype({"n": "float64"})
    nullable = df.astype({"n": "Int64"})
    other_zone = df.assign(t=df["t"].dt.tz_convert("UTC"))
    cats = df.assign(c=df["c"].cat.set_categories(["u", "v", "w", "z"]))
    all_distinct(
        [
            df,
            changed,
            renamed,
            reordered,
            reindexed,
            index_renamed,
            float_index,
            columns_named,
            int_as_float,
            nullable,
            other_zone,
            cats,
            df.iloc[:5],
            df["x"],
            df[["x"]],
        ]
    )
    # Some of them are equal by .equals(), which reads neither names nor the columns' dtype.
    assert df.equals(index_renamed) and df.equals(columns_named)


def test_the_columns_index_dtype_and_the_index_type_count() -> None:
    ints = pd.DataFrame([[1.0, 2.0]], columns=pd.Index([0, 1], dtype="int64"))
    int32 = pd.DataFrame([[1.0, 2.0]], columns=pd.Index([0, 1], dtype="int32"))
    strs = pd.DataFrame([[1.0, 2.0]], columns=["0", "1"])
    objs = pd.DataFrame([[1.0, 2.0]], columns=pd.Index(["0", "1"], dtype=object))
    all_distinct([ints, int32, strs, objs])
    # A RangeIndex is told from the int64 Index with its values: type(df.index) can be read.
    ranged = pd.DataFrame({"a": [1.0, 2.0]})
    listed = ranged.set_axis(pd.Index([0, 1], dtype="int64"), axis=0)
    assert ranged.equals(listed)
    assert not same_key(ranged, listed)
    # Two RangeIndex objects with the same start, stop and step share the key.
    assert same_key(pd.DataFrame({"a": [1.0, 2.0]}), ranged)


def test_negative_zero_and_nan_follow_the_float_rules() -> None:
    zero = pd.Series([0.0, 1.0])
    negative = pd.Series([-0.0, 1.0])
    assert zero.equals(negative)
    assert not same_key(zero, negative)  # as np.array([0.0]) and np.array([-0.0]) differ
    assert same_key(pd.Series([np.nan, 1.0]), pd.Series([float("nan"), 1.0]))


def test_nullable_columns_key_by_data_and_mask_never_by_what_a_masked_slot_holds() -> None:
    mask = np.array([False, True, False])
    one = pd.arrays.IntegerArray(np.array([1, 7, 3]), mask.copy())
    other = pd.arrays.IntegerArray(np.array([1, -5, 3]), mask.copy())
    assert pd.Series(one).equals(pd.Series(other))
    assert same_key(pd.Series(one), pd.Series(other))
    assert same_key(one, other)
    bools = pd.arrays.BooleanArray(np.array([True, True]), np.array([False, True]))
    bools2 = pd.arrays.BooleanArray(np.array([True, False]), np.array([False, True]))
    assert same_key(pd.Series(bools), pd.Series(bools2))
    all_distinct(
        [
            pd.Series(one),
            pd.Series(pd.array([1, 2, 3], dtype="Int64")),
            pd.Series(pd.array([1, None, 3], dtype="Int32")),
            pd.Series(pd.array([1.0, None, 3.0], dtype="Float64")),
            # A NaN that is a value, not a missing slot.
            pd.Series(pd.arrays.FloatingArray(np.array([1.0, np.nan, 3.0]), np.zeros(3, bool))),
            pd.Series([1.0, np.nan, 3.0]),
        ]
    )


def test_categoricals_key_by_codes_categories_and_order() -> None:
    base = pd.Series(pd.Categorical(["a", "b", "a"], categories=["a", "b"]))
    all_distinct(
        [
            base,
            pd.Series(pd.Categorical(["a", "b", "a"], categories=["b", "a"])),  # other codes
            pd.Series(pd.Categorical(["a", "b", "a"], categories=["a", "b", "c"])),
            pd.Series(pd.Categorical(["a", "b", "a"], categories=["a", "b"], ordered=True)),
            pd.Series(pd.Categorical(["x", "y", "x"], categories=["x", "y"])),  # same codes
            pd.Series(["a", "b", "a"]),
        ]
    )
    assert same_key(base, pd.Series(pd.Categorical(["a", "b", "a"], categories=["a", "b"])))
    ci = pd.CategoricalIndex(["p", "q"], name="k")
    assert same_key(ci, pd.CategoricalIndex(["p", "q"], name="k"))
    assert not same_key(ci, pd.CategoricalIndex(["p", "q"], name="j"))
    assert not same_key(ci, pd.Index(["p", "q"], name="k"))


def test_string_columns_key_by_bytes_and_lengths() -> None:
    def obj(*xs: Any) -> pd.Series:
        return pd.Series(list(xs), dtype=object)

    all_distinct(
        [
            obj("ab", "c"),
            obj("a", "bc"),
            obj("abc", ""),
            obj("a", "b\x00c"),
            obj("a\x00", "bc"),
            obj("ab", "c", ""),
            obj(np.str_("ab"), "c"),  # numpy's str type is another type, as for scalars
            obj(b"ab", "c"),
            pd.Series(["ab", "c"], dtype="string[python]"),
            pd.Series(["ab", "c"], dtype="string[pyarrow]"),
            pd.Series(["ab", "c"]),  # pandas 3's default str dtype
        ]
    )
    assert same_key(obj("ab", "c"), obj("a" + "b", "c"))
    # Lone surrogates are text too: keyed, not an error.
    assert same_key(obj("\ud800", "x"), obj("\ud800", "x"))
    assert not same_key(obj("\ud800"), obj("\ud801"))
    # A slice of an Arrow-backed string column keys as its copy.
    s = pd.Series([f"w{i}" for i in range(100)], dtype="string[pyarrow]")
    assert same_key(s.iloc[37:60], s.iloc[37:60].copy())
    assert same_key(s.iloc[37:60].reset_index(drop=True), s.iloc[37:60].reset_index(drop=True))


def test_object_columns_of_other_values_key_element_by_element() -> None:
    def obj(*xs: Any) -> pd.Series:
        return pd.Series(list(xs), dtype=object)

    all_distinct([obj("a", None), obj("a", np.nan), obj("a", pd.NA), obj(1, 2), obj(1.0, 2)])
    assert same_key(obj("a", None, 3), obj("a", None, 3))
    assert same_key(obj((1, 2), [3]), obj((1, 2), [3]))

    class Opaque:
        __hash__ = None  # type: ignore[assignment]

    frame = pd.DataFrame({"ok": [1, 2], "bad": [Opaque(), Opaque()]})
    with pytest.raises(UnkeyableArgument, match=r"column 1 holds a value with no key"):
        key_of(frame)


def test_datetime_indexes_key_by_instant_unit_and_zone_not_by_freq() -> None:
    paris = pd.date_range("2024-03-30", periods=4, freq="D", tz="Europe/Paris")
    listed = pd.DatetimeIndex(list(paris))
    assert paris.freq is not None and listed.freq is None
    assert paris.equals(listed)
    assert same_key(paris, listed)
    all_distinct(
        [
            paris,
            paris.tz_convert("UTC"),
            paris.tz_localize(None),
            paris.as_unit("ns"),
            paris.rename("when"),
            pd.period_range("2024-03", periods=4, freq="M"),
            pd.period_range("2024-03", periods=4, freq="D"),
            pd.timedelta_range("1D", periods=4),
        ]
    )


def test_multiindexes_key_by_level_values_not_by_their_encoding() -> None:
    full = pd.MultiIndex.from_product([["a", "b", "c"], [1, 2]], names=["k", "n"])
    part = full[:2]  # keeps the unused levels "b" and "c"
    assert same_key(part, part.remove_unused_levels())
    listed = pd.MultiIndex.from_tuples([("a", 1), ("a", 2)], names=["k", "n"])
    assert same_key(part, listed)
    all_distinct(
        [
            part,
            listed.set_names(["k", "m"]),
            pd.MultiIndex.from_tuples([("a", 1), ("a", 3)], names=["k", "n"]),
            pd.MultiIndex.from_tuples([("a", 1.0), ("a", 2.0)], names=["k", "n"]),
        ]
    )
    frame = pd.DataFrame({"v": [1.0, 2.0]}, index=part)
    assert same_key(frame, pd.DataFrame({"v": [1.0, 2.0]}, index=listed))


def test_series_key_by_name_index_and_values() -> None:
    s = pd.Series([1.0, 2.0], index=["a", "b"], name="p")
    all_distinct(
        [
            s,
            s.rename("q"),
            s.rename(None),
            pd.Series([1.0, 2.0], index=["a", "c"], name="p"),
            pd.Series([1, 2], index=["a", "b"], name="p"),
            s.to_frame(),
            s.index,
            s.values,
        ]
    )
    assert same_key(s, pd.Series([1.0, 2.0], index=pd.Index(["a", "b"]), name="p"))


def test_interval_and_sparse_pandas_values_are_keyed() -> None:
    iv = pd.Series(pd.interval_range(0, 3))
    assert same_key(iv, pd.Series(pd.interval_range(0, 3)))
    all_distinct([iv, pd.Series(pd.interval_range(0, 3, closed="left")), iv.iloc[:2]])
    sparse = pd.Series(pd.arrays.SparseArray([0, 0, 1]))
    assert same_key(sparse, pd.Series(pd.arrays.SparseArray([0, 0, 1])))
    assert not same_key(sparse, pd.Series(pd.arrays.SparseArray([0, 1, 1])))


# --- pyarrow ----------------------------------------------------------------------------------


def test_arrow_tables_share_a_key_whatever_their_chunking() -> None:
    one = pa.table({"a": [1, None, 3, 4], "s": ["x", "yy", None, ""], "f": [0.5, 1.5, None, 2]})
    many = pa.Table.from_batches(one.to_batches(max_chunksize=1))
    uneven = pa.concat_tables([one.slice(0, 3), one.slice(3)])
    assert one.equals(many) and one.equals(uneven)
    assert many.column(0).num_chunks == 4
    assert same_key(one, many)
    assert same_key(one, uneven)
    assert same_key(one.column("s"), many.column("s"))
    # Schema metadata (pandas leaves some) is not part of the value, as for .equals().
    tagged = one.replace_schema_metadata({"origin": "test"})
    assert same_key(one, tagged)


def test_arrow_values_differing_in_type_names_or_content_never_share_a_key() -> None:
    t = pa.table({"a": pa.array([1, 2], pa.int64())})
    all_distinct(
        [
            t,
            pa.table({"b": pa.array([1, 2], pa.int64())}),
            pa.table({"a": pa.array([1, 2], pa.int32())}),
            pa.table({"a": pa.array([1, 3], pa.int64())}),
            pa.table({"a": pa.array([1, None], pa.int64())}),
            pa.table({"a": pa.array([1, 2, 0], pa.int64())}),
            t.column("a"),
            t.column("a").chunk(0),
            pa.RecordBatch.from_pydict({"a": pa.array([1, 2], pa.int64())}),
        ]
    )
    all_distinct(
        [
            pa.array(["ab", "c"]),
            pa.array(["a", "bc"]),
            pa.array(["ab", "c"], pa.large_string()),
            pa.array([b"ab", b"c"]),
            pa.array(["ab", None]),
            pa.array(["ab", ""]),
        ]
    )


def test_arrow_null_slots_count_for_nothing() -> None:
    # Two int64 arrays whose null slot holds different garbage.
    validity = pa.py_buffer(np.packbits([1, 0, 1], bitorder="little").tobytes())
    a = pa.Array.from_buffers(
        pa.int64(), 3, [validity, pa.py_buffer(np.array([1, 111, 3]).tobytes())]
    )
    b = pa.Array.from_buffers(
        pa.int64(), 3, [validity, pa.py_buffer(np.array([1, -9, 3]).tobytes())]
    )
    assert a.equals(b)
    assert same_key(a, b)
    assert same_key(a, pa.array([1, None, 3]))
    # A null string slot whose offsets span bytes.
    offsets = pa.py_buffer(np.array([0, 1, 4, 5], dtype=np.int32).tobytes())
    s1 = pa.Array.from_buffers(pa.string(), 3, [validity, offsets, pa.py_buffer(b"aXYZb")])
    assert s1.to_pylist() == ["a", None, "b"]
    assert same_key(s1, pa.array(["a", None, "b"]))


def test_arrow_slices_nested_and_dictionary_values() -> None:
    big = pa.array([[1, 2], None, [], [3], [4, 5, 6]])
    assert same_key(big.slice(2, 3), pa.array([[], [3], [4, 5, 6]]))
    assert not same_key(pa.array([[1, 2], [3]]), pa.array([[1], [2, 3]]))
    assert not same_key(pa.array([[1, 2], []]), pa.array([[1, 2], None]))
    st = pa.array([{"x": 1, "y": "a"}, None, {"x": 3, "y": None}])
    assert same_key(st.slice(1), pa.array([None, {"x": 3, "y": None}], st.type))
    assert not same_key(st, pa.array([{"x": 1, "y": "a"}, None, {"x": 3, "y": "b"}]))
    # Dictionary-encoded: keyed by the values, however the dictionary is laid out.
    d1 = pa.DictionaryArray.from_arrays(pa.array([0, 1, 0]), pa.array(["p", "q"]))
    d2 = pa.DictionaryArray.from_arrays(pa.array([1, 0, 1]), pa.array(["q", "p", "unused"]))
    assert same_key(d1, d2)
    assert not same_key(d1, pa.array(["p", "q", "p"]))  # the type says how it is encoded
    fixed = pa.array([b"ab", b"cd", b"ef"], pa.binary(2))
    assert same_key(fixed.slice(1), pa.array([b"cd", b"ef"], pa.binary(2)))
    dec = pa.array([1, 2], pa.decimal128(5, 2))
    assert not same_key(dec, pa.array([1, 3], pa.decimal128(5, 2)))
    assert same_key(pa.array([True, False, True]).slice(1), pa.array([False, True]))
    assert not same_key(pa.array([None, None]), pa.array([None, None, None]))
    m = pa.array([[("k", 1)]], pa.map_(pa.string(), pa.int64()))
    assert same_key(m, pa.array([[("k", 1)]], pa.map_(pa.string(), pa.int64())))
    assert not same_key(m, pa.array([[("k", 2)]], pa.map_(pa.string(), pa.int64())))


def test_arrow_backed_pandas_columns_key_as_their_arrow_arrays() -> None:
    s = pd.Series([1, None, 3], dtype="int64[pyarrow]")
    assert same_key(s, pd.Series([1, None, 3], dtype="int64[pyarrow]"))
    assert not same_key(s, pd.Series([1, None, 3], dtype="Int64"))
    from_arrow = pa.table({"v": pa.chunked_array([[1], [None, 3]])}).to_pandas(
        types_mapper=pd.ArrowDtype
    )
    assert same_key(from_arrow["v"], s.rename("v"))


# --- polars -----------------------------------------------------------------------------------


def test_polars_frames_share_a_key_when_equal_whatever_their_chunks() -> None:
    a = pl.DataFrame({"x": [1, 2], "s": ["p", None], "f": [0.5, None]})
    b = pl.DataFrame({"x": [3], "s": ["q"], "f": [1.5]})
    joined = pl.concat([a, b], rechunk=False)
    assert joined.n_chunks() == 2
    assert joined.equals(pl.concat([a, b], rechunk=True))
    assert same_key(joined, pl.concat([a, b], rechunk=True))
    assert same_key(joined["s"], pl.concat([a, b])["s"])
    assert same_key(joined, joined.clone())
    all_distinct(
        [
            a,
            a.rename({"x": "y"}),
            a.select("s", "x", "f"),
            a.with_columns(pl.col("x").cast(pl.Int32)),
            a.with_columns(pl.col("s").cast(pl.Categorical)),
            a.with_columns(pl.col("f").fill_null(0.0)),
            a.head(1),
            a["x"],
            a["x"].rename("z"),
            a.to_pandas(),
        ]
    )
    assert not same_key(pl.Series([0.0]), pl.Series([-0.0]))
    assert same_key(
        a.slice(1, 1), pl.DataFrame({"x": [2], "s": [None], "f": [None]}).cast(a.schema)
    )


# --- scipy sparse -----------------------------------------------------------------------------


def test_sparse_matrices_key_by_canonical_content() -> None:
    dense = np.array([[0.0, 3.0, 0.0], [4.0, 0.0, 5.0]])
    canonical = sp.csr_matrix(dense)
    # Duplicates (1 + 2 at (0, 1)) and unsorted column indices within row 1.
    messy = sp.csr_matrix(
        (np.array([1.0, 2.0, 5.0, 4.0]), np.array([1, 1, 2, 0]), np.array([0, 2, 4])),
        shape=(2, 3),
    )
    assert not messy.has_canonical_format
    assert (messy != canonical).nnz == 0
    assert same_key(messy, canonical)
    assert not messy.has_canonical_format  # the caller's matrix is left as it was
    coo = sp.coo_matrix(([3.0, 4.0, 1.0, 4.0], ([0, 1, 1, 1], [1, 0, 2, 2])), shape=(2, 3))
    assert same_key(coo, sp.coo_matrix(dense))
    wide = sp.csr_matrix(
        (canonical.data, canonical.indices.astype(np.int64), canonical.indptr.astype(np.int64)),
        shape=(2, 3),
    )
    assert same_key(wide, canonical)
    all_distinct(
        [
            canonical,
            sp.csc_matrix(dense),
            sp.csr_array(dense),
            sp.csr_matrix(dense.astype(np.float32)),
            sp.csr_matrix(np.vstack([dense, np.zeros(3)])),
            sp.csr_matrix(dense * 2),
            sp.csr_matrix(np.where(dense == 3.0, -0.0, dense)),  # a stored -0.0 is a value
            dense,
        ]
    )
    for fmt in ("bsr", "dia", "lil", "dok"):
        m = sp.csr_matrix(dense).asformat(fmt)
        assert same_key(m, sp.csr_matrix(dense).asformat(fmt)), fmt
        assert not same_key(m, sp.csr_matrix(dense * 3).asformat(fmt)), fmt


# --- torch ------------------------------------------------------------------------------------


def test_torch_cpu_tensors_key_by_dtype_shape_and_logical_content() -> None:
    torch = pytest.importorskip("torch", reason="torch is not installed here (gigabytes of CUDA)")
    t = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    assert same_key(t.T, t.T.contiguous())
    assert same_key(t[:, ::2], t[:, ::2].clone())
    all_distinct(
        [
            t,
            t.reshape(4, 3),
            t.to(torch.float64),
            t.to(torch.bfloat16),
            t + 1,
            t.clone().requires_grad_(True),
            t.numpy(),
        ]
    )
    z = torch.tensor([1 + 2j])
    assert same_key(z.conj(), torch.tensor([1 - 2j]))
    with pytest.raises(UnkeyableArgument, match="meta"):
        key_of(torch.empty(2, device="meta"))
    with pytest.raises(UnkeyableArgument, match="layout"):
        key_of(t.to_sparse())


# --- through the cache ------------------------------------------------------------------------


def test_a_cached_function_over_frames_runs_once_per_content() -> None:
    configure({"policies": {"frames": {"cache": {"ttl": 60}}}})
    seen: list[Any] = []

    @guarded("frames")
    def score(df: Any) -> float:
        seen.append(df)
        return float(df.shape[0])

    df = _frame()
    score(df)
    score(df.copy())
    assert len(seen) == 1
    changed = df.copy()
    changed.iloc[0, 1] = 100
    score(changed)
    score(pa.Table.from_pandas(df))
    score(pl.from_pandas(df.reset_index()))
    assert len(seen) == 4

    class Opaque:
        __hash__ = None  # type: ignore[assignment]

    with pytest.raises(TypeError, match=r"guardrails\.policies\.frames\.cache\.key"):
        score(pd.DataFrame({"o": [Opaque()]}))


def test_importing_guardrails_and_keying_plain_values_imports_no_data_library() -> None:
    code = (
        "import sys, guardrails, numpy\n"
        "from guardrails._keys import key_of\n"
        "key_of((1, 'a', numpy.arange(3), object()))\n"
        "loaded = sorted({'pandas', 'polars', 'pyarrow', 'scipy', 'torch'} & set(sys.modules))\n"
        "print(loaded)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
