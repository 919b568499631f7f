"""The example runs as a user runs it: a subprocess, with real Hydra overrides."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUMMARY = re.compile(
    r"scored (?P<scored>\d+) of (?P<requests>\d+) requests \(accuracy (?P<accuracy>[\d.]+)\); "
    r"rejected (?P<rejected>\d+) malformed; (?P<unavailable>\d+) unavailable after retries; "
    r"feature store reads: (?P<reads>\d+); (?P<fallbacks>\d+) served from the fallback while "
    r"the breaker was open \((?P<short_circuited>\d+) calls short-circuited; breaker now "
    r"(?P<breaker>\w+)\)"
)
#: The feature store has no outage: the figures do not depend on how fast the machine is.
NO_OUTAGE = ("job.outage.start=0", "job.outage.end=0")


def example(tmp_path: Path, *arguments: str) -> str:
    """The example's standard output, run as a user runs it."""
    env = {k: v for k, v in os.environ.items() if k != "GUARDRAILS_CONFIG"}
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "pipeline.py"), *arguments],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        check=False,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout + out.stderr


def tables(output: str) -> list[dict[str, list[str]]]:
    """Each statistics table printed, as policy -> its cells."""
    found: list[dict[str, list[str]]] = []
    for line in output.splitlines():
        cells = [c.strip() for c in line.split("│")[1:-1]]
        if len(cells) >= 8 and cells[0] in ("fetch_features", "predict"):
            if not found or cells[0] in found[-1]:
                found.append({})
            found[-1][cells[0]] = cells
    return found


def run(tmp_path: Path, *overrides: str) -> tuple[dict[str, float], dict[str, list[str]], str]:
    output = example(tmp_path, *overrides, f"hydra.run.dir={tmp_path / 'run'}")
    match = SUMMARY.search(output)
    assert match, output
    summary = {k: float(v) for k, v in match.groupdict().items() if k != "breaker"}
    (table,) = tables(output)
    return summary, table, output


def col(row: list[str], name: str) -> int:
    names = ["policy", "calls", "ok", "failed", "retries", "hits", "misses", "rejected"]
    return int(row[names.index(name)])


def test_default_run(tmp_path: Path) -> None:
    summary, table, output = run(tmp_path)
    assert summary["rejected"] > 0
    total = summary["scored"] + summary["rejected"] + summary["unavailable"]
    assert total == summary["requests"]
    assert summary["accuracy"] > 0.8
    fetch, predict = table["fetch_features"], table["predict"]
    assert col(fetch, "retries") > 0 and col(fetch, "hits") > 0
    assert col(fetch, "failed") == summary["unavailable"]
    assert col(predict, "rejected") == summary["rejected"]
    # Each kind of malformed batch is refused by a YAML column check naming the column and
    # the request (the row's label): a dropped column, a NaN, a negative measurement.
    messages = " ".join(output.split())  # rich wraps the log records
    assert re.search(r"features: expected column '[\w/]+': missing", messages), output
    assert re.search(r"features\.[\w/]+: expected no nulls, found 1 row \('req-\d+'\)", messages)
    assert re.search(
        r"features\.[\w/]+: expected values >= 0, found 1 row \('req-\d+'\) outside", messages
    )


def test_the_outage_opens_the_breaker_falls_back_and_recovers(tmp_path: Path) -> None:
    summary, _, output = run(tmp_path)
    # The first calls of the outage fail after their retries; then the breaker opens and
    # calls fail fast to the population's average row; after the outage it closes again.
    assert "circuit breaker closed -> open" in output, output
    assert "circuit breaker half_open -> closed" in output, output
    assert summary["short_circuited"] > 0
    assert summary["fallbacks"] == summary["short_circuited"]  # catch: [CircuitOpenError]
    assert 0 < summary["unavailable"] < summary["fallbacks"]
    assert re.search(r"breaker now closed", output)


def test_without_an_outage_the_breaker_stays_closed(tmp_path: Path) -> None:
    summary, _, output = run(tmp_path, *NO_OUTAGE)
    assert summary["unavailable"] == 0 and summary["fallbacks"] == 0
    assert summary["short_circuited"] == 0
    assert "circuit breaker closed -> open" not in output


def test_a_chaos_drill_from_the_command_line(tmp_path: Path) -> None:
    _, table, output = run(
        tmp_path,
        *NO_OUTAGE,
        "+guardrails.allow_chaos=true",
        "+guardrails.policies.fetch_features.chaos.error_rate=0.3",
        "+guardrails.policies.fetch_features.chaos.seed=11",
    )
    assert "injected" in output
    fetch = table["fetch_features"]
    names = ["policy", "calls", "ok", "failed", "retries", "hits", "misses", "rejected"]
    injected = int(fetch[len(names) + output_columns(output).index("injected")])
    assert injected > 0
    assert col(fetch, "retries") > 0


