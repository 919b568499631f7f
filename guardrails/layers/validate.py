"""The ``validate`` layers: input checks before anything runs, output checks on each attempt.

``validate.input`` is a pydantic model validated against the bound arguments by parameter
name (the function receives the validated values); ``validate.args`` checks arrays and
scalars without writing a model; ``validate.output`` is a model or type for the result.
"""

from __future__ import annotations

import cmath
import decimal
import math
import numbers
import operator
import re
import typing
from collections.abc import Callable, Mapping
from fractions import Fraction
from typing import Annotated, Any, Literal, NamedTuple

import pydantic
from pydantic import (
    ConfigDict,
    Discriminator,
    Field,
    ModelWrapValidatorHandler,
    PlainValidator,
    StrictBool,
    StrictInt,
    StrictStr,
    Tag,
    TypeAdapter,
    field_validator,
    model_validator,
)

from guardrails import _columns
from guardrails._errors import InputValidationError, OutputValidationError
from guardrails._forksafe import ForkSafeLock
from guardrails._types import (
    AsyncInner,
    Context,
    ImportedModel,
    ImportedType,
    Inner,
    Section,
    type_text,
)
from guardrails._types import Block as _Block
from guardrails._units import bound_value as _bound
from guardrails._units import int_text
from guardrails._units import number_text as _text


def _verb(keys: list[str]) -> str:
    return "checks" if len(keys) == 1 else "check"


def _output_kind(value: Any) -> str:
    """``validate.output`` is checks when written as a mapping, else a type."""
    return "checks" if isinstance(value, Mapping | ArgCheck) else "type"


#: A bound for a value: a finite int or float, never a bool or a numeric string.
Bound = Annotated[int | float, PlainValidator(_bound)]


