"""What goes into Redis and what comes back out: values without pickle, signed with a secret.

``encoder(serializer, secret)`` and ``decoder(serializer, secret)`` return the functions the
Redis level of the cache calls, ``encode(value, fresh_until) -> bytes`` and
``decode(data) -> (value, fresh_until)``, with everything they need bound once.

A payload is a 13-byte header, then a 32-byte HMAC-SHA256 when a secret is set, then the
body. The header: magic ``b"gR"``, format version (1), codec id, flags (bit 0: signed) and
``fresh_until`` (little-endian float64, a ``time.time()`` value). The MAC covers the header,
the ``context`` (the Redis key, so a signed value moved to another key does not verify) and
the body. With a secret every value is signed and a value that is unsigned or whose MAC does
not verify is ``BadValue`` before anything of it is parsed.

Codecs, tried in this order; each is an exact round trip (a value read back is equal to the
one stored and of the same type, recursively); a value a codec cannot promise that for goes
to the next one, and after the last to ``Unstorable``:

1. JSON: values built only of exactly ``dict`` (``str`` keys), ``list``, ``str``, ``int``,
   ``float`` (NaN and infinities too), ``bool`` and ``None``; read back by ``json.loads``.
2. Tagged JSON: the same plus tuples, dicts with other keys, numpy arrays and scalars nested
   inside. Every JSON object of the body is a tag, user dicts included (as lists of pairs),
   so no user data can pass for a tag.
3. numpy arrays (not of dtype object) in ``.npy`` format, never pickled; numpy scalars as
   0-d arrays. Read with one copy, after checking the header's shape against the bytes.
4. pandas ``DataFrame``/``Series`` and polars ``DataFrame`` through Arrow IPC, index kept,
   stored only when reading it back gives the same frame (type, dtypes, columns, index,
   values, NaN in the same places, object values of the same types). A stream is walked
   before it is read: uncompressed, at most 8 elements per byte (plus 2**20), nothing after
   its end marker; then fully validated (forged offsets are never read out of bounds).
5. pydantic models by their JSON (the fields set, by alias) and ``module:qualname``; stored
   only when read back they are equal field by field and type by type, with the same fields
   set; read back only into a class found in the namespace of a module already imported
   (never ``getattr``, never an import driven by data from Redis).
6. pickle, only with ``serializer="pickle"`` (which needs a secret): for what the codecs
   above do not take. A reader configured ``auto`` refuses a pickle payload even when its
   MAC verifies, and ``pickle.loads`` only ever runs on a verified payload.

numpy, pandas, pyarrow, polars and pydantic are looked up in ``sys.modules`` (a value of
theirs can only exist once they are imported) or imported when a payload of theirs is read.
"""

from __future__ import annotations

import datetime
import decimal
import hashlib
import hmac
import importlib
import io
import json
import math
import pickle
import struct
import sys
from collections.abc import Callable, Mapping
from typing import Any, Literal

__all__ = ["BadValue", "Unstorable", "decoder", "encoder"]


class Unstorable(Exception):
    """The value cannot be stored in Redis safely; ``str()`` says why and what to change."""


class BadValue(Exception):
    """What came back from Redis cannot be trusted or read; ``str()`` says which."""


MAGIC = b"gR"
VERSION = 1
_HEADER = struct.Struct("<2sBBBd")
HEADER_SIZE = _HEADER.size  # 13
MAC_SIZE = 32
FLAG_SIGNED = 1

#: Codec ids (one byte of the header).
JSON = 1
TAGGED = 2
NDARRAY = 3
NPSCALAR = 4
PANDAS_FRAME = 5
PANDAS_SERIES = 6
POLARS_FRAME = 7
PYDANTIC = 8
PICKLE = 9

CODEC_NAMES = {
    JSON: "json",
    TAGGED: "tagged json",
    NDARRAY: "numpy array",
    NPSCALAR: "numpy scalar",
    PANDAS_FRAME: "pandas DataFrame",
    PANDAS_SERIES: "pandas Series",
    POLARS_FRAME: "polars DataFrame",
    PYDANTIC: "pydantic model",
    PICKLE: "pickle",
}

Encode = Callable[..., bytes]
Decode = Callable[..., tuple[Any, float]]

_json_dumps = json.JSONEncoder(ensure_ascii=True, allow_nan=True, separators=(",", ":")).encode
_json_loads = json.loads


