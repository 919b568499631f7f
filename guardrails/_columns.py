"""Checks on DataFrames, Series and tensors for ``validate.args`` and ``validate.output``.

Every check works on whole columns (numpy or pandas operations, never a Python loop over
rows). A passing check costs the column's extremes (``min()``/``max()``), a null count when
``nullable: false`` and an ``isin`` test: the rows that fail are found, counted and named
(the first few row labels) only once a check has failed.

Nulls: in pandas a NaN in a float column is a null (``isna()``), as are ``None``, ``NaT``
and ``pd.NA``. A null is judged by ``nullable`` alone: it is never counted against ``min``,
``max``, ``finite`` or ``isin``. A NaN that pandas does not call a null (a NaN stored in a
nullable ``Float64`` column) is a value, and no bound passes it.

pandas, pandera and torch are never imported here: pandas and torch objects are recognised
through ``sys.modules`` (an object of their types cannot exist unless they were imported),
and pandera is imported when a policy names a schema.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from typing import Any, Literal

from pydantic import Field, StrictBool, StrictInt, StrictStr, field_validator, model_validator

from guardrails._imports import resolve
from guardrails._types import Section
from guardrails._units import bound_value as _bound
from guardrails._units import number_text as _text

#: The row labels an error names at most.
FIRST = 5

#: A value ``isin`` may list: a string, an int, a float or a bool (YAML scalars).
Scalar = StrictStr | StrictBool | StrictInt | float


def normal_dtype(dtype: str) -> str:
    """The name a ``dtype`` check compares with ``str(value.dtype)``: numpy's name for a numpy
    dtype (``float`` is ``float64``), pandas' for its own (``Int64``, ``category``,
    ``datetime64[ns, UTC]``), ``string`` for any string dtype. ``ValueError`` when neither
    knows it."""
    if dtype in ("str", "string"):
        return "string"
    if dtype in ("datetime64", "timedelta64"):
        return dtype  # any unit (pandas 3 makes microseconds, older pandas nanoseconds)
    try:
        import numpy
    except ImportError:  # pragma: no cover - numpy is a dependency of every user of this
        numpy = None  # type: ignore[assignment]
    if numpy is not None:
        try:
            return str(numpy.dtype(dtype))
        except TypeError:
            pass
    try:
        from pandas.api.types import pandas_dtype
    except ImportError:
        raise ValueError(f"{dtype!r} is not a numpy dtype name") from None
    try:
        return str(pandas_dtype(dtype))
    except TypeError:
        raise ValueError(
            f"{dtype!r} is not a numpy dtype name nor a pandas one (float64, int64, Int64, "
            "string, category, bool, datetime64[ns], ...)"
        ) from None


def dtype_matches(want: str, dtype: Any) -> bool:
    """``dtype`` is the one ``want`` (a :func:`normal_dtype` name) names; ``string`` is any
    pandas string dtype (whatever its storage or missing-value marker) or numpy unicode;
    ``datetime64``/``timedelta64`` without a unit are any unit (and no zone)."""
    if want in ("datetime64", "timedelta64"):
        # Any unit, no zone: datetime64[ns], datetime64[us], ... (a zoned column names it).
        return getattr(dtype, "kind", "") == ("M" if want == "datetime64" else "m") and (
            getattr(dtype, "tz", None) is None
        )
    if want != "string":
        return str(dtype) == want
    kind = getattr(dtype, "kind", "")
    if kind == "U":
        return True
    pd = sys.modules.get("pandas")
    if pd is None:
        return False
    return isinstance(dtype, pd.StringDtype) or str(dtype).startswith("string[")


class RowsCheck(Section):
    """``rows: {min, max}``: how many rows a frame (or elements a Series) may have."""

    min: StrictInt | None = Field(default=None, ge=0)
    max: StrictInt | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> RowsCheck:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is larger than max ({self.max})")
        return self


def import_schema(value: object) -> Any:
    """A pandera ``DataFrameSchema``/``SeriesSchema`` or ``DataFrameModel`` by import path."""
    if not isinstance(value, str):
        raise ValueError(
            "expected the import path of a pandera DataFrameModel or DataFrameSchema, "
            f"like 'package.module:Schema', got {type(value).__name__}"
        )
    obj = resolve(value)
    try:
        import pandera.api.base.schema as base
        from pandera.api.dataframe.model import DataFrameModel
    except ImportError:
        raise ValueError(
            "pandera is not installed: install the extra hydra-guardrails[pandera]"
        ) from None
    if isinstance(obj, type) and issubclass(obj, DataFrameModel):
        return obj.to_schema()
    if isinstance(obj, base.BaseSchema):
        return obj
    raise ValueError(
        f"{value!r} names a {type(obj).__name__}, not a pandera DataFrameModel, "
        "DataFrameSchema or SeriesSchema"
    )


class ColumnCheck(Section):
    """The checks of one column (and of a Series): ``dtype``, ``min``, ``max``, ``finite``,
    ``nullable`` (default ``true``) and ``isin``."""

    dtype: str | None = None
    min: Any = None  # a Bound: validated by validate.py's _bound (see ArgCheck)
    max: Any = None
    finite: StrictBool = False
    nullable: StrictBool = True
    isin: tuple[Scalar, ...] | None = None

    @field_validator("dtype")
    @classmethod
    def _known_dtype(cls, dtype: str | None) -> str | None:
        return None if dtype is None else normal_dtype(dtype)

    @field_validator("min", "max")
    @classmethod
    def _bounds(cls, value: Any) -> Any:

        return None if value is None else _bound(value)

    @field_validator("isin")
    @classmethod
    def _some(cls, isin: tuple[Any, ...] | None) -> tuple[Any, ...] | None:
        return isin_allows_some(isin)


def isin_allows_some(isin: tuple[Any, ...] | None) -> tuple[Any, ...] | None:
    """``isin`` as written, unless it is empty (a check no value could pass)."""
    if isin is not None and not isin:
        raise ValueError("isin lists the values allowed: an empty list allows none")
    return isin


#: Keys that only a DataFrame takes.
FRAME_KEYS = ("columns", "required", "extra_columns", "unique")
#: Keys that judge values (a Series, an array, a number).
VALUE_KEYS = ("dtype", "min", "max", "finite", "nullable", "isin", "device")


# --- messages -------------------------------------------------------------------------------


def _label(label: Any) -> str:
    item = getattr(label, "item", None)
    if callable(item) and type(label).__module__ == "numpy":
        label = item()
    return repr(label) if isinstance(label, str) else str(label)


def _rows(
    count: int, index: Any, bad: Any, values: Any, show_values: bool, what: str = "row"
) -> str:
    """``3 rows (first: 4, 17, 230)``; with ``show_values``, their values too."""
    positions = bad.nonzero()[0][:FIRST]
    labels = ", ".join(_label(x) for x in index[positions])
    text = f"{count} {what}{'s' if count != 1 else ''} ({'first: ' if count > FIRST else ''}"
    text += labels + ")"
    if show_values and values is not None:
        text += " with values " + ", ".join(_label(v) for v in values[positions])
    return text


# --- pandas Series and columns ----------------------------------------------------------------


def _numeric_kind(dtype: Any) -> str:
    """``b``/``i``/``u``/``f`` for a real dtype (numpy's or pandas' nullable ones), else ``""``."""
    numpy_dtype = getattr(dtype, "numpy_dtype", None)  # Int64, Float64, boolean
    kind = getattr(numpy_dtype if numpy_dtype is not None else dtype, "kind", "")
    return kind if isinstance(kind, str) and kind in "biuf" and kind else ""


def _numpy_dtype(dtype: Any, kind: str, np: Any) -> Any:
    """The numpy dtype a numeric column's values are judged in: its own, a nullable or Arrow
    dtype's ``numpy_dtype``, a sparse dtype's ``subtype``; else float64 or int64 by kind."""
    for found in (dtype, getattr(dtype, "numpy_dtype", None), getattr(dtype, "subtype", None)):
        if isinstance(found, np.dtype):
            return found
    return np.float64 if kind == "f" else np.int64  # pragma: no cover - no such dtype known


def _exact_bound(bound: int | float, kind: str, op: str, np: Any) -> Any:
    """``bound`` as a number numpy compares with values of ``kind`` exactly: for an integer
    column a float bound becomes the int it allows (``>= 0.5`` is ``>= 1``); for a float
    column (compared as float64) an int past 2**53 becomes the nearest float on its side."""
    if kind in "iub":
        if isinstance(bound, float):
            return math.ceil(bound) if op == ">=" else math.floor(bound)
        return bound
    if isinstance(bound, int):
        f = float(bound)
        if op == ">=" and f < bound:
            f = float(np.nextafter(f, math.inf))
        elif op == "<=" and f > bound:
            f = float(np.nextafter(f, -math.inf))
        return f
    return bound


def _exact(extreme: Any, kind: str) -> Any:
    """A column's ``min()``/``max()`` as a Python number compared exactly with a bound."""
    if kind in "iub":
        return int(extreme)
    return float(extreme)


