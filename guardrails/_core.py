"""The decorator, ``configure()`` and the compile step that turns settings into chains."""

from __future__ import annotations

import contextlib
import functools
import gc
import inspect
import os
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ParamSpec, TypeVar, overload

from guardrails import _config
from guardrails._binding import Binder, is_async
from guardrails._chain import compile_chain
from guardrails._errors import PolicyConfigError
from guardrails._frames import trim_raised
from guardrails._policy import (
    ROOT,
    Policy,
    Settings,
    missing_policy_problem,
    redis_url_for,
    typo_index,
    typo_of,
)
from guardrails._state import MADE, STATE
from guardrails._stats import PolicyStats
from guardrails._types import Context
from guardrails.layers.cache import CacheConfig, Store
from guardrails.layers.log import LOGGER

P = ParamSpec("P")
R = TypeVar("R")


class Slot:
    """One guarded function: its policy name, its compiled chain, its cache store."""

    __slots__ = (
        "__weakref__",
        "binder",
        "chain",
        "fn",
        "is_async",
        "name",
        "qualname",
        "store",
    )

    def __init__(self, fn: Callable[..., Any], name: str) -> None:
        self.fn = fn
        self.name = name
        self.qualname = _qualname(fn)
        self.is_async = is_async(fn)
        self.store: Store | None = None
        # Read now: a callable without a signature (a C builtin such as `max`) would
        # otherwise make every later configure() fail.
        try:
            self.binder = Binder(fn)
        except (ValueError, TypeError) as exc:
            raise TypeError(
                f"@guarded needs a function whose parameters Python can read, and "
                f"{self.qualname} has no signature ({exc}); guard a `def` that calls it"
            ) from None
        #: What the wrapper calls: the lazy chain until the first call or configure().
        self.chain: Any = self.lazy_chain()

    def __reduce__(self) -> tuple[Any, ...]:
        # Reached only when the wrapper itself is pickled BY VALUE (cloudpickle, as joblib's
        # loky and Dask do for a function of `__main__`, a nested one, one of a module
        # registered for pickling by value): the wrapper's closure holds its slot. The
        # compiled chain (locks, weak references, the cache) is this process's; the
        # receiving process gets a new slot for the same function and policy, registered
        # there and compiled against its own configuration.
        return (_unpickled_slot, (self.fn, self.name))

    def compile(
        self, settings: Settings, shared: dict[tuple[str, str], tuple[Any, Any]]
    ) -> tuple[Any, Store | None]:
        """The chain for ``settings`` and the cache store it uses; installs nothing.

        ``shared`` collects the policy state objects chosen in this pass (see
        ``Context.shared``), for the caller to make the ones in force.
        """
        policy = self.policy_in(settings)
        chosen: list[Store] = []
        kept = self.store  # not `self`: a chain must not keep its slot alive

        # The cache stores what validate.output returned: a new output type must not be
        # answered with values validated (or coerced) by the old one.
        checks = policy.validate
        output = checks.output if checks is not None and checks.enabled else None

        def store_for(cfg: CacheConfig) -> Store:
            store = kept
            if store is None or store.settings != Store.settings_for(cfg, timer, output):
                store = Store(cfg, timer, output)
            chosen.append(store)
            return store

        timer = STATE.clock.monotonic
        clock = STATE.clock
        name = self.name

        def shared_state(kind: str, cfg: Any, factory: Callable[[], Any]) -> Any:
            key = (name, kind)
            wanted = (cfg, clock)
            found = shared.get(key) or STATE.shared.get(key)
            if found is None or found[0] != wanted:
                made = factory()
                MADE.add(made)  # renewed in a forked child (see _state)
                found = (wanted, made)
            shared[key] = found
            return found[1]

        def in_force(kind: str) -> Any:
            found = STATE.shared.get((name, kind))
            return found[1] if found is not None else None

        ctx = Context(
            policy=self.name,
            function=self.fn,
            qualname=self.qualname,
            is_async=self.is_async,
            binder=self.binder,
            counters=STATE.counters_for(self.name),
            clock=STATE.clock,
            logger=LOGGER,
            store_for=store_for,
            shared=shared_state,
            in_force=in_force,
            show_values=policy.log is not None
            and policy.log.enabled
            and policy.log.args == "values",
            redis_url=redis_url_for(settings),
            policy_blocks=policy,
        )
        try:
            chain = compile_chain(policy, ctx)
        except PolicyConfigError as exc:
            if not settings.secrets:
                raise
            raise PolicyConfigError(_config.redact(exc.problems, settings.secrets)) from None
        return chain, (chosen[-1] if chosen else None)

    def policy_in(self, settings: Settings) -> Policy:
        found = settings.policies.get(self.name)
        if found is not None:
            return found
        if settings.strict:
            raise PolicyConfigError(
                [missing_policy_problem(self.name, self.qualname, settings.policies)]
            )
        return settings.policy_defaults

    def install(self, chain: Any, store: Store | None) -> None:
        self.store = store
        self.chain = chain

    def first_call(self, args: tuple[Any, ...], kwargs: dict[str, Any], info: Any) -> Any:
        """The chain before compilation: configure lazily if needed, compile, then call."""
        with STATE.lock:
            shared: dict[tuple[str, str], tuple[Any, Any]] = {}
            chain, store = self.compile(current_settings(), shared)
            self.install(chain, store)
            STATE.shared.update(shared)
            _in_force(shared)
        return chain(args, kwargs, info)

    def lazy_chain(self) -> Any:
        """The chain installed before compilation; holds the slot weakly (no cycle)."""
        ref = weakref.ref(self)

        def lazy(args: tuple[Any, ...], kwargs: dict[str, Any], info: Any) -> Any:
            slot = ref()
            assert slot is not None  # the wrapper holding this chain holds the slot
            return slot.first_call(args, kwargs, info)

        return lazy

    def reset(self) -> None:
        self.install(self.lazy_chain(), None)


