"""The Redis features across real processes, against a real redis-server.

Every worker is a real process: a pool of a driver script (multiprocessing spawn and fork, a
Dask ``LocalCluster``) or a script started by the test. Their guarded functions live in a
module written for the test (``workmod``), never in this module. Computations are counted in
Redis itself (``HINCRBY`` from inside the function, by a client of the test's own), never by
guardrails; processes are synchronised by files and Redis keys with bounded polling, never by
sleeps; nothing here asserts on timing.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import signal
import struct
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

import guardrails
from guardrails import guarded
from tests.redis_servers import RedisProcess

#: How long any one wait of these tests may last before it fails (generous: a loaded machine).
DEADLINE = 120.0

WORKMOD = r'''
"""Guarded functions and worker roles for tests/test_redis_processes.py."""

import json
import logging
import os
import random
import sys
import time
from pathlib import Path

import redis

import guardrails
from guardrails import guarded

URL = os.environ["TEST_REDIS_URL"]
DIR = Path(os.environ["TEST_DIR"])
DEADLINE = float(os.environ.get("TEST_DEADLINE", "120"))

CONFIG = {
    "redis_url": URL,
    "policy_defaults": {"log": {"enabled": False}},
    "policies": {
        # A generous redis_timeout: a loaded test machine must not look like an outage.
        "shared": {"cache": {"backend": "redis", "ttl": 600, "redis_timeout": "2s"}},
        "leader": {
            "cache": {"backend": "redis", "ttl": 600, "redis_timeout": "2s"},
            "timeout": {"total": "4s"},
        },
        "outage": {"cache": {"backend": "redis", "ttl": 600, "redis_timeout": "1s"}},
    },
}

SHARED_STATE = {
    "redis_url": URL,
    "policy_defaults": {"log": {"enabled": False}},
    "policies": {
        "dependency": {
            "breaker": {
                "shared": True,
                "window": 4,
                "min_calls": 2,
                "failure_rate": 0.5,
                "open_for": "10m",
            }
        },
        # Ten tokens, then one an hour: whatever the test's duration, ten are admitted.
        "quota": {"rate_limit": {"shared": True, "rate": "1/h", "burst": 10}},
    },
}

_RAW = {}


def raw():
    """This process's own client (not guardrails'): counts and barriers."""
    pid = os.getpid()
    if pid not in _RAW:
        _RAW.clear()
        _RAW[pid] = redis.Redis.from_url(URL)
    return _RAW[pid]


def until(condition, what):
    deadline = time.monotonic() + DEADLINE
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"waited {DEADLINE:.0f}s for {what}")
        time.sleep(0.002)


def barrier(name, parties):
    raw().incr(name)
    until(lambda: int(raw().get(name) or 0) >= parties, f"{parties} parties at {name}")


def touch(name):
    (DIR / name).write_text(str(os.getpid()))


def exists(name):
    return (DIR / name).exists()


# --- one computation per key ---------------------------------------------------------------

KEYS = 1000
CALLS = 2500  # per process: 4 processes, 10,000 calls over 1,000 keys


@guarded("shared")
def square(x: int) -> dict:
    raw().hincrby("computed", str(x), 1)
    time.sleep(0.001)  # the work (a feature-store fetch, a model)
    return {"x": x, "square": x * x, "by": os.getpid()}


def run(seed: int) -> dict:
    keys = [i % KEYS for i in range(CALLS)]
    random.Random(seed).shuffle(keys)
    barrier("start", 4)
    bad = others = 0
    for k in keys:
        value = square(k)
        if value["x"] != k or value["square"] != k * k:
            bad += 1
        if value["by"] != os.getpid():
            others += 1
    found = guardrails.stats()["shared"]
    return {
        "pid": os.getpid(),
        "calls": len(keys),
        "bad": bad,
        "others": others,
        "redis_errors": found.redis_errors,
    }


# --- the leader killed -----------------------------------------------------------------------


@guarded("leader")
def slow(x: int) -> str:
    if raw().incr("slow_computed") == 1:
        touch("leader-computing")
        time.sleep(600)  # the first leader hangs here until the test kills it
    return f"{x}-by-{os.getpid()}"


def role_leader() -> dict:
    guardrails.configure(CONFIG)
    return {"value": slow(1)}  # never returns: killed


def role_waiter(name) -> dict:
    guardrails.configure(CONFIG)
    until(lambda: exists("leader-computing"), "the leader")
    touch(f"calling-{name}")
    value = slow(1)
    return {"value": value, "pid": os.getpid(), "computed": int(raw().get("slow_computed"))}


# --- Redis stopped mid-run -------------------------------------------------------------------

CUBES = {}


@guarded("outage")
def cube(x: int) -> int:
    CUBES[x] = CUBES.get(x, 0) + 1
    return x**3


class Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)


def role_outage(index) -> dict:
    index = int(index)
    records = Records()
    logger = logging.getLogger("guardrails")
    logger.addHandler(records)
    logger.setLevel(logging.DEBUG)
    guardrails.configure(CONFIG)
    rng = random.Random(index)
    bad = calls = 0

    def check(k):
        nonlocal bad, calls
        calls += 1
        if cube(k) != k**3:
            bad += 1

    deadline = time.monotonic() + DEADLINE
    n = 0
    while not exists("stopped"):  # calling while the test stops Redis
        check(rng.randrange(1000))
        n += 1
        if n == 300:
            touch(f"ready-{index}")
        if time.monotonic() > deadline:
            raise RuntimeError("the test never stopped Redis")
    for _ in range(500):  # Redis is down: old and new keys
        check(rng.randrange(2000))
    touch(f"outage-{index}")
    until(lambda: exists("restarted"), "the restart")

    def back():
        return any(r.levelno == logging.INFO and "answers again" in r.getMessage()
                   for r in records.records)

    j = 0
    deadline = time.monotonic() + DEADLINE
    while not back():  # calls probe the server now and then; the probe that works says so
        check(1_000_000 * (index + 1) + j)
        j += 1
        time.sleep(0.01)
        if time.monotonic() > deadline:
            raise RuntimeError("Redis never came back for this process")
    touch(f"back-{index}")
    until(lambda: exists("phase3"), "phase 3")
    before = sum(CUBES.values())
    if index == 0:
        for k in range(5000, 5100):
            check(k)
        touch("written")
    else:
        until(lambda: exists("written"), "process 0's values")
        for k in range(5000, 5100):
            check(k)
    found = guardrails.stats()["outage"]
    return {
        "bad": bad,
        "calls": calls,
        "late_computed": sum(CUBES.values()) - before,
        "warnings": [
            f"{r.name}: {r.getMessage()}" for r in records.records if r.levelno >= logging.WARNING
        ],
        "redis_errors": found.redis_errors,
        "shared_cache_hits": found.shared_cache_hits,
    }


# --- shared breaker and rate limit ----------------------------------------------------------


@guarded("dependency")
def dependency(fail: bool) -> str:
    raw().incr("dependency_called")
    if fail:
        raise ConnectionError("the dependency is down")
    return "ok"


def role_break() -> dict:
    guardrails.configure(SHARED_STATE)
    failures = 0
    for _ in range(50):
        try:
            dependency(True)
        except ConnectionError:
            failures += 1
        except guardrails.CircuitOpenError:
            return {"failures": failures, "open": True}
    return {"failures": failures, "open": False}


def role_probe_breaker() -> dict:
    guardrails.configure(SHARED_STATE)
    before = int(raw().get("dependency_called") or 0)
    try:
        dependency(False)
        outcome = "called"
    except guardrails.CircuitOpenError as exc:
        outcome = f"open: {exc}"
    after = int(raw().get("dependency_called") or 0)
    return {"outcome": outcome, "body_ran": after - before,
            "state": guardrails.stats()["dependency"].breaker_state}


@guarded("quota")
def admitted() -> None:
    raw().incr("admitted")


def role_quota(parties) -> dict:
    guardrails.configure(SHARED_STATE)
    barrier("quota-start", int(parties))
    ok = refused = 0
    for _ in range(20):
        try:
            admitted()
            ok += 1
        except guardrails.RateLimitExceeded:
            refused += 1
    return {"ok": ok, "refused": refused}


if __name__ == "__main__":
    role, *args = sys.argv[1:]
    out = globals()[f"role_{role}"](*args)
    print(json.dumps(out), flush=True)
'''


@dataclass
class Workers:
    """Scripts started by a test in ``dir``, each a real process."""

    dir: Path
    url: str
    procs: list[tuple[subprocess.Popen[bytes], Path]]

    def env(self) -> dict[str, str]:
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(self.dir), os.getcwd()]),
            "TEST_REDIS_URL": self.url,
            "TEST_DIR": str(self.dir),
            "TEST_DEADLINE": str(DEADLINE),
        }
        for name in ("GUARDRAILS_CONFIG", "GUARDRAILS_OVERRIDES", "GUARDRAILS_REDIS_URL"):
            env.pop(name, None)
        return env

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        out = self.dir / f"out-{len(self.procs)}"
        with open(out, "wb") as stdout, open(out.with_suffix(".err"), "wb") as stderr:
            proc = subprocess.Popen(
                [sys.executable, str(self.dir / "workmod.py"), *args],
                cwd=self.dir,
                env=self.env(),
                stdout=stdout,
                stderr=stderr,
            )
        self.procs.append((proc, out))
        return proc

    def _out(self, proc: subprocess.Popen[bytes]) -> tuple[str, str]:
        out = next(path for p, path in self.procs if p is proc)
        return out.read_text(), out.with_suffix(".err").read_text()

    def result(self, proc: subprocess.Popen[bytes]) -> dict[str, Any]:
        code = proc.wait(timeout=DEADLINE)
        stdout, stderr = self._out(proc)
        assert code == 0, f"worker exited {code}:\n{stderr[-4000:]}"
        return json.loads(stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]

    def wait_for(self, condition: Callable[[], bool], what: str) -> None:
        """Poll ``condition`` until true; fail at once if a worker died meanwhile."""
        deadline = time.monotonic() + DEADLINE
        while not condition():
            for proc, _ in self.procs:
                if proc.poll() not in (None, 0):
                    raise AssertionError(
                        f"a worker exited {proc.returncode} while waiting for {what}:\n"
                        + self._out(proc)[1][-4000:]
                    )
            assert time.monotonic() < deadline, f"waited {DEADLINE:.0f}s for {what}"
            time.sleep(0.005)

    def files(self, *names: str) -> bool:
        return all((self.dir / name).exists() for name in names)

    def touch(self, name: str) -> None:
        (self.dir / name).write_text("")

    def stop_all(self) -> None:
        for proc, _ in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=DEADLINE)


@pytest.fixture
def workers(tmp_path: Path, redis_url: str) -> Iterator[Workers]:
    (tmp_path / "workmod.py").write_text(WORKMOD)
    found = Workers(tmp_path, redis_url, [])
    try:
        yield found
    finally:
        found.stop_all()


def _driver(workers: Workers, body: str, timeout: float = 300) -> Any:
    """Run a driver script (a pool of workers of its own) and return its last line's JSON."""
    script = workers.dir / "driver.py"
    script.write_text(
        "import json, os, sys\nimport guardrails\nimport workmod\n\n" + textwrap.dedent(body)
    )
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=workers.dir,
        env=workers.env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _raw(url: str) -> Any:
    """A client of the test's own (bytes in and out), not guardrails'."""
    return redis.Redis.from_url(url)