def _is_null(value: Any) -> bool:
    pd = sys.modules.get("pandas")
    return value is None or (pd is not None and value is pd.NA) or value != value  # noqa: PLR0124


def series_checker(check: Any, show_values: bool) -> Callable[[Any], list[tuple[str, str]]]:
    """What is wrong with a pandas Series (or column): ``[(column suffix, problem)]``.

    ``check`` has ``dtype``, ``min``, ``max``, ``finite``, ``nullable`` and ``isin``.
    """
    import numpy as np

    want = check.dtype
    low, high = check.min, check.max
    finite, nullable, isin = check.finite, check.nullable, check.isin
    numeric = finite or low is not None or high is not None
    isin_list = list(isin) if isin is not None else None

    def problems(s: Any) -> list[tuple[str, str]]:
        found: list[tuple[str, str]] = []
        dtype = s.dtype
        if want is not None and not dtype_matches(want, dtype):
            found.append(("", f"expected dtype {want}, got {dtype}"))
        if not nullable:
            nulls = s.isna()
            count = int(nulls.sum())
            if count:
                mask = nulls.to_numpy()
                found.append(
                    ("", f"expected no nulls, found {_rows(count, s.index, mask, None, False)}")
                )
        if numeric and len(s):
            found.extend(_numeric_problems(s, dtype, low, high, finite, show_values, np))
        if isin_list is not None and len(s):
            inside = s.isin(isin_list).to_numpy(dtype=bool, na_value=False)
            if not inside.all():
                bad = ~inside & s.notna().to_numpy(dtype=bool)
                count = int(bad.sum())
                if count:
                    listed = ", ".join(_label(v) for v in isin_list[:10])
                    more = ", ..." if len(isin_list) > 10 else ""
                    rows = _rows(count, s.index, bad, s.to_numpy(), show_values)
                    found.append(("", f"expected values in [{listed}{more}], found {rows} outside"))
        return found

    return problems