class ArgCheck(Section):
    """Checks for one argument (or the return value): numpy arrays (``dtype``, ``shape``,
    ``ndim``), numbers (``finite``, ``min``, ``max``), pandas Series and columns (those and
    ``nullable``, ``isin``), DataFrames (``columns``, ``required``, ``extra_columns``,
    ``rows``, ``unique``), torch tensors (the array checks and ``device``) and a pandera
    ``schema`` by import path. See ``guardrails._columns``."""

    model_config = ConfigDict(
        validate_by_name=True, validate_by_alias=True, serialize_by_alias=True
    )

    dtype: str | None = None
    shape: tuple[StrictInt, ...] | None = None
    ndim: StrictInt | None = Field(default=None, ge=0)
    finite: StrictBool = False
    min: Bound | None = None
    max: Bound | None = None
    nullable: StrictBool = True
    isin: tuple[_columns.Scalar, ...] | None = None
    device: str | None = None
    columns: dict[StrictStr, _columns.ColumnCheck] | None = None
    required: tuple[StrictStr, ...] = ()
    extra_columns: Literal["allow", "forbid"] = "allow"
    rows: _columns.RowsCheck | None = None
    unique: tuple[StrictStr, ...] = ()
    schema_: StrictStr | None = Field(default=None, alias="schema")

    @field_validator("shape")
    @classmethod
    def _wildcards(cls, shape: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if shape is not None and any(d < -1 for d in shape):
            raise ValueError("dimensions are sizes of zero or more, or -1 for any size")
        return shape

    @field_validator("dtype")
    @classmethod
    def _known_dtype(cls, dtype: str | None) -> str | None:
        return None if dtype is None else _columns.normal_dtype(dtype)

    @field_validator("isin")
    @classmethod
    def _some(cls, isin: tuple[Any, ...] | None) -> tuple[Any, ...] | None:
        return _columns.isin_allows_some(isin)

    @field_validator("device")
    @classmethod
    def _device(cls, device: str | None) -> str | None:
        if device is not None and not re.fullmatch(r"cpu|cuda(:\d+)?|mps|xpu(:\d+)?", device):
            raise ValueError(f"expected a torch device: cpu, cuda or cuda:<index>, got {device!r}")
        return device

    @field_validator("schema_")
    @classmethod
    def _schema(cls, path: str | None) -> str | None:
        if path is not None:
            _columns.import_schema(path)
        return path

    @model_validator(mode="after")
    def _one_kind(self) -> ArgCheck:
        frame = _columns.keys_set(self, _columns.FRAME_KEYS)
        values = _columns.keys_set(self, _columns.VALUE_KEYS)
        if frame and values:
            raise ValueError(
                f"{', '.join(frame)} {_verb(frame)} a DataFrame and {', '.join(values)} "
                f"{_verb(values)} a Series, array or number: a column's checks go under "
                "columns.<name>"
            )
        if self.device is not None and _columns.keys_set(self, ("nullable", "isin", "rows")):
            raise ValueError("device checks a torch tensor, which has no nullable, isin or rows")
        return self


class ValidateConfig(_Block):
    """``validate:`` — ``input`` (pydantic model), ``output`` (model, type or checks),
    ``args`` (checks)."""

    input: ImportedModel | None = None
    output: (
        Annotated[
            Annotated[ArgCheck, Tag("checks")] | Annotated[ImportedType, Tag("type")],
            Discriminator(_output_kind),
        ]
        | None
    ) = None
    args: dict[str, ArgCheck] = Field(default_factory=dict)

    @field_validator("output")
    @classmethod
    def _validatable(cls, output: Any) -> Any:
        # Built here, so a type pydantic cannot validate is a configuration error, not a
        # failure on the first call; the compiled layer reuses the adapter.
        if output is not None and not isinstance(output, ArgCheck):
            output_adapter(output)
        return output

    @model_validator(mode="wrap")
    @classmethod
    def _untagged(cls, data: Any, handler: ModelWrapValidatorHandler[ValidateConfig]) -> Any:
        # An error in output is at validate.output(.<key>), not under the union's tag
        # (output.checks.<key>, output.type).
        tagged = {("output", "checks"), ("output", "type")}
        try:
            return handler(data)
        except pydantic.ValidationError as exc:
            errors = exc.errors(include_url=False)
            if not any(tuple(e["loc"][:2]) in tagged for e in errors):
                raise
            details: list[Any] = []
            for e in errors:
                loc = tuple(e["loc"])
                if loc[:2] in tagged:
                    loc = ("output", *loc[2:])
                detail: dict[str, Any] = {"type": e["type"], "loc": loc, "input": e["input"]}
                if "ctx" in e:
                    detail["ctx"] = e["ctx"]
                details.append(detail)
            raise pydantic.ValidationError.from_exception_data(exc.title, details) from None


_adapters: dict[Any, TypeAdapter[Any]] = {}
_adapters_lock = ForkSafeLock()


def output_adapter(output: Any) -> TypeAdapter[Any]:
    """The pydantic ``TypeAdapter`` for a ``validate.output`` type, built once per type.

    Keyed by the type rather than kept on the frozen ``ValidateConfig``, so two equal
    policies stay equal and share it. Raises ``ValueError`` when pydantic cannot build one.
    """
    adapter = _adapters.get(output)
    if adapter is not None:
        return adapter
    try:
        adapter = TypeAdapter(output)
    except Exception as exc:  # PydanticSchemaGenerationError, or a type's own schema hook
        reason = str(exc).strip().split(". ")[0].splitlines()[0] if str(exc).strip() else ""
        unknown = [type_text(c) for c in _classes_in(output) if not _validatable(c)]
        hint = (
            f"; or write InstanceOf[{unknown[0]}] to check only that it is one" if unknown else ""
        )
        raise ValueError(
            f"pydantic cannot validate a return value as {type_text(output)} "
            f"({type(exc).__name__}: {reason}); name a pydantic model or a type pydantic "
            f"can validate{hint}"
        ) from None
    with _adapters_lock:
        return _adapters.setdefault(output, adapter)


def _classes_in(tp: Any) -> list[type]:
    """The classes a type expression is made of (``list[numpy.ndarray]``: list, ndarray)."""
    if isinstance(tp, type):
        return [tp]
    found: list[type] = []
    for arg in typing.get_args(tp):
        found.extend(c for c in _classes_in(arg) if c not in found)
    return found


def _validatable(cls: type) -> bool:
    try:
        TypeAdapter(cls)
    except Exception:  # the same failures as output_adapter's
        return False
    return True


def _numpy() -> Any:
    try:
        import numpy
    except ImportError:  # numpy is optional
        return None
    return numpy


Args = tuple[Any, ...]
Kwargs = dict[str, Any]


def _describe_errors(exc: pydantic.ValidationError, prefix: str = "") -> list[tuple[str, str]]:
    found = []
    for err in exc.errors(include_url=False):
        field = ".".join(str(part) for part in err["loc"])
        found.append((prefix + field if field else prefix.rstrip("."), err["msg"]))
    return found


#: What a checker returns: problems of the value itself (a ``str``), or of a part of it
#: (``(".column", problem)``).
Problems = list[Any]


def _arg_checker(check: ArgCheck, show_values: bool) -> Callable[[Any], Problems]:
    """A function returning what is wrong with one argument (or return) value, empty when
    fine: a check that only a DataFrame, Series or tensor can pass refuses anything else;
    the others judge arrays and numbers as :func:`_array_checker` does, and Series, frames
    and tensors through ``guardrails._columns``."""
    other = _columns.container_checker(check, show_values)
    expect = _columns.expected_container(check)
    if expect is None:
        return _array_checker(check, other)

    def problems(value: Any) -> Problems:
        found = other(value)
        if found is None:
            return [f"expected {expect}, got {_columns.type_name(value)}"]
        return found

    return problems


def _array_checker(
    check: ArgCheck, other: Callable[[Any], Problems | None]
) -> Callable[[Any], Problems]:
    """A function returning what is wrong with one argument value (empty when fine); a
    value that is neither an array nor an int or float goes to ``other`` first (a Series,
    a DataFrame, a tensor: ``None`` when it is none of them).

    A check that passes costs what it did: for a plain real array, ``isfinite().all()``,
    ``min()`` and ``max()``. Everything else happens only once something looks wrong: a NaN
    makes ``min()``/``max()`` NaN, which is not ``>=`` any bound, so it fails the comparison
    and is then counted. Arrays the numeric checks cannot judge (complex against a bound;
    object, string, datetime and other non-number dtypes) are refused, never passed unchecked.

    Values are compared with a bound exactly: an extreme becomes a Python int (integer and
    bool dtypes) or float (float16 to float64; ``longdouble`` a ``Fraction``), never an int
    rounded to a float or a bound rounded to the array's dtype. Only the unmasked values of
    a masked array are judged, and an ndarray subclass is judged through a plain ndarray
    view, never its own ``min()``/``max()``.
    """
    np = _numpy()
    want_dtype = check.dtype
    low_bound, high_bound = check.min, check.max
    bounded = low_bound is not None or high_bound is not None
    numeric = check.finite or bounded
    array_types = (np.ndarray, np.generic) if np is not None else ()
    ndarray = np.ndarray if np is not None else None
    # numpy's own scalar types, whose methods are numpy's (a subclass's may not be).
    numpy_scalars = frozenset(np.sctypeDict.values()) if np is not None else frozenset()
    # numpy compares a float64 with a Python int as float64: exact while the int is a float.
    float64_exact = all(
        b is None or isinstance(b, float) or abs(b) <= 2**53 for b in (low_bound, high_bound)
    )
    plain_float64 = np.dtype("float64") if np is not None and float64_exact else None
    plain_numbers = (int, float)
    any_string = want_dtype == "string"

    def problems(value: Any) -> Problems:
        found: Problems = []
        is_array = isinstance(value, array_types)
        if not is_array and type(value) not in plain_numbers:
            judged = other(value)
            if judged is not None:
                return judged
        if (want_dtype or check.shape is not None or check.ndim is not None) and not is_array:
            return [f"expected a numpy array, got {type(value).__name__}"]
        if is_array:
            if (
                want_dtype is not None
                and str(value.dtype) != want_dtype
                and not (any_string and _columns.dtype_matches(want_dtype, value.dtype))
            ):
                found.append(f"expected dtype {want_dtype}, got {value.dtype}")
            if check.ndim is not None and value.ndim != check.ndim:
                found.append(f"expected {check.ndim} dimensions, got {value.ndim}")
            if check.shape is not None and not _shape_ok(value.shape, check.shape):
                want = "[" + ", ".join(str(d) for d in check.shape) + "]"
                found.append(f"expected shape {want}, got {list(value.shape)}")
            if found or not numeric:
                return found
            dtype = value.dtype
            kind = dtype.kind
            plain = (kind_of := type(value)) is ndarray or kind_of in numpy_scalars
            data = value if plain else _plain_values(value, np)
            if kind not in "biuf":
                return _unjudged_array(value, data, check, np)
            if data.size == 0:
                return found  # an empty or fully masked array has no value to fail
            # Exact comparisons: numpy's between a float64 and a float (or an int no larger
            # than 2**53); else Python's, between an int or float and the bound.
            exact = None if dtype is plain_float64 else _exact(dtype, float64_exact)
            if check.finite and kind == "f" and not np.isfinite(data).all():
                bad = int((~np.isfinite(data)).sum())
                found.append(f"expected finite values, found {bad} NaN or infinite")
            if low_bound is not None:
                low = data.min() if exact is None else exact(data.min())
                if not (low >= low_bound):
                    found.extend(
                        _out_of_bounds(data, low, ">=", low_bound, check.finite, np, exact)
                    )
            if high_bound is not None:
                high = data.max() if exact is None else exact(data.max())
                if not (high <= high_bound):
                    # A NaN is counted once: under `finite`, else under the first bound.
                    noted = check.finite or low_bound is not None
                    found.extend(_out_of_bounds(data, high, "<=", high_bound, noted, np, exact))
            return found
        if numeric:
            if isinstance(value, bool) or not isinstance(value, int | float):
                return _other_scalar(value, check)
            if type(value) is not int and type(value) is not float:
                # A subclass's own comparisons must not judge it: its base value does.
                value = int.__int__(value) if isinstance(value, int) else float.__float__(value)
            if check.finite and isinstance(value, float) and not math.isfinite(value):
                found.append(f"expected a finite number, got {value!r}")
            # `not >=`: a NaN is no more within a bound than outside it.
            if low_bound is not None and not (value >= low_bound):
                found.extend(_scalar_out_of_bounds(value, ">=", low_bound, check.finite))
            if high_bound is not None and not (value <= high_bound):
                noted = check.finite or low_bound is not None
                found.extend(_scalar_out_of_bounds(value, "<=", high_bound, noted))
        return found

    return problems


def _plain_values(value: Any, np: Any) -> Any:
    """The values of an ndarray subclass or numpy scalar to judge, as a plain ndarray: a
    view that bypasses the subclass's methods, holding only the unmasked values of a masked
    array (a fully masked one holds none)."""
    if isinstance(value, np.ndarray):
        data = np.ndarray.view(value, np.ndarray)
        if isinstance(value, np.ma.MaskedArray):
            mask = np.ma.getmask(value)
            if mask is not np.ma.nomask and mask.any():
                data = data[~np.broadcast_to(mask, data.shape)]
        return data
    if type(value) is value.dtype.type:
        return value  # a numpy scalar of numpy's own type
    return np.asarray(value)


def _exact(dtype: Any, float64_exact: bool) -> Callable[[Any], Any] | None:
    """How to turn a real dtype's extreme into a number that compares exactly with a bound:
    ``None`` when numpy's own comparison already does."""
    if dtype.kind != "f":
        return int  # bool, int and uint: Python ints, never rounded to floats
    if dtype.itemsize == 8:
        return None if float64_exact else float
    # float16 and float32 are floats exactly (numpy would round the bound to their precision)
    return float if dtype.itemsize < 8 else _long_exact


def _long_exact(extreme: Any) -> float | Fraction:
    """A ``longdouble`` extreme exactly: a ``Fraction`` when finite (a float would round)."""
    if extreme != extreme or extreme in (float("inf"), float("-inf")):  # noqa: PLR0124
        return float(extreme)
    return Fraction(*extreme.as_integer_ratio())


def _out_of_bounds(
    data: Any,
    extreme: Any,
    op: str,
    bound: float,
    nan_noted: bool,
    np: Any,
    exact: Callable[[Any], Any] | None,
) -> list[str]:
    """The problem of an array whose ``min()`` (or ``max()``) ``extreme`` is outside ``bound``:
    the value past it, and the NaN (which make ``extreme`` NaN) unless already reported."""
    if not (isinstance(extreme, float) and math.isnan(extreme)):
        return [f"expected values {op} {_text(bound)}, found {_text(extreme)}"]
    # NaN: find the extreme of the rest, then count the NaN.
    nans = int(np.isnan(data).sum())
    parts = []
    if nans < data.size:
        rest = np.nanmin(data) if op == ">=" else np.nanmax(data)
        rest = rest if exact is None else exact(rest)
        if rest < bound if op == ">=" else rest > bound:
            parts.append(_text(rest))
    if not nan_noted:
        parts.append(f"{nans} NaN")
    return [f"expected values {op} {_text(bound)}, found {' and '.join(parts)}"] if parts else []


def _scalar_out_of_bounds(value: Any, op: str, bound: float, nan_noted: bool) -> list[str]:
    """The problem of a number outside ``bound``; a NaN only when not already reported."""
    if nan_noted and isinstance(value, float) and math.isnan(value):
        return []
    return [f"expected {op} {_text(bound)}, got {int_text(value)}"]


def _unjudged_array(value: Any, data: Any, check: ArgCheck, np: Any) -> list[str]:
    """What keeps ``finite``/``min``/``max`` from judging a non-real array or numpy scalar."""
    what = "array" if isinstance(value, np.ndarray) else "numpy scalar"
    if value.dtype.kind != "c":
        return [f"expected a numeric {what}, got dtype {value.dtype}"]
    found = []
    if check.finite and data.size and not np.isfinite(data).all():
        # A complex number is finite when both its parts are.
        bad = int((~np.isfinite(data)).sum())
        found.append(f"expected finite values, found {bad} NaN or infinite")
    if check.min is not None or check.max is not None:
        found.append(f"expected real numbers, got {value.dtype}")
    return found


def _other_scalar(value: Any, check: ArgCheck) -> list[str]:
    """What is wrong with a Python value that is not an int or float: a ``Decimal`` or
    another real number (a ``Fraction``) is judged exactly; a complex number passes
    ``finite`` when both its parts are finite, and no bound; anything else is refused."""
    if isinstance(value, complex):
        found = []
        if check.finite and not cmath.isfinite(value):
            found.append(f"expected a finite number, got {value!r}")
        if check.min is not None or check.max is not None:
            found.append("expected a real number, got complex")
        return found
    if isinstance(value, bool) or not isinstance(value, decimal.Decimal | numbers.Real):
        return [f"expected a number, got {type(value).__name__}"]
    try:
        if isinstance(value, decimal.Decimal):
            nan, finite = value.is_nan(), value.is_finite()
        elif isinstance(value, numbers.Rational):
            nan, finite = False, True
        else:
            nan, finite = math.isnan(value), math.isfinite(value)
        text = str(value)
        found = []
        if check.finite and not finite:
            found.append(f"expected a finite number, got {text}")
        nan_noted = check.finite
        for op, given in ((">=", check.min), ("<=", check.max)):
            if given is None:
                continue
            if nan:  # a NaN is within no bound; a Decimal NaN cannot even be compared
                if not nan_noted:
                    found.append(f"expected {op} {_text(given)}, got {text}")
                nan_noted = True
                continue
            bound: Any = given
            if isinstance(value, decimal.Decimal) and isinstance(given, float):
                bound = decimal.Decimal.from_float(given)  # exact, and never a float trap
            if not (value >= bound if op == ">=" else value <= bound):
                found.append(f"expected {op} {_text(given)}, got {text}")
    except Exception as exc:  # a number type whose comparisons or conversions fail
        return [f"cannot compare {type(value).__name__} with a bound ({type(exc).__name__})"]
    return found


def _shape_ok(actual: tuple[int, ...], wanted: tuple[int, ...]) -> bool:
    return len(actual) == len(wanted) and all(
        w in (-1, a) for a, w in zip(actual, wanted, strict=True)
    )


class _ModelFastPath(NamedTuple):
    """What the flat sync layer needs when the model's fields are the parameters, in order."""

    arity: int
    fields: tuple[str, ...]
    validate: Callable[[Any], Any]
    pick: Callable[[dict[str, Any]], tuple[Any, ...]]


def input_checker(
    cfg: ValidateConfig, ctx: Context
) -> tuple[Callable[[Args, Kwargs], tuple[Args, Kwargs]], _ModelFastPath | None] | None:
    """``check(args, kwargs) -> (args, kwargs)`` validated, with the model fast path when
    there is one; ``None`` when there is nothing to check."""
    model = cfg.input
    show_values = ctx.show_values
    arg_checks = [(name, _arg_checker(c, show_values)) for name, c in cfg.args.items()]
    if model is None and not arg_checks:
        return None
    binder = ctx.binder
    names = binder.names
    fields = tuple(model.model_fields) if model is not None else ()
    ctx.check_parameters([*cfg.args, *fields], "validate")
    validator = model.__pydantic_validator__ if model is not None else None
    policy, qualname = ctx.policy, ctx.qualname
    mapping, call_args = binder.mapping, binder.call_args
    position = {name: i for i, name in enumerate(names)}
    field_at = tuple((f, position[f]) for f in fields)
    checks_at = tuple((position[name], problems) for name, problems in arg_checks)
    plain_arity = binder.plain_arity
    # The model's fields are the parameters, in order: validate and rebuild the args in C.
    in_order = validator is not None and bool(fields) and fields == names
    pick = operator.itemgetter(*fields) if len(fields) > 1 else (lambda d: (d[fields[0]],))
    validate = validator.validate_python if validator is not None else None

    def check(args: Args, kwargs: Kwargs) -> tuple[Args, Kwargs]:
        if kwargs or len(args) != plain_arity:
            return slow(args, kwargs)
        # Every parameter passed by position: no binding needed.
        for i, problems in checks_at:
            if problems(args[i]):
                return slow(args, kwargs)
        if validate is None:
            return args, kwargs
        try:
            if in_order:
                return pick(validate(dict(zip(fields, args, strict=True))).__dict__), kwargs
            validated = validate({f: args[i] for f, i in field_at})
        except pydantic.ValidationError:
            return slow(args, kwargs)
        new = list(args)
        for f, i in field_at:
            new[i] = getattr(validated, f)
        return tuple(new), kwargs

    def slow(args: Args, kwargs: Kwargs) -> tuple[Args, Kwargs]:
        """Bind by name, run every check, and collect every problem."""
        bound = mapping(args, kwargs)
        errors: list[tuple[str, str]] = []
        for name, problems in arg_checks:
            errors.extend(_named(name, problems(bound[name])))
        if validator is not None:
            try:
                validated = validator.validate_python({f: bound[f] for f in fields})
            except pydantic.ValidationError as exc:
                errors.extend(_describe_errors(exc))
            else:
                if not errors:
                    for f in fields:
                        bound[f] = getattr(validated, f)
                    return call_args(bound)
        if errors:
            ctx.counters.reject_input()
            raise InputValidationError(policy, qualname, errors) from None  # not "during handling"
        return args, kwargs

    fast = None
    if in_order and not checks_at and validate is not None:
        fast = _ModelFastPath(plain_arity, fields, validate, pick)
    return check, fast


def _named(name: str, found: Problems) -> list[tuple[str, str]]:
    """A checker's problems as ``(field, problem)``: ``name``, or ``name.<column>``."""
    return [(name, p) if isinstance(p, str) else (name + p[0], p[1]) for p in found]


def output_checker(cfg: ValidateConfig, ctx: Context) -> Callable[[Any], Any] | None:
    """``result -> validated result``, or ``None`` when no output type is set; output
    checks (a mapping) return the result itself once it passes."""
    if cfg.output is None:
        return None
    if isinstance(cfg.output, ArgCheck):
        problems = _arg_checker(cfg.output, ctx.show_values)

        def judge(result: Any) -> Any:
            found = problems(result)
            if found:
                ctx.counters.reject_output()
                raise OutputValidationError(ctx.policy, ctx.qualname, _named("return", found))
            return result

        return judge
    validate = output_adapter(cfg.output).validate_python

    def check(result: Any) -> Any:
        try:
            return validate(result)
        except pydantic.ValidationError as exc:
            ctx.counters.reject_output()
            raise OutputValidationError(
                ctx.policy, ctx.qualname, _describe_errors(exc, "return.") or [("return", str(exc))]
            ) from None

    return check


def build_input(cfg: ValidateConfig, inner: Inner, ctx: Context) -> Inner:
    """The sync input-validation layer."""
    built = input_checker(cfg, ctx)
    if built is None:
        return inner
    check, fast = built
    if fast is not None:
        # The common case, kept flat: a model whose fields are the parameters, called
        # positionally. Anything else, and every failure, goes through ``check``.
        plain_arity, fields, validate, pick = fast
        invalid = pydantic.ValidationError
        if plain_arity == 1:
            (field,) = fields  # a one-field dict literal is four times cheaper than dict(zip())

            def validate_one(args: tuple[Any, ...], kwargs: dict[str, Any], info: Any) -> Any:
                if kwargs or len(args) != 1:
                    args, kwargs = check(args, kwargs)
                else:
                    try:
                        args = (validate({field: args[0]}).__dict__[field],)
                    except invalid:
                        args, kwargs = check(args, kwargs)
                return inner(args, kwargs, info)

            return validate_one

        def validate_model(args: tuple[Any, ...], kwargs: dict[str, Any], info: Any) -> Any:
            if kwargs or len(args) != plain_arity:
                args, kwargs = check(args, kwargs)
            else:
                try:
                    args = pick(validate(dict(zip(fields, args, strict=True))).__dict__)
                except invalid:
                    args, kwargs = check(args, kwargs)
            return inner(args, kwargs, info)

        return validate_model

    def validate_input(args: tuple[Any, ...], kwargs: dict[str, Any], info: Any) -> Any:
        args, kwargs = check(args, kwargs)
        return inner(args, kwargs, info)

    return validate_input


def build_input_async(cfg: ValidateConfig, inner: AsyncInner, ctx: Context) -> AsyncInner:
    """The async input-validation layer."""
    built = input_checker(cfg, ctx)
    if built is None:
        return inner
    check = built[0]

    async def validate_input(args: tuple[Any, ...], kwargs: dict[str, Any], info: Any) -> Any:
        args, kwargs = check(args, kwargs)
        return await inner(args, kwargs, info)

    return validate_input


def build_output(cfg: ValidateConfig, inner: Inner, ctx: Context) -> Inner:
    """The sync output-validation layer (inside retry: per attempt)."""
    check = output_checker(cfg, ctx)
    if check is None:
        return inner

    def validate_output(args: tuple[Any, ...], kwargs: dict[str, Any], info: Any) -> Any:
        return check(inner(args, kwargs, info))

    return validate_output


def build_output_async(cfg: ValidateConfig, inner: AsyncInner, ctx: Context) -> AsyncInner:
    """The async output-validation layer (inside retry: per attempt)."""
    check = output_checker(cfg, ctx)
    if check is None:
        return inner

    async def validate_output(args: tuple[Any, ...], kwargs: dict[str, Any], info: Any) -> Any:
        return check(await inner(args, kwargs, info))

    return validate_output