def _unpickled_slot(fn: Callable[..., Any], name: str) -> Slot:
    """The slot of a guarded function unpickled by value (see ``Slot.__reduce__``)."""
    slot = Slot(fn, name)
    with STATE.lock:
        SLOTS.add(slot)
    return slot


#: Every guarded function's slot (read and changed under ``STATE.lock``).
SLOTS: weakref.WeakSet[Slot] = weakref.WeakSet()


def _qualname(fn: Any) -> str:
    """``module.Qualified.name`` of a function; ``partial(module.name)`` of a partial.

    The script's module is ``__main__`` in every process: multiprocessing's spawn and
    forkserver children import it as ``__mp_main__``, and its functions must keep their
    names there (in logs, and in the Redis keys processes share).
    """
    if isinstance(fn, functools.partial):
        return f"partial({_qualname(fn.func)})"
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    module = getattr(fn, "__module__", None) or type(fn).__module__
    return f"{'__main__' if module == '__mp_main__' else module}.{name}"


@overload
def guarded(name: Callable[P, R], /) -> Callable[P, R]: ...


@overload
def guarded(name: str | None = None, /) -> Callable[[Callable[P, R]], Callable[P, R]]: ...


def guarded(name: Any = None, /) -> Any:
    """Guard a function with the policy ``name`` (default: the function's ``__name__``).

    Works as ``@guarded("policy")``, ``@guarded()`` and bare ``@guarded``, on sync and async
    functions and methods. The policy is read when the function is first called (or at the
    next ``configure()``), never at import time.
    """
    if callable(name):
        return _decorate(name, None)
    if name is not None and (not isinstance(name, str) or not name):
        raise TypeError(f"guarded() takes a policy name (a non-empty str), got {name!r}")
    return functools.partial(_decorate, name=name)


