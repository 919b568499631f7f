"""Cache keys for data containers: pandas, polars, pyarrow, torch and scipy sparse.

``_keys`` hands a value here when its type comes from one of those packages; this module
never imports them itself (a value of one of their types can only exist once its package
is imported): it finds them in ``sys.modules``, and imports pyarrow only to key a polars
value. Contents are hashed as buffers with 128-bit xxh3, never through ``str()``/``repr()``
or pickle, and with no Python code per row except in object columns that hold something
other than strings.

The rules, for every type: objects that differ in values, dtype, index, column names or
names never share a key; equal ones share it whatever their memory layout (a slice, a
non-contiguous view, another chunking, another block layout). Floats are compared by their
bits, as numpy arrays are: ``-0.0`` is not ``0.0``, and a NaN is one key per bit pattern.

- pandas ``Series``: its type, name, dtype, values and index. ``DataFrame``: its type, its
  columns (as an ``Index``: names, order, dtype and the columns' own names), its index and
  each column's dtype and values, column by column, so the block layout does not count.
  ``Index``: its type, dtype, names and values (``RangeIndex`` by start, stop and step;
  ``MultiIndex`` by each level's values). ``freq``, ``attrs`` and ``flags`` are left out, as
  ``equals`` leaves them out.
- Values by dtype: numpy dtypes by their bytes; nullable dtypes (``Int64``, ``boolean``,
  ``Float64``) by data and mask, a masked slot's stored value ignored; categoricals by codes,
  categories and ``ordered``; Arrow-backed dtypes as pyarrow arrays; datetimes, timedeltas
  and periods by their int64 values and dtype (unit, zone, frequency); object columns of
  strings by their UTF-8 bytes and lengths; other object columns element by element with
  the scalar rules of ``_keys`` (``None`` and ``NaN`` differ), except that an aware
  ``datetime``/``time`` keys by its zone too (a column of mixed zones is an object column).
- pandas scalars, alone or in object columns: ``Timestamp`` by its value, unit and zone,
  ``Timedelta`` by value and unit, ``Interval`` by its ends (type included) and ``closed``:
  their ``==`` calls one instant in two zones, or ``Interval(0, 1)`` and
  ``Interval(0.0, 1.0)``, equal.
- pyarrow ``Array``/``ChunkedArray``/``Table``/``RecordBatch``: type (a table's field names,
  types and nullability; schema metadata left out, as ``equals`` does), length, validity
  and the valid values only, streamed across chunks so chunking does not count.
- polars ``Series``/``DataFrame``: name(s), dtype(s) and values through Arrow (needs
  pyarrow). polars' own row hashes are not used: they treat ``-0.0`` as ``0.0``. ``Object``
  columns (Arrow would get the objects' addresses) and dtypes Arrow cannot import
  (``Int128``) are keyed value by value.
- torch tensors on the CPU: type, dtype, shape, ``requires_grad`` and contents in logical
  order (strides, conjugate and negative bits resolved). A tensor on another device, a
  sparse, quantized or nested tensor is refused: a key never copies device memory.
- scipy sparse matrices and arrays: type (so the format), shape, dtype, and the CSR form
  with sorted indices and duplicates summed (int64 indices), so an unsorted or duplicated
  representation of the same matrix shares the key. Stored zeros count (``nnz`` differs).
"""

from __future__ import annotations

import datetime
import importlib
import sys
from collections.abc import Hashable
from typing import Any

import xxhash

from guardrails import _keys

_hash128 = xxhash.xxh3_128_intdigest
_Hasher = xxhash.xxh3_128
#: The top-level packages this module keys values of.
PACKAGES = _keys._FRAME_PACKAGES


def frame_key(value: Any, t: type, package: str) -> Hashable | None:
    """The key of ``value`` from ``package``, or ``None`` if it is no container this keys."""
    if package == "pandas":
        return _pandas_key(value, t)
    if package == "pyarrow":
        return _pyarrow_key(value, t)
    if package == "polars":
        return _polars_key(value, t)
    if package == "torch":
        return _torch_key(value, t)
    if package == "scipy":
        sparse = sys.modules.get("scipy.sparse")
        if sparse is not None and sparse.issparse(value):
            return _sparse_key(value, t)
    return None


