"""The inference service (examples/service.py) scaled out: several replicas and a real
``uvicorn --workers 2`` sharing one feature cache and one breaker through a real
redis-server, switched on with the Hydra override ``shared=redis`` (conf/shared/redis.yaml).

Every process is real and driven over HTTP; what a worker did is read from its own
``/metrics`` (each worker answers for itself: ``X-Worker-Pid`` names it), never from timing.
"""

from __future__ import annotations

import asyncio
import itertools
import shlex
import shutil
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis

from tests.redis_servers import RedisProcess
from tests.test_service import (
    LIVE_ENTITIES,
    ROOT,
    SERVICE,
    Running,
    _environment,
    burst_requests,
    metrics,
    poll,
    send_all,
    total,
)

FETCH = "fetch_features"
#: Where a test counts on Redis answering (not on its outage handling): a Redis operation that
#: takes longer than its 50 ms default on this loaded machine would fall back to the process,
#: which is right but not what these tests look at.
PATIENT = (
    "guardrails.policies.fetch_features.cache.redis_timeout=5s",
    "guardrails.policies.fetch_features.breaker.redis_timeout=5s",
)
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Callable[..., Running]]:
    """``launch(redis_url, *overrides, workers=0, env=...)``: the service with ``shared=redis``
    and ``$GUARDRAILS_REDIS_URL``, each on its own copy of conf/ (as replicas on other
    machines have theirs). ``workers=0``: ``python examples/service.py --fd N`` on a loopback
    TCP socket (one replica); ``workers=N``: ``python -m uvicorn examples.service:app
    --workers N`` on a Unix socket, configured from the environment. Every process is killed
    when the test ends, whatever happened."""
    started: list[Running] = []

    def start(
        redis_url: str | None, *overrides: str, workers: int = 0, env: dict[str, str] | None = None
    ) -> Running:
        n = len(started)
        conf = tmp_path / f"conf{n}"
        shutil.copytree(ROOT / "conf", conf)
        log = tmp_path / f"service{n}.log"
        environment = _environment(**(env or {}))
        if redis_url is not None:
            environment["GUARDRAILS_REDIS_URL"] = redis_url
        everything = ("shared=redis", *overrides)
        with log.open("wb") as out:
            if workers == 0:
                listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                listener.bind(("127.0.0.1", 0))
                listener.listen(128)
                port = listener.getsockname()[1]
                command = [sys.executable, str(SERVICE), "--fd", str(listener.fileno())]
                command += ["--config-dir", str(conf), "--watch-interval", "0.1", *everything]
                try:
                    proc = subprocess.Popen(
                        command,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        pass_fds=(listener.fileno(),),
                        cwd=tmp_path,
                        env=environment,
                    )
                finally:
                    listener.close()  # the child holds its own copy
                running = Running(proc, log, conf, base_url=f"http://127.0.0.1:{port}")
            else:
                uds = str(tmp_path / f"s{n}.sock")
                environment["GUARDRAILS_CONFIG"] = str(conf)
                environment["GUARDRAILS_OVERRIDES"] = shlex.join(everything)
                environment.setdefault("SERVICE_WATCH_INTERVAL", "0.1")
                command = [sys.executable, "-m", "uvicorn", "examples.service:app"]
                # A long keep-alive: a test's connection stays with the worker it reached.
                command += ["--workers", str(workers), "--uds", uds, "--timeout-keep-alive", "600"]
                proc = subprocess.Popen(
                    command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=environment
                )
                running = Running(proc, log, conf, uds=uds)
        started.append(running)
        running.wait_ready()
        return running

    yield start
    for running in started:
        if running.proc.poll() is None:
            running.proc.kill()
            running.proc.wait()


def lookup(http: httpx.Client, entity: int, rid: int = 1) -> httpx.Response:
    return http.post("/predict", json={"request_id": f"req-{rid}", "entity_id": entity})


def fetch_counts(http: httpx.Client) -> dict[str, float]:
    """The fetch_features counters of the process behind ``http``'s connection."""
    found = metrics(http)
    return {
        "hits": total(found, "guardrails_cache_requests_total", policy=FETCH, result="hit"),
        "misses": total(found, "guardrails_cache_requests_total", policy=FETCH, result="miss"),
        "shared_hits": total(found, "guardrails_cache_shared_hits_total", policy=FETCH),
        "redis_errors": total(found, "guardrails_redis_errors_total", policy=FETCH),
        "refused": total(found, "guardrails_rejections_total", policy=FETCH, reason="breaker"),
        "calls": total(found, "guardrails_calls_total", policy=FETCH),
    }