class _NotMine(Exception):
    """A codec cannot store this value exactly: the next one is tried (internal)."""


# --- factories ---------------------------------------------------------------------------------


def _signer(secret: bytes | None) -> Any:
    if secret is None:
        return None
    if not isinstance(secret, bytes) or not secret:
        raise ValueError("the cache secret must be non-empty bytes")
    return hmac.new(secret, digestmod=hashlib.sha256)


def _check_serializer(serializer: str, secret: bytes | None) -> None:
    if serializer not in ("auto", "pickle"):
        raise ValueError(f"serializer must be 'auto' or 'pickle', not {serializer!r}")
    if serializer == "pickle" and secret is None:
        raise ValueError(
            "serializer 'pickle' needs a secret: every pickled value is signed with it, so "
            "nobody with write access to Redis can run code in a reader"
        )


def encoder(serializer: Literal["auto", "pickle"], secret: bytes | None) -> Encode:
    """``encode(value, fresh_until, context=b"") -> bytes``; raises ``Unstorable``."""
    _check_serializer(serializer, secret)
    base = _signer(secret)
    pack = _HEADER.pack
    allow_pickle = serializer == "pickle"
    flags = FLAG_SIGNED if base is not None else 0

    def encode(value: Any, fresh_until: float, context: bytes = b"") -> bytes:
        codec, body = _encode_body(value, allow_pickle)
        header = pack(MAGIC, VERSION, codec, flags, fresh_until)
        if base is None:
            return header + body
        mac = base.copy()
        mac.update(header)
        mac.update(_context_block(context))
        mac.update(body)
        return b"".join((header, mac.digest(), body))

    return encode


def _context_block(context: bytes) -> bytes:
    return struct.pack("<Q", len(context)) + context


def decoder(serializer: Literal["auto", "pickle"], secret: bytes | None) -> Decode:
    """``decode(data, context=b"") -> (value, fresh_until)``; raises ``BadValue``."""
    _check_serializer(serializer, secret)
    base = _signer(secret)
    unpack = _HEADER.unpack_from
    allow_pickle = serializer == "pickle"
    header_size = HEADER_SIZE
    body_at = HEADER_SIZE + MAC_SIZE
    compare = hmac.compare_digest

    def decode(data: bytes, context: bytes = b"") -> tuple[Any, float]:
        try:
            magic, version, codec, flags, fresh_until = unpack(data)
        except (struct.error, TypeError):
            raise BadValue(_short(data)) from None
        if magic != MAGIC:
            raise BadValue("not a guardrails value (wrong magic bytes)")
        if version != VERSION:
            raise BadValue(
                f"format version {version} (this guardrails reads version {VERSION}): "
                "written by another guardrails release"
            )
        if flags & ~FLAG_SIGNED:
            raise BadValue(f"unknown flags {flags:#04x} in the header")
        signed = flags & FLAG_SIGNED
        if codec == JSON and not signed and base is None:
            # The common case, read as json.loads of the body and nothing more.
            try:
                return _json_loads(data[header_size:]), fresh_until
            except (ValueError, RecursionError) as exc:
                raise BadValue(f"corrupt JSON value: {type(exc).__name__}: {exc}") from exc
        if base is not None:
            if not signed:
                raise BadValue("the value is not signed, and a cache secret is set")
            if len(data) < body_at:
                raise BadValue("truncated before the end of its signature")
            view = memoryview(data)
            mac = base.copy()
            mac.update(view[:header_size])
            mac.update(_context_block(context))
            mac.update(view[body_at:])
            if not compare(mac.digest(), view[header_size:body_at]):
                raise BadValue(
                    "signature mismatch: the value was not written with this cache secret "
                    "(or under this key), or was changed"
                )
            start = body_at
        elif signed:
            # Signed by a writer that has a secret; this reader has none to check it with.
            # It reads only what it would read unsigned (never pickle).
            if len(data) < body_at:
                raise BadValue("truncated before the end of its signature")
            start = body_at
        else:
            start = header_size
        if codec == PICKLE and not allow_pickle:
            raise BadValue(
                "a pickle value, and this reader does not take pickle (cache.serializer: auto)"
            )
        reader = _READERS.get(codec)
        if reader is None:
            raise BadValue(f"unknown codec id {codec}")
        try:
            return reader(data, start), fresh_until
        except BadValue:
            raise
        except Exception as exc:  # untrusted bytes: any failure to read them is a bad value
            raise BadValue(
                f"corrupt {CODEC_NAMES[codec]} value: {type(exc).__name__}: {exc}"
            ) from exc

    return decode