def _numeric_problems(
    s: Any,
    dtype: Any,
    low: Any,
    high: Any,
    finite: bool,
    show_values: bool,
    np: Any,
) -> list[tuple[str, str]]:
    kind = _numeric_kind(dtype)
    if not kind:
        return [("", f"expected a numeric column, got dtype {dtype}")]
    if isinstance(dtype, np.dtype):
        a = s.to_numpy(copy=False)
        # numpy's extremes: NaN (a null here) makes them NaN, and only then are they
        # taken again without the nulls.
        lo, hi = a.min(), a.max()
        if kind == "f" and (lo != lo or hi != hi):  # noqa: PLR0124
            if np.isnan(a).all():
                return []  # only nulls: nullable judges them
            lo, hi = np.nanmin(a), np.nanmax(a)
    else:
        lo, hi = s.min(), s.max()  # pandas skips the nulls of a nullable dtype
        if _is_null(lo) and _is_null(hi) and s.isna().all():
            return []
    lo, hi = _exact(lo, kind), _exact(hi, kind)
    ok_low = low is None or lo >= low
    ok_high = high is None or hi <= high
    ok_finite = not finite or kind != "f" or (-math.inf < lo and hi < math.inf)
    if ok_low and ok_high and ok_finite:
        return []
    # Something fails: the values that are not null, exactly as float64 or ints.
    valid = s.notna().to_numpy(dtype=bool)
    values = s.to_numpy(dtype=_numpy_dtype(dtype, kind, np), na_value=0)
    if kind == "f" and values.dtype.itemsize < 8:
        values = values.astype(np.float64)  # float16/32 exactly, never the bound rounded
    index = s.index
    found: list[tuple[str, str]] = []
    if not ok_finite:
        bad = valid & ~np.isfinite(values) & ~np.isnan(values)
        count = int(bad.sum())
        found.append(
            (
                "",
                "expected finite values, found "
                f"{_rows(count, index, bad, values, show_values)} infinite",
            )
        )
    for op, bound, ok in ((">=", low, ok_low), ("<=", high, ok_high)):
        if ok or bound is None:
            continue
        exact = _exact_bound(bound, kind, op, np)
        within = values >= exact if op == ">=" else values <= exact
        bad = valid & ~within
        count = int(bad.sum())
        if count:
            rows = _rows(count, index, bad, values, show_values)
            found.append(("", f"expected values {op} {_text(bound)}, found {rows} outside"))
    return found


