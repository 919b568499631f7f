"""The pytest plugin (fixtures ``guardrails_policies``, ``guardrails_clock``) and what it is
built on (``guardrails.testing.override_policies``).

Projects are run with ``pytester.runpytest_subprocess()``: a real pytest in a real process
that finds the plugin through the installed ``pytest11`` entry point, as a user's would.
"""

from __future__ import annotations

import asyncio
import os
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import guardrails
from guardrails import PolicyConfigError, guarded
from guardrails._core import current_settings
from guardrails._state import STATE
from guardrails.testing import FakeClock, PolicyOverrides, override_policies

pytest_plugins = ["pytester"]

#: How long a project's pytest run may take before the test fails (it never should).
RUN_BOUND = 180

# A project: guarded functions in app.py, its real policies configured by its conftest.
APP = """
    import guardrails
    from guardrails import guarded

    #: What the conftest configured (the settings object in force between tests).
    CONFIGURED = None
    #: Each call pops one entry and fails while any are left.
    FAILS = []
    CALLS = []


    @guarded("fetch")
    def fetch(key):
        CALLS.append(key)
        if FAILS:
            FAILS.pop()
            raise ConnectionError("feature store down")
        return key.upper()


    @guarded("fetch")
    async def afetch(key):
        CALLS.append(key)
        if FAILS:
            FAILS.pop()
            raise ConnectionError("feature store down")
        return key.upper()


    @guarded("store")
    def store(key):
        if FAILS:
            FAILS.pop()
            raise ConnectionError("store down")
        return key
"""

CONFTEST = """
    import pytest

    import app
    import guardrails

    POLICIES = {
        "policies": {
            "fetch": {
                "retry": {"max_attempts": 2, "wait": {"initial": "1ms", "max": "1ms", "jitter": 0}},
                "cache": {"ttl": "1h", "maxsize": 100},
            },
            "store": {
                "breaker": {"failure_rate": "50%", "window": 2, "min_calls": 2, "open_for": "1h"},
            },
        }
    }


    @pytest.fixture(autouse=True, scope="session")
    def real_policies():
        app.CONFIGURED = guardrails.configure(POLICIES)


    @pytest.fixture(autouse=True)
    def fresh_app():
        app.FAILS.clear()
        app.CALLS.clear()
"""

# What every test that sets nothing checks: the project's own configuration is in force,
# the same object, on real time, with nothing left of another test's calls.
AS_CONFIGURED = """
    def assert_as_configured():
        from guardrails._clock import SystemClock
        from guardrails._core import current_settings
        from guardrails._state import STATE

        assert current_settings() is app.CONFIGURED
        assert isinstance(STATE.clock, SystemClock)
        assert guardrails.policy("fetch").retry.max_attempts == 2
        for name, figures in guardrails.stats().items():
            assert figures.calls == 0, (name, figures)
            assert figures.breaker_state in (None, "closed"), (name, figures)
        app.CALLS.clear()
        assert app.fetch("x") == "X"
        assert app.fetch("x") == "X"
        assert app.CALLS == ["x"]  # cached, by the project's policy, from empty
        assert guardrails.stats()["fetch"].cache_hits == 1
"""


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makepyfile(app=textwrap.dedent(APP), conftest=textwrap.dedent(CONFTEST))
    # Strict about warnings, as a careful project is (an assertion-rewrite warning included).
    pytester.makeini("[pytest]\nfilterwarnings = error\n")
    return pytester


def write_tests(pytester: pytest.Pytester, name: str, body: str) -> None:
    header = "import asyncio\n\nimport pytest\n\nimport app\nimport guardrails\n"
    pytester.makepyfile(**{name: header + textwrap.dedent(AS_CONFIGURED) + textwrap.dedent(body)})


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess("-p", "no:randomly", *args, timeout=RUN_BOUND)