def _short(data: object) -> str:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        return f"not bytes but {type(data).__name__}"
    return f"truncated: {len(data)} bytes, shorter than the {HEADER_SIZE}-byte header"


# --- encoding -----------------------------------------------------------------------------------


def _encode_body(value: Any, allow_pickle: bool) -> tuple[int, bytes]:
    try:
        if _plain(value):
            return JSON, _json_dumps(value).encode("ascii")
    except RecursionError:
        raise Unstorable("a value nested too deeply to store (or one containing itself)") from None
    except ValueError:
        pass  # an int past sys.get_int_max_str_digits(): JSON cannot write it
    np = sys.modules.get("numpy")
    t = type(value)
    try:
        if np is not None and t is np.ndarray:
            return NDARRAY, _npy(np, value)
        if np is not None and isinstance(value, np.generic):
            return NPSCALAR, _npy_scalar(np, value)
        if t is tuple or t is dict or t is list:
            return TAGGED, _tagged(value)
        found = _encode_other(value, t)
        if found is not None:
            return found
    except _NotMine:
        pass
    except RecursionError:
        raise Unstorable("a value nested too deeply to store (or one containing itself)") from None
    if allow_pickle:
        try:
            return PICKLE, pickle.dumps(value, protocol=5)
        except Exception as exc:
            raise Unstorable(
                f"{_type_name(t)} that pickle cannot store ({type(exc).__name__}: {exc})"
            ) from exc
    what = _describe(value, t)
    if "Arrow" not in what and "pydantic" not in what and "digits" not in what:
        what += " (not JSON, not a numpy array, a DataFrame or a pydantic model)"
    raise Unstorable(
        f"{what}; set cache.serializer: pickle with cache.secret to store it, or keep "
        "this function's cache in-process"
    )


def _type_name(t: type) -> str:
    module = getattr(t, "__module__", "") or ""
    name = getattr(t, "__qualname__", t.__name__)
    return name if module == "builtins" else f"{module}.{name}"


def _describe(value: Any, t: type) -> str:
    names = {set: "a set", frozenset: "a frozenset", bytes: "bytes", complex: "a complex number"}
    if t in names:
        return names[t]
    np = sys.modules.get("numpy")
    if np is not None and t is np.ndarray and value.dtype.hasobject:
        return "a numpy array of dtype object"
    if t is int:
        return "an int of more than sys.get_int_max_str_digits() digits (JSON cannot write it)"
    pydantic = sys.modules.get("pydantic")
    if pydantic is not None and isinstance(value, pydantic.BaseModel):
        return (
            f"a pydantic model {_type_name(t)} that does not come back exactly from its JSON "
            "(a validator that changes values, a field typed Any holding an enum member or a "
            "tuple, a datetime in a named zone, a class defined in a function, ...)"
        )
    top = (getattr(t, "__module__", "") or "").partition(".")[0]
    if top in ("pandas", "polars") and t.__name__ in ("DataFrame", "Series"):
        return (
            f"a {_type_name(t)} that does not come back unchanged through Arrow IPC (column "
            "names of mixed types, an object column of mixed values, ...)"
        )
    return f"a {_type_name(t)}"


_PLAIN_ATOMS = frozenset({str, int, float, bool, type(None)})


def _plain(value: Any) -> bool:
    """Whether ``value`` is built only of the exact types JSON gives back."""
    t = type(value)
    if t in _PLAIN_ATOMS:
        return True
    if t is list:
        for v in value:  # noqa: SIM110 - a loop is faster than all() over a generator
            if type(v) not in _PLAIN_ATOMS and not _plain(v):
                return False
        return True
    if t is dict:
        for k, v in value.items():
            if type(k) is not str:
                return False
            if type(v) not in _PLAIN_ATOMS and not _plain(v):
                return False
        return True
    return False


