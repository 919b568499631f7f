"""Prometheus export with the real prometheus_client: a fresh CollectorRegistry per test,
scraped with generate_latest and parsed with prometheus_client's own text parser."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import guardrails
from guardrails import configure, guarded
from guardrails._state import STATE
from guardrails.metrics import prometheus
from guardrails.testing import FakeClock
from tests.twins import guard_as

Labels = tuple[tuple[str, str], ...]


@pytest.fixture
def registry() -> Iterator[CollectorRegistry]:
    fresh = CollectorRegistry()
    prometheus.register(fresh)
    yield fresh
    prometheus.unregister(fresh)
    assert prometheus._REGISTERED == []  # no test leaves an export behind


@pytest.fixture(params=["sync", "async"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def scrape(registry: CollectorRegistry) -> dict[str, dict[Labels, float]]:
    """``{sample name: {sorted labels: value}}`` from the text exposition format."""
    out: dict[str, dict[Labels, float]] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def by(samples: dict[Labels, float], **fixed: str) -> dict[str, float]:
    """The samples matching ``fixed`` labels, keyed by the one label left."""
    got = {}
    for labels, value in samples.items():
        d = dict(labels)
        if all(d.get(k) == v for k, v in fixed.items()):
            rest = [v for k, v in labels if k not in fixed]
            got[rest[0] if rest else ""] = value
    return got


def test_import_guardrails_imports_no_metrics_client() -> None:
    code = (
        "import sys, guardrails, guardrails.metrics\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('prometheus_client', 'opentelemetry'))\n"
        "assert not bad, bad\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr


MIX = {
    "m": {
        "log": {"slow": "500ms"},
        "validate": {"args": {"x": {"min": -100}}, "output": "int"},
        "cache": {"ttl": 60},
        "retry": {"max_attempts": 3, "wait": {"initial": "10ms", "jitter": 0}},
    },
    "fb": {"log": {}, "validate": {"output": "int"}, "fallback": {"value": -1}},
    "br": {"log": {}, "breaker": {"window": 2, "min_calls": 2, "open_for": "1h"}},
    "quiet": {"log": {"enabled": False}},
}


def run_mix(kind: str) -> None:
    flaky = [ConnectionError()]

    def m(x: int) -> Any:
        if x == 2:
            time.sleep(0.5)  # at least log.slow: slow, however loaded the machine
        if x == 3:
            return "not an int"  # refused by validate.output
        if x == 4:
            raise KeyError(x)
        if x == 5 and flaky:
            raise flaky.pop()  # once: one retry, then ok
        if x == 6:
            raise ConnectionError  # every attempt: two retries, then failed
        return x

    f = guard_as(kind, m, "m")
    assert f(1) == 1 and f(1) == 1 and f(2) == 2 and f(5) == 5  # ok (miss, hit), slow, ok
    for x, error in [
        (-101, guardrails.InputValidationError),
        (3, guardrails.OutputValidationError),
    ]:
        with pytest.raises(error):
            f(x)
    for x, error2 in [(4, KeyError), (6, ConnectionError)]:
        with pytest.raises(error2):
            f(x)

    def fb(x: int) -> Any:
        if x == 0:
            raise KeyError(x)
        return "not an int" if x == 1 else x

    g = guard_as(kind, fb, "fb")
    assert (g(0), g(1), g(2)) == (-1, -1, 2)  # a failure and a refusal answered; one ok

    def br() -> None:
        raise OSError("down")

    h = guard_as(kind, br, "br")
    for error3 in (OSError, OSError, guardrails.CircuitOpenError):
        with pytest.raises(error3):
            h()
    q = guard_as(kind, lambda: 1, "quiet")
    q(), q()


def test_a_scripted_mix_is_counted_exactly(
    kind: str, registry: CollectorRegistry, clock: FakeClock
) -> None:
    configure({"policies": MIX})
    run_mix(kind)
    s = scrape(registry)
    calls = s["guardrails_calls_total"]
    assert by(calls, policy="m") == {
        "ok": 3,
        "slow": 1,
        "rejected": 2,
        "failed": 2,
        "cancelled": 0,
        "fallback": 0,
    }
    assert by(calls, policy="fb") == {
        "ok": 1,
        "slow": 0,
        "rejected": 0,
        "failed": 0,
        "cancelled": 0,
        "fallback": 2,
    }
    assert by(calls, policy="br") == {
        "ok": 0,
        "slow": 0,
        "rejected": 1,
        "failed": 2,
        "cancelled": 0,
        "fallback": 0,
    }
    assert by(calls, policy="quiet")["ok"] == 2
    # The outcomes add up to the calls stats() counts.
    for name, st in guardrails.stats().items():
        assert sum(by(calls, policy=name).values()) == st.calls
    assert by(s["guardrails_retries_total"], policy="m") == {"": 3}
    assert by(s["guardrails_cache_requests_total"], policy="m") == {"hit": 1, "miss": 6}
    assert by(s["guardrails_rejections_total"], policy="m") == {
        "input": 1,
        "output": 1,
        "memory": 0,
        "rate_limit": 0,
        "bulkhead": 0,
        "breaker": 0,
    }
    assert by(s["guardrails_rejections_total"], policy="fb")["output"] == 1  # then answered
    assert by(s["guardrails_rejections_total"], policy="br")["breaker"] == 1
    assert s["guardrails_breaker_state"] == {(("policy", "br"),): 2.0}  # open
    # Every call of a policy whose log is on is timed, failures included; none else.
    buckets = s["guardrails_call_duration_seconds_bucket"]
    count = s["guardrails_call_duration_seconds_count"]
    assert by(count, policy="m") == {"": 8}
    assert by(count, policy="fb") == {"": 3}
    assert "quiet" not in {dict(labels)["policy"] for labels in count}
    m_buckets = by(buckets, policy="m")
    assert m_buckets["+Inf"] == 8
    assert m_buckets["0.25"] <= 7  # the slow call took 0.5 s or more
    values = [m_buckets[le] for le in sorted(m_buckets, key=float)]
    assert values == sorted(values)  # cumulative
    assert by(s["guardrails_call_duration_seconds_sum"], policy="m")[""] >= 0.5
    assert s["guardrails_process_rss_bytes"][()] > 1_000_000


def test_a_cancelled_call_is_its_own_outcome(registry: CollectorRegistry) -> None:
    configure({"policies": {"c": {"log": {}}}})

    @guarded("c")
    async def waits(started: asyncio.Event) -> None:
        started.set()
        await asyncio.Event().wait()  # until cancelled

    async def main() -> None:
        started = asyncio.Event()
        task = asyncio.create_task(waits(started))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    calls = by(scrape(registry)["guardrails_calls_total"], policy="c")
    assert (calls["cancelled"], sum(calls.values())) == (1, 1)
    assert guardrails.stats()["c"].failures == 1


def test_counters_never_go_down_across_reset_stats(registry: CollectorRegistry) -> None:
    configure({"policies": {"p": {"log": {}, "cache": {"ttl": 60}}}})
    f = guarded("p")(lambda x: x)
    f(1), f(1), f(2)
    before = scrape(registry)
    guardrails.reset_stats()
    assert guardrails.stats()["p"].calls == 0
    after = scrape(registry)
    for name, samples in before.items():
        if name.endswith(("_total", "_bucket", "_count", "_sum")):
            assert after[name] == samples, name  # not one counter moved, down or up
    f(1)
    assert by(scrape(registry)["guardrails_calls_total"], policy="p")["ok"] == 4
    assert guardrails.stats()["p"].calls == 1


def test_threads_calling_while_scraping_add_up_exactly(registry: CollectorRegistry) -> None:
    configure({"policies": {"t": {"log": {}}}})

    @guarded("t")
    def work(n: int) -> int:
        if n % 4 == 0:
            raise KeyError(n)
        return n

    threads, per_thread = 8, 500
    start = threading.Barrier(threads + 1)
    done = threading.Event()
    seen: list[dict[str, dict[Labels, float]]] = []

    def call(i: int) -> None:
        start.wait()
        for n in range(per_thread):
            with contextlib.suppress(KeyError):
                work(n)

    def scraper() -> None:
        start.wait()
        while not done.is_set():
            seen.append(scrape(registry))

    pool = [threading.Thread(target=call, args=(i,)) for i in range(threads)]
    watcher = threading.Thread(target=scraper)
    for t in [*pool, watcher]:
        t.start()
    for t in pool:
        t.join(120)
    done.set()
    watcher.join(120)
    assert not any(t.is_alive() for t in [*pool, watcher])
    seen.append(scrape(registry))
    # Every counter sample only ever grows from one scrape to the next.
    for earlier, later in itertools.pairwise(seen):
        for name, samples in earlier.items():
            if name.endswith(("_total", "_bucket", "_count")):
                for labels, value in samples.items():
                    assert later[name][labels] >= value, (name, labels)
    final = seen[-1]
    calls = by(final["guardrails_calls_total"], policy="t")
    total = threads * per_thread
    assert (calls["ok"], calls["failed"], sum(calls.values())) == (
        total * 3 // 4,
        total // 4,
        total,
    )
    assert by(final["guardrails_call_duration_seconds_count"], policy="t") == {"": total}


def test_registering_twice_and_the_default_registry() -> None:
    try:
        first = prometheus.register()
        assert prometheus.register() is first  # no "Duplicated timeseries"
        configure({"policies": {"d": {}}})
        guarded("d")(lambda: 1)()
        text = generate_latest(REGISTRY).decode()
        assert 'guardrails_calls_total{outcome="ok",policy="d"} 1.0' in text
        other = CollectorRegistry()
        prometheus.register(other)
        assert 'policy="d"' in generate_latest(other).decode()  # both export
        prometheus.unregister(other)
    finally:
        prometheus.unregister()
    assert "guardrails_calls_total" not in generate_latest(REGISTRY).decode()
    assert prometheus._REGISTERED == []


def test_a_name_taken_by_another_collector_is_refused_and_nothing_changes() -> None:
    from prometheus_client import Counter

    taken = CollectorRegistry()
    Counter("guardrails_retries", "someone else's", registry=taken)
    with pytest.raises(ValueError, match="guardrails_retries"):
        prometheus.register(taken)
    assert prometheus._REGISTERED == []


@pytest.mark.parametrize(
    ("buckets", "expected"),
    [
        ((), "finite positive"),
        ((0.1, 0.1), "strictly increasing"),
        ((1, 0.5), "strictly increasing"),
        ((0, 1), "finite positive"),
        ((float("inf"),), "finite positive"),
        (("fast",), "numbers of seconds"),
    ],
)
def test_bad_buckets_are_refused_before_anything_is_registered(
    buckets: tuple[Any, ...], expected: str
) -> None:
    fresh = CollectorRegistry()
    with pytest.raises(ValueError, match=expected):
        prometheus.register(fresh, buckets=buckets)
    assert prometheus._REGISTERED == []
    assert list(fresh.collect()) == []


def test_custom_buckets(registry: CollectorRegistry) -> None:
    prometheus.register(registry, buckets=[0.5, 1])
    try:
        configure({"policies": {"b": {}}})
        guarded("b")(lambda: 1)()
        buckets = by(scrape(registry)["guardrails_call_duration_seconds_bucket"], policy="b")
        assert sorted(buckets, key=float) == ["0.5", "1.0", "+Inf"]
        assert buckets["+Inf"] == 1
    finally:
        prometheus.register(registry)  # back to the default buckets


def test_unregistering_restores_the_cheap_path(registry: CollectorRegistry) -> None:
    configure({"policies": {"u": {}}})
    f = guarded("u")(lambda: 1)
    f()
    counters = STATE.counters["u"]
    assert "append" in vars(counters.latencies)  # failures are timed into the histogram too
    prometheus.unregister(registry)
    f(), f()
    assert "append" not in vars(counters.latencies)
    prometheus.register(registry)
    f()
    s = scrape(registry)
    # Calls made while nothing was exported were counted, but not timed into the histogram.
    assert by(s["guardrails_calls_total"], policy="u")["ok"] == 4
    assert by(s["guardrails_call_duration_seconds_count"], policy="u") == {"": 2}


def test_config_reloads_are_exported(registry: CollectorRegistry) -> None:
    from guardrails._watch import reload_counts

    reloads, failures = reload_counts()
    got = by(scrape(registry)["guardrails_config_reloads_total"])
    assert got == {"ok": reloads, "failed": failures}


def test_a_scrape_does_not_wait_for_a_configure_in_progress(registry: CollectorRegistry) -> None:
    configure({"policies": {"w": {}}})
    guarded("w")(lambda: 1)()
    got: list[float] = []
    with STATE.lock:  # what configure() holds while it compiles

        def scraper() -> None:
            got.append(by(scrape(registry)["guardrails_calls_total"], policy="w")["ok"])

        t = threading.Thread(target=scraper)
        t.start()
        t.join(60)
        assert not t.is_alive()
    assert got == [1]


def test_the_histogram_sum_is_exact_across_threads_that_come_and_go() -> None:
    from guardrails._stats import Histogram

    hist = Histogram((0.1, 1.0))
    start = threading.Barrier(8)

    def observe() -> None:
        start.wait()
        for _ in range(5000):
            hist.observe(0.5)  # exactly representable: the exact sum is known
        hist.observe(2.0)

    for _ in range(3):  # three generations of threads, each ending before the next
        pool = [threading.Thread(target=observe) for _ in range(8)]
        for t in pool:
            t.start()
        for t in pool:
            t.join(60)
        assert not any(t.is_alive() for t in pool)
    counts, total = hist.read()
    assert counts == [0, 3 * 8 * 5000, 3 * 8 * 5001]
    assert total == 3 * 8 * (5000 * 0.5 + 2.0)
    assert hist._cells == []  # the ended threads' sums were folded, not kept one by one
    assert hist.read() == (counts, total)  # and still counted


def test_registering_and_unregistering_under_load_keeps_every_count() -> None:
    configure({"policies": {"l": {"log": {}}}})

    @guarded("l")
    def work(n: int) -> int:
        if n % 5 == 0:
            raise KeyError(n)
        return n

    stop = threading.Event()
    made = [0] * 4
    errors: list[BaseException] = []

    def call(i: int) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            try:
                work(n)
            except KeyError:
                pass
            except BaseException as exc:  # anything else is a bug
                errors.append(exc)
            made[i] += 1

    pool = [threading.Thread(target=call, args=(i,)) for i in range(4)]
    for t in pool:
        t.start()
    fresh = CollectorRegistry()
    try:
        for _ in range(20):  # each recompiles every chain while the calls go on
            prometheus.register(fresh)
            prometheus.unregister(fresh)
    finally:
        stop.set()
        for t in pool:
            t.join(60)
    assert not any(t.is_alive() for t in pool) and errors == []
    prometheus.register(fresh)
    try:
        calls = by(scrape(fresh)["guardrails_calls_total"], policy="l")
    finally:
        prometheus.unregister(fresh)
    assert sum(calls.values()) == sum(made)
    assert calls["ok"] + calls["failed"] == sum(made)


def test_registering_does_not_fail_for_a_function_without_a_policy_under_strict() -> None:
    configure({"strict": True, "policies": {"s": {}}})
    good = guarded("s")(lambda: 1)
    good()
    orphan = guarded("nobody")(lambda: 1)  # decorated after configure(): fails on its call
    fresh = CollectorRegistry()
    prometheus.register(fresh)
    try:
        assert good() == 1
        with pytest.raises(guardrails.PolicyConfigError, match="nobody"):
            orphan()
        assert by(scrape(fresh)["guardrails_call_duration_seconds_count"], policy="s") == {"": 1}
    finally:
        prometheus.unregister(fresh)


@pytest.mark.parametrize("kind", ["direct", "chained", "async"])
def test_a_slow_success_is_counted_once_and_only_as_slow(kind: str) -> None:
    # One increment per call: a scrape between two increments could otherwise see the
    # call as ok, then see ok drop when it became slow.
    from guardrails._state import STATE

    policy = {"log": {"slow": 1e-9}}  # every call is slow
    if kind == "chained":
        policy["cache"] = {"ttl": 60}
    configure({"policies": {"s": policy}})
    if kind == "async":

        async def f(x: int) -> int:
            return x

        g = guarded("s")(f)
        assert asyncio.run(g(1)) == 1
    else:
        assert guarded("s")(lambda x: x)(1) == 1
    totals = STATE.counters["s"].totals()
    assert (totals["success"], totals["slow_success"]) == (0, 1)
    s = guardrails.stats()["s"]
    assert (s.calls, s.successes, s.slow) == (1, 1, 1)