# --- pandas DataFrames ------------------------------------------------------------------------


def frame_checker(check: Any, show_values: bool) -> Callable[[Any], list[tuple[str, str]]]:
    """What is wrong with a pandas DataFrame: ``[(suffix, problem)]``, the suffix ``.<column>``
    for a column's problems, ``""`` for the frame's."""
    columns = {name: series_checker(c, show_values) for name, c in (check.columns or {}).items()}
    unique = list(dict.fromkeys(check.unique))
    # A column ``unique`` names must exist too: without it no row can be judged, and a check
    # that passes on a frame it never read would hide the frame's mistake.
    required = list(dict.fromkeys([*(check.columns or {}), *check.required, *unique]))
    forbid = check.extra_columns == "forbid"
    rows = check.rows

    def one_column(names: Any, name: str) -> str | None:
        """Why ``df[name]`` is not one column (two columns share the name, or it heads a
        group of MultiIndex columns), or ``None``."""
        if names.nlevels > 1:
            group = int((names.get_level_values(0) == name).sum())
            return (
                f"expected one column {name!r}, found a group of {group} under it "
                "(MultiIndex columns)"
            )
        count = int((names == name).sum())
        if count > 1:
            return f"expected one column {name!r}, found {count}"
        return None

    def problems(df: Any) -> list[tuple[str, str]]:
        found: list[tuple[str, str]] = []
        names = df.columns
        missing = [n for n in required if n not in names]
        if missing:
            found.append(
                (
                    "",
                    f"expected column{'s' if len(missing) > 1 else ''} "
                    f"{', '.join(map(repr, missing))}: missing",
                )
            )
        if forbid:
            extra = [c for c in names if c not in required]
            if extra:
                shown_extra = ", ".join(_label(c) for c in extra[:10])
                more = f" and {len(extra) - 10} more" if len(extra) > 10 else ""
                found.append(
                    ("", f"expected no columns but the ones listed, found {shown_extra}{more}")
                )
        if rows is not None:
            found.extend(("", p) for p in length_problems(rows, len(df), "rows"))
        plain = names.is_unique and names.nlevels == 1
        for name, column_problems in columns.items():
            if name not in names:
                continue
            why = None if plain else one_column(names, name)
            if why is not None:
                found.append((f".{name}", why))
                continue
            found.extend((f".{name}{suffix}", p) for suffix, p in column_problems(df[name]))
        if unique and all(n in names for n in unique):
            whys = {} if plain else {n: one_column(names, n) for n in unique}
            if any(whys.values()):
                # Told once: a column under ``columns`` already has this problem listed.
                found.extend((f".{n}", w) for n, w in whys.items() if w and n not in columns)
                return found
            dup = df.duplicated(subset=unique, keep="first").to_numpy()
            count = int(dup.sum())
            if count:
                what = ", ".join(map(repr, unique))
                rows_text = _rows(count, df.index, dup, None, False)
                found.append(
                    (
                        "",
                        f"expected unique values of {what}, found {rows_text} "
                        "repeating an earlier row",
                    )
                )
        return found

    return problems


def length_problems(rows: RowsCheck, n: int, what: str) -> list[str]:
    if rows.min is not None and n < rows.min:
        return [f"expected at least {rows.min} {what}, got {n}"]
    if rows.max is not None and n > rows.max:
        return [f"expected at most {rows.max} {what}, got {n}"]
    return []


# --- pandera ----------------------------------------------------------------------------------


def schema_checker(schema: Any, show_values: bool) -> Callable[[Any], list[tuple[str, str]]]:
    """A pandera schema's failures: one problem per (column, check), with the count of
    failing rows and the first labels (values only with ``show_values``)."""

    def problems(value: Any) -> list[tuple[str, str]]:
        import pandera.errors

        try:
            schema.validate(value, lazy=True)
        except pandera.errors.SchemaErrors as exc:
            return _schema_failures(exc.failure_cases, show_values)
        except pandera.errors.SchemaError as exc:  # not lazy-collected (a whole-frame check)
            return [("", f"pandera: {str(exc).splitlines()[0]}")]
        return []

    return problems