def _check_each_key_once(url: str, runs: list[dict[str, Any]]) -> None:
    with _raw(url) as client:
        computed = {int(k): int(v) for k, v in client.hgetall("computed").items()}
    assert sorted(computed) == list(range(1000))
    twice = {k: n for k, n in computed.items() if n != 1}
    assert not twice, f"{len(twice)} keys computed more than once: {dict(list(twice.items())[:10])}"
    assert sum(r["calls"] for r in runs) == 10_000
    assert [r["bad"] for r in runs] == [0] * len(runs)
    assert [r["redis_errors"] for r in runs] == [0] * len(runs)
    # Values computed by another process were served here: the cache is shared.
    assert all(r["others"] > 0 for r in runs)


# --- one computation per key across processes ---------------------------------------------------


@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_four_processes_compute_each_of_1000_keys_once(workers: Workers, method: str) -> None:
    runs = _driver(
        workers,
        f"""
        import multiprocessing

        def main():
            settings = guardrails.configure(workmod.CONFIG)
            context = multiprocessing.get_context({method!r})
            extra = (
                dict(initializer=guardrails.configure, initargs=(settings,))
                if {method!r} == "spawn" else {{}}
            )
            with context.Pool(4, **extra) as pool:
                runs = pool.map(workmod.run, range(4), chunksize=1)
            print(json.dumps(runs))

        if __name__ == "__main__":
            main()
        """,
    )
    assert len({r["pid"] for r in runs}) == 4
    _check_each_key_once(workers.url, runs)