# --- one cache ---------------------------------------------------------------------------------


def test_a_row_one_replica_read_is_a_shared_hit_in_the_other(
    launch: Callable[..., Running], redis_url: str
) -> None:
    # Started the two ways the README shows: the script, and uvicorn (its worker a process
    # of its own); the guarded functions are `examples.service.*` in both.
    a = launch(redis_url, "--store-failure-rate", "0", *PATIENT)
    b = launch(redis_url, *PATIENT, workers=1, env={"SERVICE_STORE_FAILURE_RATE": "0"})
    with a.client() as on_a, b.client() as on_b:
        # One entity, one replica after the other: A reads the store, B gets A's row.
        first = lookup(on_a, 5)
        assert first.status_code == 200, first.text
        assert fetch_counts(on_a)["misses"] == 1
        second = lookup(on_b, 5)
        assert second.status_code == 200, second.text
        assert second.json() == first.json()  # the same row, so the same scores
        assert fetch_counts(on_b) | {"calls": 1} == {
            "hits": 1,
            "misses": 0,
            "shared_hits": 1,
            "redis_errors": 0,
            "refused": 0,
            "calls": 1,
        }
        # Stored under the documented key prefix, as Arrow IPC (no pickle).
        with redis.Redis.from_url(redis_url) as direct:
            keys = list(direct.scan_iter("guardrails:fetch_features:*"))
        assert [k for k in keys if not k.endswith(b":lock")], keys

    # Both replicas at once, every other entity many times over, from many connections:
    # each entity is read from the store once across both processes.
    entities = [e for e in range(LIVE_ENTITIES) if e != 5]
    requests = [
        ("entity", {"request_id": f"req-{i}", "entity_id": entities[i % len(entities)]})
        for i in range(len(entities) * 4)
    ]

    async def both() -> list[list[tuple[str, httpx.Response]]]:
        return list(await asyncio.gather(send_all(a, requests), send_all(b, requests[::-1])))

    for answered in asyncio.run(both()):
        statuses = Counter(r.status_code for _, r in answered)
        assert statuses == {200: len(requests)}, statuses
        assert not any(r.json()["degraded"] for _, r in answered)
    with a.client() as on_a, b.client() as on_b:
        counts = [fetch_counts(on_a), fetch_counts(on_b)]
    misses = sum(c["misses"] for c in counts)
    assert misses == LIVE_ENTITIES, counts  # entity 5 included: one computation per key
    assert all(c["shared_hits"] > 0 for c in counts), counts
    assert sum(c["redis_errors"] for c in counts) == 0, counts
    a.stop()
    b.stop()


# --- one breaker, several uvicorn workers ------------------------------------------------------


def on_each_worker(running: Running, workers: int) -> dict[int, httpx.Client]:
    """One keep-alive connection to each of the ``workers`` processes behind the socket, by
    pid (a new connection goes to whichever worker accepts it first)."""
    found: dict[int, httpx.Client] = {}
    spare: list[httpx.Client] = []

    def another() -> bool:
        http = running.client(limits=httpx.Limits(max_connections=1, max_keepalive_connections=1))
        pid = pid_of(http)
        if pid in found:
            spare.append(http)
        else:
            found[pid] = http
        return len(found) == workers

    try:
        poll(another, f"a connection to each of {workers} workers")
    finally:
        for http in spare:
            http.close()
    return found


def pid_of(http: httpx.Client) -> int:
    return int(http.get("/healthz").headers["X-Worker-Pid"])