def _decorate(fn: Callable[..., Any], name: str | None) -> Callable[..., Any]:
    if isinstance(fn, staticmethod | classmethod):
        # The wrapper would be a plain function in the class body: bound as a method.
        raise TypeError(
            f"@guarded must come below @{type(fn).__name__}, next to the function it guards"
        )
    if not callable(fn):
        raise TypeError(f"@guarded decorates a function, got {fn!r}")
    if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
        # A generator's work happens after the call returns: retry, cache and timing
        # would wrap only its creation, and a cache hit would hand out a spent generator.
        raise TypeError(
            f"@guarded cannot guard the generator function {fn.__qualname__}: guard a "
            "function that returns the data (a list, an array) instead"
        )
    policy_name = name or getattr(fn, "__name__", None)
    if not policy_name:
        raise TypeError(f"@guarded needs a policy name for {fn!r}, which has no __name__")
    slot = Slot(fn, policy_name)
    wrapper = _slot_wrapper(slot)
    functools.update_wrapper(wrapper, fn)
    wrapper.__guardrails__ = slot  # type: ignore[attr-defined]
    with STATE.lock:
        # Strict mode checks the name on the first call, not here: decoration runs at
        # import time, usually before the configuration that names it exists.
        SLOTS.add(slot)
    return wrapper


def _slot_wrapper(slot: Slot) -> Callable[..., Any]:
    """The wrapper: its free variable is the slot, never the chain (which holds locks, thread
    locals and weak references), so that a pickler carrying the wrapper by value carries "this
    function under this policy" (see ``Slot.__reduce__``).

    Every wrapper is one: which functions cloudpickle carries by value is only known when it
    pickles them. Besides a function of ``__main__`` or a nested one, it does so for every
    function of a module registered with ``cloudpickle.register_pickle_by_value`` (Dask's
    advice for code its workers cannot import) and for a module's function bound to another
    name than its own (``fetch = guarded("fetch")(_fetch)``). Holding the chain itself in
    the closure saved one attribute read per call (about 5 ns) and made those unpicklable.
    """
    if slot.is_async:

        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            chain = slot.chain  # read as an attribute (a method-call lookup is slower)
            try:
                return await chain(args, kwargs, None)
            except Exception as exc:
                # Free on success (3.11's zero-cost try). The bare `raise` adds no frame of
                # its own: the caller sees its frame, then the function's (see _frames).
                try:  # noqa: SIM105 (suppress() would need frames there is no room for)
                    trim_raised(exc)
                except RecursionError:
                    # At the recursion limit (the function's own RecursionError, or any
                    # failure deep down) trimming cannot run: the caller gets the function's
                    # exception as it is, not ours about the trim (an outer wrapper trims it).
                    pass
                raise

        return async_wrapper

    def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
        chain = slot.chain  # read as an attribute (a method-call lookup is slower)
        try:
            return chain(args, kwargs, None)
        except Exception as exc:
            try:  # noqa: SIM105 (as in async_wrapper)
                trim_raised(exc)
            except RecursionError:
                pass
            raise

    return sync_wrapper


def configure(
    source: Any = None,
    *,
    overrides: Sequence[str] = (),
    config_name: str = "config",
) -> Settings:
    """Validate a configuration and make it the one in force; returns the validated settings.

    ``source`` is a Hydra/OmegaConf config (the root holding a ``guardrails`` node, or the
    node itself), a plain mapping, a YAML file path, a config directory to compose with
    Hydra (``overrides`` are Hydra override strings, ``config_name`` its primary config),
    or ``None`` for the packaged defaults. A ``Settings`` (what ``configure()`` and
    ``settings()`` return, say pickled from a driver process to its workers) is installed
    as it is: it was validated when it was made. On any problem nothing changes and
    ``PolicyConfigError`` lists every problem with its dotted path.
    """
    with _collector_paused():
        if isinstance(source, Settings):
            if overrides:
                raise TypeError(
                    "configure() applies overrides to a config source, and a Settings is "
                    "validated already: make it with configure(source, overrides=...) instead"
                )
            settings = source
        else:
            settings = _config.load(source, overrides=overrides, config_name=config_name)
        job = _config.hydra_job()
        with STATE.lock:
            # The next job of a multirun, in the same process (or a reused launcher worker):
            # it starts as if alone, with new breakers, buckets, budgets and chaos dice.
            next_job = job is not None and STATE.hydra_job not in (None, job)
            _install(settings, fresh=next_job)
            if job is not None and job != STATE.hydra_job:
                if next_job:
                    _fresh_start()
                STATE.hydra_job = job
    return settings


