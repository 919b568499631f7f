"""Helpers for testing code that uses guardrails (and guardrails itself).

- ``reset()`` forgets the configuration, the statistics and every cache.
- ``fake_clock()`` makes retries, TTLs and deadlines run on a clock you move by hand.
- ``override_policies()`` sets a few policies over the configuration in force, for a while.
- ``fake_gpu()`` gives the GPU budget (``memory.max_gpu``) devices whose readings you set.

The pytest plugin (``guardrails.pytest_plugin``) offers the last two as the fixtures
``guardrails_clock`` and ``guardrails_policies``.
"""

from __future__ import annotations

import dataclasses
import sys
import types
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from pydantic import BaseModel

from guardrails import _config
from guardrails._clock import Clock, FakeClock, SystemClock
from guardrails._core import SLOTS, _install, clear_caches, recompile, reset_stats
from guardrails._errors import PolicyConfigError
from guardrails._gpu import GPU, FakeGpu
from guardrails._policy import ROOT, Settings, deep_merge
from guardrails._state import STATE
from guardrails._units import parse_size
from guardrails.layers.memory import forget_collections, forget_crossings

__all__ = [
    "FakeClock",
    "FakeGpu",
    "PolicyOverrides",
    "fake_clock",
    "fake_gpu",
    "override_policies",
    "reset",
]


def reset() -> None:
    """Back to the state at import: not configured, no statistics, empty caches, real time."""
    with STATE.lock:
        STATE.settings = None
        STATE.hydra_job = None
        STATE.counters.clear()
        STATE.shared.clear()
        STATE.clock = SystemClock()
        for slot in list(SLOTS):
            slot.reset()
    forget_collections()
    forget_crossings()
    redis_client = sys.modules.get("guardrails.redis.client")
    if redis_client is not None:  # imported only once a policy used Redis
        redis_client.reset()


@contextmanager
def fake_clock(clock: FakeClock | None = None) -> Iterator[FakeClock]:
    """Run guarded functions on a fake clock: waits return at once and advance it.

    Chains are rebuilt on entry and exit, so caches start empty on the new clock.
    """
    clock = clock or FakeClock()
    with STATE.lock:
        previous: Clock = STATE.clock
        STATE.clock = clock
        recompile()
    forget_collections()
    try:
        yield clock
    finally:
        with STATE.lock:
            STATE.clock = previous
            recompile()
        forget_collections()


@contextmanager
def fake_gpu(
    total: int | str = "16GiB", used: int | str = 0, cached: int | str = 0, devices: int = 1
) -> Iterator[FakeGpu]:
    """Give the GPU budget ``devices`` fake GPUs (none: a machine without one), each of
    ``total`` bytes with ``used`` in use, of which ``cached`` is torch's cache (given back
    when the budget empties it before refusing). Sizes as in YAML (``"16GiB"``).

    Only the readings are fake: the memory layer reads, reuses, collects, empties and
    refuses as it does on a real device. Set ``gpu.used[i]`` (bytes) to change a reading; it
    is seen by the next call. Chains are rebuilt on entry and exit (a percentage is of the
    fake's total) and the budgets' state is forgotten.
    """
    if isinstance(devices, bool) or not isinstance(devices, int) or devices < 0:
        raise TypeError(f"devices= takes a count of fake GPUs (0 or more), got {devices!r}")
    sizes = [parse_size(value) for value in (total, used, cached)]
    if not sizes[2] <= sizes[1] <= sizes[0]:
        raise ValueError(f"expected cached <= used <= total, got {cached!r}, {used!r}, {total!r}")
    fake = _ObservedGpu(*([size] * devices for size in sizes))
    if devices == 0:
        fake.unavailable = "no GPU here (a fake machine without one)"
    with STATE.lock:
        previous = GPU.fake
        GPU.fake = fake
        _gpu_changed()
    try:
        yield fake
    finally:
        with STATE.lock:
            GPU.fake = previous
            _gpu_changed()