def _encode_other(value: Any, t: type) -> tuple[int, bytes] | None:
    module = getattr(t, "__module__", "") or ""
    top = module.partition(".")[0]
    if top == "pandas":
        pd = sys.modules.get("pandas")
        if pd is not None and t is pd.DataFrame:
            return PANDAS_FRAME, _pandas_frame(pd, value)
        if pd is not None and t is pd.Series:
            return PANDAS_SERIES, _pandas_series(pd, value)
        return None
    if top == "polars":
        pl = sys.modules.get("polars")
        if pl is not None and t is pl.DataFrame:
            return POLARS_FRAME, _polars_frame(pl, value)
        return None
    pydantic = sys.modules.get("pydantic")
    if pydantic is not None and isinstance(value, pydantic.BaseModel):
        return PYDANTIC, _pydantic(value, t)
    return None


# numpy


def _npy(np: Any, arr: Any) -> bytes:
    if arr.dtype.hasobject:
        raise _NotMine
    out = io.BytesIO()
    try:
        np.save(out, arr, allow_pickle=False)
    except ValueError:
        raise _NotMine from None
    return out.getvalue()


def _npy_scalar(np: Any, value: Any) -> bytes:
    t = type(value)
    if t.__module__.partition(".")[0] != "numpy" or value.dtype.hasobject:
        raise _NotMine
    arr = np.asarray(value)
    back = arr[()]
    if type(back) is not t:
        raise _NotMine
    if value.dtype.kind in "SU" and back != value:
        raise _NotMine  # np.str_("a\x00"): an array of strings drops trailing NULs
    return _npy(np, arr)


def _read_npy(data: bytes, start: int) -> Any:
    np = importlib.import_module("numpy")
    fmt = np.lib.format
    fp = io.BytesIO(data)
    fp.seek(start)
    major, _minor = fmt.read_magic(fp)
    if major == 1:
        shape, fortran, dtype = fmt.read_array_header_1_0(fp)
    elif major in (2, 3):
        shape, fortran, dtype = fmt.read_array_header_2_0(fp)
    else:
        raise BadValue(f"npy format version {major}")
    if dtype.hasobject:
        raise BadValue("a numpy array of dtype object (would need pickle)")
    count = math.prod(shape)
    offset = fp.tell()
    if count * dtype.itemsize != len(data) - offset:
        raise BadValue(
            f"numpy array of shape {shape} and dtype {dtype} needs {count * dtype.itemsize} "
            f"bytes, and {len(data) - offset} follow its header"
        )
    flat = np.frombuffer(data, dtype=dtype, count=count, offset=offset) if count else None
    if flat is None:
        arr = np.empty(shape, dtype=dtype, order="F" if fortran else "C")
    elif fortran:
        arr = flat.reshape(shape[::-1]).transpose().copy(order="F")
    else:
        arr = flat.reshape(shape).copy()
    return arr


def _read_npy_scalar(data: bytes, start: int) -> Any:
    arr = _read_npy(data, start)
    if arr.ndim != 0:
        raise BadValue(f"a numpy scalar stored as an array of shape {arr.shape}")
    return arr[()]


# tagged JSON

#: Tags are the one key of a JSON object; every object of a tagged body is one.
_T_DICT = "d"
_T_TUPLE = "t"
_T_ARRAY = "a"
_T_SCALAR = "s"


def _tagged(value: Any) -> bytes:
    np = sys.modules.get("numpy")
    tree = _tag(value, np)
    try:
        return _json_dumps(tree).encode("ascii")
    except ValueError:
        raise _NotMine from None  # an int past sys.get_int_max_str_digits()


def _tag(value: Any, np: Any) -> Any:
    t = type(value)
    if t in _PLAIN_ATOMS:
        return value
    if t is list:
        return [_tag(v, np) for v in value]
    if t is tuple:
        return {_T_TUPLE: [_tag(v, np) for v in value]}
    if t is dict:
        pairs = []
        for k, v in value.items():
            if not _key_ok(k, np):
                raise _NotMine
            pairs.append([_tag(k, np), _tag(v, np)])
        return {_T_DICT: pairs}
    if np is not None:
        import base64

        if t is np.ndarray:
            return {_T_ARRAY: base64.b64encode(_npy(np, value)).decode("ascii")}
        if isinstance(value, np.generic):
            return {_T_SCALAR: base64.b64encode(_npy_scalar(np, value)).decode("ascii")}
    raise _NotMine