SLEEPLESS_RETRIES = """
    def test_before():
        assert_as_configured()


    def test_retries_wait_on_the_fake_clock(guardrails_policies, guardrails_clock):
        settings = guardrails_policies(
            {"fetch": {"retry": {"max_attempts": 3, "wait": {"initial": "10s", "max": "10s"}}}}
        )
        assert settings.policies["fetch"].retry.max_attempts == 3
        assert settings.policies["fetch"].retry.wait.initial == 10.0
        # The rest of the project's policy is kept, and its other policies are the same.
        assert settings.policies["fetch"].cache.ttl == 3600.0
        assert settings.policies["store"] is app.CONFIGURED.policies["store"]
        assert guardrails.policy("fetch").retry.max_attempts == 3
        app.FAILS[:] = [1, 1]
        start = guardrails_clock.monotonic()
        assert app.fetch("a") == "A"
        assert guardrails_clock.sleeps == [10.0, 10.0]
        assert guardrails_clock.monotonic() - start == 20.0
        assert app.CALLS == ["a", "a", "a"]
        figures = guardrails.stats()["fetch"]
        assert (figures.calls, figures.retries, figures.successes) == (1, 2, 1)


    def test_async_retries_wait_on_the_fake_clock(guardrails_policies, guardrails_clock):
        guardrails_policies(
            {"fetch": {"retry": {"max_attempts": 4, "wait": {"initial": "30s", "max": "30s"}}}}
        )
        app.FAILS[:] = [1, 1, 1]
        assert asyncio.run(app.afetch("b")) == "B"
        assert guardrails_clock.sleeps == [30.0, 30.0, 30.0]
        assert guardrails.stats()["fetch"].retries == 3


    def test_after():
        assert_as_configured()
"""


def test_retries_run_on_the_fake_clock_and_the_policy_is_back_after(
    project: pytest.Pytester,
) -> None:
    write_tests(project, "test_retries", SLEEPLESS_RETRIES)
    result = run(project)
    result.assert_outcomes(passed=4)


def test_the_plugin_works_without_the_cache_provider(project: pytest.Pytester) -> None:
    write_tests(project, "test_retries", SLEEPLESS_RETRIES)
    result = run(project, "-p", "no:cacheprovider")
    result.assert_outcomes(passed=4)
    assert not (project.path / ".pytest_cache").exists()


def test_tests_in_one_file_see_independent_configurations(project: pytest.Pytester) -> None:
    write_tests(
        project,
        "test_independent",
        """
        def test_one(guardrails_policies):
            guardrails_policies({"fetch": {"cache": {"ttl": "5m"}}})
            assert guardrails.policy("fetch").cache.ttl == 300.0
            assert app.fetch("k") == "K" and app.fetch("k") == "K"
            assert app.CALLS == ["k"]
            # Open the store's breaker: its block is the project's, unchanged.
            guardrails_policies({"store": {"retry": {"enabled": False}}})
            app.FAILS[:] = [1, 1]
            for _ in range(2):
                with pytest.raises(ConnectionError):
                    app.store("s")
            assert guardrails.stats()["store"].breaker_state == "open"


        def test_two(guardrails_policies):
            assert_as_configured()
            app.CALLS.clear()
            # Nothing of test_one: its cached "k", its open breaker.
            guardrails_policies({"fetch": {"cache": {"ttl": "5m"}}})
            assert app.fetch("k") == "K"
            assert app.CALLS == ["k"]
            guardrails_policies({"store": {"retry": {"enabled": False}}})
            assert app.store("s") == "s"
            assert guardrails.stats()["store"].breaker_state == "closed"


        def test_three():
            assert_as_configured()
            assert app.store("s") == "s"
        """,
    )
    run(project).assert_outcomes(passed=3)


def test_a_failing_test_still_restores(project: pytest.Pytester) -> None:
    write_tests(
        project,
        "test_failing",
        """
        def test_fails(guardrails_policies, guardrails_clock):
            guardrails_policies({"fetch": {"retry": {"max_attempts": 5}}}, strict=True)
            app.FAILS[:] = [1] * 5
            app.fetch("z")


        @pytest.fixture
        def broken(guardrails_policies):
            guardrails_policies({"fetch": {"cache": {"enabled": False}}})
            raise RuntimeError("a fixture broke after setting policies")


        def test_errors_in_a_fixture_after_setting(broken):
            pass


        def test_after():
            assert_as_configured()
            assert current_strict() is False


        def current_strict():
            from guardrails._core import current_settings

            return current_settings().strict
        """,
    )
    result = run(project)
    result.assert_outcomes(passed=1, failed=1, errors=1)
    result.stdout.fnmatch_lines(["*ConnectionError: feature store down*"])