def _schema_failures(cases: Any, show_values: bool) -> list[tuple[str, str]]:
    """pandera's ``failure_cases`` grouped by (column, check): a check of the whole frame
    (``schema_context`` DataFrameSchema) is one problem of the frame, its rows counted once."""
    found: list[tuple[str, str]] = []
    cases = cases.reset_index(drop=True)
    frame_level = (cases["schema_context"].astype(str) == "DataFrameSchema").to_numpy()
    columns = cases["column"].astype(str).where(~frame_level, "")
    for (column, check_name), group in cases.groupby(
        [columns, cases["check"].astype(str)], sort=False
    ):
        suffix = f".{column}" if column and column not in ("None", "nan") else ""
        labels = list(dict.fromkeys(x for x in group["index"].tolist() if not _is_null(x)))
        count = len(labels)
        text = f"pandera check {check_name} failed"
        if labels:
            first = ", ".join(_label(x) for x in labels[:FIRST])
            lead = "first: " if count > FIRST else ""
            text += f" for {count} row{'s' if count != 1 else ''} ({lead}{first})"
            if show_values:
                picked = group["failure_case"].tolist()[:FIRST]
                text += " with values " + ", ".join(_label(v) for v in picked)
        else:
            # A failure of the column or frame itself (a dtype, a missing column): the
            # "failure case" is pandera's finding (a dtype, a name), not a row's value.
            text += ": " + ", ".join(str(v) for v in group["failure_case"].tolist()[:FIRST])
        found.append((suffix, text))
    return found


# --- torch tensors ----------------------------------------------------------------------------


def device_matches(want: str, device: Any) -> bool:
    """``cuda`` is any CUDA device; ``cuda:1`` that one; ``cpu`` the CPU."""
    text = str(device)
    return text == want or (":" not in want and text.split(":", 1)[0] == want)


def tensor_problems(check: Any, t: Any, torch: Any, show_values: bool) -> list[str]:
    """What is wrong with a torch tensor: the array checks and ``device``. The numbers are
    judged on the tensor's own device; only counts and at most five positions come back."""
    found: list[str] = []
    if check.device is not None and not device_matches(check.device, t.device):
        found.append(f"expected device {check.device}, got {t.device}")
    dtype_name = str(t.dtype).removeprefix("torch.")
    if check.dtype is not None and dtype_name != check.dtype:
        found.append(f"expected dtype {check.dtype}, got {dtype_name}")
    if check.ndim is not None and t.ndim != check.ndim:
        found.append(f"expected {check.ndim} dimensions, got {t.ndim}")
    if check.shape is not None:
        shape = tuple(t.shape)
        wanted = tuple(check.shape)
        if len(shape) != len(wanted) or any(
            w not in (-1, a) for a, w in zip(shape, wanted, strict=True)
        ):
            found.append(f"expected shape [{', '.join(map(str, wanted))}], got {list(shape)}")
    numeric = check.finite or check.min is not None or check.max is not None
    if found or not numeric or t.numel() == 0:
        return found
    if t.is_complex() or not (
        t.is_floating_point() or t.dtype == torch.bool or _int_tensor(t, torch)
    ):
        return [*found, f"expected a numeric tensor, got dtype {dtype_name}"]
    kind = "f" if t.is_floating_point() else "i"
    values = t.double() if kind == "f" and t.element_size() < 8 else t
    if check.finite and kind == "f":
        bad = ~torch.isfinite(values)
        count = int(bad.sum().item())
        if count:
            found.append(
                "expected finite values, found "
                f"{_tensor_rows(count, bad, values, show_values)} NaN or infinite"
            )
    for op, bound in ((">=", check.min), ("<=", check.max)):
        if bound is None:
            continue
        import numpy as np

        exact = _exact_bound(bound, kind, op, np)
        within = values >= exact if op == ">=" else values <= exact
        bad = ~within  # a NaN is within no bound
        if kind == "f" and check.finite:
            bad &= ~torch.isnan(values)  # counted once, under finite
        count = int(bad.sum().item())
        if count:
            rows = _tensor_rows(count, bad, values, show_values)
            found.append(f"expected values {op} {_text(bound)}, found {rows} outside")
    return found