def test_uvicorn_workers_share_the_breaker_the_outage_drill_opens(
    launch: Callable[..., Running], redis_url: str
) -> None:
    """The drill's store outage is seen by one worker (its store is down); the breaker it
    opens refuses the other worker's next lookup before the store is called: that worker's
    store is up, so a call would have answered, yet the answer is the fallback's."""
    running = launch(
        redis_url,
        "guardrails.policies.fetch_features.breaker.open_for=60s",  # open for the whole test
        *PATIENT,
        workers=2,
        env={"SERVICE_ADMIN": "1", "SERVICE_STORE_FAILURE_RATE": "0"},
    )
    connections = on_each_worker(running, 2)
    try:
        (pid_1, one), (pid_2, two) = sorted(connections.items())
        assert pid_1 != pid_2
        status, body = two.get("/healthz").status_code, two.get("/healthz").json()
        assert (status, body["breakers"]) == (200, {FETCH: "closed"})

        # Entities 0, 1, ... in worker one: each read once, none in worker two.
        warm = lookup(two, LIVE_ENTITIES - 1)
        assert warm.status_code == 200 and warm.json()["degraded"] is False, warm.text
        assert one.post("/admin/store", json={"down": True}).json() == {"down": True}
        entities = iter(range(LIVE_ENTITIES - 1))
        answers: list[httpx.Response] = []

        def opened() -> bool:
            answers.append(lookup(one, next(entities)))
            return one.get("/healthz").status_code == 503

        poll(opened, "the breaker opened by worker one's failing store")
        for r in answers:  # failures after the retries, then the fallback once open
            assert r.status_code in (200, 503), r.text
            assert r.status_code == 503 or r.json()["degraded"] is True, r.text
        assert fetch_counts(one)["redis_errors"] == 0

        # Worker two's store is up; its breaker view is still "closed" (it has not called).
        before = fetch_counts(two)
        assert two.get("/healthz").json()["breakers"] == {FETCH: "closed"}
        refused = lookup(two, next(entities))
        assert refused.status_code == 200, refused.text
        assert refused.json()["degraded"] is True, refused.text  # the fallback, not its store
        after = fetch_counts(two)
        assert after["refused"] == before["refused"] + 1, (before, after)
        assert after["misses"] == before["misses"] + 1  # no value in Redis: a miss, refused
        assert after["redis_errors"] == 0
        status, body = two.get("/healthz").status_code, two.get("/healthz").json()
        assert (status, body["open_breakers"]) == (503, [FETCH])
        # A row cached before the outage is still answered, in either worker.
        cached = lookup(one, LIVE_ENTITIES - 1)
        assert cached.status_code == 200 and cached.json()["degraded"] is False, cached.text
        assert (pid_of(one), pid_of(two)) == (pid_1, pid_2)  # the connections stayed put
    finally:
        for http in connections.values():
            http.close()
    running.stop()
    assert running.output().count("Application shutdown complete.") == 2


# --- Redis killed or frozen mid-burst ----------------------------------------------------------


