"""Adopting the Redis features as a user would, and the 3 AM cases: malformed URLs (in the
configuration or in $GUARDRAILS_REDIS_URL), passwords where they must never show, event
loops closed without ``shutdown_asyncgens()``, a database index the server does not have."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
import warnings
from collections.abc import Callable

import pytest
import redis

import guardrails
import guardrails.testing
from guardrails import PolicyConfigError, guarded
from guardrails._redis import REDIS_URL_ENV, redis_url_problem, redis_url_shown
from tests.redis_servers import RedisProcess

# -- URLs redis-py refuses when it connects: refused at configure(), naming the key ---------

BAD_URLS = {
    "redis://127.0.0.1:notaport/0": "port",
    "redis://127.0.0.1:99999/0": "port",
    "redis://127.0.0.1:0/0": "port",
    "redis://:pw@[::1": "not a valid URL",
    "redis://127.0.0.1:6390/notadb": "database",
    "redis://127.0.0.1:6390/-1": "database",
    "unix://": "socket",
    "redis://127.0.0.1:6390/0?socket_timeout=abc": "socket_timeout",
    "redis://127.0.0.1:6390/0?socket_timeout=30": "redis_timeout",
    "redis://127.0.0.1:6390/0?foo=bar": "foo",
    "redis://127.0.0.1:6390/0?ssl_cert_reqs=none": "rediss",
    "redis://127.0.0.1:6390/0?protocol=9": "protocol",
}

GOOD_URLS = [
    "redis://",
    "redis://localhost",
    "redis://127.0.0.1:6390",
    "redis://127.0.0.1:6390/",
    "redis://127.0.0.1:6390/15",
    "redis://user:p%40ss@[::1]:6390/2",
    "rediss://cache.internal:6380/0?ssl_cert_reqs=none&client_name=api",
    "unix:///run/redis/redis.sock?db=3",
    "redis://127.0.0.1:6390/0?protocol=3&max_connections=50&password=pw",
]


@pytest.mark.parametrize("url", sorted(BAD_URLS))
def test_a_malformed_redis_url_is_a_configuration_error(url: str) -> None:
    problem = redis_url_problem(url)
    assert problem is not None and BAD_URLS[url] in problem
    assert "pw@" not in problem  # the URL itself is never shown
    with pytest.raises(PolicyConfigError) as caught:
        guardrails.configure({"redis_url": url, "policies": {"p": {"cache": {"backend": "redis"}}}})
    assert "guardrails.redis_url:" in str(caught.value)
    with pytest.raises(PolicyConfigError) as caught:
        guardrails.configure({"policies": {"p": {"cache": {"backend": "redis", "url": url}}}})
    assert "guardrails.policies.p.cache.url:" in str(caught.value)


@pytest.mark.parametrize("url", GOOD_URLS)
def test_well_formed_redis_urls_are_accepted(url: str) -> None:
    assert redis_url_problem(url) is None


def test_a_malformed_url_in_the_environment_is_a_configuration_error_not_failing_calls(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """$GUARDRAILS_REDIS_URL with a bad port: every guarded call raised ValueError from
    redis-py (the environment's URL was never checked)."""
    good = {"policies": {"p": {"cache": {"backend": "redis"}}, "q": {"breaker": {"shared": True}}}}
    monkeypatch.setenv(REDIS_URL_ENV, "redis://:hunter2@127.0.0.1:99999/0")

    @guarded("p")
    def f(x: int) -> int:
        return x

    @guarded("q")
    def g(x: int) -> int:
        return x

    for block in ("cache.backend", "breaker.shared"):
        policy = "p" if block.startswith("cache") else "q"
        with pytest.raises(PolicyConfigError) as caught:
            guardrails.configure({"policies": {policy: good["policies"][policy]}})
        text = str(caught.value)
        assert f"guardrails.policies.{policy}.{block}" in text
        assert "$GUARDRAILS_REDIS_URL" in text and "port" in text
        assert "hunter2" not in text

    # A policy that uses no Redis does not care.
    guardrails.configure({"policies": {"r": {"retry": {"max_attempts": 2}}}})

    # The configuration's own redis_url wins over a bad environment.
    monkeypatch.setenv(REDIS_URL_ENV, "http://nope")
    guardrails.configure({"redis_url": "redis://127.0.0.1:6390/0", **good})


def test_a_bad_environment_url_never_replaces_the_configuration_in_force(
    monkeypatch: pytest.MonkeyPatch, redis_url: str
) -> None:
    monkeypatch.setenv(REDIS_URL_ENV, redis_url)
    guardrails.configure({"policies": {"p": {"cache": {"backend": "redis", "ttl": "1m"}}}})
    calls: list[int] = []

    @guarded("p")
    def f(x: int) -> int:
        calls.append(x)
        return x + 1

    assert f(1) == 2
    monkeypatch.setenv(REDIS_URL_ENV, "redis://127.0.0.1:notaport/0")
    with pytest.raises(PolicyConfigError):
        guardrails.configure({"policies": {"p": {"cache": {"backend": "redis", "ttl": "2m"}}}})
    assert f(2) == 3 and f(1) == 2
    assert calls == [1, 2]


# -- passwords never shown -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:hunter2@h:6379/0", "redis://:***@h:6379/0"),
        ("redis://u:hunter2@h:6379/0", "redis://u:***@h:6379/0"),
        ("redis://h:6379/0?password=hunter2", "redis://h:6379/0?password=***"),
        (
            "rediss://h/0?client_name=a&ssl_password=hunter2&db=1",
            "rediss://h/0?client_name=a&ssl_password=***&db=1",
        ),
        ("redis://h/0?PASSWORD=hunter2#x", "redis://h/0?PASSWORD=***#x"),
        ("redis://u:hun@ter2@h/0?password=hunter2", "redis://u:***@h/0?password=***"),
    ],
)
def test_a_password_in_the_query_is_never_shown(url: str, shown: str) -> None:
    assert redis_url_shown(url) == shown


