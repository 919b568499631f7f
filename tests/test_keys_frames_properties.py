"""Properties of frame keys: two values share a key exactly when the reference says they are equal.

The reference for pandas: same type, ``df1.equals(df2)``, the same dtypes (by repr: a
categorical's categories and order included), column names and index (type, values, dtype,
names), float bits (``-0.0`` is not ``0.0``) and object element types (``None`` is not NaN).
For pyarrow: ``equals`` and the same schema (names, types, nullability) and float bits; for
polars: ``equals`` with nulls equal, the same schema and float bits; for scipy sparse: the
same type, shape and dtype, the same dense values (by bits) and the same stored positions.
The values come from a small domain so that equal pairs are common, and each is also built
with another layout (a slice of a bigger frame, one block per column, other chunks), which
must never change its key.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa  # type: ignore[import-untyped]
import scipy.sparse as sp  # type: ignore[import-untyped]
from hypothesis import given, settings
from hypothesis import strategies as st

from guardrails._keys import key_of

FLOATS = [0.0, -0.0, 1.5, np.nan]
KINDS = ["float64", "int64", "Int64", "str", "object", "category", "float32"]


@st.composite
def columns(draw: st.DrawFn, rows: int) -> tuple[str, Any]:
    kind = draw(st.sampled_from(KINDS))
    if kind in ("float64", "float32"):
        return kind, draw(st.lists(st.sampled_from(FLOATS), min_size=rows, max_size=rows))
    if kind == "int64":
        return kind, draw(st.lists(st.integers(0, 1), min_size=rows, max_size=rows))
    if kind == "Int64":
        return kind, draw(st.lists(st.sampled_from([0, 1, None]), min_size=rows, max_size=rows))
    if kind == "category":
        values = draw(st.lists(st.sampled_from(["a", "b"]), min_size=rows, max_size=rows))
        cats = draw(st.sampled_from([["a", "b"], ["b", "a"], ["a", "b", "c"]]))
        return kind, (values, cats, draw(st.booleans()))
    pool = ["", "a", "ab", None] if kind == "object" else ["", "a", "ab", "b"]
    return kind, draw(st.lists(st.sampled_from(pool), min_size=rows, max_size=rows))


def build_column(kind: str, spec: Any) -> Any:
    if kind == "category":
        values, cats, ordered = spec
        return pd.Categorical(values, categories=cats, ordered=ordered)
    if kind == "object":
        return np.array(spec, dtype=object)
    if kind == "str":
        return pd.array(spec, dtype="str")
    if kind == "Int64":
        return pd.array(spec, dtype="Int64")
    return np.array(spec, dtype=kind)


@st.composite
def frame_specs(draw: st.DrawFn) -> dict[str, Any]:
    rows = draw(st.integers(0, 3))
    names = draw(st.lists(st.sampled_from(["a", "b", "c"]), min_size=0, max_size=3, unique=True))
    cols = [(name, *draw(columns(rows))) for name in names]
    index = draw(st.sampled_from(["range", "int", "float", "str", "named"]))
    return {"rows": rows, "cols": cols, "index": index}


@st.composite
def pairs(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any]]:
    """Two frame specs: the same, one small change apart, or drawn independently."""
    first = draw(frame_specs())
    how = draw(st.sampled_from(["same", "column", "index", "rename", "independent"]))
    if how == "same":
        return first, first
    if how == "independent":
        return first, draw(frame_specs())
    second = {**first, "cols": list(first["cols"])}
    if how == "index":
        second["index"] = draw(st.sampled_from(["range", "int", "float", "str", "named"]))
    elif first["cols"]:
        i = draw(st.integers(0, len(first["cols"]) - 1))
        name = first["cols"][i][0]
        if how == "rename":
            name = draw(st.sampled_from(["a", "b", "c", "d"]))
            if any(c[0] == name for c in first["cols"]):
                return first, first
            second["cols"][i] = (name, *first["cols"][i][1:])
        else:
            second["cols"][i] = (name, *draw(columns(first["rows"])))
    return first, second


def build_frame(spec: dict[str, Any], layout: int) -> pd.DataFrame:
    rows = spec["rows"]
    index: pd.Index = {
        "range": pd.RangeIndex(rows),
        "int": pd.Index(list(range(rows)), dtype="int64"),
        "float": pd.Index([float(i) for i in range(rows)], dtype="float64"),
        "str": pd.Index([str(i) for i in range(rows)], dtype="str"),
        "named": pd.RangeIndex(rows, name="row"),
    }[spec["index"]]
    data = {name: build_column(kind, values) for name, kind, values in spec["cols"]}
    if layout == 0:
        return pd.DataFrame(data, index=index)
    if not rows:  # nothing to pad with: an empty slice
        return pd.DataFrame(data, index=index).iloc[0:0]
    if layout == 1:  # one block per column, added one by one
        df = pd.DataFrame(index=index)
        for name, values in data.items():
            df[name] = values
        return df
    # The same rows sliced out of a bigger frame that has a row before them.
    padded = {n: _pad(v) for n, v in data.items()}
    big = pd.DataFrame(padded, index=_pad_index(index))
    return big.iloc[1:]


def _pad(values: Any) -> Any:
    s = pd.Series(values)
    return pd.concat([s.iloc[:1], s], ignore_index=True).array


def _pad_index(index: pd.Index) -> pd.Index:
    if isinstance(index, pd.RangeIndex):
        return pd.RangeIndex(-1, len(index), name=index.name)
    return index[:1].append(index).rename(index.name)


def _float_bits(values: Any) -> bytes:
    return np.asarray(values).tobytes()


def same_series(a: pd.Series, b: pd.Series) -> bool:
    if repr(a.dtype) != repr(b.dtype) or not a.equals(b) or a.name != b.name:
        return False
    if not same_index(a.index, b.index):
        return False
    if a.dtype.kind == "f":
        return _float_bits(a.to_numpy()) == _float_bits(b.to_numpy())
    if a.dtype == object:
        return [type(x) for x in a] == [type(x) for x in b]
    return True


def same_index(a: pd.Index, b: pd.Index) -> bool:
    if type(a) is not type(b) or a.dtype != b.dtype or list(a.names) != list(b.names):
        return False
    if isinstance(a, pd.RangeIndex) and isinstance(b, pd.RangeIndex):
        return (a.start, a.stop, a.step) == (b.start, b.stop, b.step)
    return bool(a.equals(b))


def same_frame(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    if not same_index(a.columns, b.columns) or not same_index(a.index, b.index):
        return False
    return all(same_series(a.iloc[:, i], b.iloc[:, i]) for i in range(a.shape[1]))


@settings(max_examples=500, deadline=None)
@given(pairs(), st.integers(0, 2), st.integers(0, 2))
def test_frames_share_a_key_exactly_when_equal(
    specs: tuple[dict[str, Any], dict[str, Any]], layout1: int, layout2: int
) -> None:
    s1, s2 = specs
    a, b = build_frame(s1, layout1), build_frame(s2, layout2)
    if repr(s1) == repr(s2):  # not ==: 0.0 == -0.0, and the specs differ in a float's sign
        assert same_frame(a, b)
    assert (key_of(a) == key_of(b)) == same_frame(a, b)
    assert key_of(a) == key_of(build_frame(s1, (layout1 + 1) % 3))
    if a.shape[1] and b.shape[1]:
        sa, sb = a.iloc[:, 0], b.iloc[:, 0]
        assert (key_of(sa) == key_of(sb)) == same_series(sa, sb)
    assert (key_of(a.index) == key_of(b.index)) == same_index(a.index, b.index)
    assert (key_of(a.columns) == key_of(b.columns)) == same_index(a.columns, b.columns)


# --- pyarrow and polars -----------------------------------------------------------------------


def _arrow(spec: dict[str, Any]) -> pa.Table:
    df = build_frame({**spec, "index": "range"}, 0)
    return pa.Table.from_pandas(df, preserve_index=False)


def _rechunk(table: pa.Table, cut: int) -> pa.Table:
    cut = min(cut, table.num_rows)
    return pa.concat_tables([table.slice(0, cut), table.slice(cut)])


def _arrow_float_bits(table: pa.Table) -> list[bytes]:
    out = []
    for col in table.columns:
        if pa.types.is_floating(col.type):
            out.append(_float_bits(col.fill_null(0.0).to_numpy()))
    return out


def same_table(a: pa.Table, b: pa.Table) -> bool:
    fields = [(f.name, f.type, f.nullable) for f in a.schema]
    if fields != [(f.name, f.type, f.nullable) for f in b.schema]:
        return False
    return bool(a.equals(b)) and _arrow_float_bits(a) == _arrow_float_bits(b)


@settings(max_examples=300, deadline=None)
@given(pairs(), st.integers(0, 3), st.integers(0, 3))
def test_arrow_tables_share_a_key_exactly_when_equal_whatever_the_chunks(
    specs: tuple[dict[str, Any], dict[str, Any]], cut1: int, cut2: int
) -> None:
    s1, s2 = specs
    a, b = _rechunk(_arrow(s1), cut1), _rechunk(_arrow(s2), cut2)
    assert key_of(a) == key_of(_arrow(s1))
    assert (key_of(a) == key_of(b)) == same_table(a, b)
    for ca, cb in zip(a.columns, b.columns, strict=False):
        same = ca.type == cb.type and ca.equals(cb)
        same = same and _arrow_float_bits(pa.table([ca], ["x"])) == _arrow_float_bits(
            pa.table([cb], ["x"])
        )
        assert (key_of(ca) == key_of(cb)) == same


def _polars(spec: dict[str, Any]) -> pl.DataFrame:
    # Categoricals and object columns have polars semantics of their own: leave them out.
    plain = [c for c in spec["cols"] if c[1] in ("float64", "int64", "Int64", "str", "float32")]
    return pl.from_arrow(_arrow({**spec, "cols": plain}))  # type: ignore[return-value]


def same_polars(a: pl.DataFrame, b: pl.DataFrame) -> bool:
    if a.schema != b.schema or a.columns != b.columns:
        return False
    if not a.equals(b, null_equal=True):
        return False
    return _arrow_float_bits(a.to_arrow()) == _arrow_float_bits(b.to_arrow())


@settings(max_examples=300, deadline=None)
@given(pairs(), st.integers(0, 3))
def test_polars_frames_share_a_key_exactly_when_equal(
    specs: tuple[dict[str, Any], dict[str, Any]], cut: int
) -> None:
    s1, s2 = specs
    a, b = _polars(s1), _polars(s2)
    cut = min(cut, a.height)
    chunked = pl.concat([a.slice(0, cut), a.slice(cut)], rechunk=False)
    assert key_of(chunked) == key_of(a)
    assert (key_of(a) == key_of(b)) == same_polars(a, b)


# --- scipy sparse -----------------------------------------------------------------------------

FORMATS = ["csr", "csc", "coo", "bsr", "dia", "lil", "dok", "raw"]


@st.composite
def entries(draw: st.DrawFn) -> tuple[Any, ...]:
    shape = draw(st.sampled_from([(2, 2), (2, 3)]))
    n = draw(st.integers(0, 5))
    rows = draw(st.lists(st.integers(0, shape[0] - 1), min_size=n, max_size=n))
    cols = draw(st.lists(st.integers(0, shape[1] - 1), min_size=n, max_size=n))
    data = draw(st.lists(st.sampled_from([0.0, 1.0, 2.0, -1.0]), min_size=n, max_size=n))
    dtype = draw(st.sampled_from([np.float64, np.float32]))
    return shape, rows, cols, data, dtype


def build_sparse(spec: tuple[Any, ...], fmt: str, order: list[int]) -> Any:
    shape, rows, cols, data, dtype = spec
    order = [i for i in order if i < len(rows)] + list(range(len(order), len(rows)))
    rows, cols, data = ([x[i] for i in order] for x in (rows, cols, data))
    if fmt == "raw":
        # CSR straight from its arrays: column indices unsorted, duplicates kept.
        by_row = sorted(range(len(rows)), key=lambda i: rows[i])
        indptr = np.searchsorted(np.array(sorted(rows), dtype=np.int64), np.arange(shape[0] + 1))
        return sp.csr_matrix(
            (
                np.array([data[i] for i in by_row], dtype=dtype),
                np.array([cols[i] for i in by_row], dtype=np.int32),
                indptr,
            ),
            shape=shape,
        )
    coo = sp.coo_matrix((np.array(data, dtype=dtype), (rows, cols)), shape=shape)
    return coo if fmt == "coo" else coo.asformat(fmt)


def _stored(m: Any) -> set[tuple[int, int]]:
    c = m.tocoo(copy=True)
    c.sum_duplicates()
    return set(zip(c.row.tolist(), c.col.tolist(), strict=True))


def same_sparse(a: Any, b: Any) -> bool:
    return (
        type(a) is type(b)
        and a.shape == b.shape
        and a.dtype == b.dtype
        and a.toarray().tobytes() == b.toarray().tobytes()
        and _stored(a) == _stored(b)
    )


@settings(max_examples=400, deadline=None)
@given(
    entries(),
    st.one_of(st.none(), entries()),
    st.sampled_from(FORMATS),
    st.sampled_from(FORMATS),
    st.permutations(range(5)),
)
def test_sparse_matrices_share_a_key_exactly_when_equal(
    e1: tuple[Any, ...], e2: tuple[Any, ...] | None, f1: str, f2: str, order: list[int]
) -> None:
    a = build_sparse(e1, f1, list(range(5)))
    b = build_sparse(e1 if e2 is None else e2, f2, order)  # None: the same entries reordered
    assert (key_of(a) == key_of(b)) == same_sparse(a, b)
