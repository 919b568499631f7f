"""``cache.backend: redis``: the shared level behind the in-process cache, on a real
redis-server (the ``redis_url`` and ``start_redis`` fixtures).

"Another process" is either a real subprocess or a second slot of the same function
(``guarded("p")(fn)`` twice): a slot has its own in-process store and single flight, and the
same Redis keys (same policy, qualified name and version).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import guardrails
from guardrails import PolicyConfigError, configure, guarded
from guardrails.redis.cache import lock_expiry
from guardrails.testing import FakeClock
from tests.redis_servers import RedisProcess
from tests.twins import wait_until

DEADLINE = 30.0


def conf(server: str | None, policy: str = "p", **cache: Any) -> None:
    top: dict[str, Any] = {"policies": {policy: {"cache": {"backend": "redis", **cache}}}}
    if server is not None:
        top["redis_url"] = server
    configure(top)


def raw(url: str) -> Any:
    return redis.Redis.from_url(url)


def value_keys(url: str) -> list[bytes]:
    return sorted(k for k in raw(url).keys("guardrails:*") if not k.endswith(b":lock"))


def lock_keys(url: str) -> list[bytes]:
    return sorted(raw(url).keys("guardrails:*:lock"))


def mget_calls(url: str) -> int:
    stats = raw(url).info("commandstats")
    return int(stats.get("cmdstat_mget", {}).get("calls", 0))


def twin_slots(fn: Callable[..., Any], policy: str = "p") -> tuple[Any, Any]:
    """Two guarded functions for one plain one: two stores, the same Redis keys."""
    return guarded(policy)(fn), guarded(policy)(fn)


def run(thread_target: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []

    def body() -> None:
        try:
            out.append(thread_target())
        except BaseException as exc:
            out.append(exc)

    t = threading.Thread(target=body)
    t.start()
    return t, out


# --- the shared level -------------------------------------------------------------------------


def test_a_value_computed_by_another_process_is_a_shared_hit(
    redis_url: str, tmp_path: Path
) -> None:
    module = tmp_path / "b_shared_fn.py"
    module.write_text(
        textwrap.dedent(
            """
            from guardrails import guarded
            CALLS = []

            @guarded("p")
            def embed(text: str) -> list[float]:
                CALLS.append(text)
                return [float(len(text)), 0.5]
            """
        )
    )
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        import guardrails, b_shared_fn
        guardrails.configure({{"redis_url": {redis_url!r},
                              "policies": {{"p": {{"cache": {{"backend": "redis"}}}}}}}})
        print(b_shared_fn.embed("abc"), b_shared_fn.embed("hello"), len(b_shared_fn.CALLS))
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "GUARDRAILS_REDIS_URL"}
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["[3.0,", "0.5]", "[5.0,", "0.5]", "2"]

    sys.path.insert(0, str(tmp_path))
    try:
        import b_shared_fn  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(tmp_path))
    conf(redis_url)
    assert b_shared_fn.embed("abc") == [3.0, 0.5]
    assert b_shared_fn.embed("hello") == [5.0, 0.5]
    assert b_shared_fn.embed("abc") == [3.0, 0.5]  # now an in-process hit
    assert b_shared_fn.CALLS == []
    s = guardrails.stats()["p"]
    assert (s.cache_hits, s.shared_cache_hits, s.cache_misses, s.redis_errors) == (3, 2, 0, 0)
    sys.modules.pop("b_shared_fn", None)


def test_keys_are_namespaced_and_expire_with_ttl_plus_stale_for(redis_url: str) -> None:
    conf(redis_url, ttl=60, stale_for=30)

    @guarded("p")
    def f(x: int) -> int:
        return x * 2

    assert f(3) == 6
    (key,) = value_keys(redis_url)
    assert key.startswith(f"guardrails:p:{f.__module__}.{f.__qualname__}:1:".encode())
    assert len(key.rsplit(b":", 1)[1]) == 40
    assert 80_000 < raw(redis_url).pttl(key) <= 90_000
    assert lock_keys(redis_url) == []  # released with the store, in one script


def test_namespace_and_version_isolate_values(redis_url: str) -> None:
    calls: list[int] = []

    def g(x: int) -> int:
        calls.append(x)
        return x

    f = guarded("p")(g)
    for namespace, version, computed in [
        ("a", 1, True),
        ("b", 1, True),
        ("a", 2, True),
        ("a", 1, False),
        ("b", 1, False),
    ]:
        conf(redis_url, namespace=namespace, version=version)
        before = len(calls)
        assert f(1) == 1
        assert (len(calls) > before) is computed, (namespace, version)
    prefixes = {k.rsplit(b":", 1)[0] for k in value_keys(redis_url)}
    module = f"{f.__module__}.{g.__qualname__}"
    assert prefixes == {
        f"guardrails:a:{module}:1".encode(),
        f"guardrails:b:{module}:1".encode(),
        f"guardrails:a:{module}:2".encode(),
    }


def test_fresh_until_caps_the_in_process_ttl(redis_url: str, clock: FakeClock) -> None:
    conf(redis_url, ttl=10)
    calls: list[int] = []

    def g(x: int) -> int:
        calls.append(x)
        return x

    first, second = twin_slots(g)
    assert first(1) == 1  # stored at t0, fresh until t0 + 10 (the fake clock's time)
    clock.advance(4)
    assert second(1) == 1  # a shared hit, in its store for what is left: 6 s
    assert calls == [1]
    clock.advance(5)
    mgets = raw(redis_url).info("commandstats")
    assert second(1) == 1  # in-process hit: no Redis command
    assert raw(redis_url).info("commandstats").get("cmdstat_get") == mgets.get("cmdstat_get")
    clock.advance(2)  # t0 + 11: stale in Redis too (stale_for 0: a miss)
    assert second(1) == 1
    assert calls == [1, 1]
    s = guardrails.stats()["p"]
    assert (s.shared_cache_hits, s.cache_misses) == (1, 2)


def test_two_processes_compute_a_key_once_the_waiter_gets_the_leaders_value(
    redis_url: str,
) -> None:
    conf(redis_url)
    release = threading.Event()
    calls: list[int] = []

    def g(x: int) -> int:
        calls.append(x)
        assert release.wait(DEADLINE)
        return x + 100

    first, second = twin_slots(g)
    leader, out1 = run(lambda: first(1))
    wait_until(lambda: lock_keys(redis_url), "the leader's lock")
    polls = mget_calls(redis_url)
    waiter, out2 = run(lambda: second(1))
    wait_until(lambda: mget_calls(redis_url) > polls, "the waiter polling")
    release.set()
    leader.join(DEADLINE)
    waiter.join(DEADLINE)
    assert out1 == out2 == [101]
    assert calls == [1]
    s = guardrails.stats()["p"]
    assert (s.cache_misses, s.shared_cache_hits) == (1, 1)
    assert lock_keys(redis_url) == []


class Interposer:
    """A TCP relay in front of a real redis-server that runs ``before_lock()`` once, right
    before it forwards the first command naming a lock key (the step after a ``GET`` that
    found no fresh value): another process's store lands exactly in the window between
    looking for the value and taking the lock."""

    def __init__(self, target_url: str, before_lock: Callable[[], Any]) -> None:
        import socket
        from urllib.parse import urlsplit

        self.target = (urlsplit(target_url).hostname or "127.0.0.1", urlsplit(target_url).port)
        self.before_lock = before_lock
        self.fired = 0
        self.errors: list[BaseException] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"redis://127.0.0.1:{self.listener.getsockname()[1]}/0"
        self.sockets: list[Any] = [self.listener]
        self.threads = [threading.Thread(target=self.accept, daemon=True)]
        self.threads[0].start()

    def accept(self) -> None:
        import socket

        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            upstream = socket.create_connection(self.target)  # type: ignore[arg-type]
            self.sockets += [client, upstream]
            for args in ((client, upstream, True), (upstream, client, False)):
                pump = threading.Thread(target=self.pump, args=args, daemon=True)
                self.threads.append(pump)
                pump.start()

    def pump(self, source: Any, sink: Any, commands: bool) -> None:
        try:
            while data := source.recv(65536):
                if commands and b":lock" in data and not self.fired:
                    self.fired += 1
                    try:
                        self.before_lock()
                    except BaseException as exc:
                        self.errors.append(exc)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for each in (source, sink):
                with contextlib.suppress(OSError):
                    each.close()

    def close(self) -> None:
        """Stop relaying and end its threads. A thread blocked in ``recv`` on a socket that
        is only closed lives on, and held ``before_lock`` (so the guarded function and its
        slot, failing every later strict ``configure()``): the hook is dropped first."""
        import socket

        self.before_lock = lambda: None
        for each in self.sockets:
            with contextlib.suppress(OSError):
                each.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                each.close()
        for thread in list(self.threads):  # each ends once its socket is shut down
            thread.join(timeout=5)


@pytest.mark.parametrize("stale", [False, True], ids=["missing", "stale"])
def test_a_value_stored_between_the_get_and_the_lock_is_used_not_computed_again(
    redis_url: str, clock: FakeClock, stale: bool
) -> None:
    """The window found by the multi-process tests: process A's ``GET`` finds no fresh value;
    before A asks for the lock, process B stores the value and releases its lock. A must
    take B's value (on the old code it took the free lock and computed the key again)."""
    calls: list[str] = []

    def compute(x: int) -> str:
        calls.append("computed")
        return f"{x}-v{len(calls)}"

    other = guarded("direct")(compute)  # process B: straight to Redis
    proxy = Interposer(redis_url, lambda: other(1))
    try:
        cache = {"backend": "redis", "namespace": "shared", "ttl": 10, "stale_for": 5}
        configure(
            {
                "redis_url": redis_url,
                "policies": {
                    "direct": {"cache": {**cache}},
                    "relayed": {"cache": {**cache, "url": proxy.url}},
                },
            }
        )
        mine = guarded("relayed")(compute)  # process A, through the relay
        if stale:
            proxy.fired = 1  # not yet
            assert other(1) == "1-v1"
            clock.advance(11)  # stale everywhere (the fake clock is the wall clock here)
            other.__guardrails__.store.clear()  # type: ignore[attr-defined]
            proxy.fired = 0
        assert mine(1) == f"1-v{len(calls)}"
        assert proxy.fired == 1 and proxy.errors == []
        assert calls == ["computed"] * (2 if stale else 1)  # B's computation only
        assert lock_keys(redis_url) == []
        s = guardrails.stats()["relayed"]
        assert (s.cache_misses, s.shared_cache_hits, s.redis_errors) == (0, 1, 0)
    finally:
        proxy.close()