def _int_tensor(t: Any, torch: Any) -> bool:
    return t.dtype in (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def _tensor_rows(count: int, bad: Any, values: Any, show_values: bool) -> str:
    flat = bad.reshape(-1).nonzero().reshape(-1)[:FIRST]
    positions = [int(i) for i in flat.tolist()]
    where = ", ".join(map(str, positions))
    lead = "first: " if count > FIRST else ""
    text = f"{count} element{'s' if count != 1 else ''} (flat positions {lead}{where})"
    if show_values:
        picked = values.reshape(-1)[flat].tolist()
        text += " with values " + ", ".join(map(str, picked))
    return text


# --- dispatch ---------------------------------------------------------------------------------


def kind_of(value: Any) -> Literal["frame", "series", "tensor", "polars", ""]:
    """What kind of container ``value`` is, found through ``sys.modules`` alone."""
    pd = sys.modules.get("pandas")
    if pd is not None:
        if isinstance(value, pd.DataFrame):
            return "frame"
        if isinstance(value, pd.Series):
            return "series"
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        return "tensor"
    pl = sys.modules.get("polars")
    if pl is not None and isinstance(value, pl.DataFrame | pl.Series):
        return "polars"
    return ""


def type_name(value: Any) -> str:
    return type(value).__name__


def keys_set(check: Any, keys: Sequence[str]) -> list[str]:
    """The ``keys`` written in ``check`` (``nullable: true`` and ``extra_columns: allow``,
    the defaults, do not count)."""
    written = []
    for key in keys:
        value = getattr(check, key, None)
        if key == "nullable":
            if value is False:
                written.append(key)
        elif key == "extra_columns":
            if value == "forbid":
                written.append(key)
        elif key == "finite":
            if value:
                written.append(key)
        elif value not in (None, (), {}):
            written.append(key)
    return written


def expected_container(check: Any) -> str | None:
    """What a value must be for ``check`` to apply, when only a DataFrame, Series or tensor
    can pass it; ``None`` when arrays and numbers are judged too."""
    if keys_set(check, FRAME_KEYS):
        return "a pandas DataFrame"
    if check.device is not None:
        return "a torch tensor"
    if keys_set(check, ("nullable", "isin")):
        return "a pandas Series"
    if check.rows is not None or check.schema_ is not None:
        return "a pandas DataFrame or Series"
    return None


def container_checker(check: Any, show_values: bool) -> Callable[[Any], list[Any] | None]:
    """``value -> problems`` for a pandas DataFrame or Series or a torch tensor, ``None``
    for any other value (the array and number checks judge it)."""
    frame_keys = keys_set(check, FRAME_KEYS)
    value_keys = [k for k in keys_set(check, VALUE_KEYS) if k != "device"]
    series_only = keys_set(check, ("nullable", "isin"))
    frame = frame_checker(check, show_values) if frame_keys else None
    column = series_checker(check, show_values) if not frame_keys else None
    schema = schema_checker(import_schema(check.schema_), show_values) if check.schema_ else None
    rows, shape, ndim = check.rows, check.shape, check.ndim
    device = check.device

    def shape_problems(value: Any) -> list[Any]:
        found: list[Any] = []
        if ndim is not None and value.ndim != ndim:
            found.append(f"expected {ndim} dimensions, got {value.ndim}")
        if shape is not None:
            got = tuple(value.shape)
            if len(got) != len(shape) or any(
                w not in (-1, a) for a, w in zip(got, shape, strict=True)
            ):
                found.append(f"expected shape [{', '.join(map(str, shape))}], got {list(got)}")
        return found

    def problems(value: Any) -> list[Any] | None:
        kind = kind_of(value)
        if not kind:
            return None
        name = type_name(value)
        if kind == "polars":
            return [
                f"expected a pandas DataFrame, Series or numpy array, got polars {name}: "
                "convert it with .to_pandas() (or .to_numpy()) before the call"
            ]
        if kind == "tensor":
            if frame_keys or series_only or rows is not None or schema is not None:
                return [f"expected {expected_container(check)}, got {name}"]
            torch = sys.modules["torch"]
            return tensor_problems(check, value, torch, show_values)
        if device is not None:
            return [f"expected a torch tensor, got {name}"]
        found: list[Any] = shape_problems(value)
        if kind == "frame":
            if value_keys:
                return [
                    f"expected a Series, array or number for {', '.join(value_keys)}, got "
                    "DataFrame: a column's checks go under columns.<name>"
                ]
            if frame is not None:
                found.extend(frame(value))
            elif rows is not None:
                found.extend(length_problems(rows, len(value), "rows"))
        else:
            if frame_keys:
                return [f"expected a pandas DataFrame, got {name}"]
            assert column is not None
            found.extend(p[1] for p in column(value))
            if rows is not None:
                found.extend(length_problems(rows, len(value), "rows"))
        if schema is not None:
            found.extend(schema(value))
        return found

    return problems
