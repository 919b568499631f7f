"""The ``chaos`` layer: injects failures and latency for drills. ``configure()`` refuses it
unless the top level sets ``allow_chaos: true``.

Innermost, once per attempt: an injected error replaces the function call (the function
does not run) and is a real instance of the configured class, so ``retry`` retries it and
``breaker`` counts it like a real failure. Injected latency is a wait on guardrails' clock
before the function runs (or before the injected error).

The dice: one ``random.Random`` per policy (shared by its functions, sync and async, and
kept across a ``configure()`` that leaves the block unchanged). Each attempt draws once for
latency (when ``latency`` and ``latency_rate`` are above 0), then once for the error (when
``error_rate`` is above 0): ``random() < rate`` injects. With ``seed`` the sequence is the
same on every run (and in a forked child, which continues the parent's); without one it is
seeded from the system, and reseeded in a forked child so workers do not fail in lockstep.
(Calls from several threads share the sequence: which call gets which draw is then up to
the scheduler, though the share injected still follows the rates.)
"""

from __future__ import annotations

import random
from typing import Any

from pydantic import StrictInt, field_validator

from guardrails._imports import qualified_name
from guardrails._types import AsyncInner, Block, Context, Duration, ExceptionClass, Inner, Share


def _message(policy: str) -> str:
    return f"guardrails chaos: injected by policy {policy!r}"


class ChaosConfig(Block):
    """``chaos:`` — ``error_rate`` of ``error``; ``latency`` added to ``latency_rate`` of calls."""

    error_rate: Share = 0.0
    error: ExceptionClass = ConnectionError
    latency: Duration = 0.0
    latency_rate: Share = 1.0
    seed: StrictInt | None = None

    @field_validator("error")
    @classmethod
    def _buildable(cls, value: type[BaseException]) -> type[BaseException]:
        name = qualified_name(value)
        if not issubclass(value, Exception):
            raise ValueError(
                f"{name} is not a subclass of Exception: chaos injects failures, and a "
                "BaseException such as KeyboardInterrupt or CancelledError is control flow"
            )
        if issubclass(value, StopIteration):
            raise ValueError(
                f"{name} cannot be injected: Python turns a StopIteration raised in a "
                "coroutine or a generator into RuntimeError, so an async function (or a "
                "caller iterating) would see another error than the one configured; name "
                "another class, such as ConnectionError"
            )
        try:
            made = value(_message("policy"))
        except Exception as exc:
            raise ValueError(
                f"{name} cannot be built from one message string ({type(exc).__name__}: "
                f"{exc}); chaos raises error('guardrails chaos: injected by policy ...'), "
                "so name a class that takes a message, such as ConnectionError"
            ) from None
        if not isinstance(made, value):
            raise ValueError(f"{name}(message) does not make a {name}")
        return value


class Dice:
    """A policy's source of chaos decisions: ``random()`` of its own generator."""

    __slots__ = ("__weakref__", "random", "rng", "seed")

    def __init__(self, seed: int | None) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        #: ``random()`` of the generator: atomic under the GIL, so threads may share it.
        self.random = self.rng.random

    def after_fork_in_child(self) -> None:
        if self.seed is None:
            self.rng.seed()  # workers forked from one parent must not draw the same sequence


def _plan(cfg: ChaosConfig, ctx: Context) -> tuple[Dice, float, float, float] | None:
    """The policy's dice and the (latency, latency_rate, error_rate) that draw, or ``None``
    when nothing can ever be injected."""
    latency_rate = cfg.latency_rate if cfg.latency > 0 else 0.0
    if latency_rate <= 0 and cfg.error_rate <= 0:
        return None
    dice: Dice = ctx.shared("chaos", cfg, lambda: Dice(cfg.seed))
    return dice, cfg.latency, latency_rate, cfg.error_rate


def build(cfg: ChaosConfig, inner: Inner, ctx: Context) -> Inner:
    """The sync chaos layer around ``inner`` (the function, or ``validate.output``'s check)."""
    plan = _plan(cfg, ctx)
    if plan is None:
        return inner
    dice, latency, latency_rate, error_rate = plan
    draw, sleep, inject = dice.random, ctx.clock.sleep, ctx.counters.inject
    error, message = cfg.error, _message(ctx.policy)

    def chaos_layer(args: tuple[Any, ...], kwargs: dict[str, Any], info: Any) -> Any:
        if latency_rate and draw() < latency_rate:
            inject()
            sleep(latency)
        if error_rate and draw() < error_rate:
            inject()
            raise error(message)
        return inner(args, kwargs, info)

    return chaos_layer


def build_async(cfg: ChaosConfig, inner: AsyncInner, ctx: Context) -> AsyncInner:
    """The async chaos layer: injected latency waits with the clock's ``async_sleep``."""
    plan = _plan(cfg, ctx)
    if plan is None:
        return inner
    dice, latency, latency_rate, error_rate = plan
    draw, sleep, inject = dice.random, ctx.clock.async_sleep, ctx.counters.inject
    error, message = cfg.error, _message(ctx.policy)

    async def chaos_layer(args: tuple[Any, ...], kwargs: dict[str, Any], info: Any) -> Any:
        if latency_rate and draw() < latency_rate:
            inject()
            await sleep(latency)
        if error_rate and draw() < error_rate:
            inject()
            raise error(message)
        return await inner(args, kwargs, info)

    return chaos_layer