def test_a_leader_that_raises_releases_the_lock_and_a_waiter_leads_next(redis_url: str) -> None:
    conf(redis_url)
    release = threading.Event()
    calls: list[str] = []

    def g(x: int) -> int:
        calls.append(threading.current_thread().name)
        if len(calls) == 1:
            assert release.wait(DEADLINE)
            raise ConnectionError("feature store down")
        return x

    first, second = twin_slots(g)
    leader, out1 = run(lambda: first(1))
    wait_until(lambda: lock_keys(redis_url), "the leader's lock")
    polls = mget_calls(redis_url)
    waiter, out2 = run(lambda: second(1))
    wait_until(lambda: mget_calls(redis_url) > polls, "the waiter polling")
    release.set()
    leader.join(DEADLINE)
    waiter.join(DEADLINE)
    assert isinstance(out1[0], ConnectionError)
    assert out2 == [1]
    assert len(calls) == 2
    assert len(value_keys(redis_url)) == 1 and lock_keys(redis_url) == []


def test_a_dead_leaders_lock_expires_and_a_waiter_computes(redis_url: str) -> None:
    conf(redis_url, lock_timeout="30s")
    calls: list[int] = []

    @guarded("p")
    def f(x: int) -> int:
        calls.append(x)
        return x

    level = f.__guardrails__.store  # type: ignore[attr-defined]
    if level is None:
        f(0)  # compile
        level = f.__guardrails__.store  # type: ignore[attr-defined]
    from guardrails._keys import key_of

    key = level.shared.key_for(key_of(7))
    # A leader that died: its lock stays until it expires.
    raw(redis_url).set(key + ":lock", "dead-leader", px=300)
    assert f(7) == 7
    assert calls == [0, 7]
    assert raw(redis_url).get(key + ":lock") is None
    assert raw(redis_url).exists(key)


