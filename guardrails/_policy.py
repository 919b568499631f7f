"""The policy model, policy inheritance, and whole-config validation with dotted-path errors.

Works on plain dicts only: OmegaConf and Hydra stay in ``_config``.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import importlib.metadata
import os
import types
import typing
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pydantic
from pydantic import BaseModel

from guardrails._errors import PolicyConfigError
from guardrails._redis import REDIS_URL_ENV, redis_url_problem, redis_url_shown
from guardrails._types import Section
from guardrails._units import shown
from guardrails.layers.breaker import BreakerConfig
from guardrails.layers.bulkhead import BulkheadConfig
from guardrails.layers.cache import CacheConfig
from guardrails.layers.chaos import ChaosConfig
from guardrails.layers.fallback import FallbackConfig
from guardrails.layers.log import LogConfig
from guardrails.layers.memory import MemoryConfig
from guardrails.layers.rate_limit import RateLimitConfig
from guardrails.layers.retry import RetryConfig
from guardrails.layers.timeout import TimeoutConfig
from guardrails.layers.validate import ValidateConfig

with warnings.catch_warnings():
    # `validate` is the YAML key the contract names; it shadows the deprecated
    # BaseModel.validate classmethod, which nothing here uses.
    warnings.simplefilter("ignore")

    class Policy(Section):
        """The effective settings of one policy name: each block, or ``None`` when absent."""

        base: str | None = None
        log: LogConfig | None = None
        validate: ValidateConfig | None = None  # type: ignore[assignment]
        cache: CacheConfig | None = None
        memory: MemoryConfig | None = None
        retry: RetryConfig | None = None
        fallback: FallbackConfig | None = None
        timeout: TimeoutConfig | None = None
        breaker: BreakerConfig | None = None
        rate_limit: RateLimitConfig | None = None
        bulkhead: BulkheadConfig | None = None
        chaos: ChaosConfig | None = None


ROOT = "guardrails"
_NODE_KEYS = ("strict", "allow_chaos", "redis_url", "policy_defaults", "policies")


@dataclass(frozen=True, slots=True)
class Settings:
    """A validated configuration: what ``configure()`` returns and chains are built from."""

    strict: bool
    policy_defaults: Policy
    policies: Mapping[str, Policy]
    source: str
    #: Whether ``chaos`` blocks may inject faults (``allow_chaos: true`` at the top level).
    allow_chaos: bool = False
    #: The Redis server of ``cache.backend: redis`` and the ``shared`` breaker, rate limit
    #: and bulkhead (top-level ``redis_url``); ``None``: ``$GUARDRAILS_REDIS_URL``.
    redis_url: str | None = None
    #: Values that came from interpolations, never to be shown in a problem.
    secrets: tuple[Any, ...] = field(default=(), compare=False, repr=False)

    def __repr__(self) -> str:
        # The dataclass's repr, but the Redis URL's password masked (a repr ends up in logs,
        # tracebacks and debuggers).
        shown = {
            f.name: redis_url_shown(self.redis_url)
            if f.name == "redis_url" and self.redis_url is not None
            else getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.repr
        }
        return f"Settings({', '.join(f'{k}={v!r}' for k, v in shown.items())})"

    def policy(self, name: str) -> Policy:
        """The effective policy for ``name``: its own, or ``policy_defaults`` (unless strict)."""
        found = self.policies.get(name)
        if found is not None:
            return found
        if self.strict:
            raise PolicyConfigError([missing_policy_problem(name, None, self.policies)])
        return self.policy_defaults

    def __reduce__(self) -> tuple[Any, ...]:
        # For worker processes (see guardrails.settings()): `policies` is a read-only view,
        # which pickle refuses; the policies travel as a dict and come back read-only. The
        # layout of the policy blocks travels first, so that a process running another
        # version of guardrails refuses them before any block is made (pydantic would make a
        # block with the other version's fields without a word: a missing one fails each
        # call with AttributeError, a new one is ignored).
        return (
            _unpickled_settings,
            (
                _Layout(),
                self.strict,
                self.policy_defaults,
                dict(self.policies),
                self.source,
                self.allow_chaos,
                self.secrets,
                self.redis_url,
            ),
        )


class _Layout:
    """Pickles as a check of the policy blocks' layout in the unpickling process."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_checked_layout, (policy_layout(), _version()))


