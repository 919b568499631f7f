"""What the Redis features cost, against what one writes by hand with redis-py (issue 10).

    python benchmarks/redis_bench.py            # the full run (about a minute)
    python benchmarks/redis_bench.py --quick    # a smoke run, for CI: the numbers are rough
    python benchmarks/redis_bench.py --check    # exit 1 if a target is missed

Uses the Redis at ``$GUARDRAILS_REDIS_URL`` if set (its keys are namespaced by this run and
deleted at the end; nothing else is touched), else starts a private ``redis-server`` on a
free loopback port and stops it at the end.

Each case times ours and its counterpart in one process, in many short alternating rounds
(which goes first alternates too) and reports the median of each and the median of the
rounds' ratios (these machines are noisy). Every case also checks it measured what it
says: an L1 hit never reached Redis, an L2 hit was answered by Redis and computed nothing;
a case that did otherwise is an error (exit 2).
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import platform
import random
import shutil
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import redis
from rich.console import Console
from rich.table import Table

import guardrails
from guardrails import guarded

#: This run's tag: its cache namespace and the prefix of the keys it writes by hand.
RUN = os.environ.get("REDIS_BENCH_RUN") or f"bench-{uuid.uuid4().hex[:12]}"
os.environ["REDIS_BENCH_RUN"] = RUN  # spawned workers see the same tag


# --- a redis-server of our own, unless one is given -----------------------------------------


@contextmanager
def redis_url() -> Iterator[tuple[str, str]]:
    """``(url, where)``: ``$GUARDRAILS_REDIS_URL``, else a private server for the run."""
    given = os.environ.get("GUARDRAILS_REDIS_URL")
    if given:
        yield given, "$GUARDRAILS_REDIS_URL"
        return
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit(
            "redis-server is not installed and $GUARDRAILS_REDIS_URL is not set "
            "(Debian/Ubuntu: apt-get install -y redis-server; macOS: brew install redis)"
        )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen(
        [binary, *args, "--loglevel", "warning"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        deadline = time.monotonic() + 20
        with redis.Redis.from_url(url, socket_timeout=1) as probe:
            while True:
                try:
                    probe.ping()
                    break
                except redis.exceptions.ConnectionError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise SystemExit(f"redis-server on port {port} did not start") from None
                    time.sleep(0.01)
        yield url, f"a private redis-server {redis_version(url)} on port {port}"
    finally:
        proc.kill()
        proc.wait(timeout=20)


def redis_version(url: str) -> str:
    with redis.Redis.from_url(url) as client:
        return str(client.info("server")["redis_version"])


def raw_client(url: str) -> Any:
    """A plain redis-py client, as a user makes one (hiredis when installed)."""
    return redis.Redis.from_url(url)


# --- the functions ----------------------------------------------------------------------------

COMPUTED: dict[str, int] = {}


def _computed(name: str) -> None:
    COMPUTED[name] = COMPUTED.get(name, 0) + 1


def work(x: int) -> int:
    return x


def vector_1kb(k: int) -> dict[str, Any]:
    """A JSON value of about 1 KB (an embedding with its id)."""
    rng = random.Random(k)
    return {"id": k, "model": "m-1", "vector": [round(rng.random(), 12) for _ in range(64)]}


ARRAY_ITEMS = 1_000_000  # 8 MB of float64


@guarded("l1_redis")
def l1_redis(x: int) -> int:
    _computed("l1_redis")
    return x


@guarded("l1_memory")
def l1_memory(x: int) -> int:
    _computed("l1_memory")
    return x


@guarded("l2_json")
def l2_json(k: int) -> dict[str, Any]:
    _computed("l2_json")
    return vector_1kb(k)


def array_value(k: int) -> Any:
    return np.random.default_rng(k).random(ARRAY_ITEMS)


@guarded("l2_array")
def l2_array(k: int) -> Any:
    _computed("l2_array")
    return array_value(k)


@guarded("breaker_shared")
def breaker_shared(x: int) -> int:
    return x


def policies(url: str) -> dict[str, Any]:
    redis_cache = {"backend": "redis", "namespace": RUN, "ttl": 600}
    return {
        "redis_url": url,
        "policy_defaults": {"log": {"enabled": False}},
        "policies": {
            "l1_redis": {"cache": {**redis_cache}},
            "l1_memory": {"cache": {"ttl": 600}},
            # maxsize 1 and two keys called in turn: every call misses L1 and hits Redis.
            "l2_json": {"cache": {**redis_cache, "maxsize": 1}},
            "l2_array": {"cache": {**redis_cache, "maxsize": 1, "redis_timeout": "5s"}},
            "breaker_shared": {"breaker": {"shared": True}},
            "fanout": {"cache": {**redis_cache, "redis_timeout": "2s"}},
        },
    }


# --- timing -------------------------------------------------------------------------------------


def per_call_ns(fn: Callable[[int], Any], n: int) -> float:
    """ns per call of ``fn(i & 1)`` for ``i`` in ``range(n)``: two keys in turn."""
    t0 = time.perf_counter_ns()
    for i in range(n):
        fn(i & 1)
    return (time.perf_counter_ns() - t0) / n


def rounds_of(timers: list[Callable[[], float]], rounds: int) -> list[list[float]]:
    """Run the timers in alternating rounds (each round in the other order): each's times."""
    found: list[list[float]] = [[] for _ in timers]
    order = list(range(len(timers)))
    for _ in range(rounds):
        for i in order:
            found[i].append(timers[i]())
        order.reverse()
    return found