@pytest.mark.parametrize(
    ("timeout", "retry", "expected"),
    [
        ({"total": "5s"}, None, 5.0),
        ({"attempt": "2s", "total": "9s"}, {"max_attempts": 3}, 9.0),
        ({"attempt": "2s"}, {"max_attempts": 3}, 6.0),
        ({"attempt": "2s"}, None, 2.0),
        (None, {"max_attempts": 3}, 12.0),
    ],
)
def test_lock_expiry_follows_timeout_and_retry(
    redis_url: str, timeout: Any, retry: Any, expected: float
) -> None:
    policy: dict[str, Any] = {"cache": {"backend": "redis", "lock_timeout": "12s"}}
    if timeout is not None:
        policy["timeout"] = timeout
    if retry is not None:
        policy["retry"] = {**retry, "wait": {"initial": 0}}
    configure({"redis_url": redis_url, "policies": {"p": policy}})
    settings = guardrails.settings()
    assert lock_expiry(12.0, settings.policy("p")) == expected
    release = threading.Event()

    @guarded("p")
    def f(x: int) -> int:
        assert release.wait(DEADLINE)
        return x

    t, out = run(lambda: f(1))
    wait_until(lambda: lock_keys(redis_url), "the lock")
    pttl = raw(redis_url).pttl(lock_keys(redis_url)[0])
    release.set()
    t.join(DEADLINE)
    assert out == [1]
    assert expected * 1000 - 5000 < pttl <= expected * 1000