def _key_ok(k: Any, np: Any) -> bool:
    """Whether a dict key is of a type the tagged codec gives back hashable and equal."""
    t = type(k)
    if t in _PLAIN_ATOMS:
        return True
    if t is tuple:
        return all(_key_ok(v, np) for v in k)
    return np is not None and isinstance(k, np.generic)


def _untag(obj: dict[str, Any]) -> Any:
    if len(obj) != 1:
        raise BadValue("a tagged value with an object that is not a tag")
    ((tag, v),) = obj.items()
    if tag == _T_TUPLE:
        return tuple(v)
    if tag == _T_DICT:
        return {_hashable(k): item for k, item in v}
    if tag in (_T_ARRAY, _T_SCALAR):
        import base64

        raw = base64.b64decode(v.encode("ascii"), validate=True)
        return _read_npy(raw, 0) if tag == _T_ARRAY else _read_npy_scalar(raw, 0)
    raise BadValue(f"unknown tag {tag!r} in a tagged value")


def _hashable(k: Any) -> Any:
    if type(k) is list:
        raise BadValue("a tagged dict key that is a list")
    return k


def _read_tagged(data: bytes, start: int) -> Any:
    return json.loads(data[start:], object_hook=_untag)


# pandas and polars


def _arrow_bytes(table: Any) -> bytes:
    pa = sys.modules["pyarrow"]
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()  # type: ignore[no-any-return]


def _read_arrow(data: bytes, start: int) -> Any:
    _check_arrow(data, start)
    pa = importlib.import_module("pyarrow")
    table = pa.ipc.open_stream(pa.py_buffer(memoryview(data)[start:])).read_all()
    # The IPC reader checks buffer sizes, not their contents: offsets pointing past a string
    # column's bytes would be read out of bounds later (a segfault in to_pandas).
    table.validate(full=True)
    return table


#: Arrow elements (values of every column and nested child, batch lengths) a frame may hold
#: per byte of its stream, plus a free allowance: a null column's length, or a run-end
#: encoded one's, is a number in its metadata, and reading it into pandas allocates for every
#: element. A bool column (8 values to a byte) is the densest real data.
_ARROW_ELEMENTS_PER_BYTE = 8
_ARROW_FREE_ELEMENTS = 1 << 20
_u8 = struct.Struct("<B").unpack_from
_u16 = struct.Struct("<H").unpack_from
_u32 = struct.Struct("<I").unpack_from
_i32 = struct.Struct("<i").unpack_from
_i64 = struct.Struct("<q").unpack_from


def _check_arrow(data: bytes, start: int) -> None:
    """Walk an Arrow IPC stream's messages before anything reads it: each framed, in bounds,
    uncompressed (a few KB of zstd can claim gigabytes), the elements it claims within
    ``_ARROW_ELEMENTS_PER_BYTE`` of its size, and its end marker exactly at the end (a stream
    cut between two batches would read as a shorter frame)."""
    end = len(data)
    budget = _ARROW_ELEMENTS_PER_BYTE * (end - start) + _ARROW_FREE_ELEMENTS
    elements = 0
    pos = start
    try:
        while True:
            if pos + 8 > end:
                raise BadValue("an Arrow stream without its end marker (truncated)")
            marker, size = _u32(data, pos)[0], _i32(data, pos + 4)[0]
            if marker != 0xFFFFFFFF:
                raise BadValue("an Arrow stream with a malformed message frame")
            pos += 8
            if size == 0:
                if pos != end:
                    raise BadValue("an Arrow stream with bytes after its end marker")
                return
            if size < 0 or pos + size > end:
                raise BadValue("an Arrow message running past the end of the stream")
            meta = data[pos : pos + size]
            pos += size
            body, claimed = _arrow_message(meta)
            if body < 0 or pos + body > end:
                raise BadValue("an Arrow message body running past the end of the stream")
            pos += body
            elements += claimed
            if elements > budget:
                raise BadValue(
                    f"an Arrow stream of {end - start} bytes claiming more than {budget} "
                    "elements (null or run-end encoded columns): too much to read"
                )
    except struct.error:
        raise BadValue("an Arrow message with malformed metadata") from None


