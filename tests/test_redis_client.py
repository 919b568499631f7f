"""The top-level ``redis_url`` and the Redis connection layer (guardrails/redis/client.py):
one WARNING per outage, no calls while a server is down but a probe now and then, one INFO
when it is back; against real redis-server processes."""

from __future__ import annotations

import logging
import pickle
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import guardrails
from guardrails import PolicyConfigError, configure
from guardrails._policy import redis_url_for
from guardrails._redis import redis_url_shown
from tests.redis_servers import RedisProcess


def test_redis_url_is_read_and_travels_with_the_settings() -> None:
    settings = configure({"redis_url": "redis://cache.internal:6380/2", "policies": {}})
    assert settings.redis_url == "redis://cache.internal:6380/2"
    assert redis_url_for(settings) == "redis://cache.internal:6380/2"
    assert pickle.loads(pickle.dumps(settings)).redis_url == settings.redis_url


def test_redis_url_defaults_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = configure({"policies": {}})
    monkeypatch.delenv("GUARDRAILS_REDIS_URL", raising=False)
    assert settings.redis_url is None
    assert redis_url_for(settings) is None
    monkeypatch.setenv("GUARDRAILS_REDIS_URL", "redis://from-env:6379/0")
    assert redis_url_for(settings) == "redis://from-env:6379/0"
    own = configure({"redis_url": "redis://own:6379/0", "policies": {}})
    assert redis_url_for(own) == "redis://own:6379/0"  # the configuration wins


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("http://:hunter2@cache:6379", "starts otherwise"),
        ("localhost:6379", "starts otherwise"),
        (6379, "got 6379"),
        (["redis://a"], "got a list"),
    ],
)
def test_a_bad_redis_url_is_named_and_its_text_never_shown(value: object, expected: str) -> None:
    with pytest.raises(PolicyConfigError) as caught:
        configure({"redis_url": value, "policies": {}})
    text = str(caught.value)
    assert "guardrails.redis_url" in text
    assert "redis://localhost:6379/0" in text  # what is expected
    assert expected in text
    assert "hunter2" not in text


def test_a_bad_redis_url_keeps_the_configuration_in_force() -> None:
    good = configure({"redis_url": "redis://good:6379/0", "policies": {}})
    with pytest.raises(PolicyConfigError):
        configure({"redis_url": "nope", "policies": {}})
    assert guardrails.settings() is good


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:hunter2@host:6379/0", "redis://:***@host:6379/0"),
        ("redis://alice:hunter2@host:6379/0", "redis://alice:***@host:6379/0"),
        ("rediss://token@host:6380", "rediss://***@host:6380"),
        ("redis://host:6379/0", "redis://host:6379/0"),
        ("unix:///run/redis.sock", "unix:///run/redis.sock"),
    ],
)
def test_passwords_are_masked_where_a_url_is_shown(url: str, shown: str) -> None:
    assert redis_url_shown(url) == shown


def test_show_masks_the_password(tmp_path: object) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "guardrails._cli",
            "show",
            "+guardrails.redis_url=redis://:hunter2@cache:6379/0",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "redis://:***@cache:6379/0" in out.stdout
    assert "hunter2" not in out.stdout + out.stderr