def test_repr_of_settings_never_shows_the_redis_password() -> None:
    settings = guardrails.configure(
        {
            "redis_url": "redis://admin:hunter2@127.0.0.1:6390/0?password=qq",
            "policies": {"p": {"breaker": {"shared": True}}},
        }
    )
    for text in (repr(settings), str(settings), repr(guardrails.settings())):
        assert "hunter2" not in text and "=qq" not in text
        assert "redis_url='redis://admin:***@127.0.0.1:6390/0?password=***'" in text
    # What workers need still travels.
    import pickle

    assert pickle.loads(pickle.dumps(settings)).redis_url == settings.redis_url


# -- the 3 AM cases ---------------------------------------------------------------------------


def test_a_database_index_the_server_lacks_is_one_outage_not_one_error_per_call(
    redis_url: str, logs: pytest.LogCaptureFixture
) -> None:
    """redis://host/99 on a server with 16 databases: SELECT fails on connect with an error
    reply, which was taken for a per-key refusal: every call opened a connection, failed
    and counted an error (no probe backoff), for ever."""
    url = redis_url.rsplit("/", 1)[0] + "/99"
    guardrails.configure({"policies": {"p": {"cache": {"backend": "redis", "url": url}}}})

    @guarded("p")
    def f(x: int) -> int:
        return x

    for i in range(30):
        assert f(i) == i
    assert guardrails.stats()["p"].redis_errors == 1
    warnings = [r for r in logs.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "DB index is out of range" in warnings[0].getMessage()


# -- event loops closed without shutdown_asyncgens() ---------------------------------------


def test_loops_closed_without_shutting_down_are_not_kept_alive(
    start_redis: Callable[[], RedisProcess],
) -> None:
    """``loop.run_until_complete(...); loop.close()`` (no ``shutdown_asyncgens()``): each
    loop's clients were kept in the server's per-loop table, whose values hold the loop:
    every such loop stayed alive for ever with an open socket to Redis."""
    from guardrails.redis import client

    # A server of its own: it counts the connections to it, which other tests' leftovers on
    # the session's server would add to.
    redis_url = start_redis().url

    guardrails.configure(
        {
            "redis_url": redis_url,
            "policies": {"p": {"cache": {"backend": "redis"}}, "q": {"breaker": {"shared": True}}},
        }
    )

    @guarded("p")
    async def f(x: int) -> int:
        return x

    @guarded("q")
    async def g(x: int) -> int:
        return x

    async def both(i: int) -> None:
        assert await f(i) == i and await g(i) == i

    # The sockets of a loop closed that way can only be closed by the garbage collector
    # (asyncio cannot close a transport once its loop is closed), which warns.
    watcher = redis.Redis.from_url(redis_url)
    assert len(watcher.client_list()) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        for i in range(10):
            loop = asyncio.new_event_loop()
            try:
                loop.run_until_complete(both(i))
            finally:
                loop.close()
        gc.collect()
        (srv,) = client.servers()
        assert len(srv._async) <= 1  # the last one is let go when another loop connects
        assert guardrails.stats()["p"].redis_errors == 0
        guardrails.testing.reset()
        gc.collect()
    # Every socket those loops opened is closed: the server sees only the watcher's.
    deadline = time.monotonic() + 10
    while len(watcher.client_list()) > 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(watcher.client_list()) == 1
    watcher.close()


def test_cache_url_namespace_and_timeout_are_checked_like_the_shared_layers() -> None:
    # cache.url may hold a password: never in repr; cache.namespace and cache.redis_timeout
    # follow the shared layers' rules (a ':' or '*' in a namespace would mix key spaces).
    settings = guardrails.configure(
        {"policies": {"p": {"cache": {"url": "redis://:hunter2@h:1/0"}}}}
    )
    assert "hunter2" not in repr(settings.policies["p"])
    for key, value in (("namespace", "a:b"), ("namespace", "x*"), ("redis_timeout", "1h")):
        with pytest.raises(guardrails.PolicyConfigError) as caught:
            guardrails.configure({"policies": {"p": {"cache": {key: value}}}})
        assert f"guardrails.policies.p.cache.{key}" in str(caught.value)
    assert guardrails.settings() is settings
