from __future__ import annotations

import io

import pytest
from rich.console import Console

import guardrails
from guardrails import configure, guarded


def test_policies_add_up_and_calls_include_failures() -> None:
    configure({"policies": {"s": {"log": {}}}})
    f = guarded("s")(lambda: 1)

    @guarded("s")
    def g() -> None:
        raise RuntimeError

    f(), f()
    with pytest.raises(RuntimeError):
        g()
    s = guardrails.stats()["s"]
    assert (s.calls, s.successes, s.failures, s.rejected) == (3, 2, 1, 0)
    assert s.p50_ms is not None and 0 <= s.p50_ms <= s.p95_ms <= s.p99_ms  # type: ignore[operator]
    assert set(s.as_dict()) >= {
        "calls",
        "successes",
        "failures",
        "retries",
        "cache_hits",
        "cache_misses",
        "rejected",
        "p50_ms",
        "p95_ms",
        "p99_ms",
    }


def test_percentiles_are_nearest_rank() -> None:
    from guardrails._stats import PolicyCounters

    c = PolicyCounters("x")
    for ms in range(1, 101):
        c.latencies.append(ms / 1000)
    s = c.snapshot()
    assert (s.p50_ms, s.p95_ms, s.p99_ms) == pytest.approx((50, 95, 99))


def test_stats_survive_reconfiguration() -> None:
    f = guarded("s")(lambda: 1)
    f()
    configure({"policies": {"s": {"retry": {}}}})
    f()
    assert guardrails.stats()["s"].calls == 2


def test_report_prints_a_table() -> None:
    configure({"policies": {"fetch": {"cache": {"ttl": 60}}}})
    f = guarded("fetch")(lambda x: x)
    f(1), f(1)
    out = io.StringIO()
    guardrails.report(Console(file=out, width=150))
    text = out.getvalue()
    assert "guardrails statistics" in text
    row = next(line for line in text.splitlines() if "fetch" in line)
    assert [cell.strip() for cell in row.split("│")[1:9]] == [
        "fetch",
        "2",
        "2",
        "0",
        "0",
        "1",
        "1",
        "0",
    ]


def test_report_defaults_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    guarded("shown")(lambda: 1)()
    guardrails.report()
    assert "shown" in capsys.readouterr().out
