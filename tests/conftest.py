"""Shared fixtures: every test starts unconfigured, on real time, with no statistics."""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable, Iterator

import pytest
from hypothesis import HealthCheck, settings

import guardrails.testing
from guardrails.testing import FakeClock
from tests.redis_servers import CI_URL, RedisProcess

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


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    """The URL of a real redis-server for the whole session: CI's (``$GUARDRAILS_REDIS_URL``
    when .ci/run started one), else a private one on a free port."""
    if CI_URL:
        yield CI_URL
        return
    server = RedisProcess()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: str) -> str:
    """The session server's URL, flushed: each test starts with an empty Redis."""
    import redis

    with redis.Redis.from_url(redis_server) as client:
        client.flushall()
    return redis_server


@pytest.fixture
def start_redis() -> Iterator[Callable[[], RedisProcess]]:
    """``start_redis()``: a redis-server of the test's own (to stop, pause or restart it);
    every one is stopped when the test ends."""
    started: list[RedisProcess] = []

    def start() -> RedisProcess:
        server = RedisProcess()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()  # SIGKILL ends a paused one too