# --- Redis away -------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["pause", "kill"])
def test_redis_away_calls_succeed_one_warning_errors_counted_and_back_after(
    start_redis: Callable[[], RedisProcess], logs: pytest.LogCaptureFixture, how: str
) -> None:
    server = start_redis()
    conf(server.url, redis_timeout="50ms")
    calls: list[int] = []

    @guarded("p")
    def f(x: int) -> int:
        calls.append(x)
        return x * 10

    assert f(1) == 10
    if how == "pause":
        server.pause()
    else:
        server.stop()
    try:
        assert [f(x) for x in range(2, 40)] == [x * 10 for x in range(2, 40)]
        assert f(2) == 20  # in-process hit while Redis is away
    finally:
        if how == "pause":
            server.resume()
        else:
            server.start()
    warnings = [
        r for r in logs.records if r.levelno == logging.WARNING and r.name == "guardrails.redis"
    ]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "policy 'p': cache in this process only" in warnings[0].getMessage()
    s = guardrails.stats()["p"]
    assert s.redis_errors >= 1 and s.failures == 0
    # Back: a probe finds it, and values are shared again.
    x = 1000

    def stored_again() -> bool:
        nonlocal x
        x += 1
        f(x)
        return bool(raw(server.url).keys("guardrails:*"))

    wait_until(stored_again, "values stored in Redis again")
    assert any("answers again" in r.getMessage() for r in logs.records)


