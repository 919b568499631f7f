"""The ``chaos`` layer: seeded, per-attempt injected errors and latency, only when allowed."""

from __future__ import annotations

import asyncio
import logging
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import guardrails
import guardrails.testing
from guardrails import PolicyConfigError, configure, guarded
from guardrails._binding import Binder
from guardrails._stats import PolicyCounters
from guardrails._types import Context
from guardrails.layers import chaos as _chaos
from guardrails.layers.chaos import ChaosConfig
from guardrails.testing import FakeClock
from tests.twins import guard_as

MESSAGE = "guardrails chaos: injected by policy 'p'"


@pytest.fixture(params=["sync", "async"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def guard(kind: str, fn: Callable[..., Any], name: str = "p") -> Callable[..., Any]:
    return guard_as(kind, fn, name)


def chaos(**blocks: Any) -> None:
    configure({"allow_chaos": True, "policies": {"p": blocks}})


class Drill(Exception):
    pass


class NeedsTwo(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message, code)


def reference(
    seed: int, attempts: int, *, error_rate: float = 0.0, latency_rate: float = 0.0
) -> list[tuple[bool, bool]]:
    """(latency injected, error injected) per attempt, as the documented draws give them:
    one ``random()`` for latency (when it can be injected), then one for the error."""
    rng = random.Random(seed)
    out = []
    for _ in range(attempts):
        slow = latency_rate > 0 and rng.random() < latency_rate
        failed = error_rate > 0 and rng.random() < error_rate
        out.append((slow, failed))
    return out


class Counted:
    """The guarded function: counts its runs."""

    def __init__(self) -> None:
        self.runs = 0

    def __call__(self, x: int = 0) -> int:
        self.runs += 1
        return x


def outcomes(f: Callable[..., Any], n: int) -> list[str]:
    """``"ok"`` or the injected error's class name, per call."""
    seen = []
    for i in range(n):
        try:
            assert f(i) == i
            seen.append("ok")
        except ConnectionError as exc:
            assert str(exc) == MESSAGE
            seen.append(type(exc).__name__)
    return seen


# --- allowed only when the top level says so --------------------------------------------------


def test_chaos_is_refused_without_allow_chaos_and_says_how_to_enable_it() -> None:
    with pytest.raises(PolicyConfigError) as err:
        configure(
            {
                "policy_defaults": {"chaos": {"latency": "1s"}},
                "policies": {"p": {"chaos": {"error_rate": 0.1}}},
            }
        )
    problems = dict(err.value.problems)
    assert set(problems) == {
        "guardrails.policy_defaults.chaos",
        "guardrails.policies.p.chaos",
    }
    for message in problems.values():
        assert "allow_chaos: true" in message
        assert "+guardrails.allow_chaos=true" in message
    assert guardrails.policy("p").chaos is None  # nothing was installed
    # A disabled block injects nothing, so it needs no permission.
    configure({"policies": {"p": {"chaos": {"error_rate": 0.1, "enabled": False}}}})
    chaos(chaos={"error_rate": 0.1})
    assert guardrails.policy("p").chaos.error_rate == 0.1  # type: ignore[union-attr]


def test_a_drill_turns_chaos_on_with_hydra_overrides(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "config.yaml").write_text(
        "defaults:\n  - guardrails: default\n  - _self_\n"
        "hydra:\n  searchpath: [pkg://guardrails.conf]\n"
    )
    drill = ["+guardrails.policies.p.chaos.error_rate=0.3", "+guardrails.policies.p.chaos.seed=7"]
    with pytest.raises(PolicyConfigError, match=r"\+guardrails\.allow_chaos=true") as err:
        configure(conf, overrides=drill)
    assert [path for path, _ in err.value.problems] == ["guardrails.policies.p.chaos"]
    settings = configure(conf, overrides=["+guardrails.allow_chaos=true", *drill])
    assert settings.allow_chaos is True
    assert settings.policies["p"].chaos == ChaosConfig(error_rate=0.3, seed=7)
    f = Counted()
    expected = ["ConnectionError" if e else "ok" for _, e in reference(7, 30, error_rate=0.3)]
    assert outcomes(guarded("p")(f), 30) == expected
    assert f.runs == expected.count("ok")


# --- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize("log", ["log on", "log off"])
def test_errors_follow_the_seeded_sequence_and_replace_the_call(kind: str, log: str) -> None:
    blocks: dict[str, Any] = {"chaos": {"error_rate": "30%", "seed": 11}}
    if log == "log off":
        blocks["log"] = {"enabled": False}
    chaos(**blocks)
    f = Counted()
    seen = outcomes(guard(kind, f), 60)
    expected = ["ConnectionError" if e else "ok" for _, e in reference(11, 60, error_rate=0.3)]
    assert seen == expected
    injected = expected.count("ConnectionError")
    assert 0 < injected < 60  # the seed gives both outcomes: the test can tell them apart
    assert f.runs == 60 - injected  # an injected error replaces the call
    s = guardrails.stats()["p"]
    assert (s.calls, s.successes, s.failures, s.injected) == (60, 60 - injected, injected, injected)


def test_two_runs_with_the_same_seed_inject_at_the_same_calls(kind: str) -> None:
    def run(seed: int) -> list[str]:
        guardrails.testing.reset()
        chaos(chaos={"error_rate": 0.5, "seed": seed})
        return outcomes(guard(kind, Counted()), 40)

    first = run(3)
    assert run(3) == first
    assert run(4) != first  # the seed is what makes the sequence


def test_the_error_class_is_built_with_the_message(kind: str) -> None:
    chaos(chaos={"error_rate": 1, "error": f"{__name__}:Drill"})
    f = Counted()
    with pytest.raises(Drill) as exc:
        guard(kind, f)()
    assert exc.value.args == (MESSAGE,)
    assert f.runs == 0
    chaos(chaos={"error_rate": 1, "error": "TimeoutError"})
    with pytest.raises(TimeoutError, match=MESSAGE):
        guard(kind, f)()
    assert guardrails.stats()["p"].injected == 2


@pytest.mark.parametrize(
    ("block", "path", "says"),
    [
        ({"error": f"{__name__}:NeedsTwo"}, "error", "cannot be built from one message string"),
        ({"error": "UnicodeDecodeError"}, "error", "cannot be built from one message string"),
        ({"error": "KeyboardInterrupt"}, "error", "is not a subclass of Exception"),
        # an async function would get RuntimeError("coroutine raised StopIteration")
        ({"error": "StopIteration"}, "error", "turns a StopIteration raised in a coroutine"),
        ({"error": "asyncio.CancelledError"}, "error", "is not a subclass of Exception"),
        ({"error": "print"}, "error", "is not a class"),
        ({"error": "json:NoSuchError"}, "error", "has no attribute"),
        ({"error_rate": 1.5}, "error_rate", "from 0 to 1"),
        ({"error_rate": "150%"}, "error_rate", "from 0 to 1"),
        ({"latency_rate": -0.1}, "latency_rate", "from 0 to 1"),
        ({"latency": "-1s"}, "latency", "got '-1s'"),
        ({"seed": "seven"}, "seed", "integer"),
        ({"seed": 1.5}, "seed", "integer"),
        ({"error_rat": 0.1}, "error_rat", ""),
    ],
)
def test_config_errors_name_the_key(block: dict[str, Any], path: str, says: str) -> None:
    with pytest.raises(PolicyConfigError) as err:
        chaos(chaos=block)
    ((where, message),) = err.value.problems
    assert where == f"guardrails.policies.p.chaos.{path}"
    assert says in message


# --- latency ----------------------------------------------------------------------------------


def test_latency_waits_on_the_clock_before_the_function_runs(kind: str, clock: FakeClock) -> None:
    chaos(chaos={"latency": "200ms", "latency_rate": 0.5, "seed": 5})
    started: list[float] = []

    def work(x: int) -> int:
        started.append(clock.monotonic())
        return x

    f = guard(kind, work)
    before = clock.monotonic()
    for i in range(40):
        assert f(i) == i
    slow = [s for s, _ in reference(5, 40, latency_rate=0.5)]
    assert 0 < slow.count(True) < 40
    assert clock.sleeps == [0.2] * slow.count(True)
    # Each call started after the waits of the calls before it and its own.
    waited = [sum(0.2 for s in slow[: i + 1] if s) for i in range(40)]
    assert started == pytest.approx([before + w for w in waited])
    s = guardrails.stats()["p"]
    assert (s.injected, s.successes, s.failures) == (slow.count(True), 40, 0)


def test_latency_and_errors_draw_in_turn(kind: str, clock: FakeClock) -> None:
    chaos(chaos={"error_rate": 0.25, "latency": 1, "latency_rate": 0.5, "seed": 9})
    f = Counted()
    seen = outcomes(guard(kind, f), 50)
    ref = reference(9, 50, error_rate=0.25, latency_rate=0.5)
    assert seen == ["ConnectionError" if e else "ok" for _, e in ref]
    slow = sum(s for s, _ in ref)
    failed = sum(e for _, e in ref)
    assert clock.sleeps == [1.0] * slow  # latency before an injected error too
    assert guardrails.stats()["p"].injected == slow + failed
    assert f.runs == 50 - failed


def test_latency_rate_defaults_to_every_call(kind: str, clock: FakeClock) -> None:
    chaos(chaos={"latency": "50ms"})
    f = guard(kind, Counted())
    for i in range(5):
        f(i)
    assert clock.sleeps == [0.05] * 5
    assert guardrails.stats()["p"].injected == 5


def test_async_latency_does_not_block_the_event_loop() -> None:
    chaos(chaos={"latency": "50ms"})
    ticks = 0

    @guarded("p")
    async def work() -> int:
        return ticks

    async def ticker(done: asyncio.Event) -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            await asyncio.sleep(0)

    async def main() -> int:
        done = asyncio.Event()
        task = asyncio.create_task(ticker(done))
        await asyncio.sleep(0)
        seen = await work()
        done.set()
        await task
        return seen

    assert asyncio.run(main()) > 1  # the ticker ran while the injected latency waited


# --- with the other layers --------------------------------------------------------------------


def test_injected_errors_are_retried_per_attempt(kind: str, clock: FakeClock) -> None:
    chaos(
        chaos={"error_rate": 0.5, "seed": 21},
        retry={"max_attempts": 3, "wait": {"initial": 1, "jitter": 0}},
    )
    f = Counted()
    g = guard(kind, f)
    draws = iter(reference(21, 1000, error_rate=0.5))
    expected, retries, injected = [], 0, 0
    for _ in range(30):
        for attempt in range(1, 4):
            _, failed = next(draws)
            injected += failed
            if not failed:
                expected.append("ok")
                break
            if attempt == 3:
                expected.append("ConnectionError")
                break
            retries += 1
    assert outcomes(g, 30) == expected
    gave_up = expected.count("ConnectionError")
    assert gave_up > 0 and retries > 2 * gave_up  # the seed gives every path
    assert f.runs == expected.count("ok")
    s = guardrails.stats()["p"]
    assert (s.retries, s.injected, s.failures) == (retries, injected, gave_up)
    assert len(clock.sleeps) == retries


def test_every_attempt_injected_gives_up_with_the_injected_error(
    kind: str, clock: FakeClock
) -> None:
    chaos(chaos={"error_rate": 1}, retry={"max_attempts": 3, "wait": {"initial": 1, "jitter": 0}})
    f = Counted()
    with pytest.raises(ConnectionError, match=MESSAGE) as exc:
        guard(kind, f)()
    assert exc.value.__notes__ == [
        "guardrails: policy 'p' gave up after 3 attempts (retry.max_attempts=3)"
    ]
    assert f.runs == 0
    s = guardrails.stats()["p"]
    assert (s.injected, s.retries, s.failures) == (3, 2, 1)


def test_a_fallback_answers_an_injected_error(kind: str) -> None:
    chaos(chaos={"error_rate": 1}, fallback={"value": "degraded"})
    assert guard(kind, Counted())() == "degraded"
    s = guardrails.stats()["p"]
    assert (s.calls, s.fallbacks, s.injected, s.failures) == (1, 1, 1, 0)


def test_the_functions_of_a_policy_share_one_sequence() -> None:
    chaos(chaos={"error_rate": 0.5, "seed": 13})
    f, g = guarded("p")(Counted()), guarded("p")(Counted())
    seen = [outcomes(h, 1)[0] for _ in range(20) for h in (f, g)]
    assert seen == ["ConnectionError" if e else "ok" for _, e in reference(13, 40, error_rate=0.5)]


def test_the_sequence_survives_a_configure_that_keeps_the_block() -> None:
    f = guarded("p")(Counted())
    chaos(chaos={"error_rate": 0.5, "seed": 17})
    seen = outcomes(f, 20)
    chaos(chaos={"error_rate": 0.5, "seed": 17}, log={"level": "DEBUG"})  # chaos unchanged
    seen += outcomes(f, 20)
    assert seen == ["ConnectionError" if e else "ok" for _, e in reference(17, 40, error_rate=0.5)]
    chaos(chaos={"error_rate": 0.5, "seed": 17, "latency_rate": 0.9})  # changed: starts over
    assert outcomes(f, 20) == seen[:20]


def test_nothing_to_inject_is_not_in_the_chain(kind: str) -> None:
    def terminal(args: Any, kwargs: Any, info: Any) -> Any:
        return None

    ctx = Context(
        policy="p",
        function=terminal,
        qualname="tests.fn",
        is_async=kind == "async",
        binder=Binder(terminal),
        counters=PolicyCounters("p"),
        clock=FakeClock(),
        logger=logging.getLogger("guardrails"),
        store_for=lambda cfg: None,
        shared=lambda kind, cfg, factory: factory(),
    )
    build = _chaos.build_async if kind == "async" else _chaos.build
    for idle in [
        ChaosConfig(),
        ChaosConfig(error_rate=0, latency=0, latency_rate=1, seed=1),
        ChaosConfig(latency="1s", latency_rate=0),
        ChaosConfig(latency=0, latency_rate=1, error="TimeoutError"),
    ]:
        assert build(idle, terminal, ctx) is terminal
    assert build(ChaosConfig(error_rate=0.01), terminal, ctx) is not terminal
    assert build(ChaosConfig(latency="1ms"), terminal, ctx) is not terminal


# --- fork -------------------------------------------------------------------------------------


def _in_child_and_parent(f: Callable[..., Any], n: int) -> tuple[list[str], list[str]]:
    """The next ``n`` outcomes in a forked child, and in the parent after the fork."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(read)
            os.write(write, ",".join(outcomes(f, n)).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = pipe.read().split(",")
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return child, outcomes(f, n)


def test_a_forked_child_with_a_seed_continues_the_sequence() -> None:
    chaos(chaos={"error_rate": 0.5, "seed": 23})
    f = guarded("p")(Counted())
    before = outcomes(f, 10)
    child, parent = _in_child_and_parent(f, 40)
    assert child == parent
    expected = ["ConnectionError" if e else "ok" for _, e in reference(23, 50, error_rate=0.5)]
    assert before + parent == expected


def test_a_forked_child_without_a_seed_draws_its_own_sequence() -> None:
    chaos(chaos={"error_rate": 0.5})
    f = guarded("p")(Counted())
    outcomes(f, 10)
    child, parent = _in_child_and_parent(f, 64)
    assert child != parent  # workers forked from one parent must not fail in lockstep


def test_injected_errors_are_breaker_failures(kind: str, clock: FakeClock) -> None:
    chaos(
        chaos={"error_rate": 1},
        breaker={"window": 4, "min_calls": 4, "failure_rate": "50%", "open_for": "10s"},
    )
    f = Counted()
    g = guard(kind, f)
    for _ in range(4):
        with pytest.raises(ConnectionError, match=MESSAGE):
            g()
    with pytest.raises(guardrails.CircuitOpenError):
        g()  # refused: the attempt never reaches chaos
    s = guardrails.stats()["p"]
    assert (s.injected, s.short_circuited, s.breaker_state, f.runs) == (4, 1, "open", 0)