# --- numpy helpers ----------------------------------------------------------------------------


def _np() -> Any:
    return sys.modules["numpy"]  # pandas, pyarrow, polars, torch and scipy all import it


def _update(h: Any, arr: Any) -> None:
    """Feed a numpy array's bytes, in C order, to the hasher ``h``."""
    if not arr.size:
        return
    if not arr.flags.c_contiguous:
        arr = _np().ascontiguousarray(arr)
    try:
        h.update(arr.data)
    except (ValueError, TypeError):  # dtypes with no buffer format (datetime64, ...)
        h.update(arr.reshape(-1).view(_np().uint8))


def _digest(arr: Any) -> int:
    h = _Hasher()
    _update(h, arr)
    return int(h.intdigest())


# --- pandas -----------------------------------------------------------------------------------


def _pandas_key(value: Any, t: type) -> Hashable | None:
    pd = sys.modules.get("pandas")
    if pd is None:
        return None
    if isinstance(value, pd.DataFrame):
        n = value.shape[1]
        columns = tuple([_column_key(pd, _frame_column(value, i), f"column {i}") for i in range(n)])
        return (t, _index_key(pd, value.columns), _index_key(pd, value.index), columns)
    if isinstance(value, pd.Series):
        name = _named(value.name, "the name")
        return (t, name, _index_key(pd, value.index), _column_key(pd, value._values, "values"))
    if isinstance(value, pd.Index):
        return _index_key(pd, value)
    if isinstance(value, pd.api.extensions.ExtensionArray):
        return (t, _column_key(pd, value, "values"))
    # Scalars whose == is looser than what a call reads: Timestamps of one instant in two
    # zones or units are ==, and so are Interval(0, 1) and Interval(0.0, 1.0). They are
    # the elements of object columns too (a column of mixed zones is one).
    if isinstance(value, pd.Timestamp):
        return (t, _keys._key(value.asm8), _tz_token(value))
    if isinstance(value, pd.Timedelta):
        return (t, _keys._key(value.asm8))
    if isinstance(value, pd.Interval):
        return (t, _keys._key(value.left), _keys._key(value.right), value.closed)
    return None


def _frame_column(df: Any, i: int) -> Any:
    """Column ``i``'s array (numpy or extension), without building a Series."""
    get = getattr(df, "_get_column_array", None)
    if get is not None:
        return get(i)
    return df.iloc[:, i]._values  # pragma: no cover - pandas without the private accessor


def _named(name: Any, what: str) -> Hashable:
    try:
        return _keys._key(name)
    except _keys.UnkeyableArgument as exc:
        raise _keys.UnkeyableArgument(f"{what} has no key: {exc}") from None


def _index_key(pd: Any, index: Any) -> Hashable:
    t = type(index)
    names = _named(tuple(index.names), "an index name")
    if isinstance(index, pd.RangeIndex):
        return (t, names, index.start, index.stop, index.step)
    if isinstance(index, pd.MultiIndex):
        levels = tuple(
            [
                _column_key(pd, index.get_level_values(i)._values, f"index level {i}")
                for i in range(index.nlevels)
            ]
        )
        return (t, names, len(index), levels)
    return (t, names, _column_key(pd, index._values, "the index"))


def _dtype_token(dtype: Any) -> Hashable:
    """A dtype as a key: numpy's by itself, pandas' by type and repr (which names storage,
    unit, zone and frequency: ``str`` calls two string storages both ``string``)."""
    token: Hashable = dtype if isinstance(dtype, _np().dtype) else (type(dtype), repr(dtype))
    return token