def _checked_layout(layout: str, version: str) -> str:
    if layout != policy_layout():
        here = _version()
        versions = (
            f"hydra-guardrails {version} there, {here} here"
            if version != here
            else f"both hydra-guardrails {here}, from different sources"
        )
        raise PolicyConfigError(
            [
                (
                    ROOT,
                    f"these settings were pickled by another version of guardrails "
                    f"({versions}), whose policy blocks have other keys: run the same "
                    f"guardrails version in the driver and its workers",
                )
            ],
            header="cannot unpickle guardrails settings",
        )
    return layout


@functools.cache
def policy_layout() -> str:
    """A digest of the shape of the settings: each block model's name and field names,
    recursively (never their values, defaults or validators). Two processes whose digests
    agree read each other's pickled settings field for field."""
    seen: dict[str, tuple[str, ...]] = {
        "Settings": tuple(f.name for f in dataclasses.fields(Settings))
    }
    todo: list[Any] = [Policy]
    while todo:
        found = todo.pop()
        if isinstance(found, type) and issubclass(found, BaseModel):
            name = f"{found.__module__}.{found.__qualname__}"
            if name in seen:
                continue
            seen[name] = tuple(sorted(found.model_fields))
            todo.extend(f.annotation for f in found.model_fields.values())
        else:
            todo.extend(typing.get_args(found))
    text = repr(sorted(seen.items()))
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


@functools.cache
def _version() -> str:
    try:
        return importlib.metadata.version("hydra-guardrails")
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"


def _unpickled_settings(
    _layout: str,
    strict: bool,
    policy_defaults: Policy,
    policies: dict[str, Policy],
    source: str,
    allow_chaos: bool,
    secrets: tuple[Any, ...],
    redis_url: str | None,
) -> Settings:
    return Settings(
        redis_url=redis_url,
        strict=strict,
        policy_defaults=policy_defaults,
        policies=types.MappingProxyType(policies),
        source=source,
        allow_chaos=allow_chaos,
        secrets=secrets,
    )


def missing_policy_problem(
    name: str, function: str | None, policies: Mapping[str, Any]
) -> tuple[str, str]:
    who = f" for guarded function {function}" if function else ""
    near = difflib.get_close_matches(name, list(policies), n=1)
    hint = f" (did you mean {near[0]!r}?)" if near else ""
    return (
        f"{ROOT}.policies.{name}",
        f"no policy named {name!r}{who}{hint}; strict is true, so every guarded name needs "
        f"a policy: add one, or set {ROOT}.strict=false to fall back to policy_defaults",
    )


#: Names shorter than this are never called typos of each other (``a`` and ``b``).
_TYPO_MIN = 4


def typo_index(names: Iterable[str]) -> dict[str, list[str]]:
    """An index for ``typo_of``: each name, and each of its one-character deletions, to the
    names it comes from. Linear in the total length of the names."""
    index: dict[str, list[str]] = {}
    for name in names:
        index.setdefault(name, []).append(name)
        for i in range(len(name)):
            index.setdefault(name[:i] + name[i + 1 :], []).append(name)
    return index


def typo_of(name: str, index: Mapping[str, list[str]]) -> str | None:
    """A name of ``index`` one typo from ``name`` (a character inserted, deleted or replaced,
    or two neighbours swapped), if any. A difference in digits alone is no typo
    (``predict_v1`` and ``predict_v2`` are versions), nor are names shorter than four."""
    if len(name) < _TYPO_MIN:
        return None
    variants = [name] + [name[:i] + name[i + 1 :] for i in range(len(name))]
    for variant in variants:
        for candidate in sorted(index.get(variant, ())):
            if candidate != name and len(candidate) >= _TYPO_MIN and _one_typo(name, candidate):
                return candidate
    return None