def test_dask_local_cluster_computes_each_key_once(workers: Workers) -> None:
    runs = _driver(
        workers,
        """
        from dask.distributed import Client, LocalCluster

        def main():
            settings = guardrails.configure(workmod.CONFIG)
            with LocalCluster(
                n_workers=2, threads_per_worker=2, processes=True, dashboard_address=None
            ) as cluster, Client(cluster) as client:
                client.run(guardrails.configure, settings)
                addresses = sorted(client.scheduler_info()["workers"])
                # Two tasks on each worker process, all four at once (they meet at a barrier).
                futures = [
                    client.submit(workmod.run, seed, workers=[addresses[seed % 2]], pure=False)
                    for seed in range(4)
                ]
                runs = client.gather(futures)
            print(json.dumps(runs))

        if __name__ == "__main__":
            main()
        """,
    )
    assert len({r["pid"] for r in runs}) == 2
    _check_each_key_once(workers.url, runs)


# --- a leader killed mid-computation ----------------------------------------------------------


def test_a_killed_leader_releases_the_key_when_its_lock_expires(workers: Workers) -> None:
    leader = workers.start("leader")
    workers.wait_for(lambda: workers.files("leader-computing"), "the leader to compute")
    waiters = [workers.start("waiter", name) for name in ("a", "b")]
    workers.wait_for(lambda: workers.files("calling-a", "calling-b"), "the waiters")
    leader.send_signal(signal.SIGKILL)  # mid-computation: its lock is never released
    assert leader.wait(timeout=DEADLINE) == -signal.SIGKILL
    found = [workers.result(w) for w in waiters]
    # One waiter computed after the lock expired (timeout.total 4s), the other got its value.
    values = {f["value"] for f in found}
    assert len(values) == 1, found
    value = values.pop()
    assert value.startswith("1-by-") and value != f"1-by-{leader.pid}"
    assert int(value.removeprefix("1-by-")) in {w.pid for w in waiters}
    with _raw(workers.url) as client:
        assert int(client.get("slow_computed") or 0) == 2  # the dead leader's, the new one's
    # A process started afterwards is served the stored value without computing.
    late = workers.result(workers.start("waiter", "c"))
    assert late["value"] == value and late["computed"] == 2