def _fb_field(buf: bytes, table: int, index: int) -> int | None:
    """Where field ``index`` of the flatbuffer table at ``table`` is, or ``None`` if absent."""
    vtable = table - _i32(buf, table)[0]
    if not 0 <= vtable < len(buf):
        raise struct.error("vtable out of bounds")
    if 4 + 2 * index + 2 > _u16(buf, vtable)[0]:
        return None
    offset: int = _u16(buf, vtable + 4 + 2 * index)[0]
    return table + offset if offset else None


def _fb_ref(buf: bytes, at: int) -> int:
    """The table or vector an offset field at ``at`` points to."""
    found: int = at + _u32(buf, at)[0]
    if not 0 <= found < len(buf):
        raise struct.error("offset out of bounds")
    return found


def _arrow_message(meta: bytes) -> tuple[int, int]:
    """``(body length, elements claimed)`` of one IPC message's flatbuffer metadata."""
    root = _fb_ref(meta, 0)
    at = _fb_field(meta, root, 1)  # Message.header_type
    kind = _u8(meta, at)[0] if at is not None else 0
    at = _fb_field(meta, root, 3)  # Message.bodyLength
    body: int = _i64(meta, at)[0] if at is not None else 0
    if kind == 1:  # Schema
        return body, 0
    if kind not in (2, 3):  # DictionaryBatch, RecordBatch; not Tensor, SparseTensor
        raise BadValue(f"an Arrow message of kind {kind}, not a schema or record batch")
    at = _fb_field(meta, root, 2)  # Message.header
    if at is None:
        raise BadValue("an Arrow batch without its header")
    batch = _fb_ref(meta, at)
    if kind == 2:
        at = _fb_field(meta, batch, 1)  # DictionaryBatch.data
        if at is None:
            raise BadValue("an Arrow dictionary batch without its data")
        batch = _fb_ref(meta, at)
    if _fb_field(meta, batch, 3) is not None:  # RecordBatch.compression
        raise BadValue("a compressed Arrow batch (guardrails never writes one)")
    at = _fb_field(meta, batch, 0)  # RecordBatch.length
    elements: int = _i64(meta, at)[0] if at is not None else 0
    at = _fb_field(meta, batch, 1)  # RecordBatch.nodes: FieldNode {length, null_count}
    if at is not None:
        nodes = _fb_ref(meta, at)
        count = _u32(meta, nodes)[0]
        if nodes + 4 + 16 * count > len(meta):
            raise BadValue("an Arrow batch whose field nodes run past its metadata")
        for i in range(count):
            length = _i64(meta, nodes + 4 + 16 * i)[0]
            if length < 0:
                raise BadValue("an Arrow field node of negative length")
            elements += length
    if elements < 0:
        raise BadValue("an Arrow batch of negative length")
    return body, elements


def _pyarrow() -> Any:
    try:
        return importlib.import_module("pyarrow")
    except ImportError:
        raise _NotMine from None


def _pandas_frame(pd: Any, df: Any) -> bytes:
    pa = _pyarrow()
    if len({type(c) for c in df.columns}) > 1:
        raise _NotMine  # Arrow names columns by strings: mixed names would not come back
    try:
        body = _arrow_bytes(pa.Table.from_pandas(df, preserve_index=None))
        back = _frame_from(pd, _read_arrow(body, 0))
    except Exception:
        raise _NotMine from None
    if not _same_frame(pd, back, df):
        raise _NotMine
    return body


def _frame_from(pd: Any, table: Any) -> Any:
    df = table.to_pandas()
    if type(df) is not pd.DataFrame:
        raise BadValue("a pandas value that is not a DataFrame")
    return df


def _same_frame(pd: Any, back: Any, df: Any) -> bool:
    if type(back) is not type(df) or back.attrs != df.attrs:
        return False
    try:
        pd.testing.assert_frame_equal(
            back,
            df,
            check_exact=True,
            check_index_type=True,
            check_column_type=True,
            check_frame_type=True,
            check_names=True,
            check_freq=True,
            check_flags=True,
        )
        return (
            _same_index(pd, back.index, df.index)
            and _same_index(pd, back.columns, df.columns)
            and all(_same_objects(back.iloc[:, i], df.iloc[:, i]) for i in range(df.shape[1]))
        )
    except (AssertionError, TypeError, ValueError):
        return False


def _same_index(pd: Any, a: Any, b: Any) -> bool:
    return (
        type(a) is type(b)
        and a.dtype == b.dtype
        and bool(a.equals(b))
        and a.names == b.names
        and _same_objects(a, b)
    )