def test_a_bad_policy_fails_the_test_with_the_key_and_changes_nothing(
    project: pytest.Pytester,
) -> None:
    write_tests(
        project,
        "test_bad",
        """
        def test_bad(guardrails_policies):
            guardrails_policies({"fetch": {"retry": {"max_attempts": "five"}}})


        def test_after():
            assert_as_configured()
        """,
    )
    result = run(project)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        ["*guardrails.policies.fetch.retry.max_attempts: Input should be a valid integer*"]
    )


IDLE = """
    import guardrails
    from guardrails import guarded


    @guarded("idle")
    def idle(x):
        return x


    def test_nothing_is_set_up(pytestconfig):
        from hydra.core.global_hydra import GlobalHydra

        from guardrails._clock import SystemClock
        from guardrails._state import STATE

        assert pytestconfig.pluginmanager.has_plugin("guardrails") is {loaded}
        assert STATE.settings is None
        assert isinstance(STATE.clock, SystemClock)
        assert not STATE.counters and not STATE.shared
        assert not GlobalHydra.instance().is_initialized()
        assert idle(3) == 3
"""


@pytest.mark.parametrize("loaded", [True, False], ids=["plugin", "no-plugin"])
def test_a_project_that_uses_no_fixture_is_unaffected(
    pytester: pytest.Pytester, loaded: bool
) -> None:
    pytester.makeini("[pytest]\nfilterwarnings = error\n")
    pytester.makepyfile(test_idle=textwrap.dedent(IDLE).replace("{loaded}", str(loaded)))
    args = () if loaded else ("-p", "no:guardrails")
    run(pytester, *args).assert_outcomes(passed=1)


def test_the_fixtures_are_listed_with_their_help(pytester: pytest.Pytester) -> None:
    result = run(pytester, "--fixtures")
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(
        [
            "*guardrails_policies*guardrails*pytest_plugin.py*",
            "*Set guardrails policies for this test*",
            "*guardrails_clock*guardrails*pytest_plugin.py*",
            "*A fake clock for guarded functions*",
        ]
    )


# --- In this process: the fixtures as this suite gets them, and override_policies itself ---


ALPHA_CALLS: list[int] = []
ALPHA_FAILS: list[int] = []


@pytest.fixture
def alpha() -> Callable[[int], int]:
    """A guarded function for one test (one guarded at module level would stay registered
    for the whole session, and a strict configuration in another test would refuse it)."""
    ALPHA_CALLS.clear()
    ALPHA_FAILS.clear()

    @guarded("alpha")
    def alpha(x: int) -> int:
        ALPHA_CALLS.append(x)
        if ALPHA_FAILS:
            ALPHA_FAILS.pop()
            raise ConnectionError("alpha down")
        return x * 2

    return alpha


BASE = {
    "policy_defaults": {"log": {"level": "DEBUG", "slow": "2s"}},
    "policies": {
        "alpha": {"retry": {"max_attempts": 2}, "cache": {"ttl": "1m"}},
        "beta": {"retry": {"max_attempts": 7, "wait": {"initial": "3s"}}},
    },
}


def test_the_fixture_returns_the_settings_and_can_be_called_again(
    guardrails_policies: PolicyOverrides, guardrails_clock: FakeClock, alpha: Callable[[int], int]
) -> None:
    before = guardrails.configure(BASE)
    first = guardrails_policies({"alpha": {"cache": {"ttl": "5m"}}})
    assert current_settings() is first
    assert first.policies["alpha"].cache is not None and first.policies["alpha"].cache.ttl == 300
    assert first.policies["alpha"].retry == before.policies["alpha"].retry
    assert first.policies["alpha"].log == before.policy_defaults.log  # slow: 2s, DEBUG
    assert first.policies["beta"] is before.policies["beta"]
    assert alpha(1) == 2 and alpha(1) == 2
    assert ALPHA_CALLS == [1]
    # A second call merges over the first and keeps what an unchanged cache holds, as a
    # configure() would: a policy starts fresh only the first time a test names it.
    second = guardrails_policies({"alpha": {"retry": {"max_attempts": 4}}, "gamma": {}})
    assert first.source == "mapping, with policies set by a test (alpha)"
    assert second.source == "mapping, with policies set by a test (alpha, gamma)"
    assert second.policies["alpha"].cache == first.policies["alpha"].cache
    assert second.policies["alpha"].retry is not None
    assert second.policies["alpha"].retry.max_attempts == 4
    assert second.policies["gamma"].log == before.policy_defaults.log
    assert alpha(1) == 2
    assert ALPHA_CALLS == [1]
    assert guardrails.stats()["alpha"].calls == 3