def _column_key(pd: Any, arr: Any, where: str) -> Hashable:
    """The key of one column's values: a numpy array or a pandas extension array."""
    np = _np()
    if isinstance(arr, np.ndarray):
        if arr.dtype.hasobject:
            return ("object", arr.shape, _object_key(np, arr, where))
        return _keys._array_key(np, arr)
    dtype = arr.dtype
    if isinstance(dtype, pd.CategoricalDtype):
        cats = dtype.categories
        return (
            "category",
            bool(dtype.ordered),
            _index_key(pd, cats) if cats is not None else None,
            _keys._array_key(np, arr.codes),
        )
    token = _dtype_token(dtype)
    masked = getattr(arr, "_mask", None)
    data = getattr(arr, "_data", None)
    if isinstance(masked, np.ndarray) and isinstance(data, np.ndarray):
        # Int64, boolean, Float64, ...: the value under a masked slot is whatever was there.
        if masked.any():
            data = data.copy()
            data[masked] = 0
        return (token, len(arr), _digest(data), _digest(masked))
    pa_array = getattr(arr, "_pa_array", None)
    if pa_array is not None:
        return (token, _pyarrow_key(pa_array, type(pa_array)))
    backing = getattr(arr, "_ndarray", None)
    if isinstance(backing, np.ndarray):
        # Datetime (with zone), timedelta, period (int64 ordinals), python-backed strings.
        return (token, _column_key(pd, backing, where))
    if isinstance(dtype, pd.IntervalDtype):
        return (
            token,
            _column_key(pd, arr.left._values, where),
            _column_key(pd, arr.right._values, where),
            _digest(np.asarray(arr.isna())),
        )
    # Any other extension array (sparse, third-party dtypes): element by element.
    return (token, len(arr), _object_key(np, np.asarray(arr, dtype=object), where))


def _object_key(np: Any, arr: Any, where: str) -> Hashable:
    """An object array: exact ``str`` elements by their bytes, anything else one by one."""
    flat = arr.reshape(-1) if arr.ndim != 1 else arr
    if set(map(type, flat)) <= {str}:
        # The text and each string's length (in code points): no two lists of strings give
        # the same pair, whatever characters they hold.
        text = "".join(flat).encode("utf-8", "surrogatepass")
        lengths = np.fromiter(map(len, flat), np.int64, len(flat))
        return ("str", _hash128(text), _digest(lengths))
    try:
        return tuple([_element_key(v) for v in flat])
    except _keys.UnkeyableArgument as exc:
        raise _keys.UnkeyableArgument(f"{where} holds a value with no key ({exc})") from None


def _element_key(value: Any) -> Hashable:
    """An object column's element: ``_keys``' rules, except an aware ``datetime``/``time``
    keys by its zone too. pandas keeps a column of mixed zones as objects, and ``==`` calls
    12:00 UTC and 13:00+01:00 equal: such columns must not share a key (the row's hour
    differs). Alone, such a value keeps ``lru_cache``'s equality (``_keys``)."""
    t = type(value)
    if (t is datetime.datetime or t is datetime.time) and value.tzinfo is not None:
        return (t, value.replace(tzinfo=None), value.fold, _tz_token(value))
    return _keys._key(value)


def _tz_token(value: Any) -> Hashable:
    """The zone of a ``datetime``/``time``/``Timestamp``: its type, name and offset
    (``timezone``'s ``==`` compares offsets alone, and a name can hide two offsets)."""
    tz = value.tzinfo
    if tz is None:
        return None
    try:
        return (type(tz), str(tz), value.tzname(), value.utcoffset(), value.dst())
    except Exception as exc:  # a tzinfo of the application's that fails: refused, never a crash
        raise _keys.UnkeyableArgument(
            f"{type(value).__name__} whose tzinfo raised {type(exc).__name__}: {exc}"
        ) from None


# --- pyarrow ----------------------------------------------------------------------------------


def _pyarrow_key(value: Any, t: type) -> Hashable | None:
    pa = sys.modules.get("pyarrow")
    if pa is None:
        return None
    if isinstance(value, (pa.Table, pa.RecordBatch)):
        return (t, _schema_key(value.schema), value.num_rows, _columns_key(pa, value.columns))
    if isinstance(value, pa.ChunkedArray):
        return (t, value.type, len(value), _chunks_digest(pa, value.type, value.chunks))
    if isinstance(value, pa.Array):
        return (t, value.type, len(value), _chunks_digest(pa, value.type, [value]))
    return None


def _schema_key(schema: Any) -> Hashable:
    return tuple([(f.name, f.type, f.nullable) for f in schema])


def _columns_key(pa: Any, columns: Any) -> Hashable:
    out = []
    for col in columns:
        chunks = col.chunks if isinstance(col, pa.ChunkedArray) else [col]
        out.append(_chunks_digest(pa, col.type, chunks))
    return tuple(out)