# --- Redis stopped mid-run ----------------------------------------------------------------


def test_redis_stopped_while_four_processes_call_then_restarted(
    workers: Workers, start_redis: Callable[[], RedisProcess]
) -> None:
    server = start_redis()
    workers.url = server.url
    procs = [workers.start("outage", str(i)) for i in range(4)]
    workers.wait_for(lambda: workers.files(*(f"ready-{i}" for i in range(4))), "300 calls each")
    server.stop()  # SIGKILL, while the four call
    workers.touch("stopped")
    workers.wait_for(lambda: workers.files(*(f"outage-{i}" for i in range(4))), "calls in outage")
    server.start()  # the same port, empty
    workers.touch("restarted")
    workers.wait_for(lambda: workers.files(*(f"back-{i}" for i in range(4))), "Redis back")
    workers.touch("phase3")
    found = [workers.result(p) for p in procs]
    for each in found:
        assert each["bad"] == 0
        assert each["calls"] > 800
        assert each["redis_errors"] > 0
        # One WARNING per process for the whole outage, naming the server and the fallback.
        assert len(each["warnings"]) == 1, each["warnings"]
        assert "guardrails.redis" in each["warnings"][0]
        assert "127.0.0.1" in each["warnings"][0] and "'outage'" in each["warnings"][0]
    # After the restart, process 0's values are shared again: the others compute none of them.
    assert found[0]["late_computed"] == 100
    assert [f["late_computed"] for f in found[1:]] == [0, 0, 0]
    assert all(f["shared_cache_hits"] >= 100 for f in found[1:])