def test_a_reply_late_after_a_timeout_is_never_read_as_the_next_commands(
    start_redis: Callable[[], RedisProcess],
) -> None:
    """A GET that timed out leaves its reply on the way; the connection it used must not
    hand that reply to the next command (which would return key 1's value for another)."""
    server = start_redis()
    conf(server.url, redis_timeout="100ms")
    calls: list[int] = []

    def compute(x: int) -> str:
        calls.append(x)
        return f"value of {x}"

    writer, reader = twin_slots(compute)
    assert (writer(1), writer(2)) == ("value of 1", "value of 2")
    server.pause()
    try:
        assert reader(1) == "value of 1"  # the GET timed out: computed here
    finally:
        server.resume()
    assert calls == [1, 2, 1]
    from guardrails.redis import client

    x = 100

    def answers_again() -> bool:
        nonlocal x
        x += 1
        assert reader(x) == f"value of {x}"  # the probe's command among them
        return client.server(server.url).down_until == 0.0

    wait_until(answers_again, "Redis to answer again")
    assert reader(2) == "value of 2"  # from Redis
    assert calls.count(2) == 1
    assert guardrails.stats()["p"].shared_cache_hits == 1


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX")
def test_a_forked_child_never_uses_its_parents_connections(redis_url: str) -> None:
    conf(redis_url)

    @guarded("p")
    def f(x: int) -> int:
        return x

    assert f(1) == 1
    level = f.__guardrails__.store.shared  # type: ignore[attr-defined]
    parent_id = level.call("CLIENT", "ID")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        try:
            child_id = level.call("CLIENT", "ID")
            f.__guardrails__.store.clear()  # type: ignore[attr-defined]
            ok = child_id != parent_id and f(1) == 1
            os.write(write, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as answer:
        assert answer.read() == b"1"
    os.waitpid(pid, 0)
    assert level.call("CLIENT", "ID") == parent_id  # the parent's connection still in step


def test_configure_never_connects_a_server_down_at_start_is_no_error(
    logs: pytest.LogCaptureFixture,
) -> None:
    from tests.redis_servers import free_port

    url = f"redis://127.0.0.1:{free_port()}/0"
    conf(url)

    @guarded("p")
    def f(x: int) -> int:
        return x

    assert [f(1), f(1), f(2)] == [1, 1, 2]
    s = guardrails.stats()["p"]
    assert s.redis_errors == 1 and s.cache_hits == 1
    assert sum(r.levelno == logging.WARNING for r in logs.records) == 1


# --- values -----------------------------------------------------------------------------------


class Opaque:
    def __init__(self, x: int) -> None:
        self.x = x


def test_an_unstorable_value_stays_in_process_with_one_warning(
    redis_url: str, logs: pytest.LogCaptureFixture
) -> None:
    conf(redis_url)

    @guarded("p")
    def f(x: int) -> Opaque:
        return Opaque(x)

    a = f(1)
    assert f(1) is a and f(2).x == 2
    assert value_keys(redis_url) == [] and lock_keys(redis_url) == []
    warned = [r for r in logs.records if "cannot be stored in Redis" in r.getMessage()]
    assert len(warned) == 1
    assert "Opaque" in warned[0].getMessage()


def test_unstorable_warns_once_per_function_and_reason_across_slots_and_recompiles(
    redis_url: str, logs: pytest.LogCaptureFixture
) -> None:
    conf(redis_url)

    def make(x: int) -> Any:
        if x < 0:
            loop: list[Any] = []
            loop.append(loop)
            return loop  # another reason: nested too deeply
        return Opaque(x)

    def other(x: int) -> Opaque:
        return Opaque(x)

    first, second = twin_slots(make)
    assert first(1).x == 1 and second(2).x == 2
    conf(redis_url, ttl=60)  # recompiled: new chains, new Redis levels
    assert first(3).x == 3 and second(4).x == 4
    first(-1)
    second(-2)
    guarded("p")(other)(5)

    def warned(who: str) -> list[str]:
        return [
            r.getMessage()
            for r in logs.records
            if "cannot be stored in Redis" in r.getMessage() and f"{who})" in r.getMessage()
        ]

    assert len(warned(make.__qualname__)) == 2  # one per reason
    assert "Opaque" in warned(make.__qualname__)[0]
    assert "nested too deeply" in warned(make.__qualname__)[1]
    assert len(warned(other.__qualname__)) == 1
    assert value_keys(redis_url) == []


@pytest.mark.parametrize("serializer", ["auto", "pickle"])
def test_a_bad_value_in_redis_is_a_logged_miss_recomputed_and_overwritten(
    redis_url: str, logs: pytest.LogCaptureFixture, serializer: str
) -> None:
    conf(redis_url, serializer=serializer, secret="s3cr3t-for-tests")
    calls: list[int] = []

    @guarded("p")
    def f(x: int) -> dict[str, Any]:
        calls.append(x)
        return {"x": x, "t": (x, "a")}

    assert f(1) == {"x": 1, "t": (1, "a")}
    (key,) = value_keys(redis_url)
    good = raw(redis_url).get(key)
    assert good is not None
    for bad in [b"garbage", good[:-1] + bytes([good[-1] ^ 1]), b"gR" + good[2:20]]:
        raw(redis_url).set(key, bad)
        guardrails.clear_caches()
        assert f(1) == {"x": 1, "t": (1, "a")}
        assert raw(redis_url).get(key) not in (bad, None)
    assert len(calls) == 4
    warned = [r for r in logs.records if "is not usable" in r.getMessage()]
    assert len(warned) == 1  # rate-limited per function
    assert "s3cr3t" not in logs.text


def test_a_tampered_pickle_is_never_unpickled(redis_url: str, tmp_path: Path) -> None:
    conf(redis_url, serializer="pickle", secret="k" * 32)

    @guarded("p")
    def f(x: int) -> Opaque:
        return Opaque(x)

    f(1)
    (key,) = value_keys(redis_url)
    good = raw(redis_url).get(key)
    assert good is not None
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self) -> Any:
            return (Path.touch, (marker,))

    import pickle

    body = pickle.dumps(Evil())
    raw(redis_url).set(key, good[: 13 + 32] + body)  # the same header and MAC, another body
    guardrails.clear_caches()
    assert f(1).x == 1
    assert not marker.exists()


