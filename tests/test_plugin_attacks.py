"""Attacks on the pytest plugin and ``override_policies``: a test that configures guardrails
itself, async tests, the fake clock beside real-time timeouts; each project run by a real
pytest in a subprocess (``pytester``), finding the plugin through its entry point."""

from __future__ import annotations

import textwrap

import pytest

pytest_plugins = ["pytester"]

RUN_BOUND = 180

APP = """
    import guardrails
    from guardrails import guarded

    CONFIGURED = None
    CALLS = []


    @guarded("fetch")
    def fetch(key):
        CALLS.append(key)
        return key.upper()
"""

CONFTEST = """
    import pytest

    import app
    import guardrails


    @pytest.fixture(autouse=True, scope="session")
    def real_policies():
        app.CONFIGURED = guardrails.configure(
            {"policies": {"fetch": {"retry": {"max_attempts": 2}, "cache": {"ttl": "1h"}}}}
        )
"""


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makepyfile(app=textwrap.dedent(APP), conftest=textwrap.dedent(CONFTEST))
    pytester.makeini("[pytest]\nfilterwarnings = error\n")
    return pytester


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess("-p", "no:randomly", *args, timeout=RUN_BOUND)


def test_a_test_that_configures_itself_is_undone_by_the_fixture(project: pytest.Pytester) -> None:
    # The fixture promises the configuration before the test is back after it. A test that
    # requested it and called configure() (no call of the fixture) left its configuration in
    # force for every later test.
    project.makepyfile(
        test_own=textwrap.dedent(
            """
            import app
            import guardrails
            from guardrails._core import current_settings


            def assert_as_configured():
                assert current_settings() is app.CONFIGURED
                assert guardrails.policy("fetch").retry.max_attempts == 2


            def test_configures_itself(guardrails_policies):
                guardrails.configure({"policies": {"fetch": {"retry": {"max_attempts": 9}}}})
                assert guardrails.policy("fetch").retry.max_attempts == 9


            def test_after_configuring():
                assert_as_configured()


            def test_configures_itself_then_overrides(guardrails_policies):
                guardrails.configure({"policies": {"fetch": {"retry": {"max_attempts": 9}}}})
                guardrails_policies({"fetch": {"retry": {"max_attempts": 8}}})
                assert guardrails.policy("fetch").retry.max_attempts == 8


            def test_after_configuring_and_overriding():
                assert_as_configured()
            """
        )
    )
    run(project, "-p", "no:cacheprovider").assert_outcomes(passed=4)


def test_async_tests_and_real_time_timeouts_on_the_fake_clock(project: pytest.Pytester) -> None:
    # anyio's pytest plugin runs `async def` tests; retries' waits run on the fake clock,
    # timeouts in real time (documented): a hung attempt times out, the retry waits 1 h of
    # fake time, and the second attempt succeeds.
    project.makepyfile(
        test_async=textwrap.dedent(
            """
            import asyncio

            import pytest

            import guardrails
            from guardrails import guarded

            HANG = asyncio.Event()
            CALLS = []


            @guarded("slow")
            async def slow():
                CALLS.append(1)
                if len(CALLS) == 1:
                    await HANG.wait()  # never set
                return "ok"


            @pytest.mark.anyio
            async def test_retry_after_a_real_timeout(guardrails_policies, guardrails_clock):
                guardrails_policies({"slow": {
                    "timeout": {"attempt": "50ms"},
                    "retry": {"max_attempts": 2, "wait": {"initial": "1h", "max": "1h",
                                                          "jitter": 0}},
                }})
                assert await slow() == "ok"
                assert guardrails_clock.sleeps == [3600.0]
                assert guardrails.stats()["slow"].timeouts == 1


            @pytest.fixture
            def anyio_backend():
                return "asyncio"
            """
        )
    )
    run(project, "-p", "no:cacheprovider").assert_outcomes(passed=1)