def output_columns(output: str) -> list[str]:
    """The optional column headers of the statistics table, in order, after "rejected"."""
    header = next(line for line in output.splitlines() if "┃ policy" in line)
    cells = [c.strip() for c in header.split("┃")[1:-1]]
    return cells[cells.index("rejected") + 1 : cells.index("p50 ms")]


def test_chaos_is_refused_without_allow_chaos(tmp_path: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "pipeline.py"),
            "+guardrails.policies.fetch_features.chaos.error_rate=0.3",
            f"hydra.run.dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if k != "GUARDRAILS_CONFIG"},
        check=False,
        timeout=300,
    )
    assert out.returncode != 0
    assert "guardrails.policies.fetch_features.chaos: chaos injects failures" in out.stderr
    assert "+guardrails.allow_chaos=true" in out.stderr


def test_each_multirun_job_prints_what_it_prints_alone(tmp_path: Path) -> None:
    # The basic launcher runs the jobs one after another in one process: the second job must
    # not see the first one's cache entries (other rows, same keys) nor add to its statistics.
    # Without the outage: how many calls the open breaker short-circuits depends on time.
    output = example(
        tmp_path, "-m", "job.seed=1,2", *NO_OUTAGE, f"hydra.sweep.dir={tmp_path / 'sweep'}"
    )
    lines = [m.group(0) for m in SUMMARY.finditer(output)]
    counts = [row[:8] for table in tables(output) for row in table.values()]
    assert len(lines) == 2 and len(counts) == 4, output
    alone_lines, alone_counts = [], []
    for seed in (1, 2):
        single = example(
            tmp_path, f"job.seed={seed}", *NO_OUTAGE, f"hydra.run.dir={tmp_path / str(seed)}"
        )
        alone_lines += [m.group(0) for m in SUMMARY.finditer(single)]
        alone_counts += [row[:8] for table in tables(single) for row in table.values()]
    assert lines == alone_lines
    assert counts == alone_counts  # calls, ok, failed, retries, hits, misses, rejected
    assert lines[0] != lines[1]  # the seeds do differ, so the comparison means something


def test_the_scores_are_checked_on_the_way_out(tmp_path: Path) -> None:
    # No wine is scored below 0.5 for every class: an output bound of 0.5 refuses the
    # model's answers, and the job stops on the first (a broken model is not a bad request).
    env = {k: v for k, v in os.environ.items() if k != "GUARDRAILS_CONFIG"}
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "pipeline.py"),
            *NO_OUTAGE,
            "guardrails.policies.predict.validate.output.max=0.5",
            f"hydra.run.dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        check=False,
        timeout=300,
    )
    assert out.returncode != 0
    assert "OutputValidationError" in out.stderr, out.stderr
    assert "return: expected values <= 0.5, found" in " ".join(out.stderr.split()), out.stderr


def test_one_attempt_makes_failures_appear(tmp_path: Path) -> None:
    summary, table, _ = run(
        tmp_path, *NO_OUTAGE, "guardrails.policies.fetch_features.retry.max_attempts=1"
    )
    assert summary["unavailable"] > 0
    assert col(table["fetch_features"], "failed") == summary["unavailable"]
    assert col(table["fetch_features"], "retries") == 0


def test_removing_the_cache_makes_hits_zero(tmp_path: Path) -> None:
    _, table, _ = run(tmp_path, "~guardrails.policies.fetch_features.cache")
    assert col(table["fetch_features"], "hits") == 0
    assert col(table["fetch_features"], "misses") == 0


def test_production_policy_set(tmp_path: Path) -> None:
    summary, table, _ = run(tmp_path, "guardrails=production")
    assert summary["rejected"] > 0
    assert col(table["fetch_features"], "hits") > 0


def test_a_new_policy_from_the_command_line(tmp_path: Path) -> None:
    _, table, _ = run(tmp_path, "+guardrails.policies.predict.cache.ttl=60")
    assert col(table["predict"], "misses") > 0


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (
            "guardrails.policies.fetch_features.retry.max_attempts=five",
            "guardrails.policies.fetch_features.retry.max_attempts: Input should be a valid integer",
        ),
        (
            "guardrails.policies.fetch_features.cache.ttl=soon",
            "guardrails.policies.fetch_features.cache.ttl: expected a number of seconds",
        ),
    ],
)
def test_a_bad_override_stops_with_the_dotted_path(
    tmp_path: Path, override: str, expected: str
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "GUARDRAILS_CONFIG"}
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "pipeline.py"),
            override,
            f"hydra.run.dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**env, "HYDRA_FULL_ERROR": "1"},
        check=False,
        timeout=300,
    )
    assert out.returncode != 0
    assert expected in out.stderr