@dataclass
class Row:
    case: str
    counterpart: str
    ours: list[float]
    theirs: list[float]
    target: float

    @property
    def ours_ns(self) -> float:
        return statistics.median(self.ours)

    @property
    def theirs_ns(self) -> float:
        return statistics.median(self.theirs)

    @property
    def ratio(self) -> float:
        """The median of the rounds' ratios: each round's pair ran back to back, under the
        same load (a shared machine's load drifts between rounds)."""
        return statistics.median(a / b for a, b in zip(self.ours, self.theirs, strict=True))

    @property
    def met(self) -> bool:
        return self.ratio <= self.target


class NotMeasured(RuntimeError):
    """A case did not measure what it says (an L2 "hit" computed, an L1 hit reached Redis)."""


def _stats(policy: str) -> tuple[int, int, int]:
    found = guardrails.stats()[policy]
    return found.cache_hits, found.shared_cache_hits, found.redis_errors


def l1_row(n: int, rounds: int) -> Row:
    for fn in (l1_redis, l1_memory):
        fn(0)
        fn(1)
    hits_before = _stats("l1_redis")
    ours, theirs = rounds_of(
        [lambda: per_call_ns(l1_redis, n), lambda: per_call_ns(l1_memory, n)], rounds
    )
    hits, shared, errors = _stats("l1_redis")
    if COMPUTED.get("l1_redis") != 2 or shared != hits_before[1] or errors:
        raise NotMeasured(f"L1 hits with backend redis reached Redis: {_stats('l1_redis')}")
    if hits - hits_before[0] != n * rounds:
        raise NotMeasured(f"L1 case: {hits - hits_before[0]} hits of {n * rounds} calls")
    return Row(
        "L1 hit, cache.backend: redis",
        "today's in-process hit (backend: memory)",
        ours,
        theirs,
        1.1,
    )


def l2_row(
    case: str,
    counterpart: str,
    fn: Callable[[int], Any],
    policy: str,
    by_hand: Callable[[], Any],
    n: int,
    rounds: int,
    target: float,
) -> Row:
    fn(0)
    fn(1)  # both stored in Redis (L1 holds one entry: every call below misses it)
    before = COMPUTED.get(policy, 0)
    _, shared_before, _ = _stats(policy)
    ours, theirs = rounds_of(
        [lambda: per_call_ns(fn, n), lambda: per_call_ns(lambda _: by_hand(), n)], rounds
    )
    _, shared, errors = _stats(policy)
    if COMPUTED.get(policy, 0) != before or errors or shared - shared_before != n * rounds:
        raise NotMeasured(
            f"{case}: {COMPUTED.get(policy, 0) - before} computed, {errors} Redis errors, "
            f"{shared - shared_before} shared hits of {n * rounds} calls"
        )
    return Row(case, counterpart, ours, theirs, target)


