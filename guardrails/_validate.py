"""The ``validate`` layers: input checks before anything runs, output checks on each attempt.

``validate.input`` is a pydantic model validated against the bound arguments by parameter
name (the function receives the validated values); ``validate.args`` checks arrays and
scalars without writing a model; ``validate.output`` is a model or type for the result.
"""

from __future__ import annotations

import cmath
import math
import operator
from collections.abc import Callable
from typing import Annotated, Any, NamedTuple

import pydantic
from pydantic import Field, StrictBool, StrictInt, TypeAdapter, field_validator

from guardrails._errors import InputValidationError, OutputValidationError
from guardrails._forksafe import ForkSafeLock
from guardrails._imports import qualified_name
from guardrails._types import AsyncInner, Context, ImportedModel, ImportedType, Inner, Section
from guardrails._types import Block as _Block

#: A bound for a value: a finite int or float, never a bool or a numeric string.
Bound = Annotated[float, Field(strict=True, allow_inf_nan=False)]


class ArgCheck(Section):
    """Checks for one argument: numpy arrays (``dtype``, ``shape``, ``ndim``) and numbers."""

    dtype: str | None = None
    shape: tuple[StrictInt, ...] | None = None
    ndim: StrictInt | None = Field(default=None, ge=0)
    finite: StrictBool = False
    min: Bound | None = None
    max: Bound | None = None

    @field_validator("shape")
    @classmethod
    def _wildcards(cls, shape: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if shape is not None and any(d < -1 for d in shape):
            raise ValueError("dimensions are sizes of zero or more, or -1 for any size")
        return shape

    @field_validator("dtype")
    @classmethod
    def _known_dtype(cls, dtype: str | None) -> str | None:
        np = _numpy()
        if dtype is not None and np is not None:
            try:
                return str(np.dtype(dtype))
            except TypeError:
                raise ValueError(f"{dtype!r} is not a numpy dtype name") from None
        return dtype


class ValidateConfig(_Block):
    """``validate:`` — ``input`` (pydantic model), ``output`` (model or type), ``args`` (checks)."""

    input: ImportedModel | None = None
    output: ImportedType | None = None
    args: dict[str, ArgCheck] = Field(default_factory=dict)

    @field_validator("output")
    @classmethod
    def _validatable(cls, output: Any) -> Any:
        # Built here, so a type pydantic cannot validate is a configuration error, not a
        # failure on the first call; the compiled layer reuses the adapter.
        if output is not None:
            output_adapter(output)
        return output


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
        raise ValueError(
            f"pydantic cannot validate a return value as {qualified_name(output)} "
            f"({type(exc).__name__}: {reason}); name a pydantic model or a type pydantic "
            "can validate"
        ) from None
    with _adapters_lock:
        return _adapters.setdefault(output, adapter)


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


def _arg_checker(name: str, check: ArgCheck) -> Callable[[Any], list[str]]:
    """A function returning what is wrong with one argument value (empty when fine).

    A check that passes costs what it did: for a real array, ``isfinite().all()``, ``min()``
    and ``max()``. Everything else happens only once something looks wrong: a NaN makes
    ``min()``/``max()`` NaN, which is not ``>=`` any bound, so it fails the comparison and is
    then counted. Arrays the numeric checks cannot judge (complex against a bound; object,
    string, datetime and other non-number dtypes) are refused, never passed unchecked.
    """
    np = _numpy()
    want_dtype = check.dtype
    low_bound, high_bound = check.min, check.max
    bounded = low_bound is not None or high_bound is not None
    numeric = check.finite or bounded
    array_types = (np.ndarray, np.generic) if np is not None else ()

    def problems(value: Any) -> list[str]:
        found: list[str] = []
        is_array = isinstance(value, array_types)
        if (want_dtype or check.shape is not None or check.ndim is not None) and not is_array:
            return [f"expected a numpy array, got {type(value).__name__}"]
        if is_array:
            if want_dtype is not None and str(value.dtype) != want_dtype:
                found.append(f"expected dtype {want_dtype}, got {value.dtype}")
            if check.ndim is not None and value.ndim != check.ndim:
                found.append(f"expected {check.ndim} dimensions, got {value.ndim}")
            if check.shape is not None and not _shape_ok(value.shape, check.shape):
                want = "[" + ", ".join(str(d) for d in check.shape) + "]"
                found.append(f"expected shape {want}, got {list(value.shape)}")
            if found or not numeric:
                return found
            kind = value.dtype.kind
            if kind not in "biuf":
                return _unjudged_array(value, check, np)
            if value.size == 0:
                return found
            if check.finite and kind == "f" and not np.isfinite(value).all():
                bad = int((~np.isfinite(value)).sum())
                found.append(f"expected finite values, found {bad} NaN or infinite")
            if low_bound is not None and not ((low := value.min()) >= low_bound):
                found.extend(_out_of_bounds(value, low, ">=", low_bound, check.finite, np))
            if high_bound is not None and not ((high := value.max()) <= high_bound):
                # A NaN is counted once: under `finite`, else under the first bound.
                noted = check.finite or low_bound is not None
                found.extend(_out_of_bounds(value, high, "<=", high_bound, noted, np))
            return found
        if numeric:
            if isinstance(value, bool) or not isinstance(value, int | float):
                return _unjudged_scalar(value, check)
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


def _out_of_bounds(
    value: Any, extreme: Any, op: str, bound: float, nan_noted: bool, np: Any
) -> list[str]:
    """The problem of an array whose ``min()`` (or ``max()``) ``extreme`` is outside ``bound``:
    the value past it, and the NaN (which make ``extreme`` NaN) unless already reported."""
    if not np.isnan(extreme):
        return [f"expected values {op} {bound:g}, found {extreme:g}"]
    # NaN: find the extreme of the rest, then count the NaN.
    nans = int(np.isnan(value).sum())
    parts = []
    if nans < value.size:
        rest = np.nanmin(value) if op == ">=" else np.nanmax(value)
        if rest < bound if op == ">=" else rest > bound:
            parts.append(f"{rest:g}")
    if not nan_noted:
        parts.append(f"{nans} NaN")
    return [f"expected values {op} {bound:g}, found {' and '.join(parts)}"] if parts else []


def _scalar_out_of_bounds(value: float, op: str, bound: float, nan_noted: bool) -> list[str]:
    """The problem of a number outside ``bound``; a NaN only when not already reported."""
    if nan_noted and isinstance(value, float) and math.isnan(value):
        return []
    return [f"expected {op} {bound:g}, got {_number(value)}"]


def _unjudged_array(value: Any, check: ArgCheck, np: Any) -> list[str]:
    """What keeps ``finite``/``min``/``max`` from judging a non-real array or numpy scalar."""
    what = "array" if isinstance(value, np.ndarray) else "numpy scalar"
    if value.dtype.kind != "c":
        return [f"expected a numeric {what}, got dtype {value.dtype}"]
    found = []
    if check.finite and value.size and not np.isfinite(value).all():
        # A complex number is finite when both its parts are.
        bad = int((~np.isfinite(value)).sum())
        found.append(f"expected finite values, found {bad} NaN or infinite")
    if check.min is not None or check.max is not None:
        found.append(f"expected real numbers, got {value.dtype}")
    return found


def _unjudged_scalar(value: Any, check: ArgCheck) -> list[str]:
    """What keeps ``finite``/``min``/``max`` from judging a Python value that is no real number."""
    if not isinstance(value, complex):
        return [f"expected a number, got {type(value).__name__}"]
    found = []
    if check.finite and not cmath.isfinite(value):
        found.append(f"expected a finite number, got {value!r}")
    if check.min is not None or check.max is not None:
        found.append("expected a real number, got complex")
    return found


def _number(value: int | float) -> str:
    """``repr(value)``, or the size of an int too long to read (or past Python's digit limit)."""
    if isinstance(value, int) and value.bit_length() > 96:  # 29 digits or more
        sign = "a negative" if value < 0 else "an"
        return f"{sign} int of about {int(value.bit_length() * 0.30103) + 1} digits"
    return repr(value)


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
    arg_checks = [(name, _arg_checker(name, c)) for name, c in cfg.args.items()]
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
            errors.extend((name, p) for p in problems(bound[name]))
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
            ctx.counters.rejection()
            raise InputValidationError(policy, qualname, errors)
        return args, kwargs

    fast = None
    if in_order and not checks_at and validate is not None:
        fast = _ModelFastPath(plain_arity, fields, validate, pick)
    return check, fast


def output_checker(cfg: ValidateConfig, ctx: Context) -> Callable[[Any], Any] | None:
    """``result -> validated result``, or ``None`` when no output type is set."""
    if cfg.output is None:
        return None
    validate = output_adapter(cfg.output).validate_python

    def check(result: Any) -> Any:
        try:
            return validate(result)
        except pydantic.ValidationError as exc:
            ctx.counters.rejection()
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
