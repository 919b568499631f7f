"""The inference service (examples/service.py) as an operator runs it: a real uvicorn
process on loopback, driven over HTTP with httpx, its config a temporary copy of conf/."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sklearn import datasets

ROOT = Path(__file__).resolve().parents[1]
SERVICE = ROOT / "examples" / "service.py"
#: Generous bounds on a loaded machine; each wait ends as soon as its condition holds.
STARTUP = 90.0
DEADLINE = 30.0
#: The dataset the service's model is trained on (wine: 13 named float64 columns).
WINE = datasets.load_wine(as_frame=True).data
COLUMNS: list[str] = [str(c) for c in WINE.columns]
ROWS: np.ndarray = WINE.to_numpy()
LIVE_ENTITIES = 72  # the held-out 40% of wine's 178 rows


class Running:
    """One service process; ``client()`` talks to it over loopback TCP or a Unix socket."""

    def __init__(self, proc: subprocess.Popen[bytes], log: Path, conf: Path, **where: Any):
        self.proc = proc
        self.log = log
        self.conf = conf
        self.base_url: str = where.get("base_url", "http://service")
        self.uds: str | None = where.get("uds")

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def client(self, **kwargs: Any) -> httpx.Client:
        transport = httpx.HTTPTransport(uds=self.uds) if self.uds else None
        kwargs.setdefault("timeout", 30)
        return httpx.Client(base_url=self.base_url, transport=transport, **kwargs)

    def async_client(self, **kwargs: Any) -> httpx.AsyncClient:
        transport = httpx.AsyncHTTPTransport(uds=self.uds) if self.uds else None
        kwargs.setdefault("timeout", 30)
        return httpx.AsyncClient(base_url=self.base_url, transport=transport, **kwargs)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP
        with self.client(timeout=5) as http:
            while True:
                try:
                    if self.listening() and http.get("/healthz").status_code in (200, 503):
                        return
                except httpx.TransportError:
                    pass
                # Bounded wait on the process itself: an exit ends the wait at once.
                try:
                    code = self.proc.wait(timeout=0.2)
                except subprocess.TimeoutExpired:
                    pass
                else:
                    pytest.fail(f"the service exited with {code} at startup:\n{self.output()}")
                if time.monotonic() > deadline:
                    pytest.fail(f"the service was not ready in {STARTUP} s:\n{self.output()}")

    def listening(self) -> bool:
        """Whether the Unix socket takes connections (httpx leaks a socket it failed to
        connect over a Unix socket, so it is not sent to find out)."""
        if self.uds is None:
            return True
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(self.uds)
            except OSError:
                return False
        return True

    def stop(self) -> None:
        """SIGTERM, as a supervisor stops it: uvicorn shuts down gracefully (the lifespan
        stops the config watcher) and exits by the signal it caught."""
        assert self.proc.poll() is None, f"the service died:\n{self.output()}"
        self.proc.terminate()
        try:
            code = self.proc.wait(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"the service ignored SIGTERM for {DEADLINE} s:\n{self.output()}")
        assert code in (0, -signal.SIGTERM), self.output()
        assert "Application shutdown complete." in self.output()


def _environment(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("GUARDRAILS_CONFIG", "GUARDRAILS_OVERRIDES") and not k.startswith("SERVICE_")
    }
    env.update(extra)
    return env


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Running]]:
    """Start the service on a temporary copy of conf/: ``serve(*arguments, env=..., how=...)``.

    ``how="script"`` runs ``python examples/service.py --fd N`` on a loopback socket the test
    bound to port 0 (no race for a free port); ``how="uvicorn"`` runs ``python -m uvicorn
    examples.service:app --uds PATH`` configured from the environment. Every process is
    killed when the test ends, whatever happened.
    """
    started: list[Running] = []

    def start(*arguments: str, env: dict[str, str] | None = None, how: str = "script") -> Running:
        conf = tmp_path / f"conf{len(started)}"
        shutil.copytree(ROOT / "conf", conf)
        log = tmp_path / f"service{len(started)}.log"
        environment = _environment(**(env or {}))
        with log.open("wb") as out:
            if how == "script":
                listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                listener.bind(("127.0.0.1", 0))
                listener.listen(128)
                port = listener.getsockname()[1]
                try:
                    proc = subprocess.Popen(
                        [
                            sys.executable,
                            str(SERVICE),
                            "--fd",
                            str(listener.fileno()),
                            "--config-dir",
                            str(conf),
                            "--watch-interval",
                            "0.1",
                            *arguments,
                        ],
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
                uds = str(tmp_path / f"s{len(started)}.sock")
                environment.setdefault("GUARDRAILS_CONFIG", str(conf))
                environment.setdefault("SERVICE_WATCH_INTERVAL", "0.1")
                proc = subprocess.Popen(
                    [sys.executable, "-m", "uvicorn", "examples.service:app", "--uds", uds],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=ROOT,
                    env=environment,
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


# --- requests --------------------------------------------------------------------------------


def valid(i: int) -> dict[str, Any]:
    """A request whose features are a list, in the model's column order."""
    return {"request_id": f"req-{i}", "features": ROWS[i % len(ROWS)].tolist()}