def latency_rows(url: str, quick: bool) -> list[Row]:
    client = raw_client(url)
    json_key, npy_key = f"{RUN}:json", f"{RUN}:npy"
    client.set(json_key, json.dumps(vector_1kb(0)).encode())
    buffer = io.BytesIO()
    np.save(buffer, array_value(0), allow_pickle=False)
    client.set(npy_key, buffer.getvalue())
    json_size = len(client.get(json_key))

    def json_by_hand() -> Any:
        return json.loads(client.get(json_key))

    def npy_by_hand() -> Any:
        return np.load(io.BytesIO(client.get(npy_key)), allow_pickle=False)

    def get() -> Any:
        return client.get(json_key)

    # Many short rounds: a round's two halves run under the same load.
    rounds = 5 if quick else 41
    calls = 50 if quick else 200
    rows = [l1_row(2_000 if quick else 10_000, rounds)]
    rows.append(
        l2_row(
            f"L2 hit (L1 miss), {json_size:,} B JSON value",
            "redis-py GET + json.loads by hand",
            l2_json,
            "l2_json",
            json_by_hand,
            calls,
            rounds,
            1.3,
        )
    )
    rows.append(
        l2_row(
            "L2 hit (L1 miss), 8 MB float64 array",
            "redis-py GET + np.load by hand",
            l2_array,
            "l2_array",
            npy_by_hand,
            2 if quick else 4,
            rounds,
            1.2,
        )
    )
    breaker_shared(0)
    ours, theirs = rounds_of(
        [
            lambda: per_call_ns(breaker_shared, calls),
            lambda: per_call_ns(lambda _: get(), calls),
        ],
        rounds,
    )
    found = guardrails.stats()["breaker_shared"]
    if found.redis_errors or found.breaker_state != "closed":
        raise NotMeasured(f"shared breaker: {found.redis_errors} Redis errors, {found}")
    rows.append(
        Row(
            "shared breaker, closed, per call",
            f"a redis-py GET of the {json_size:,} B value",
            ours,
            theirs,
            1.5,
        )
    )
    client.close()
    return rows


# --- many processes -------------------------------------------------------------------------

_RAW: dict[int, Any] = {}


def _raw(url: str) -> Any:
    pid = os.getpid()
    if pid not in _RAW:
        _RAW.clear()
        _RAW[pid] = raw_client(url)
    return _RAW[pid]


#: How long one computation takes (a feature-store fetch, a model): set per run.
WORK_SECONDS = 0.002


def _fetch(url: str, k: int, counter: str, work_seconds: float) -> dict[str, Any]:
    _raw(url).incr(counter)
    time.sleep(work_seconds)
    return {"id": k, "features": [k, k * 2, k * 3]}


@guarded("fanout")
def fetch(url: str, k: int, work_seconds: float) -> dict[str, Any]:
    return _fetch(url, k, f"{RUN}:computed:guarded", work_seconds)


def fetch_bare(url: str, k: int, work_seconds: float) -> dict[str, Any]:
    return _fetch(url, k, f"{RUN}:computed:bare", work_seconds)


def fan_run(job: tuple[str, int, int, int, bool, float]) -> int:
    """One worker's share: ``calls`` over ``keys`` keys, shuffled by ``seed``; wrong values."""
    url, seed, calls, keys, guarded_, work_seconds = job
    order = [i % keys for i in range(calls)]
    random.Random(seed).shuffle(order)
    fn = fetch if guarded_ else fetch_bare
    wrong = 0
    for k in order:
        if fn(url, k, work_seconds)["features"] != [k, k * 2, k * 3]:
            wrong += 1
    return wrong


def _noop(_: int) -> int:
    return os.getpid()


@dataclass
class FanOut:
    processes: int
    calls: int
    keys: int
    computed: int
    bare_computed: int
    seconds: float
    bare_seconds: float
    work_seconds: float

    @property
    def met(self) -> bool:
        return self.computed == self.keys