def test_restore_brings_back_the_same_settings_object(alpha: Callable[[int], int]) -> None:
    before = guardrails.configure(BASE)
    assert alpha(2) == 4
    with override_policies() as use:
        use({"alpha": {"retry": {"max_attempts": 9}}}, strict=True)
        assert alpha(2) == 4  # a fresh cache: computed again
        assert ALPHA_CALLS == [2, 2]
        assert guardrails.policy("alpha").retry.max_attempts == 9  # type: ignore[union-attr]
    assert current_settings() is before
    assert guardrails.policy("alpha").retry.max_attempts == 2  # type: ignore[union-attr]
    assert guardrails.stats()["alpha"].calls == 0
    assert alpha(2) == 4  # the cache is fresh again: nothing the test computed is served
    assert ALPHA_CALLS == [2, 2, 2]


def test_a_bad_override_changes_nothing_and_names_each_key(alpha: Callable[[int], int]) -> None:
    before = guardrails.configure(BASE)
    assert alpha(1) == 2
    with override_policies() as use:
        with pytest.raises(PolicyConfigError) as caught:
            use(
                {
                    "alpha": {"retry": {"max_attempts": "five"}, "cache": {"tll": "1m"}},
                    "delta": {"base": "alpah"},
                }
            )
        problems = dict(caught.value.problems)
        assert (
            "Input should be a valid integer"
            in problems["guardrails.policies.alpha.retry.max_attempts"]
        )
        assert "did you mean 'ttl'" in problems["guardrails.policies.alpha.cache.tll"]
        assert "did you mean 'alpha'" in problems["guardrails.policies.delta.base"]
        assert current_settings() is before
        assert alpha(1) == 2
        assert ALPHA_CALLS == [1]  # the cache in force was kept
        assert guardrails.stats()["alpha"].calls == 2
    assert current_settings() is before


def test_what_is_not_a_mapping_of_policies_is_refused_by_type() -> None:
    with override_policies() as use:
        with pytest.raises(TypeError, match="mapping of policy name to policy"):
            use([("alpha", {})])  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="strict= takes True, False or None"):
            use({}, strict="yes")  # type: ignore[arg-type]
        with pytest.raises(PolicyConfigError, match=r"policies\.alpha: expected a mapping"):
            use({"alpha": 3})


def test_strict_names_the_function_without_a_policy(alpha: Callable[[int], int]) -> None:
    guardrails.configure(BASE)
    assert alpha(1) == 2

    @guarded("unnamed")
    def orphan() -> int:
        return 1

    with override_policies() as use:
        with pytest.raises(PolicyConfigError, match=r"no policy named 'unnamed'.*orphan"):
            use({}, strict=True)
        assert current_settings().strict is False
        use({"unnamed": {}}, strict=True)
        assert orphan() == 1


def test_restore_to_a_strict_configuration_after_a_test_guarded_a_new_function(
    alpha: Callable[[int], int],
) -> None:
    before = guardrails.configure({**BASE, "strict": True})
    with override_policies() as use:
        use({"late": {"cache": {"ttl": "1s"}}})

        @guarded("late")
        def late() -> int:
            return 5

        assert late() == 5
    # The function has no policy in the configuration in force again: it fails on its
    # first call, as a function guarded after a strict configure() does; nothing leaked.
    assert current_settings() is before
    with pytest.raises(PolicyConfigError, match="no policy named 'late'"):
        late()
    assert alpha(4) == 8


def test_chaos_needs_allow_chaos_and_turning_it_off_refuses_a_drill_in_force(
    alpha: Callable[[int], int],
) -> None:
    drill = {"error_rate": 1.0, "error": "ConnectionError", "seed": 1}
    with override_policies() as use:
        with pytest.raises(PolicyConfigError, match=r"policies\.alpha\.chaos: chaos injects"):
            use({"alpha": {"chaos": drill}})
        use({"alpha": {"chaos": drill, "retry": {"enabled": False}}}, allow_chaos=True)
        with pytest.raises(ConnectionError):
            alpha(1)
        assert ALPHA_CALLS == []
        with pytest.raises(PolicyConfigError, match=r"policies\.alpha\.chaos: chaos injects"):
            use({"beta": {}}, allow_chaos=False)
        with pytest.raises(ConnectionError):
            alpha(1)  # the drill is still in force
    assert alpha(1) == 2