def _fresh_start() -> None:
    clear_caches()
    reset_stats()
    LOGGER.debug("a new Hydra job: caches emptied and statistics zeroed")


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while building.

    Validation and compilation allocate many small objects and no cyclic garbage; with the
    collector running, its full passes make ``configure()`` grow faster than linearly in
    the number of policies (3x slower at 10,000).
    """
    me = threading.get_ident()
    was_enabled = gc.isenabled()
    gc.disable()
    _PAUSED[me] = was_enabled
    try:
        yield
    finally:
        _PAUSED.pop(me, None)
        if was_enabled:
            gc.enable()


#: Threads pausing the collector in ``configure()`` -> whether it was on before.
_PAUSED: dict[int, bool] = {}


def _resume_collector_in_child() -> None:
    # A thread of the parent paused the collector for the whole process and does not exist in
    # the child, so it would never turn it back on.
    me = threading.get_ident()
    if any(was_on for ident, was_on in _PAUSED.items() if ident != me):
        gc.enable()
    _PAUSED.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_resume_collector_in_child)


def unused_policies(settings: Settings, used: set[str]) -> list[tuple[str, str | None]]:
    """The policies of ``settings`` that no name in ``used`` is, in order, each with the used
    name it is one typo of (or ``None``). A policy that a used policy inherits from (its
    ``base``, or a base of that) is used: its settings run in that policy's functions."""
    inherited = _with_bases(settings, used)
    unused = [name for name in settings.policies if name not in inherited]
    if not unused:
        return []
    index = typo_index(used)  # a typo of a function's policy name, not of a base's
    return [(name, typo_of(name, index)) for name in unused]


def _with_bases(settings: Settings, used: set[str]) -> set[str]:
    """``used`` and every policy its policies inherit from."""
    found = set(used)
    for name in used:
        policy = settings.policies.get(name)
        while policy is not None and policy.base is not None and policy.base not in found:
            found.add(policy.base)
            policy = settings.policies.get(policy.base)
    return found


def _misspelt(settings: Settings, slots: list[Slot]) -> list[tuple[str, str]]:
    """Strict mode: policies no guarded function uses that are one typo from the policy name
    of one that is registered (``fetch_featurs`` beside ``fetch_features``). A policy that is
    merely unused is allowed: its function may be imported after ``configure()``."""
    if not settings.strict or not slots:
        return []
    functions: dict[str, str] = {}
    for slot in sorted(slots, key=lambda s: s.qualname):
        functions.setdefault(slot.name, slot.qualname)
    return [
        (
            f"{ROOT}.policies.{name}",
            f"no guarded function uses policy {name!r} (did you mean {near!r}, the policy of "
            f"{functions[near]}?); strict is true, so a policy one typo from a guarded "
            f"function's is refused: fix the name, or set {ROOT}.strict=false",
        )
        for name, near in unused_policies(settings, set(functions))
        if near is not None
    ]