class _ObservedGpu(FakeGpu):
    """A fake whose readings, set by a test, are seen by the next call (not up to
    ``MAX_AGE`` later)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("used", "total", "cached") and not isinstance(value, _Watched):
            value = _Watched(value)
        super().__setattr__(name, value)
        GPU.forget()


class _Watched(list[int]):
    def __setitem__(self, index: Any, value: Any) -> None:
        super().__setitem__(index, value)
        GPU.forget()


def _gpu_changed() -> None:
    GPU.forget()
    forget_crossings()
    forget_collections()
    recompile()


class PolicyOverrides:
    """Sets policies over the configuration in force; ``restore()`` puts back the one in
    force when it was made. What the ``guardrails_policies`` fixture is.

    Each call takes a mapping ``{policy name: policy}`` in the shapes YAML takes (durations
    as ``"10s"``, exception names as strings, import paths). A policy that is in force is
    changed key by key, as a Hydra override would (``{"retry": {"max_attempts": 1}}`` keeps
    its cache); one that sets ``base`` is defined anew from that base; a new name is merged
    over ``policy_defaults``. ``strict`` and ``allow_chaos`` change the top-level switches
    (``None`` keeps them). The whole result is validated and compiled as ``configure()``
    does: on any problem nothing changes and ``PolicyConfigError`` names each dotted key.

    A policy named here for the first time starts fresh: empty caches, zeroed statistics,
    a closed breaker, a full rate-limit bucket. ``restore()`` reinstalls the previous
    settings (the same object; chains recompiled) and leaves those policies fresh again, so
    nothing a test did to them reaches the next test. A ``configure()`` the test made itself
    is undone too (with or without a call here; a default loaded lazily by a call is
    forgotten, to be loaded again); a test that changed nothing is left alone.
    """

    def __init__(self) -> None:
        with STATE.lock:
            self._before: Settings | None = STATE.settings
        self._named: set[str] = set()
        self._changed = False

    def __call__(
        self,
        policies: Mapping[str, Any] | None = None,
        /,
        *,
        strict: bool | None = None,
        allow_chaos: bool | None = None,
    ) -> Settings:
        """Put ``policies`` in force over the current configuration; returns the settings."""
        if policies is None:
            policies = {}
        if not isinstance(policies, Mapping):
            raise TypeError(
                "guardrails_policies() takes a mapping of policy name to policy, like "
                f"{{'fetch': {{'retry': {{'max_attempts': 3}}}}}}; got {type(policies).__name__}"
            )
        with STATE.lock:
            base = STATE.settings
        # Validated outside the lock, as configure() does (it may import the user's modules).
        settings = _overlaid(base or _config.load_lazy_default(), policies, strict, allow_chaos)
        with STATE.lock:
            names = set(map(str, policies))
            fresh = names - self._named
            dropped = {key: found for key, found in STATE.shared.items() if key[0] in fresh}
            for key in dropped:
                del STATE.shared[key]
            try:
                _install(settings)
            except BaseException:
                STATE.shared.update(dropped)
                raise
            self._named |= fresh
            self._changed = True
            for name in fresh:
                clear_caches(name)
                reset_stats(name)
        return settings

    def restore(self) -> None:
        """The configuration in force when this was made is in force again: after a call,
        or after a ``configure()`` of the test's own. Otherwise nothing is touched."""
        with STATE.lock:
            if not self._changed and STATE.settings is self._before:
                return
            named = self._named
            for key in [key for key in STATE.shared if key[0] in named]:
                del STATE.shared[key]
            before = self._before
            if before is None:
                STATE.settings = None
                for slot in list(SLOTS):
                    slot.reset()
            else:
                try:
                    _install(before, check_names=False)  # as recompile() does
                except PolicyConfigError:
                    # A function guarded during the test has no policy there (strict): it
                    # fails on its first call, as it would have without the test.
                    STATE.settings = before
                    for slot in list(SLOTS):
                        slot.reset()
            for name in named:
                clear_caches(name)
                reset_stats(name)
            self._named = set()
            self._changed = False


@contextmanager
def override_policies() -> Iterator[PolicyOverrides]:
    """``with override_policies() as use: use({"fetch": {...}})``; restored on exit."""
    overrides = PolicyOverrides()
    try:
        yield overrides
    finally:
        overrides.restore()