def test_a_policy_with_base_is_defined_anew_from_it() -> None:
    before = guardrails.configure(BASE)
    with override_policies() as use:
        got = use({"alpha": {"base": "beta", "cache": {"ttl": "2s"}}})
        policy = got.policies["alpha"]
        assert policy.base == "beta"
        assert policy.retry == before.policies["beta"].retry  # not alpha's max_attempts 2
        assert policy.cache is not None and policy.cache.ttl == 2.0
        # A policy merged over one in force that had a base still says which it was.
        got = use({"delta": {"base": "alpha"}})
        assert got.policies["delta"].retry == before.policies["beta"].retry
        got = use({"delta": {"cache": {"maxsize": 3}}})
        assert got.policies["delta"].base == "alpha"
        assert got.policies["delta"].cache is not None
        assert (got.policies["delta"].cache.ttl, got.policies["delta"].cache.maxsize) == (2.0, 3)


class LocalError(Exception):
    """An exception class that no import path names (it stays a class, not a string)."""


def test_an_empty_override_of_any_policy_changes_nothing() -> None:
    def local_fallback(x: int) -> int:
        return -x

    class Defined(LocalError):
        pass

    config: dict[str, Any] = {
        "allow_chaos": True,
        "policy_defaults": {"log": {"level": "WARNING", "slow": "250ms", "args": "none"}},
        "policies": {
            "every": {
                "log": {"expected": [Defined], "failure_level": "WARNING", "traceback": "none"},
                "validate": {"output": "list[list[float]]", "args": {"x": {"min": 0}}},
                "cache": {"ttl": "30s", "maxsize": 5, "key": ["x"]},
                "memory": {"max_rss": "95%", "soft_rss": "50%"},
                "retry": {
                    "max_attempts": 4,
                    "wait": {"initial": "5ms", "max": "1s", "jitter": "1ms", "retry_after": True},
                    "retry_on": [ConnectionError, "TimeoutError", Defined],
                    "abort_on": ["PermissionError"],
                    "deadline": "PT1M",
                    "budget": {"ratio": 0.2, "min_per_second": 0},
                },
                "fallback": {"function": local_fallback, "catch": ["guardrails.CircuitOpenError"]},
                "timeout": {"attempt": "2s", "total": "10s"},
                "breaker": {"failure_rate": "50%", "slow_call": "2s", "window": "1m"},
                "rate_limit": {"rate": "5/100ms", "burst": 20, "max_wait": "1s"},
                "bulkhead": {"max_concurrent": 8, "max_wait": 0},
                "chaos": {"error_rate": "10%", "latency": "200ms", "latency_rate": 0.5, "seed": 7},
            },
            "counted": {"breaker": {"window": 20, "min_calls": 10}, "fallback": {"value": None}},
            "typed": {"validate": {"input": "examples.schemas:PredictRequest", "output": "int"}},
            "derived": {"base": "counted", "cache": None, "retry": {"enabled": False}},
        },
    }
    before = guardrails.configure(config)
    for name, policy in before.policies.items():
        with override_policies() as use:
            assert use({name: {}}).policies[name] == policy, name
            assert use({name: None}).policies[name] == before.policy_defaults
        assert current_settings() is before


def test_nested_overrides_restore_in_turn() -> None:
    before = guardrails.configure(BASE)
    with override_policies() as outer:
        middle = outer({"alpha": {"retry": {"max_attempts": 3}}})
        with override_policies() as inner:
            inner({"alpha": {"cache": {"enabled": False}}})
            assert guardrails.policy("alpha").retry.max_attempts == 3  # type: ignore[union-attr]
            assert guardrails.policy("alpha").cache.enabled is False  # type: ignore[union-attr]
        assert current_settings() is middle
        guardrails.configure({})  # a test's own configure() in between changes nothing
    assert current_settings() is before