def _chunks_digest(pa: Any, typ: Any, chunks: Any) -> Hashable:
    """Validity and valid values of the arrays ``chunks`` taken as one, however chunked."""
    streams: dict[str, Any] = {}
    counts: dict[str, int] = {}
    for chunk in chunks:
        _feed(pa, chunk, streams, counts, "")
    return tuple(
        sorted(
            (name, tuple(h) if isinstance(h, list) else h.intdigest())
            for name, h in streams.items()
        )
    )


def _stream(streams: dict[str, Any], name: str) -> Any:
    h = streams.get(name)
    if h is None:
        h = streams[name] = _Hasher()
    return h


def _feed(pa: Any, arr: Any, streams: dict[str, Any], counts: dict[str, int], path: str) -> None:
    """Feed one array's content to the hashers of ``streams``, named by ``path``.

    Every stream is a concatenation over chunks, so chunk boundaries leave no trace. Nulls:
    their positions (counted across chunks) go to a stream of their own and only the valid
    slots are fed on, so whatever a null slot holds counts for nothing.
    """
    np = _np()
    typ = arr.type
    if pa.types.is_dictionary(typ):
        arr = arr.dictionary_decode()  # the values, however the dictionary is laid out
        typ = arr.type
    if pa.types.is_string_view(typ) or pa.types.is_binary_view(typ):
        arr = arr.cast(pa.large_string() if pa.types.is_string_view(typ) else pa.large_binary())
        typ = arr.type
    n = len(arr)
    if not n:
        return
    base = counts.get(path, 0)
    counts[path] = base + n
    if arr.null_count:
        valid = arr.is_valid().to_numpy(zero_copy_only=False)
        nulls = np.flatnonzero(~valid).astype(np.int64, copy=False) + base
        _update(_stream(streams, path + "/null"), nulls)
        if pa.types.is_null(typ) or arr.null_count == n:
            return
        arr = arr.drop_null()
    _feed_valid(pa, np, arr, typ, streams, counts, path)


def _feed_valid(
    pa: Any, np: Any, arr: Any, typ: Any, streams: dict[str, Any], counts: dict[str, int], path: str
) -> None:
    """``_feed`` for an array with no nulls."""
    types = pa.types
    if types.is_boolean(typ):
        _update(_stream(streams, path), arr.to_numpy(zero_copy_only=False))
        return
    large = types.is_large_string(typ) or types.is_large_binary(typ)
    if large or types.is_string(typ) or types.is_binary(typ):
        buffers = arr.buffers()
        width = np.int64 if large else np.int32
        offsets = np.frombuffer(buffers[1], width)[arr.offset : arr.offset + len(arr) + 1]
        lengths = np.diff(offsets).astype(np.int64, copy=False)
        _update(_stream(streams, path + "/len"), lengths)
        if buffers[2] is not None and offsets[-1] > offsets[0]:
            data = memoryview(buffers[2])[int(offsets[0]) : int(offsets[-1])]
            _stream(streams, path).update(data)
        return
    if types.is_struct(typ):
        for i, field in enumerate(arr.flatten()):  # flatten() applies the parent's offset
            _feed(pa, field, streams, counts, f"{path}/{i}")
        return
    if types.is_list(typ) or types.is_large_list(typ):
        offsets = arr.offsets.to_numpy(zero_copy_only=False)
        _update(_stream(streams, path + "/len"), np.diff(offsets).astype(np.int64, copy=False))
        _feed(pa, arr.flatten(), streams, counts, path + "/items")
        return
    if types.is_fixed_size_list(typ):
        _feed(pa, arr.flatten(), streams, counts, path + "/items")
        return
    nbytes = _fixed_width(typ) // 8
    if nbytes:
        data = memoryview(arr.buffers()[1])[arr.offset * nbytes : (arr.offset + len(arr)) * nbytes]
        _stream(streams, path).update(data)
        return
    # Maps, unions, extension types, ...: value by value with the scalar rules.
    try:
        items = [_keys._key(v) for v in arr.to_pylist()]
    except _keys.UnkeyableArgument as exc:
        raise _keys.UnkeyableArgument(
            f"pyarrow {typ} with a value that has no key ({exc})"
        ) from None
    found = streams.setdefault(path + "/py", [])
    found.extend(items)