def _same_objects(a: Any, b: Any) -> bool:
    """The values of an object column or index read back exactly: pandas compares them by
    ``==``, and Arrow gives ``{"a": 1}`` back as ``{"a": 1.0}`` next to ``{"a": 1.5}``, a
    ``Decimal`` at its column's scale, a MultiIndex of object levels as tuples."""
    if a.dtype != object and not (hasattr(a, "nlevels") and a.nlevels > 1):
        return True
    try:
        return _exact(list(a), list(b))
    except RecursionError:
        return False


#: The column a Series is stored under (its name travels in the schema's metadata).
_SERIES_COLUMN = "__guardrails_series__"


def _pandas_series(pd: Any, s: Any) -> bytes:
    pa = _pyarrow()
    try:
        frame = s.to_frame(name=_SERIES_COLUMN)
        table = pa.Table.from_pandas(frame, preserve_index=None)
        name = _json_dumps(_tag(s.name, sys.modules.get("numpy")))
        meta = dict(table.schema.metadata or {})
        meta[b"guardrails.series_name"] = name.encode("ascii")
        body = _arrow_bytes(table.replace_schema_metadata(meta))
        back = _read_series(body, 0)
    except Exception:
        raise _NotMine from None
    if type(back) is not type(s) or back.attrs != s.attrs:
        raise _NotMine
    try:
        pd.testing.assert_series_equal(
            back,
            s,
            check_exact=True,
            check_index_type=True,
            check_series_type=True,
            check_names=True,
            check_freq=True,
            check_flags=True,
        )
    except (AssertionError, TypeError, ValueError):
        raise _NotMine from None
    if not _same_index(pd, back.index, s.index) or type(back.name) is not type(s.name):
        raise _NotMine
    if not _same_objects(back, s) or not _exact(back.name, s.name):
        raise _NotMine
    return body


def _read_series(data: bytes, start: int) -> Any:
    pd = importlib.import_module("pandas")
    table = _read_arrow(data, start)
    meta = table.schema.metadata or {}
    raw = meta.get(b"guardrails.series_name")
    if raw is None:
        raise BadValue("a pandas Series without its name")
    name = json.loads(raw, object_hook=_untag)
    df = _frame_from(pd, table)
    if df.shape[1] != 1:
        raise BadValue(f"a pandas Series stored as {df.shape[1]} columns")
    s = df.iloc[:, 0]
    s.name = name
    return s


def _read_pandas_frame(data: bytes, start: int) -> Any:
    pd = importlib.import_module("pandas")
    return _frame_from(pd, _read_arrow(data, start))


def _polars_frame(pl: Any, df: Any) -> bytes:
    try:
        out = io.BytesIO()
        df.write_ipc_stream(out, compression="uncompressed")
        body = out.getvalue()
        back = _read_polars(body, 0)
        same = type(back) is type(df) and back.schema == df.schema and back.equals(df)
    except Exception:
        raise _NotMine from None
    if not same:
        raise _NotMine
    return body


def _read_polars(data: bytes, start: int) -> Any:
    _check_arrow(data, start)
    pl = importlib.import_module("polars")
    return pl.read_ipc_stream(io.BytesIO(data[start:]))


# exact comparison


def _exact(a: Any, b: Any) -> bool:
    """Whether ``a`` and ``b`` are equal and of one type at every level (stricter than ``==``:
    ``1 == 1.0 == IntEnum member``, ``Decimal("1.0") == Decimal("1.00")``, and one instant in two
    zones are equal). Models are compared by fields, extra and private attributes and which
    fields are set; values of other types by ``==``."""
    t = type(a)
    if t is not type(b):
        return False
    if t is float:
        if math.isnan(a):
            return math.isnan(b)
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    if t is list or t is tuple:
        return len(a) == len(b) and all(_exact(x, y) for x, y in zip(a, b, strict=True))
    if t is dict:
        return len(a) == len(b) and all(
            _exact(ka, kb) and _exact(va, vb)
            for (ka, va), (kb, vb) in zip(a.items(), b.items(), strict=True)
        )
    if t is set or t is frozenset:
        theirs = {y: y for y in b}
        return len(a) == len(b) and all(x in theirs and _exact(x, theirs[x]) for x in a)
    if t is datetime.datetime or t is datetime.time:
        return a == b and a.fold == b.fold and _same_zone(a.tzinfo, b.tzinfo)
    if t is decimal.Decimal:
        return a.as_tuple() == b.as_tuple()  # type: ignore[no-any-return]
    pydantic = sys.modules.get("pydantic")
    if pydantic is not None and isinstance(a, pydantic.BaseModel):
        return (
            a.__pydantic_fields_set__ == b.__pydantic_fields_set__
            and _exact(a.__dict__, b.__dict__)
            and _exact(a.__pydantic_extra__, b.__pydantic_extra__)
            and _exact(a.__pydantic_private__, b.__pydantic_private__)
        )
    try:
        return (a == b) is True
    except Exception:
        return False