def test_an_argument_keyed_by_its_own_hash_is_refused_with_the_key_hint(redis_url: str) -> None:
    conf(redis_url)

    class Handle:
        pass

    @guarded("p")
    def f(model: str, handle: Handle) -> str:
        return model

    with pytest.raises(TypeError, match=r"argument 'handle'.*policies\.p\.cache\.key"):
        f("m", Handle())
    conf(redis_url, key=["model"])
    assert f("m", Handle()) == "m"


values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(max_size=4) | st.integers(), inner, max_size=4)
    ),
    max_leaves=12,
) | st.builds(
    lambda shape, dtype: np.arange(int(np.prod(shape))).astype(dtype).reshape(shape),
    st.lists(st.integers(0, 3), min_size=0, max_size=3),
    st.sampled_from(["int8", "float64", "complex64", "bool", "<U3"]),
)


def same(a: Any, b: Any) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and bool(np.array_equal(a, b))
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


def test_values_read_back_from_redis_are_what_the_in_process_level_gives(redis_url: str) -> None:
    conf(redis_url)
    box: dict[int, Any] = {}

    def g(i: int) -> Any:
        return box[i]

    first, second = twin_slots(g)
    counter = iter(range(10**9))
    stored_count: list[int] = []
    box[-1] = None
    first(-1)
    level = first.__guardrails__.store.shared

    @settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(values)
    def check(value: Any) -> None:
        i = next(counter)
        box[i] = value
        from_l1 = first(i)
        from_l2 = second(i)
        assert from_l1 is value
        stored = raw(redis_url).exists(level.key_for((int, i)))
        stored_count.append(stored)
        assert same(from_l2, value), (from_l2, value)

    check()
    assert sum(stored_count) > 10
    assert guardrails.stats()["p"].shared_cache_hits >= sum(stored_count)


# --- clear_caches(shared=True), configuration ----------------------------------------------------


def test_clear_caches_shared_deletes_the_functions_keys(redis_url: str) -> None:
    configure(
        {
            "redis_url": redis_url,
            "policies": {
                "x*[y]": {"cache": {"backend": "redis"}},  # the default namespace: glob characters
                "q": {"cache": {"backend": "redis"}},
            },
        }
    )

    @guarded("x*[y]")
    def f(x: int) -> int:
        return x

    @guarded("q")
    def h(x: int) -> int:
        return x

    for i in range(2500):
        f(i)
    h(1)
    raw(redis_url).set("guardrails:x*[y]:other:1:abc", b"kept")
    assert len(value_keys(redis_url)) == 2502
    guardrails.clear_caches("x*[y]")
    assert len(value_keys(redis_url)) == 2502
    guardrails.clear_caches("x*[y]", shared=True)
    assert value_keys(redis_url) == sorted(
        [b"guardrails:x*[y]:other:1:abc", *raw(redis_url).keys("guardrails:q:*")]
    )
    calls = guardrails.stats()["x*[y]"].cache_misses
    f(1)
    assert guardrails.stats()["x*[y]"].cache_misses == calls + 1