def _one_typo(a: str, b: str) -> bool:
    """Whether ``a`` and ``b`` differ by one edit (or a swap of neighbours) not in digits."""
    if len(a) == len(b):
        diff = [i for i in range(len(a)) if a[i] != b[i]]
        if len(diff) == 1:
            i = diff[0]
            return not (a[i].isdigit() and b[i].isdigit())
        i, j = diff[0], diff[-1]
        return len(diff) == 2 and j == i + 1 and a[i] == b[j] and a[j] == b[i]
    short, long = (a, b) if len(a) < len(b) else (b, a)
    if len(long) != len(short) + 1:
        return False
    i = next((k for k in range(len(short)) if short[k] != long[k]), len(short))
    return short[i:] == long[i + 1 :] and not long[i].isdigit()


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``: mappings merge key by key, anything else replaces."""
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def build_settings(node: Mapping[str, Any], source: str) -> Settings:
    """Validate a whole ``guardrails`` node; every problem is reported at once."""
    problems: list[tuple[str, str]] = []
    for key in node:
        if key not in _NODE_KEYS:
            problems.append((f"{ROOT}.{key}", _unknown_key(str(key), _NODE_KEYS)))
    strict = node.get("strict", False)
    if not isinstance(strict, bool):
        problems.append((f"{ROOT}.strict", f"expected true or false, got {shown(strict)}"))
        strict = False
    allow_chaos = node.get("allow_chaos", False)
    if not isinstance(allow_chaos, bool):
        problems.append(
            (f"{ROOT}.allow_chaos", f"expected true or false, got {shown(allow_chaos)}")
        )
        allow_chaos = False
    redis_url = node.get("redis_url")
    if redis_url is not None:
        problem = redis_url_problem(redis_url)
        if problem:
            problems.append((f"{ROOT}.redis_url", problem))
            redis_url = None
    raw_defaults = _mapping(node.get("policy_defaults"), f"{ROOT}.policy_defaults", problems)
    raw_policies = _mapping(node.get("policies"), f"{ROOT}.policies", problems)
    if "base" in raw_defaults:
        problems.append(
            (f"{ROOT}.policy_defaults.base", "policy_defaults cannot inherit from a policy")
        )
        raw_defaults = {k: v for k, v in raw_defaults.items() if k != "base"}

    own: dict[str, dict[str, Any]] = {}
    for name, body in raw_policies.items():
        own[str(name)] = _mapping(body, f"{ROOT}.policies.{name}", problems)

    defaults = _validate(raw_defaults, lambda loc: f"{ROOT}.policy_defaults", problems)
    merged_raw = _inherit(own, raw_defaults, problems)
    origins = _Origins(own, raw_defaults)
    policies: dict[str, Policy] = {}
    for name, body in own.items():
        merged = merged_raw[name]
        if merged is None:
            continue
        validated = _validate(
            {**merged, "base": body.get("base")},
            functools.partial(origins.prefix, name),
            problems,
        )
        if validated is not None:
            policies[name] = validated
    if not allow_chaos:
        named = [(f"{ROOT}.policy_defaults", defaults)] if defaults is not None else []
        # Reported where it was written: a chaos block in policy_defaults or a base is one
        # problem, not one per policy that inherits it.
        named += [(origins.prefix(name, ("chaos",)), p) for name, p in policies.items()]
        for where, checked in named:
            if checked.chaos is not None and checked.chaos.enabled:
                problems.append(
                    (
                        f"{where}.chaos",
                        "chaos injects failures and is refused unless the top level sets "
                        f"allow_chaos: true (for a drill: +{ROOT}.allow_chaos=true)",
                    )
                )
    if problems:
        raise PolicyConfigError(_dedupe(problems))
    assert defaults is not None
    return Settings(
        strict=strict,
        allow_chaos=allow_chaos,
        redis_url=redis_url,
        policy_defaults=defaults,
        policies=types.MappingProxyType(policies),
        source=source,
    )


def redis_url_for(settings: Settings) -> str | None:
    """The Redis URL in force: the configuration's ``redis_url``, else the environment's."""
    return settings.redis_url or os.environ.get(REDIS_URL_ENV) or None


def _mapping(value: Any, path: str, problems: list[tuple[str, str]]) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        problems.append((path, f"expected a mapping, got {shown(value)}"))
        return {}
    return dict(value)


def _inherit(
    own: Mapping[str, dict[str, Any]],
    defaults: dict[str, Any],
    problems: list[tuple[str, str]],
) -> dict[str, dict[str, Any] | None]:
    """Each policy's raw mapping merged over its bases and ``policy_defaults``, or ``None``
    when its inheritance is broken (reported once, at the ``base`` key that breaks it).

    Each policy is merged once, over its base's memoised result: linear in the number of
    policies however long the chains, and without recursion.
    """
    merged: dict[str, dict[str, Any] | None] = {}
    for start in own:
        walked: dict[str, int] = {}  # the names being resolved, in order
        name = start
        parent: dict[str, Any] | None = defaults
        while name not in merged:
            walked[name] = len(walked)
            base = own[name].get("base")
            if base is None:
                parent = defaults
                break
            path = f"{ROOT}.policies.{name}.base"
            if not isinstance(base, str):
                problems.append((path, f"expected the name of another policy, got {shown(base)}"))
                parent = None
                break
            if base not in own:
                near = difflib.get_close_matches(base, list(own), n=1)
                hint = f" (did you mean {near[0]!r}?)" if near else ""
                problems.append((path, f"no policy named {shown(base)} to inherit from{hint}"))
                parent = None
                break
            if base in walked:
                cycle = " -> ".join([*list(walked)[walked[base] :], base])
                problems.append((path, f"inheritance cycle: {cycle}"))
                parent = None
                break
            name = base
        else:
            parent = merged[name]
        for member in reversed(walked):
            if parent is not None:
                parent = deep_merge(parent, own[member])
            merged[member] = parent
    return merged


class _Origins:
    """Which source wrote the value at an error's location: the policy, one of its bases,
    or ``policy_defaults``. Asked only when validation fails; memoised per (policy,
    location), so a long chain that fails at its root is walked once, not once per policy."""

    def __init__(self, own: Mapping[str, Mapping[str, Any]], defaults: Mapping[str, Any]):
        self.own = own
        self.defaults = defaults
        self.memo: dict[tuple[str, tuple[Any, ...]], str | None] = {}

    def prefix(self, name: str, loc: tuple[Any, ...]) -> str:
        """The dotted prefix for an error at ``loc`` in policy ``name``: of the most derived
        source that wrote the deepest part of ``loc`` anything wrote."""
        for depth in range(len(loc), 0, -1):
            found = self._writer(name, loc[:depth])
            if found is not None:
                return found
        return f"{ROOT}.policies.{name}"

    def _writer(self, name: str, part: tuple[Any, ...]) -> str | None:
        walked: list[tuple[str, tuple[Any, ...]]] = []
        current: str | None = name
        found: str | None = None
        while current is not None:
            key = (current, part)
            if key in self.memo:
                found = self.memo[key]
                break
            walked.append(key)
            if _writes(self.own[current], part):
                found = f"{ROOT}.policies.{current}"
                break
            current = self.own[current].get("base")  # a valid chain: validation got here
        else:
            found = f"{ROOT}.policy_defaults" if _writes(self.defaults, part) else None
        for key in walked:
            self.memo[key] = found
        return found


def _writes(raw: Mapping[str, Any], part: tuple[Any, ...]) -> bool:
    node: Any = raw
    for key in part:
        if not isinstance(node, Mapping) or key not in node:
            return False
        node = node[key]
    return True


def _validate(
    merged: Mapping[str, Any],
    origin: Callable[[tuple[Any, ...]], str],
    problems: list[tuple[str, str]],
) -> Policy | None:
    try:
        return Policy.model_validate(merged)
    except pydantic.ValidationError as exc:
        for err in exc.errors(include_url=False):
            loc = tuple(err["loc"])
            path = ".".join([origin(loc), *map(str, loc)])
            problems.append((path, _message(err, loc)))
        return None


def _message(err: Any, loc: tuple[Any, ...]) -> str:
    kind, msg, value = err["type"], err["msg"], err.get("input")
    if kind == "extra_forbidden":
        return _unknown_key(str(loc[-1]), _allowed_keys(loc[:-1]))
    if kind == "value_error":
        return str(msg).removeprefix("Value error, ")
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"expected a mapping, got {shown(value)}"
    return f"{msg}, got {shown(value)}"


def _unknown_key(key: str, allowed: typing.Sequence[str]) -> str:
    near = difflib.get_close_matches(key, list(allowed), n=1)
    hint = f" (did you mean {near[0]!r}?)" if near else ""
    return f"unknown key {key!r}{hint}; expected one of: {', '.join(allowed)}"


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    model: Any = Policy
    skip_key = False
    for part in loc:
        if isinstance(part, int) or skip_key:
            skip_key = False
            continue
        field = model.model_fields.get(part) if _is_model(model) else None
        if field is None:
            return []
        skip_key = "dict[" in str(field.annotation)
        model = _model_in(field.annotation)
        if model is None:
            return []
    return list(model.model_fields) if _is_model(model) else []


def _is_model(obj: Any) -> bool:
    return isinstance(obj, type) and issubclass(obj, BaseModel)


def _model_in(annotation: Any) -> Any:
    """The model class inside ``X | None`` or ``dict[str, X]``, if any."""
    if _is_model(annotation):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _dedupe(problems: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return list(dict.fromkeys(problems))