def test_unconfigured_before_stays_unconfigured_and_the_lazy_source_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, alpha: Callable[[int], int]
) -> None:
    path = tmp_path / "policies.yaml"
    path.write_text("policies:\n  alpha:\n    cache: {ttl: 7s}\n")
    monkeypatch.setenv("GUARDRAILS_CONFIG", os.fspath(path))
    assert STATE.settings is None
    with override_policies() as use:
        got = use({"alpha": {"retry": {"max_attempts": 5}}})
        assert got.policies["alpha"].cache is not None and got.policies["alpha"].cache.ttl == 7.0
        assert got.source.startswith(os.fspath(path))
        assert alpha(1) == 2
    assert STATE.settings is None
    assert alpha(1) == 2  # compiled anew, from $GUARDRAILS_CONFIG
    assert guardrails.policy("alpha").cache.ttl == 7.0  # type: ignore[union-attr]
    assert guardrails.policy("alpha").retry is None


def test_restore_without_a_call_touches_nothing(alpha: Callable[[int], int]) -> None:
    before = guardrails.configure(BASE)
    assert alpha(1) == 2
    with override_policies():
        assert alpha(1) == 2
    assert current_settings() is before
    assert guardrails.stats()["alpha"].calls == 2  # not zeroed
    assert alpha(1) == 2
    assert ALPHA_CALLS == [1]  # nor the cache emptied


def test_a_configure_of_the_tests_own_is_undone_without_a_call(
    alpha: Callable[[int], int],
) -> None:
    before = guardrails.configure(BASE)
    with override_policies():
        guardrails.configure({"policies": {"alpha": {"retry": {"max_attempts": 6}}}})
        assert guardrails.policy("alpha").retry.max_attempts == 6  # type: ignore[union-attr]
    assert current_settings() is before
    assert guardrails.policy("alpha").retry.max_attempts == 2  # type: ignore[union-attr]


def test_calls_from_threads_during_overrides_and_restores_all_succeed(
    alpha: Callable[[int], int],
) -> None:
    """Chains are swapped whole: a call in flight finishes on its chain, none fails."""
    guardrails.configure(BASE)
    stop = threading.Event()
    failures: list[BaseException] = []
    done = [0]

    def caller() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            try:
                assert alpha(n % 7) == (n % 7) * 2
            except BaseException as exc:  # reported below
                failures.append(exc)
                return
        done[0] += n

    threads = [threading.Thread(target=caller) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        for round_ in range(40):
            with override_policies() as use:
                use({"alpha": {"cache": {"ttl": f"{round_ + 1}s"}, "retry": {"max_attempts": 3}}})
                use({"alpha": {"cache": {"enabled": round_ % 2 == 0}}})
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    assert failures == []
    assert done[0] > 0


def test_the_fake_clock_fixture_moves_ttls_and_breakers(
    guardrails_policies: PolicyOverrides, guardrails_clock: FakeClock, alpha: Callable[[int], int]
) -> None:
    guardrails_policies(
        {
            "alpha": {
                "cache": {"ttl": "1h"},
                "retry": {"enabled": False},
                "breaker": {
                    "failure_rate": "100%",
                    "window": 2,
                    "min_calls": 2,
                    "open_for": "30s",
                },
            }
        }
    )
    assert alpha(1) == 2
    guardrails_clock.advance(3599)
    assert alpha(1) == 2
    assert ALPHA_CALLS == [1]
    guardrails_clock.advance(2)
    assert alpha(1) == 2
    assert ALPHA_CALLS == [1, 1]
    ALPHA_FAILS[:] = [1, 1]
    for x in (2, 3):
        with pytest.raises(ConnectionError):
            alpha(x)
    with pytest.raises(guardrails.CircuitOpenError):
        alpha(4)
    guardrails_clock.advance(30)
    assert alpha(4) == 8  # half-open: the trial call goes through
    assert guardrails_clock.sleeps == []


def test_an_async_call_on_the_fake_clock(
    guardrails_policies: PolicyOverrides, guardrails_clock: FakeClock
) -> None:
    @guarded("async_alpha")
    async def async_alpha(x: int) -> int:
        if ALPHA_FAILS:
            ALPHA_FAILS.pop()
            raise TimeoutError("slow")
        return x + 1

    guardrails_policies(
        {
            "async_alpha": {
                "retry": {"max_attempts": 3, "wait": {"initial": "1m", "max": "1m", "jitter": 0}}
            }
        }
    )
    ALPHA_FAILS[:] = [1, 1]
    assert asyncio.run(async_alpha(1)) == 2
    assert guardrails_clock.sleeps == [60.0, 60.0]
