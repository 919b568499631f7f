"""pytest fixtures for tests of code that uses guardrails (registered as the plugin ``guardrails``).

- ``guardrails_policies``: a function that sets policies for one test, over the configuration
  in force; that configuration is back in force after the test.
- ``guardrails_clock``: the fake clock; retries' backoffs, TTLs, breakers and rate limits run
  without real waiting.

Installing ``hydra-guardrails`` makes them available in every test; a run that uses neither
is left as it was (the plugin adds no hooks, options or autouse fixtures). Disable it with
``-p no:guardrails``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from guardrails.testing import FakeClock, PolicyOverrides


@pytest.fixture
def guardrails_policies() -> Iterator[PolicyOverrides]:
    """Set guardrails policies for this test; the configuration before it is restored after.

    ``guardrails_policies({"fetch": {"retry": {"max_attempts": 3, "wait": {"initial": "10s"}}}})``
    validates and puts the policies in force, as ``configure()`` does, and returns the
    settings. A policy already in force is changed key by key (like a Hydra override); a new
    one is merged over ``policy_defaults``; ``strict=`` and ``allow_chaos=`` set the switches.
    Call it as often as needed. The policies it names start the test fresh and end it fresh:
    empty caches, zeroed ``stats()``, closed breakers, full rate-limit buckets.
    """
    from guardrails.testing import override_policies

    with override_policies() as overrides:
        yield overrides


@pytest.fixture
def guardrails_clock() -> Iterator[FakeClock]:
    """A fake clock for guarded functions during this test (real time again after it).

    Waits (retry backoffs, rate-limit and bulkhead waits, injected latency) return at once
    and move the clock; ``clock.sleeps`` lists them and ``clock.advance(seconds)`` moves it
    by hand (TTLs, breaker ``open_for``, rate-limit refills, time windows).
    """
    from guardrails.testing import fake_clock

    with fake_clock() as clock:
        yield clock