def test_import_guardrails_does_not_import_redis() -> None:
    code = (
        "import sys, guardrails; print('redis' in sys.modules, 'guardrails.redis' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


# -- the outage watch, against real servers ------------------------------------------------


@pytest.fixture
def now(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The outage watch's clock, moved by the test (Redis itself runs on real time)."""
    from guardrails.redis import client

    moment = [1000.0]
    monkeypatch.setattr(client, "_clock", lambda: moment[0])
    return moment


def _fail(server: object, client_timeout: float = 0.05) -> None:
    from guardrails.redis import client

    assert isinstance(server, client.Server)
    try:
        server.client(client_timeout).get("k")
    except client.ERRORS as exc:
        server.failed(exc, "policy 'p': cache in this process only")
    else:
        raise AssertionError("the operation did not fail")


def test_one_warning_per_outage_and_one_info_when_back(
    start_redis: Callable[[], RedisProcess],
    logs: pytest.LogCaptureFixture,
    now: list[float],
) -> None:
    from guardrails.redis import client

    redis = start_redis()
    server = client.server(redis.url)
    assert server.client(0.05).ping()
    redis.stop()
    for _ in range(5):
        _fail(server)
    warnings = [r for r in logs.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    text = warnings[0].getMessage()
    assert redis.url in text and "policy 'p': cache in this process only" in text
    assert server.outages == 1 and server.last_error is not None

    # Down: callers skip Redis until the probe is due; then exactly one caller probes.
    assert not server.usable()
    now[0] += client.PROBE_FIRST
    assert server.usable()  # this caller probes
    assert not server.usable()  # the others wait for its answer

    redis.start()  # back, same port, empty
    assert server.client(0.05).get("k") is None
    server.succeeded()
    assert server.usable()
    infos = [r for r in logs.records if r.levelno == logging.INFO and r.name == "guardrails.redis"]
    assert len(infos) == 1 and "answers again" in infos[0].getMessage()

    # A second outage is a second WARNING.
    redis.stop()
    _fail(server)
    assert server.outages == 2
    assert len([r for r in logs.records if r.levelno == logging.WARNING]) == 2


def test_probes_back_off_while_the_outage_lasts(
    start_redis: Callable[[], RedisProcess], now: list[float]
) -> None:
    from guardrails.redis import client

    redis = start_redis()
    server = client.server(redis.url)
    redis.stop()
    _fail(server)
    gaps = []
    for _ in range(8):
        start = now[0]
        while not server.usable():
            now[0] += 0.125
        gaps.append(now[0] - start)
        _fail(server)  # the probe fails
    assert gaps[0] <= client.PROBE_FIRST + 0.125
    assert gaps == sorted(gaps)  # never shorter than the one before
    assert gaps[-1] <= client.PROBE_MAX + 0.125


def test_a_paused_server_times_out_within_the_timeout(
    start_redis: Callable[[], RedisProcess],
) -> None:
    from guardrails.redis import client

    redis = start_redis()
    server = client.server(redis.url)
    assert server.client(0.05).ping()
    redis.pause()  # every command now hangs
    with pytest.raises(client.ERRORS):
        server.client(0.05).get("k")
    redis.resume()
    assert server.client(0.05).get("k") is None  # reconnects on its own


def test_a_password_never_reaches_the_log(
    logs: pytest.LogCaptureFixture, start_redis: Callable[[], RedisProcess]
) -> None:
    from guardrails.redis import client

    redis = start_redis()
    redis.stop()
    server = client.server(f"redis://:hunter2@127.0.0.1:{redis.port}/0")
    _fail(server)
    assert logs.records
    assert all("hunter2" not in r.getMessage() for r in logs.records)


def test_servers_are_per_url_and_reset_forgets_them(redis_url: str) -> None:
    from guardrails.redis import client

    one = client.server(redis_url)
    assert client.server(redis_url) is one
    assert one.client(0.05) is one.client(0.05)
    assert one.client(0.05) is not one.client(0.1)
    guardrails.testing.reset()
    assert client.server(redis_url) is not one


async def _async_ping(server: object) -> bool:
    from guardrails.redis import client

    assert isinstance(server, client.Server)
    c = server.async_client(0.05)
    assert server.async_client(0.05) is c  # one per loop and timeout
    result = await c.ping()
    await c.aclose()
    return bool(result)


def test_async_clients_belong_to_their_loop(redis_url: str) -> None:
    import asyncio

    from guardrails.redis import client

    server = client.server(redis_url)
    assert asyncio.run(_async_ping(server))
    assert asyncio.run(_async_ping(server))  # a new loop gets a new client


def test_async_clients_close_when_their_loop_shuts_down(redis_url: str) -> None:
    # asyncio.run() shuts the loop's async generators down before closing it: the clients'
    # connections close then, inside the loop (none is left to warn when collected).
    import asyncio

    from guardrails.redis import client

    server = client.server(redis_url)
    seen: list[object] = []

    async def use() -> None:
        c = server.async_client(0.05)
        assert await c.ping()
        seen.append(c)

    asyncio.run(use())
    (c,) = seen
    pool = c.connection_pool  # type: ignore[attr-defined]
    assert not pool._in_use_connections
    assert all(conn._writer is None for conn in pool._available_connections)


def test_show_and_explain_hide_a_literal_secret_and_password(tmp_path: Path) -> None:
    config = tmp_path / "policies.yaml"
    config.write_text(
        "guardrails:\n"
        "  redis_url: redis://:toplevelpw@h:1/0\n"
        "  policies:\n"
        "    p:\n"
        "      cache: {backend: redis, url: 'redis://:pw12345@h:1/0', serializer: pickle,\n"
        "              secret: topsecret99}\n"
    )
    for command in (["show", str(config)], ["explain", "p", str(config)]):
        out = subprocess.run(
            [sys.executable, "-m", "guardrails._cli", *command],
            capture_output=True,
            text=True,
            check=False,
        )
        assert out.returncode == 0, out.stderr
        assert "secret:" in out.stdout
        for hidden in ("topsecret99", "pw12345", "toplevelpw"):
            assert hidden not in out.stdout + out.stderr


def test_an_error_reply_is_not_an_outage(redis_url: str, logs: pytest.LogCaptureFixture) -> None:
    # One policy's key of the wrong type must not turn Redis off for every other policy.
    from guardrails.redis import client

    server = client.server(redis_url)
    raw = server.client(1.0)
    raw.rpush("a-list", "x")
    for _ in range(3):
        try:
            raw.get("a-list")
        except client.ERRORS as exc:
            server.failed(exc, "policy 'p': cache in this process only")
        else:
            raise AssertionError("GET of a list did not fail")
    assert server.usable() and server.down_until == 0 and server.outages == 0
    warnings = [r for r in logs.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # once per kind
    assert "WRONGTYPE" in warnings[0].getMessage() and "policy 'p'" in warnings[0].getMessage()