def _fixed_width(typ: Any) -> int:
    """The bit width of a fixed-width type stored as [validity, data], else 0."""
    try:
        bits = int(typ.bit_width)
    except ValueError:
        return 0
    if bits % 8 or typ.num_buffers != 2:
        return 0
    return bits


# --- polars -----------------------------------------------------------------------------------


def _polars_key(value: Any, t: type) -> Hashable | None:
    pl = sys.modules.get("polars")
    if pl is None:
        return None
    if isinstance(value, pl.DataFrame):
        pa = _need_pyarrow("a polars DataFrame")
        cols = tuple(
            [(s.name, repr(s.dtype), _polars_series_digest(pa, s)) for s in value.get_columns()]
        )
        return (t, value.height, cols)
    if isinstance(value, pl.Series):
        pa = _need_pyarrow("a polars Series")
        return (t, value.name, repr(value.dtype), len(value), _polars_series_digest(pa, value))
    return None


def _need_pyarrow(what: str) -> Any:
    try:
        return importlib.import_module("pyarrow")  # only when a polars value is keyed
    except ImportError:
        raise _keys.UnkeyableArgument(
            f"{what} is keyed through Arrow, and pyarrow is not installed"
        ) from None


def _polars_series_digest(pa: Any, s: Any) -> Hashable:
    pl = sys.modules["polars"]
    if s.dtype == pl.Object:
        # Arrow gets the objects' addresses: a dict changed in place, or a new object where
        # a freed one was, would keep the key. Keyed value by value, as object columns are.
        return ("py", _python_values(s, typ="polars Object"))
    try:
        arr = s.to_arrow()
    except pa.ArrowException:
        # A dtype Arrow cannot import (Int128, UInt128): the values as Python objects.
        return ("py", _python_values(s, typ=f"polars {s.dtype}"))
    chunks = arr.chunks if isinstance(arr, pa.ChunkedArray) else [arr]
    return _chunks_digest(pa, arr.type, chunks)


def _python_values(s: Any, typ: str) -> Hashable:
    try:
        return tuple([_keys._key(v) for v in s.to_list()])
    except _keys.UnkeyableArgument as exc:
        raise _keys.UnkeyableArgument(f"{typ} with a value that has no key ({exc})") from None


# --- torch ------------------------------------------------------------------------------------


def _torch_key(value: Any, t: type) -> Hashable | None:
    torch = sys.modules.get("torch")
    if torch is None or not isinstance(value, torch.Tensor):
        return None
    device = value.device
    if device.type != "cpu":
        raise _keys.UnkeyableArgument(
            f"a torch tensor on {device} (a key never copies device memory)"
        )
    if value.layout is not torch.strided:
        raise _keys.UnkeyableArgument(f"a torch tensor with layout {value.layout}")
    if value.is_quantized or getattr(value, "is_nested", False):
        raise _keys.UnkeyableArgument("a quantized or nested torch tensor")
    data = value.detach().resolve_conj().resolve_neg().contiguous()
    digest = _hash128(data.reshape(-1).view(torch.uint8).numpy()) if data.numel() else 0
    return (t, value.dtype, tuple(value.shape), bool(value.requires_grad), digest)


# --- scipy sparse -----------------------------------------------------------------------------


def _sparse_key(value: Any, t: type) -> Hashable:
    np = _np()
    if value.dtype.hasobject:
        raise _keys.UnkeyableArgument("a scipy sparse matrix of dtype object")
    csr = value.tocsr()
    if not csr.has_canonical_format:
        csr = csr.copy() if csr is value else csr
        csr.sum_duplicates()  # sorts the indices of each row and sums duplicates
    nnz = int(csr.indptr[-1])
    return (
        t,
        tuple(value.shape),
        value.dtype,
        _digest(csr.indptr.astype(np.int64, copy=False)),
        _digest(csr.indices[:nnz].astype(np.int64, copy=False)),
        _digest(csr.data[:nnz]),
    )


_keys.FRAME_KEYERS[:] = [frame_key]