def _same_zone(a: Any, b: Any) -> bool:
    """A zone and the one read back: the same, or both fixed offsets (pydantic reads every
    offset as its own ``TzInfo``), never a named zone for a fixed one (DST rules lost)."""
    if a is b or (a == b and type(a) is type(b)):
        return True
    return _fixed_zone(a) and _fixed_zone(b) and a.utcoffset(None) == b.utcoffset(None)


def _fixed_zone(tz: Any) -> bool:
    return type(tz) is datetime.timezone or type(tz).__module__.startswith("pydantic_core")


# pydantic


def _pydantic(value: Any, t: type) -> bytes:
    module, qualname = t.__module__, t.__qualname__
    if "<locals>" in qualname or sys.modules.get(module) is None:
        raise _NotMine
    try:
        if _find_class(module, qualname) is not t:
            raise _NotMine
        # Only the fields set, by alias (what validation reads): read back, the same fields
        # are set (exclude_unset dumps keep them), the others get their defaults again.
        text = value.model_dump_json(exclude_unset=True, by_alias=True)
        body: bytes = f"{module}:{qualname}\n".encode() + text.encode("utf-8")
        back = _read_pydantic(body, 0)
        # Stricter than the model's ==: 1 in a field typed Any may be an IntEnum member, a
        # datetime may be in a named zone, and both come back from JSON as something else.
        same = _exact(back, value)
    except _NotMine:
        raise
    except Exception:
        raise _NotMine from None
    if not same:
        raise _NotMine
    return body


def _find_class(module: str, qualname: str) -> Any:
    found: Any = sys.modules.get(module)
    if found is None:
        raise BadValue(
            f"pydantic class {module}:{qualname}: module {module!r} is not imported in this "
            "process (a class is never imported on the word of a value from Redis)"
        )
    for part in qualname.split("."):
        # The namespace itself, never getattr: a module's __getattr__ imports submodules on
        # demand (numpy.testing, scipy.stats), a metaclass's may run any code.
        namespace = getattr(found, "__dict__", None)
        found = namespace.get(part) if isinstance(namespace, Mapping) else None
        if found is None:
            raise BadValue(f"pydantic class {module}:{qualname} not found")
    return found


def _read_pydantic(data: bytes, start: int) -> Any:
    end = data.index(b"\n", start)
    path = data[start:end].decode("utf-8")
    module, sep, qualname = path.partition(":")
    if not sep or not module or not qualname:
        raise BadValue(f"a pydantic value with a malformed class path {path!r}")
    cls = _find_class(module, qualname)
    pydantic = sys.modules.get("pydantic")
    if pydantic is None or not isinstance(cls, type) or not issubclass(cls, pydantic.BaseModel):
        raise BadValue(f"{module}:{qualname} is not a pydantic model class")
    return cls.model_validate_json(data[end + 1 :])  # type: ignore[attr-defined]


def _read_json(data: bytes, start: int) -> Any:
    return _json_loads(data[start:])


def _read_pickle(data: bytes, start: int) -> Any:
    # Reached only with a verified MAC and serializer 'pickle' (decode checks both first).
    return pickle.loads(memoryview(data)[start:])


_READERS: dict[int, Callable[[bytes, int], Any]] = {
    JSON: _read_json,
    TAGGED: _read_tagged,
    NDARRAY: _read_npy,
    NPSCALAR: _read_npy_scalar,
    PANDAS_FRAME: _read_pandas_frame,
    PANDAS_SERIES: _read_series,
    POLARS_FRAME: _read_polars,
    PYDANTIC: _read_pydantic,
    PICKLE: _read_pickle,
}