def fan_out(url: str, quick: bool) -> FanOut:
    processes, calls, keys = 4, 10_000, 1_000
    work_seconds = 0.001 if quick else WORK_SECONDS
    settings = guardrails.settings()
    context = multiprocessing.get_context("spawn")
    client = raw_client(url)
    times: dict[bool, float] = {}
    with context.Pool(processes, initializer=guardrails.configure, initargs=(settings,)) as pool:
        pool.map(_noop, range(processes * 4), chunksize=1)  # started and imported
        # Bare first, then guarded (a cold Redis level: every key computed once, in the run).
        for guarded_ in (False, True):
            jobs = [
                (url, seed, calls // processes, keys, guarded_, work_seconds)
                for seed in range(processes)
            ]
            t0 = time.perf_counter()
            wrong = pool.map(fan_run, jobs, chunksize=1)
            times[guarded_] = time.perf_counter() - t0
            if any(wrong):
                raise NotMeasured(f"{sum(wrong)} wrong values (guarded: {guarded_})")
    computed = int(client.get(f"{RUN}:computed:guarded") or 0)
    bare = int(client.get(f"{RUN}:computed:bare") or 0)
    client.close()
    return FanOut(processes, calls, keys, computed, bare, times[True], times[False], work_seconds)


def cleanup(url: str) -> int:
    """Delete this run's keys (its cache namespace, its own keys) and the shared breaker's."""
    client = raw_client(url)
    found = 0
    for pattern in (f"guardrails:{RUN}:*", f"{RUN}:*", "guardrails:breaker_shared*"):
        batch = list(client.scan_iter(match=pattern, count=1000))
        if batch:
            found += client.unlink(*batch)
    client.close()
    return found


# --- report ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run: few iterations")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    args = parser.parse_args(argv)
    console = Console(width=max(Console().width, 140))

    with redis_url() as (url, where):
        guardrails.configure(policies(url))
        try:
            rows = latency_rows(url, args.quick)
            fan = fan_out(url, args.quick)
        finally:
            cleanup(url)

    cpu = platform.processor() or platform.machine()
    console.print(
        f"[bold]guardrails with Redis[/] — Python {platform.python_version()}, {cpu}, "
        f"{os.cpu_count()} cores, redis-py {redis.__version__}, {where}"
        f"{' (quick run: rough numbers)' if args.quick else ''}"
    )
    table = Table(title_justify="left")
    for col, justify in [
        ("case", "left"),
        ("counterpart", "left"),
        ("ours µs", "right"),
        ("theirs µs", "right"),
        ("ratio", "right"),
        ("target", "right"),
        ("met", "center"),
    ]:
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for r in rows:
        table.add_row(
            r.case,
            r.counterpart,
            f"{r.ours_ns / 1e3:,.3f}",
            f"{r.theirs_ns / 1e3:,.3f}",
            f"{r.ratio:.3f}",
            f"≤ {r.target:g}",
            "[green]yes[/]" if r.met else "[red]NO[/]",
        )
    console.print(table)

    t = Table(
        title=(
            f"{fan.processes} processes (spawn), {fan.calls:,} calls over {fan.keys:,} keys, "
            f"each computation {fan.work_seconds * 1e3:g} ms"
        ),
        title_justify="left",
    )
    for col in ("", "computations", "wall s", "target", "met"):
        t.add_column(col, justify="left" if not col else "right")
    t.add_row(
        "guarded, cache.backend: redis",
        f"{fan.computed:,}",
        f"{fan.seconds:.2f}",
        f"computations = {fan.keys:,}",
        "[green]yes[/]" if fan.met else "[red]NO[/]",
    )
    t.add_row(
        "the same without guardrails, no cache",
        f"{fan.bare_computed:,}",
        f"{fan.bare_seconds:.2f}",
        "",
        "",
    )
    console.print(t)

    missed = [r.case for r in rows if not r.met] + ([] if fan.met else ["computations"])
    console.print(
        f"targets met: {len(rows) + 1 - len(missed)} of {len(rows) + 1}"
        + (f" (missed: {'; '.join(missed)})" if missed else "")
    )
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except NotMeasured as exc:
        print(f"redis_bench: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