def _overlaid(
    base: Settings,
    policies: Mapping[str, Any],
    strict: bool | None,
    allow_chaos: bool | None,
) -> Settings:
    """``base`` with ``policies`` set over it, validated (only what changed is revalidated)."""
    for switch, value in (("strict", strict), ("allow_chaos", allow_chaos)):
        if value is not None and not isinstance(value, bool):
            raise TypeError(f"{switch}= takes True, False or None, got {value!r}")
    strict = base.strict if strict is None else strict
    allow_chaos = base.allow_chaos if allow_chaos is None else allow_chaos
    own: dict[str, Any] = {}
    #: The policies set over the one in force, and the base that one inherited from.
    inherited: dict[str, str | None] = {}
    for key, body in policies.items():
        name = str(key)
        in_force = base.policies.get(name)
        if isinstance(body, Mapping) and "base" not in body and in_force is not None:
            own[name] = deep_merge(_raw_policy(in_force), body)
            inherited[name] = in_force.base
        else:
            own[name] = body
    # A `base` naming a policy in force that this call does not set: as it is in force.
    for body in list(own.values()):
        parent = body.get("base") if isinstance(body, Mapping) else None
        if isinstance(parent, str) and parent not in own and parent in base.policies:
            own[parent] = _raw_policy(base.policies[parent])
    node = {
        "strict": strict,
        "allow_chaos": allow_chaos,
        "policy_defaults": _raw(base.policy_defaults),
        "policies": own,
    }
    try:
        built = _config.load({ROOT: node})
    except PolicyConfigError as exc:
        if not base.secrets:
            raise
        raise PolicyConfigError(_config.redact(exc.problems, base.secrets)) from None
    named = {str(key) for key in policies}
    if not allow_chaos:
        # The policies in force that this call leaves alone were checked with their own
        # allow_chaos; turning it off refuses theirs too.
        problems = [
            (
                f"{ROOT}.policies.{name}.chaos",
                "chaos injects failures and is refused unless the top level sets "
                "allow_chaos: true (pass allow_chaos=True)",
            )
            for name, policy in base.policies.items()
            if name not in named and policy.chaos is not None and policy.chaos.enabled
        ]
        if problems:
            raise PolicyConfigError(problems)
    merged = dict(base.policies)
    for name in sorted(named):
        policy = built.policies[name]
        if inherited.get(name) is not None:
            # Still what it inherited from, as explain and show tell (the settings are
            # resolved already: a later change of that base does not reach this policy).
            policy = policy.model_copy(update={"base": inherited[name]})
        merged[name] = policy
    source, _, earlier = base.source.partition(_SET_BY_TEST)
    named_here = sorted(named | set(earlier.rstrip(")").split(", ")) - {""})
    return dataclasses.replace(
        base,
        strict=strict,
        allow_chaos=allow_chaos,
        policies=types.MappingProxyType(merged),
        source=f"{source}{_SET_BY_TEST}{', '.join(named_here)})" if named_here else source,
    )


#: How the settings' ``source`` says which policies a test set: ``conf/config.yaml, with
#: policies set by a test (fetch, predict)``.
_SET_BY_TEST = ", with policies set by a test ("


def _raw_policy(policy: BaseModel) -> dict[str, Any]:
    """A policy in force as the mapping it was validated from, less its ``base`` (its
    inherited settings are in it already)."""
    raw = _raw(policy)
    raw.pop("base", None)
    return raw


def _raw(model: BaseModel) -> dict[str, Any]:
    """A validated model back as values its validators take again: the fields that were
    set, as the model writes them (a time window as ``"30s"``), except that objects (classes,
    functions, models) stay themselves: a class defined in a test has no import path."""
    written = _written(model.model_dump(exclude_unset=True), model)
    assert isinstance(written, dict)
    return written


def _written(dumped: Any, value: Any) -> Any:
    if isinstance(value, BaseModel) and isinstance(dumped, Mapping):
        return {key: _written(item, getattr(value, key)) for key, item in dumped.items()}
    if isinstance(value, Mapping) and isinstance(dumped, Mapping):
        return {key: _written(item, value.get(key)) for key, item in dumped.items()}
    if isinstance(value, list | tuple) and isinstance(dumped, list | tuple):
        if len(value) == len(dumped):
            return [_written(item, obj) for item, obj in zip(dumped, value, strict=True)]
        return dumped
    if value is None or isinstance(value, str | int | float):
        return dumped
    return value