def _install(
    settings: Settings, *, fresh: bool = False, check_names: bool = True, partial: bool = False
) -> None:
    """Compile every chain for ``settings`` and install them all, or raise and change nothing.

    ``fresh``: make new per-policy state objects instead of keeping the ones in force.
    ``check_names``: refuse (strict mode) a policy name one typo from a guarded function's.
    ``partial``: install the chains that compile, and leave each function whose chain does
    not to compile on its own next call (which raises the problem there); never raise.
    """
    with STATE.lock:
        compiled: list[tuple[Slot, Any, Store | None]] = []
        problems: list[tuple[str, str]] = []
        if check_names:
            problems.extend(_misspelt(settings, list(SLOTS)))
        shared: dict[tuple[str, str], tuple[Any, Any]] = {}
        in_force = STATE.shared
        if fresh:
            STATE.shared = {}  # what compile() would otherwise reuse
        try:
            for slot in list(SLOTS):
                try:
                    chain, store = slot.compile(settings, shared)
                except PolicyConfigError as exc:
                    if partial:
                        slot.reset()
                    else:
                        problems.extend(exc.problems)
                    continue
                compiled.append((slot, chain, store))
        finally:
            STATE.shared = in_force
        if problems:
            raise PolicyConfigError(list(dict.fromkeys(problems)))
        STATE.settings = settings
        # Only the state of the chains now in force stays: a breaker whose block changed
        # or went away is forgotten (stats() shows no state for it).
        STATE.shared = shared
        for slot, chain, store in compiled:
            slot.install(chain, store)
        _in_force(shared)


def _in_force(shared: dict[tuple[str, str], tuple[Any, Any]]) -> None:
    """Tell the state objects of the chains being installed that they are in force (a
    bulkhead takes its size then, not when compiled: a configure() that fails changes
    nothing)."""
    for _, state in shared.values():
        in_force = getattr(state, "in_force", None)
        if in_force is not None:
            in_force()


def recompile() -> None:
    """Rebuild every chain from the settings in force (after the clock changes, or when a
    metrics exporter registers). A function whose chain does not compile (strict mode, a
    function guarded since ``configure()`` with no policy) compiles on its own next call and
    raises there; the others are rebuilt all the same."""
    with STATE.lock:
        if STATE.settings is None:
            for slot in list(SLOTS):
                slot.reset()
            return
        # Names were checked when these settings were configured; a function imported
        # since then must not make a recompile fail.
        _install(STATE.settings, check_names=False, partial=True)


def current_settings() -> Settings:
    """The settings in force, loading the lazy default if nothing was configured yet."""
    with STATE.lock:
        if STATE.settings is None:
            STATE.settings = _config.load_lazy_default()
        return STATE.settings


def settings() -> Settings:
    """The settings in force (the packaged defaults, or ``$GUARDRAILS_CONFIG``, if nothing was
    configured yet). Picklable: a worker process installs them with ``configure(settings)``."""
    return current_settings()


def policy(name: str) -> Policy:
    """The effective (merged, validated, frozen) policy for ``name``."""
    return current_settings().policy(name)


def clear_caches(policy: str | None = None, *, shared: bool = False) -> None:
    """Empty the caches of every guarded function (or of those guarded by ``policy``).

    A computation in flight finishes and returns its result, but does not store it.
    ``shared=True`` also deletes those functions' keys in Redis (``cache.backend: redis``:
    every process then computes them again); a Redis error is raised after every
    in-process cache is cleared.
    """
    with STATE.lock:
        stores = [
            slot.store
            for slot in list(SLOTS)
            if slot.store is not None and (policy is None or slot.name == policy)
        ]
    for store in stores:
        store.clear()
    if shared:
        from guardrails.layers.cache import clear_shared

        clear_shared(stores)


def reset_stats(policy: str | None = None) -> None:
    """Zero the statistics of every policy (or of ``policy``)."""
    with STATE.lock:
        for name, counters in STATE.counters.items():
            if policy is None or name == policy:
                counters.reset()


def stats() -> dict[str, PolicyStats]:
    """Per-policy statistics; functions sharing a policy add up."""
    with STATE.lock:
        counters = dict(STATE.counters)
        breakers = {
            policy: found[1] for (policy, kind), found in STATE.shared.items() if kind == "breaker"
        }
    return {
        name: counters[name].snapshot(breakers[name].state_name() if name in breakers else None)
        for name in sorted(counters)
    }
