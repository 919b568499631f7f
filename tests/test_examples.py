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
    r"rejected (?P<rejected>\d+) malformed; (?P<unavailable>\d+) unavailable after retries"
)


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
    summary = {k: float(v) for k, v in match.groupdict().items()}
    (table,) = tables(output)
    return summary, table, output


def col(row: list[str], name: str) -> int:
    names = ["policy", "calls", "ok", "failed", "retries", "hits", "misses", "rejected"]
    return int(row[names.index(name)])


def test_default_run(tmp_path: Path) -> None:
    summary, table, output = run(tmp_path)
    assert summary["rejected"] > 0 and summary["unavailable"] == 0
    assert summary["scored"] + summary["rejected"] == summary["requests"]
    assert summary["accuracy"] > 0.8
    fetch, predict = table["fetch_features"], table["predict"]
    assert col(fetch, "retries") > 0 and col(fetch, "hits") > 0 and col(fetch, "failed") == 0
    assert col(predict, "rejected") == summary["rejected"]
    assert "expected shape [-1, 13]" in output and "expected finite values" in output


def test_each_multirun_job_prints_what_it_prints_alone(tmp_path: Path) -> None:
    # The basic launcher runs the jobs one after another in one process: the second job must
    # not see the first one's cache entries (other rows, same keys) nor add to its statistics.
    output = example(tmp_path, "-m", "job.seed=1,2", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    lines = [m.group(0) for m in SUMMARY.finditer(output)]
    counts = [row[:8] for table in tables(output) for row in table.values()]
    assert len(lines) == 2 and len(counts) == 4, output
    alone_lines, alone_counts = [], []
    for seed in (1, 2):
        single = example(tmp_path, f"job.seed={seed}", f"hydra.run.dir={tmp_path / str(seed)}")
        alone_lines += [m.group(0) for m in SUMMARY.finditer(single)]
        alone_counts += [row[:8] for table in tables(single) for row in table.values()]
    assert lines == alone_lines
    assert counts == alone_counts  # calls, ok, failed, retries, hits, misses, rejected
    assert lines[0] != lines[1]  # the seeds do differ, so the comparison means something


def test_one_attempt_makes_failures_appear(tmp_path: Path) -> None:
    summary, table, _ = run(tmp_path, "guardrails.policies.fetch_features.retry.max_attempts=1")
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