# --- a tampered pickle value -------------------------------------------------------------------


@dataclass(frozen=True)
class Box:
    """A value only pickle stores (a class of the test's own)."""

    x: int


class Evil:
    """Unpickling this opens ``path`` for writing: it creates the file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.path), "w"))


HEADER = struct.Struct("<2sBBBd")


def _tampered(kind: str, target: Path, key: bytes, other: bytes) -> bytes:
    """A payload for ``key`` whose unpickling would create ``target``."""
    from guardrails.redis import codec

    body = pickle.dumps(Evil(target))
    fresh = time.time() + 3600
    if kind == "wrong signature":
        return HEADER.pack(b"gR", 1, codec.PICKLE, 1, fresh) + os.urandom(32) + body
    if kind == "no signature":
        return HEADER.pack(b"gR", 1, codec.PICKLE, 0, fresh) + body
    if kind == "signed with another secret":
        return codec.encoder("pickle", b"not the secret")(Evil(target), fresh, key)
    if kind == "bare pickle":
        return body
    assert kind == "another key's signed value"
    return other


@pytest.mark.parametrize(
    "kind",
    [
        "wrong signature",
        "no signature",
        "signed with another secret",
        "bare pickle",
        "another key's signed value",
    ],
)
def test_a_tampered_pickle_value_is_a_miss_never_unpickled(
    redis_url: str, tmp_path: Path, kind: str, logs: pytest.LogCaptureFixture
) -> None:
    # The payload is live: unpickled, it creates its file.
    proof = tmp_path / "proof"
    pickle.loads(pickle.dumps(Evil(proof))).close()
    assert proof.exists()

    guardrails.configure(
        {
            "redis_url": redis_url,
            "policy_defaults": {"log": {"enabled": False}},
            "policies": {
                "pk": {
                    "cache": {"backend": "redis", "serializer": "pickle", "secret": "s3cret-key"}
                }
            },
        }
    )
    computed: list[int] = []

    @guarded("pk")
    def boxed(x: int) -> Box:
        computed.append(x)
        return Box(x)

    assert boxed(1) == Box(1) and boxed(2) == Box(2)
    client = _raw(redis_url)
    stored = {
        key: value
        for key in client.scan_iter(match="guardrails:*")
        if (value := client.get(key)) is not None and value.startswith(b"gR")
    }
    assert len(stored) == 2, stored  # the two values (the locks are released)
    keys = sorted(stored)
    # Both keys tampered with (the last kind swaps the two values: each signed, but for the
    # other key); then L1 is dropped, so the calls read Redis.
    target = tmp_path / "pwned"
    for key in keys:
        client.set(key, _tampered(kind, target, key, stored[next(k for k in keys if k != key)]))
    guardrails.clear_caches()
    logs.clear()
    assert boxed(1) == Box(1) and boxed(2) == Box(2)  # misses: recomputed, correct
    assert computed == [1, 2, 1, 2]
    assert not target.exists()
    assert any(r.levelno == logging.WARNING for r in logs.records), logs.records
    # Recomputed values overwrote the tampered ones: another L1 reads them back.
    guardrails.clear_caches()
    assert boxed(1) == Box(1) and boxed(2) == Box(2)
    assert computed == [1, 2, 1, 2]
    assert guardrails.stats()["pk"].shared_cache_hits == 2
    client.close()


# --- shared breaker and rate limit across processes -----------------------------------------


def test_a_breaker_opened_in_one_process_is_open_in_another(workers: Workers) -> None:
    opened = workers.result(workers.start("break"))
    assert opened == {"failures": 2, "open": True}
    other = workers.result(workers.start("probe_breaker"))
    assert other["outcome"].startswith("open"), other
    assert other["body_ran"] == 0
    assert other["state"] == "open"


def test_processes_share_one_rate_limit_quota(workers: Workers) -> None:
    procs = [workers.start("quota", "4") for _ in range(4)]
    found = [workers.result(p) for p in procs]
    assert sum(f["ok"] for f in found) == 10  # the burst, once for all four
    assert sum(f["refused"] for f in found) == 70
    with _raw(workers.url) as client:
        assert int(client.get("admitted") or 0) == 10