def test_clear_caches_shared_with_redis_down_clears_in_process_then_raises(
    start_redis: Callable[[], RedisProcess],
) -> None:
    server = start_redis()
    conf(server.url)

    @guarded("p")
    def f(x: int) -> int:
        return x

    f(1)
    server.stop()
    with pytest.raises(RuntimeError, match="could not delete the Redis keys"):
        guardrails.clear_caches(shared=True)
    assert f.__guardrails__.store.view == {}  # type: ignore[attr-defined]


def test_backend_redis_without_a_url_names_every_place_a_url_can_come_from(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("GUARDRAILS_REDIS_URL", raising=False)

    @guarded("p")
    def f(x: int) -> int:
        return x

    with pytest.raises(PolicyConfigError) as caught:
        conf(None)
    text = str(caught.value)
    assert "guardrails.policies.p.cache.url" in text
    assert "redis_url" in text and "$GUARDRAILS_REDIS_URL" in text
    monkeypatch.setenv("GUARDRAILS_REDIS_URL", "redis://127.0.0.1:1/0")
    conf(None)  # the environment's URL: no connection at configure()


def test_pickle_needs_a_secret_and_secrets_are_never_shown() -> None:
    with pytest.raises(PolicyConfigError) as caught:
        conf("redis://127.0.0.1:1/0", serializer="pickle")
    assert "guardrails.policies.p.cache.secret" in str(caught.value)
    assert "needs a secret" in str(caught.value)
    with pytest.raises(PolicyConfigError) as caught:
        conf("redis://127.0.0.1:1/0", secret="hunter2-very-secret", redis_timeout="-1s")
    assert "hunter2" not in str(caught.value)
    with pytest.raises(PolicyConfigError, match=r"cache\.secret"):
        conf("redis://127.0.0.1:1/0", secret="")
    with pytest.raises(PolicyConfigError, match=r"cache\.url"):
        conf(None, url="http://example.com")
    conf("redis://127.0.0.1:1/0", secret="hunter2-very-secret")
    assert "hunter2" not in repr(guardrails.settings())


# --- re-entry, async, fork ------------------------------------------------------------------------


def test_recursion_never_waits_on_its_own_redis_lock(redis_url: str) -> None:
    conf(redis_url)

    @guarded("p")
    def fib(n: int) -> int:
        return n if n < 2 else fib(n - 1) + fib(n - 2)

    @guarded("p")
    def same(n: int, depth: int = 0) -> int:
        return n if depth >= 3 else same(n, depth=depth) if False else same2(n, depth + 1)

    def same2(n: int, depth: int) -> int:
        return same(n, depth) if depth < 3 else n

    assert fib(30) == 832040
    assert same(5) == 5
    assert lock_keys(redis_url) == []


def test_async_shared_hit_lock_and_cancelled_leader_releases(redis_url: str) -> None:
    conf(redis_url)
    calls: list[int] = []

    async def g(x: int) -> int:
        calls.append(x)
        if x == 99:
            await asyncio.Event().wait()  # never ends: cancelled
        await asyncio.sleep(0)
        return x * 3

    first, second = twin_slots(g)

    async def main() -> None:
        assert await first(1) == 3
        assert await second(1) == 3  # a shared hit
        assert calls == [1]
        task = asyncio.create_task(first(99))
        deadline = time.monotonic() + DEADLINE
        while not lock_keys(redis_url):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        while lock_keys(redis_url):  # released by a task of its own
            assert time.monotonic() < deadline
            await asyncio.sleep(0.005)

    asyncio.run(main())
    s = guardrails.stats()["p"]
    assert (s.shared_cache_hits, s.redis_errors) == (1, 0)


def test_async_waiter_in_another_store_gets_the_leaders_value(redis_url: str) -> None:
    conf(redis_url)
    calls: list[int] = []

    async def main() -> None:
        release = asyncio.Event()

        async def g(x: int) -> int:
            calls.append(x)
            await release.wait()
            return x + 1

        first, second = twin_slots(g)
        leader = asyncio.create_task(first(5))
        deadline = time.monotonic() + DEADLINE
        while not lock_keys(redis_url):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.005)
        polls = mget_calls(redis_url)
        waiter = asyncio.create_task(second(5))
        while mget_calls(redis_url) <= polls:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.005)
        release.set()
        assert list(await asyncio.gather(leader, waiter)) == [6, 6]

    asyncio.run(main())
    assert calls == [5]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX")