@pytest.mark.parametrize("outage", ["killed", "paused"])
def test_redis_lost_mid_burst_every_answer_is_documented_and_sharing_resumes(
    launch: Callable[..., Running], start_redis: Callable[[], RedisProcess], outage: str
) -> None:
    """Killed: connections refused. Paused (SIGSTOP): every command hangs until its
    ``redis_timeout``. Either way each request gets the answer the policies give without
    Redis, and once Redis is back (restarted empty, or resumed) the replicas share again."""
    server = start_redis()
    lose, back = (
        (server.stop, server.start) if outage == "killed" else (server.pause, server.resume)
    )
    # A short TTL keeps lookups reaching Redis after the burst (an in-process hit never
    # does), so the replicas find it again on their own.
    ttl = "guardrails.policies.fetch_features.cache.ttl=1s"
    a = launch(server.url, ttl)
    b = launch(server.url, ttl)
    # The entities of the burst are 0..35; 36..71 stay fresh for after the restart.
    requests = [
        (kind, {**body, "entity_id": body["entity_id"] % (LIVE_ENTITIES // 2)})
        if kind == "entity"
        else (kind, body)
        for kind, body in burst_requests(seed=11)
    ]
    half = len(requests) // 2

    async def both() -> list[list[tuple[str, httpx.Response]]]:
        return list(
            await asyncio.gather(
                send_all(a, requests[:half], midway=lose),
                send_all(b, requests[half:]),
            )
        )

    answered = [pair for replica in asyncio.run(both()) for pair in replica]
    assert server.proc is not None and (server.proc.poll() is None) == (outage == "paused")
    statuses: Counter[tuple[str, int]] = Counter()
    for kind, response in answered:
        statuses[kind, response.status_code] += 1
        assert response.status_code in (200, 422, 503), (kind, response.text)
        if response.status_code == 503:  # a dependency's refusal, never Redis
            body = response.json()
            assert body["policy"] in ("predict", FETCH), body
            assert body["error"] in ("ConnectionError", "BulkheadFull"), body
            assert int(response.headers["Retry-After"]) >= 1
        if response.status_code == 422:
            assert kind not in ("valid", "entity"), (kind, response.text)
    assert statuses["entity", 200] > 0 and statuses["valid", 200] > 0, statuses
    with a.client() as on_a, b.client() as on_b:
        down = [fetch_counts(on_a), fetch_counts(on_b)]
    assert all(c["redis_errors"] > 0 for c in down), down
    for running in (a, b):
        assert "Traceback" not in running.output(), running.output()
        assert "unreachable or slow" in running.output()  # one WARNING per outage

    # Redis back (restarted empty on the same port, or resumed): the replicas find it on
    # their own and share again.
    back()
    # The fresh entities first, then every entity again (their 1 s TTL runs out meanwhile).
    fresh = itertools.chain(
        range(LIVE_ENTITIES // 2, LIVE_ENTITIES), itertools.cycle(range(LIVE_ENTITIES))
    )
    shared_before = sum(c["shared_hits"] for c in down)

    def sharing() -> bool:
        entity = next(fresh)
        with a.client() as on_a, b.client() as on_b:
            for http in (on_a, on_b):
                answer = lookup(http, entity)
                assert answer.status_code in (200, 503), answer.text
            shared = fetch_counts(on_a)["shared_hits"] + fetch_counts(on_b)["shared_hits"]
        return shared > shared_before

    poll(sharing, "a shared hit after Redis came back")
    with redis.Redis.from_url(server.url) as direct:
        assert any(direct.scan_iter("guardrails:fetch_features:*"))
    for running in (a, b):
        assert "Traceback" not in running.output(), running.output()
    a.stop()
    b.stop()


# --- the switch --------------------------------------------------------------------------------


def test_shared_redis_without_a_url_stops_the_service_naming_the_keys(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, str(SERVICE), "--port", "0", "shared=redis"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=_environment(),
        timeout=120,
        check=False,
    )
    assert out.returncode != 0
    said = out.stderr + out.stdout
    assert "guardrails.policies.fetch_features.breaker.shared: needs a Redis server" in said
    assert "$GUARDRAILS_REDIS_URL" in said


def test_without_the_switch_the_service_never_imports_redis(redis_url: str) -> None:
    """$GUARDRAILS_REDIS_URL alone changes nothing: the policies ask for Redis or not."""
    probe = (
        "import sys, guardrails, examples.service as s; "
        "guardrails.configure(s.ROOT / 'conf', config_name='service'); "
        "print('redis' in sys.modules, guardrails.settings().policies"
        "['fetch_features'].cache.backend)"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=_environment(GUARDRAILS_REDIS_URL=redis_url),
        timeout=120,
        check=True,
    )
    assert out.stdout.split() == ["False", "memory"], out.stdout + out.stderr


def test_a_replica_started_while_redis_is_down_serves_and_shares_once_it_is_up(
    launch: Callable[..., Running], start_redis: Callable[[], RedisProcess]
) -> None:
    """``configure()`` never connects: Redis down at startup fails nothing, and nobody has
    to restart the service when it comes up."""
    server = start_redis()
    server.stop()
    ttl = "guardrails.policies.fetch_features.cache.ttl=1s"  # lookups keep reaching Redis
    a = launch(server.url, ttl, "--store-failure-rate", "0")
    b = launch(server.url, ttl, "--store-failure-rate", "0")
    with a.client() as on_a, b.client() as on_b:
        for entity in range(4):
            for http in (on_a, on_b):
                answer = lookup(http, entity)
                assert answer.status_code == 200 and not answer.json()["degraded"], answer.text
        counts = [fetch_counts(on_a), fetch_counts(on_b)]
        assert all(c["redis_errors"] > 0 and c["shared_hits"] == 0 for c in counts), counts
        assert all(c["misses"] == 4 for c in counts), counts  # each replica on its own

        server.start()
        entities = itertools.cycle(range(LIVE_ENTITIES))

        def sharing() -> bool:
            entity = next(entities)
            for http in (on_a, on_b):
                answer = lookup(http, entity)
                assert answer.status_code == 200 and not answer.json()["degraded"], answer.text
            return fetch_counts(on_a)["shared_hits"] + fetch_counts(on_b)["shared_hits"] > 0

        poll(sharing, "a shared hit once Redis is up")
    for running in (a, b):
        assert "Traceback" not in running.output(), running.output()
    a.stop()
    b.stop()