def by_name(i: int) -> dict[str, Any]:
    """A request whose features are an object, by column name."""
    values = ROWS[i % len(ROWS)].tolist()
    return {"request_id": f"req-{i}", "features": dict(zip(COLUMNS, values, strict=True))}


def metrics(http: httpx.Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``/metrics``: (name, sorted labels) -> value."""
    response = http.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def total(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return sum(
        value
        for (sample, found), value in samples.items()
        if sample == name and labels.items() <= dict(found).items()
    )


def poll(condition: Callable[[], Any], what: str, deadline: float = DEADLINE) -> Any:
    """Call ``condition`` until it returns something truthy; fail after ``deadline`` s."""
    end = time.monotonic() + deadline
    while True:
        found = condition()
        if found:
            return found
        if time.monotonic() > end:
            pytest.fail(f"{what}: not seen within {deadline} s")


# --- the burst -------------------------------------------------------------------------------

BURST = 2_000
CONCURRENCY = 32
JSON = {"content-type": "application/json"}


def burst_requests(seed: int) -> list[tuple[str, dict[str, Any]]]:
    """(kind, body): valid rows (as lists and by name), entity lookups, rows the policy
    rejects (a NaN, a dropped column, a negative measurement, a bad id), and bodies the HTTP
    schema rejects before any guarded call (no features, a list one number short)."""
    rng = np.random.default_rng(seed)
    out: list[tuple[str, dict[str, Any]]] = []
    for i in range(BURST):
        draw = rng.random()
        body = valid(i) if rng.random() < 0.5 else by_name(i)
        column = COLUMNS[int(rng.integers(len(COLUMNS)))]
        if draw < 0.50:
            out.append(("valid", body))
        elif draw < 0.75:
            entity = int(rng.integers(LIVE_ENTITIES))
            out.append(("entity", {"request_id": f"req-{i}", "entity_id": entity}))
        elif draw < 0.79:
            out.append(
                (
                    "dropped",
                    {
                        **by_name(i),
                        "features": {
                            name: value
                            for name, value in by_name(i)["features"].items()
                            if name != column
                        },
                    },
                )
            )
        elif draw < 0.83:
            features = {**by_name(i)["features"], column: math.nan}  # JSON NaN, as Python sends it
            out.append(("nan", {**body, "features": features}))
        elif draw < 0.87:
            named = by_name(i)["features"]
            out.append(("negative", {**body, "features": {**named, column: -named[column]}}))
        elif draw < 0.91:
            out.append(("bad_id", {**body, "request_id": f"request {i}"}))
        elif draw < 0.95:
            out.append(("narrow", {**valid(i), "features": valid(i)["features"][:-1]}))
        else:
            out.append(("schema", {"request_id": f"req-{i}"}))  # neither features nor entity
    return out


async def send_all(
    running: Running,
    requests: list[tuple[str, dict[str, Any]]],
    midway: Callable[[], object] = lambda: None,
) -> list[tuple[str, httpx.Response]]:
    """Send every request, ``CONCURRENCY`` at a time; ``midway()`` runs once a quarter of
    them are answered, while the others are in flight."""
    gate = asyncio.Semaphore(CONCURRENCY)
    # Idle connections are dropped by the client after 1 s, well before uvicorn closes them
    # (5 s): a request sent on a connection the server is closing fails with ReadError.
    limits = httpx.Limits(
        max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY, keepalive_expiry=1.0
    )
    answered = itertools.count(1)

    async with running.async_client(limits=limits) as http:

        async def one(kind: str, body: dict[str, Any]) -> tuple[str, httpx.Response]:
            async with gate:
                # json.dumps writes NaN as JSON's common extension does (as `json=` would).
                content = json.dumps(body)
                response = await http.post("/predict", content=content, headers=JSON)
            if next(answered) == len(requests) // 4:
                midway()
            return kind, response

        return await asyncio.gather(*(one(kind, body) for kind, body in requests))


def test_a_burst_gets_only_documented_answers_and_the_metrics_add_up(
    serve: Callable[..., Running],
) -> None:
    running = serve()
    with running.client() as http:
        before = metrics(http)
    # Midway, an operator turns the feature cache off: the reload happens under load.
    policy_file = running.conf / "guardrails" / "default.yaml"
    cached = "cache: {ttl: 5m, maxsize: 10000, key: [entity_id]}"
    edited = policy_file.read_text().replace(cached, "cache: {enabled: false}")
    assert cached not in edited
    requests = burst_requests(seed=8)
    answered = asyncio.run(
        send_all(running, requests, midway=lambda: policy_file.write_text(edited))
    )
    assert len(answered) == BURST
    body_of = {id(r): body for (_, body), (_, r) in zip(requests, answered, strict=True)}

    reached_predict: Counter[str] = Counter()  # the predict policy's calls, by how they ended
    fetches = 0
    by_kind: Counter[tuple[str, int]] = Counter()
    for kind, response in answered:
        status = response.status_code
        by_kind[kind, status] += 1
        assert status in (200, 422, 503), (kind, status, response.text)
        body = response.json()
        if kind == "entity":
            fetches += 1
        if status == 200:
            assert kind in ("valid", "entity"), (kind, body)
            assert len(body["probabilities"]) == 3 and body["degraded"] is False
            assert body["label"] == int(np.argmax(body["probabilities"]))
            reached_predict["ok"] += 1
        elif status == 422:
            assert isinstance(body["detail"], list) and body["detail"], body
            if kind in ("schema", "narrow"):  # the HTTP schema: no guarded call was made
                assert "policy" not in body
                if kind == "narrow":
                    (error,) = body["detail"]
                    assert error["loc"] == ["body", "features"], body
                    assert error["msg"].startswith("expected 13 numbers, the model's columns")
                    assert error["msg"].endswith("; got 12"), body
                continue
            assert body["policy"] == "predict"
            (error,) = body["detail"]
            loc, message = tuple(error["loc"]), error["msg"]
            rid = repr(body_of[id(response)]["request_id"])
            if kind == "bad_id":
                assert loc == ("body", "request_id"), body
            elif kind == "dropped":
                assert loc == ("body", "features"), body
                assert re.fullmatch(r"expected column '[\w/]+': missing", message), body
            elif kind == "nan":
                assert loc[:2] == ("body", "features") and loc[2] in COLUMNS, body
                assert message == f"expected no nulls, found 1 row ({rid})", body
            else:
                assert kind == "negative" and loc[2] in COLUMNS, body
                assert message == f"expected values >= 0, found 1 row ({rid}) outside", body
            reached_predict["rejected"] += 1
        else:
            # Only a dependency may be unavailable: the store (after its retries) or the
            # model's bulkhead; never a refusal without a time to retry after.
            assert int(response.headers["Retry-After"]) >= 1
            assert body["policy"] in ("predict", "fetch_features"), body
            if body["policy"] == "predict":
                assert kind in ("valid", "entity")
                reached_predict["refused"] += 1
            else:
                assert kind == "entity" and body["error"] == "ConnectionError", body

    # Every malformed row reached the guarded call and was refused there; every valid
    # row was answered.
    for kind in ("dropped", "nan", "negative", "bad_id", "narrow", "schema"):
        assert by_kind[kind, 422] > 0 and by_kind[kind, 200] == by_kind[kind, 503] == 0
    assert by_kind["valid", 200] + by_kind["valid", 503] == sum(
        n for (kind, _), n in by_kind.items() if kind == "valid"
    )
    assert by_kind["valid", 200] > 0 and by_kind["entity", 200] > 0

    with running.client() as http:
        after = metrics(http)

    def delta(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    reached = sum(reached_predict.values())
    assert delta("guardrails_calls_total", policy="predict") == reached
    ok = delta("guardrails_calls_total", policy="predict", outcome="ok")
    slow = delta("guardrails_calls_total", policy="predict", outcome="slow")
    assert ok + slow == reached_predict["ok"]
    assert (
        delta("guardrails_rejections_total", policy="predict", reason="input")
        == (reached_predict["rejected"])
    )
    assert delta("guardrails_calls_total", policy="fetch_features") == fetches
    # Entities repeat: the store lookups hit the cache (until it was turned off).
    assert delta("guardrails_cache_requests_total", policy="fetch_features", result="hit") > 0
    with running.client() as http:
        config = poll(
            lambda: (c := http.get("/healthz").json()["config"])["reloads"] and c,
            "the reload",
        )
        assert config["failed_reloads"] == 0
        hits = total(metrics(http), "guardrails_cache_requests_total", result="hit")
        for _ in range(3):  # the same entity: with the cache on, these would be hits
            lookup = http.post("/predict", json={"request_id": "req-1", "entity_id": 5})
            assert lookup.status_code in (200, 503), lookup.text
        assert total(metrics(http), "guardrails_cache_requests_total", result="hit") == hits
    running.stop()


# --- live reload -----------------------------------------------------------------------------


def test_a_policy_edit_changes_behaviour_without_a_restart(
    serve: Callable[..., Running],
) -> None:
    running = serve()
    negative = valid(3)
    negative["features"][4] = 5000.0  # magnesium at 5 g/L: within the policy's bounds yet
    # The tighter bound goes into the service's file (conf/service.yaml, composed over the
    # group file); the bad edits go to the group file (conf/guardrails/default.yaml): both
    # are watched.
    service_file = running.conf / "service.yaml"
    service_original = service_file.read_text()
    anchor = "    predict:\n"
    assert service_original.count(anchor) == 1
    bound = "      validate: {args: {features: {columns: {magnesium: {max: 1000}}}}}\n"
    policy_file = running.conf / "guardrails" / "default.yaml"
    original = policy_file.read_text()
    assert original.count("max_attempts: 5") == 1

    def config(http: httpx.Client) -> dict[str, Any]:
        body: dict[str, Any] = http.get("/healthz").json()["config"]
        return body

    with running.client() as http:
        assert http.post("/predict", json=negative).status_code == 200
        assert config(http)["reloads"] == 0

        # Tighten the bound: within the watch interval, the running service refuses the row.
        service_file.write_text(service_original.replace(anchor, anchor + bound))
        refused = poll(
            lambda: (r := http.post("/predict", json=negative)).status_code == 422 and r,
            "the tightened bound in force",
        )
        assert refused.json()["detail"] == [
            {
                "loc": ["body", "features", "magnesium"],
                "msg": "expected values <= 1000, found 1 row ('req-3') outside",
                "type": "guardrails",
            }
        ]
        # Counted just after it is in force (a request can see the new chain first).
        poll(lambda: config(http)["reloads"] >= 1, "the reload counted")
        assert http.post("/predict", json=valid(3)).status_code == 200

        # A bad edit is logged and counted; the config in force stays.
        policy_file.write_text(original.replace("max_attempts: 5", "max_attempts: -3"))
        # The count is the signal (the watcher sets last_error, logs, then counts).
        poll(lambda: config(http)["failed_reloads"] >= 1, "the failed reload counted")
        error = config(http)["last_error"]
        assert "max_attempts" in error, error
        assert http.post("/predict", json=negative).status_code == 422

        # An editor that truncates the file before writing it: the empty file is refused
        # (it would drop every policy), the config in force stays.
        failed = config(http)["failed_reloads"]
        policy_file.write_text("")
        poll(lambda: config(http)["failed_reloads"] > failed, "the empty file refused")
        assert http.post("/predict", json=negative).status_code == 422

        # Put them back: the original policy is in force again.
        policy_file.write_text(original)
        service_file.write_text(service_original)
        poll(
            lambda: http.post("/predict", json=negative).status_code == 200,
            "the original policy back in force",
        )
    running.stop()
    assert "max_attempts" in running.output()  # the failed reload was logged


# --- an outage -------------------------------------------------------------------------------


def healthz(http: httpx.Client) -> tuple[int, dict[str, Any]]:
    response = http.get("/healthz")
    return response.status_code, response.json()


def test_an_outage_opens_the_breaker_the_fallback_answers_and_healthz_says_so(
    serve: Callable[..., Running],
) -> None:
    running = serve(
        "--admin",
        "--store-failure-rate",
        "0",
        "guardrails.policies.fetch_features.breaker.open_for=1s",
    )
    # A failed read is never cached: every lookup reaches the store (or the breaker).
    entities = itertools.cycle(range(LIVE_ENTITIES))

    def lookup(http: httpx.Client) -> httpx.Response:
        return http.post("/predict", json={"request_id": "req-1", "entity_id": next(entities)})

    with running.client() as http:
        status, body = healthz(http)
        assert status == 200
        assert body == {
            "status": "ok",
            "open_breakers": [],
            "breakers": {"fetch_features": "closed"},
            "config": {
                "source": str(running.conf),
                "reloads": 0,
                "failed_reloads": 0,
                "last_error": None,
            },
        }
        assert http.post("/admin/store", json={"down": True}).json() == {"down": True}

        answers: list[httpx.Response] = []
        seen_open: list[dict[str, Any]] = []

        def open_and_degraded() -> bool:
            answers.append(lookup(http))
            status, body = healthz(http)
            if status == 503:
                seen_open.append(body)
            degraded = [r for r in answers if r.status_code == 200 and r.json()["degraded"]]
            return bool(seen_open and degraded)

        poll(open_and_degraded, "the breaker open on /healthz and a degraded answer")
        assert seen_open[0]["status"] == "unavailable"
        assert seen_open[0]["open_breakers"] == ["fetch_features"]
        assert seen_open[0]["breakers"] == {"fetch_features": "open"}
        # Until it opened, the store's failures after their retries were 503s; once open,
        # the fallback answers, marked degraded: never an answer from the store.
        for r in answers:
            assert r.status_code in (200, 503), r.text
            if r.status_code == 503:
                assert r.json()["error"] == "ConnectionError"
                assert r.headers["Retry-After"] == "1"
            else:
                assert r.json()["degraded"] is True

        # The store comes back: after open_for, trial calls close the breaker.
        assert http.post("/admin/store", json={"down": False}).json() == {"down": False}

        def closed() -> bool:
            lookup(http)
            status, body = healthz(http)
            return status == 200 and body["breakers"] == {"fetch_features": "closed"}

        poll(closed, "the breaker closed again")
        fresh = lookup(http)
        assert fresh.status_code == 200 and fresh.json()["degraded"] is False
    running.stop()


def test_without_a_fallback_an_open_breaker_is_a_503_with_retry_after(
    serve: Callable[..., Running],
) -> None:
    """Run as `uvicorn examples.service:app`, configured from the environment only."""
    overrides = [
        "~guardrails.policies.fetch_features.fallback",
        "guardrails.policies.fetch_features.breaker.open_for=30s",
        "guardrails.policies.fetch_features.retry.max_attempts=1",
    ]
    running = serve(
        how="uvicorn",
        env={
            "GUARDRAILS_OVERRIDES": shlex.join(overrides),
            "SERVICE_ADMIN": "1",
            "SERVICE_STORE_FAILURE_RATE": "0",
        },
    )
    with running.client() as http:
        http.post("/admin/store", json={"down": True})
        entity = iter(range(LIVE_ENTITIES))

        def refused() -> httpx.Response | None:
            r = http.post("/predict", json={"request_id": "req-1", "entity_id": next(entity)})
            assert r.status_code == 503, r.text
            return r if r.json()["error"] == "CircuitOpenError" else None

        response = poll(refused, "CircuitOpenError")
        assert response.json()["policy"] == "fetch_features"
        assert 1 <= int(response.headers["Retry-After"]) <= 30
        assert healthz(http)[0] == 503
    running.stop()


# --- the edges -------------------------------------------------------------------------------


def test_unknown_entities_schema_errors_and_the_admin_switch(
    serve: Callable[..., Running],
) -> None:
    running = serve()
    with running.client() as http:
        unknown = http.post("/predict", json={"request_id": "req-1", "entity_id": LIVE_ENTITIES})
        assert unknown.status_code == 404 and unknown.json() == {
            "detail": f"unknown entity {LIVE_ENTITIES}"
        }
        negative = http.post("/predict", json={"request_id": "req-1", "entity_id": -1})
        assert negative.status_code == 422 and "policy" not in negative.json()
        both = http.post("/predict", json={**valid(1), "entity_id": 1})
        assert both.status_code == 422
        assert http.post("/admin/store", json={"down": True}).status_code == 404
        assert healthz(http)[0] == 200


def test_a_bad_config_stops_the_service_at_startup_naming_the_key(tmp_path: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            str(SERVICE),
            "--port",
            "0",
            "guardrails.policies.predict.bulkhead.max_concurrent=0",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=_environment(),
        timeout=120,
        check=False,
    )
    assert out.returncode != 0
    assert "policies.predict.bulkhead.max_concurrent" in out.stderr + out.stdout


# --- hostile requests --------------------------------------------------------------------------


def _named(**changes: Any) -> bytes:
    """A request by column name (wine's first row) with ``changes`` to its features."""
    features = {**by_name(0)["features"], **changes}
    return json.dumps({"request_id": "req-1", "features": features}).encode()


#: (body as sent, status, what the answer's detail names): each answered as documented.
HOSTILE: list[tuple[bytes, int, str]] = [
    # Finite, but the model's scaler overflows on them: the policy's bounds refuse them.
    (b'{"request_id":"req-1","features":[1e308' + b",1" * 12 + b"]}", 422, "features"),
    (b'{"request_id":"req-1","features":[-1e308,1e308' + b",1" * 11 + b"]}", 422, "features"),
    (b'{"request_id":"req-1","features":[NaN' + b",1" * 12 + b"]}", 422, "features"),
    (b'{"request_id":"req-1","features":[-Infinity' + b",1" * 12 + b"]}", 422, "features"),
    (b'{"request_id":"req-1","features":[1e400' + b",1" * 12 + b"]}", 422, "features"),
    # Not numbers: lax parsing would have read them as 1.0 and answered 200.
    (b'{"request_id":"req-1","features":[true' + b",1" * 12 + b"]}", 422, "features"),
    (b'{"request_id":"req-1","features":["1"' + b",1" * 12 + b"]}", 422, "features"),
    (b'{"request_id":"req-1","entity_id":true}', 422, "entity_id"),
    (b'{"request_id":"req-1","entity_id":3.0}', 422, "entity_id"),
    (b'{"request_id":"req-1","entity_id":1e400}', 422, "entity_id"),
    # Echoed back in the 422 (as FastAPI does): strict JSON cannot write NaN or Infinity.
    (b'{"request_id":NaN,"entity_id":3}', 422, "request_id"),
    (b'{"request_id":"req-1","features":[[NaN]]}', 422, "features"),
    (b'{"request_id":"req-1","entity_id":-Infinity}', 422, "entity_id"),
    (b'{"request_id":"req-1","entity_id":' + b"9" * 4000 + b"}", 404, "unknown entity"),
    # Past Python's limit on the digits of an int read from text (4,300): FastAPI's 400.
    (b'{"request_id":"req-1","entity_id":' + b"9" * 5000 + b"}", 400, "parsing the body"),
    (b'{"request_id":"req-1","features":[]}', 422, "features"),
    (b'{"request_id":"req-1","features":[[1]]}', 422, "features"),
    (b'{"request_id":"req-1\\n","entity_id":3}', 422, "request_id"),
    (b'{"request_id":"req-1","features":[1' + b",1" * 12, 422, "json_invalid"),
    (b"\xff\xfe\x00", 400, "parsing the body"),  # not text: FastAPI's 400
    (b"", 422, "missing"),
    (b"[]", 422, "body"),
    (b'{"request_id":"req-1","features":[1e-320' + b",1" * 12 + b"]}", 200, "label"),
    # The policy's bounds themselves (0 to 100 % alcohol, 0 to 10,000 for the rest) pass.
    (b'{"request_id":"req-1","features":[100' + b",1e4" * 12 + b"]}", 200, "label"),
    (b'{"request_id":"req-1","features":[0' + b",0" * 12 + b"]}", 200, "label"),
    (b'{"request_id":"req-1","features":[-0.0' + b",1" * 12 + b"]}", 200, "label"),
    # A list of another length than the model's columns: which number is missing cannot
    # be told, so the HTTP schema refuses it (no policy); by name, the policy names them.
    (b'{"request_id":"req-1","features":[1' + b",1" * 13 + b"]}", 422, "got 14"),
    (b'{"request_id":"req-1","features":{}}', 422, "expected columns 'alcohol', 'malic_acid'"),
    (
        b'{"request_id":"req-1","features":{"alcohol":1e400}}',
        422,
        "expected values <= 100, found 1 row ('req-1') outside",
    ),
    (b'{"request_id":"req-1","features":{"alcohol":"13"}}', 422, "features"),
    (b'{"request_id":"req-1","features":{"alcohol":true}}', 422, "features"),
    (b'{"request_id":"req-1","features":{"alcohol":null}}', 422, "features"),
    (
        b'{"request_id":"req-1","features":{'
        + b",".join(b'"%s":1' % c.encode() for c in COLUMNS)
        + b',"colour":1}}',
        422,
        "expected no columns but the ones listed, found 'colour'",
    ),
    (
        b'{"request_id":"req-1","features":{'
        + b",".join(b'"%s":1' % c.encode() for c in reversed(COLUMNS))
        + b"}}",
        200,
        "label",
    ),
    # By name: a NaN or infinity is named by its column; an integer past float's range is
    # not a number; odd extra names are quoted as sent; twenty thousand of them are counted,
    # not listed.
    (_named(hue=math.nan), 422, '"loc":["body","features","hue"],"msg":"expected no nulls'),
    (_named(hue=-math.inf), 422, '"loc":["body","features","hue"],"msg":"expected values >= 0'),
    (_named(hue=10**400), 422, "Input should be a valid number"),
    (_named(**{"": 1}), 422, "expected no columns but the ones listed, found ''"),
    (_named(**{"a.b": 1}), 422, "expected no columns but the ones listed, found 'a.b'"),
    (_named(**{f"x{i}": 1 for i in range(20_000)}), 422, "'x9' and 19990 more"),
]


def test_hostile_bodies_get_documented_answers_never_a_500(serve: Callable[..., Running]) -> None:
    running = serve()
    with running.client() as http:
        for body, status, named in HOSTILE:
            response = http.post("/predict", content=body, headers=JSON)
            assert (response.status_code, named) == (status, named), (body[:80], response.text)
            assert named in response.text, (body[:80], response.text)
        # Without --admin the switch is a 404 whatever the body: no 422 that tells it exists.
        for content in (b'{"down": true}', b'{"down": "yes"}', b"{", b""):
            answer = http.post("/admin/store", content=content, headers=JSON)
            assert answer.status_code == 404, (content, answer.text)
        assert healthz(http)[0] == 200
    assert "Traceback" not in running.output()
    running.stop()


def test_the_admin_switch_reads_its_body_strictly(serve: Callable[..., Running]) -> None:
    running = serve("--admin")
    with running.client() as http:
        for content in (b'{"down": "yes"}', b'{"down": 1}', b"{", b"", b"[]"):
            answer = http.post("/admin/store", content=content, headers=JSON)
            assert answer.status_code == 422, (content, answer.text)
            assert answer.json()["detail"][0]["loc"][0] == "body", answer.text
        assert http.post("/admin/store", json={"down": True}).json() == {"down": True}
        assert http.post("/admin/store", json={"down": False}).json() == {"down": False}
    running.stop()