def test_a_child_forked_by_the_leader_does_not_release_the_parents_lock(redis_url: str) -> None:
    conf(redis_url)
    parent = os.getpid()
    seen: list[Any] = []

    @guarded("p")
    def f(x: int) -> str:
        pid = os.fork()
        if pid == 0:
            return "child"
        os.waitpid(pid, 0)
        seen.append(lock_keys(redis_url))
        return "parent"

    result = f(1)
    if os.getpid() != parent:
        os._exit(0 if result == "child" else 1)
    assert result == "parent"
    assert len(seen[0]) == 1  # the child returned through the layer and left the lock alone
    assert lock_keys(redis_url) == []
    assert raw(redis_url).get(value_keys(redis_url)[0]) is not None


def test_backend_redis_without_redis_py_is_a_configuration_error_saying_what_to_install() -> None:
    script = textwrap.dedent(
        """
        import sys
        sys.modules["redis"] = None  # as if redis-py were not installed
        import guardrails
        from guardrails import guarded

        @guarded("p")
        def f(x):
            return x

        try:
            guardrails.configure({"redis_url": "redis://127.0.0.1:1/0",
                                  "policies": {"p": {"cache": {"backend": "redis"}}}})
        except guardrails.PolicyConfigError as exc:
            print(exc)
        else:
            print("configured")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        check=False,
        capture_output=True,
        text=True,
        timeout=DEADLINE,
    )
    assert done.returncode == 0, done.stderr
    assert "guardrails.policies.p.cache.backend" in done.stdout
    assert "pip install" in done.stdout


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        # The service's fetch_features: 5 attempts of 250ms and the 4 backoff waits between
        # them (5+5, 10+5, 20+5, 40+5 ms), under its 2s deadline.
        (
            {
                "timeout": {"attempt": "250ms"},
                "retry": {
                    "max_attempts": 5,
                    "deadline": "2s",
                    "wait": {"initial": "5ms", "max": "50ms", "multiplier": 2, "jitter": "5ms"},
                },
            },
            1.345,
        ),
        # A deadline shorter than the attempts: the deadline plus the attempt then running.
        ({"timeout": {"attempt": "1s"}, "retry": {"max_attempts": 10, "deadline": "2s"}}, 3.0),
        # The waits of the rate limit and bulkhead come before each attempt's timeout.
        (
            {
                "timeout": {"attempt": "1s"},
                "bulkhead": {"max_concurrent": 2, "max_wait": "1s"},
                "rate_limit": {"rate": "10/s", "max_wait": "500ms"},
            },
            2.5,
        ),
        # retry_after: a failure may ask for up to wait.max before each retry.
        (
            {
                "timeout": {"attempt": "1s"},
                "retry": {"max_attempts": 3, "wait": {"max": "4s", "retry_after": True}},
            },
            11.0,
        ),
        # Absurd settings stay finite and quick to work out.
        (
            {
                "timeout": {"attempt": "1s"},
                "retry": {"max_attempts": 10**9, "wait": {"initial": 1, "multiplier": 1e300}},
            },
            10**9 + (10**9 - 1) * 5.0,
        ),
    ],
)
def test_the_lock_outlives_every_attempt_and_wait_of_one_call(
    policy: dict[str, Any], expected: float
) -> None:
    # The lock expired while the leader was still inside its retries (attempt x max_attempts
    # left the backoff waits out): under load another process computed the key again.
    configure({"policies": {"p": policy}})
    assert lock_expiry(30.0, guardrails.settings().policy("p")) == pytest.approx(expected)
