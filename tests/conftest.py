"""Shared fixtures: every test starts unconfigured, on real time, with no statistics."""

from __future__ import annotations

import gc
import logging
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

import guardrails.testing
from guardrails.testing import FakeClock

# Property tests check behaviour, not speed: no per-example deadline on a loaded CI machine.
settings.register_profile("guardrails", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("guardrails")


@pytest.fixture(autouse=True)
def _fresh_state() -> Iterator[None]:
    # Guarded functions of earlier tests may linger in reference cycles (tracebacks).
    gc.collect()
    guardrails.testing.reset()
    yield
    guardrails.testing.reset()


@pytest.fixture
def clock() -> Iterator[FakeClock]:
    with guardrails.testing.fake_clock() as fake:
        yield fake


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """``caplog`` capturing the ``guardrails`` logger from DEBUG up; read ``logs.records``."""
    caplog.set_level(logging.DEBUG, logger="guardrails")
    return caplog
