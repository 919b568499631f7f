"""Every recipe in the README runs, so none can go stale.

The "Override recipes" table is read from README.md itself: each row's overrides run on the
example app as a user runs them (a subprocess, real Hydra), and each row's effect is checked. A
row this file has no check for fails the test: a new recipe comes with its proof.

Every fenced block of the README is claimed in ``CLAIMS``: by the test that runs it (programs
in a subprocess, in a temporary directory holding copies of ``conf/`` and ``examples/`` and the
files the README names; ``$ command`` lines through bash, their shown output compared line by
line; the service's commands against a real uvicorn process on a free loopback port), or with
the reason it cannot run alone. A new block that is neither fails ``test_every_block_is_claimed``.
Output is compared exactly except where ``ALLOWANCES`` says otherwise, each with its reason.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

import guardrails
from guardrails._policy import Policy, Settings

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def section(title: str) -> str:
    """The README's text under a heading, up to the next heading of the same level."""
    match = re.search(rf"^(#+) {re.escape(title)}\n", README, flags=re.MULTILINE)
    assert match, f"README has no section {title!r}"
    level = match.group(1)
    rest = README[match.end() :]
    end = re.search(rf"^{level} ", rest, flags=re.MULTILINE)
    return rest[: end.start()] if end else rest


def recipes() -> dict[str, list[str]]:
    """The override table: what you want -> the override strings, as the shell passes them."""
    rows: dict[str, list[str]] = {}
    for line in section("Override recipes").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 2 or not cells[1].startswith("`"):
            continue
        overrides: list[str] = []
        for code in re.findall(r"`([^`]+)`", cells[1]):
            overrides.extend(shlex.split(code))  # the shell's quoting, as a user's shell
        rows[cells[0]] = overrides
    assert len(rows) >= 8, rows
    return rows


RECIPES = recipes()


def composed(*overrides: str) -> Settings:
    return guardrails.configure(ROOT / "conf", overrides=list(overrides))


def per_call_records(output: str) -> int:
    return len(re.findall(r"fetch_features: \S+\(entity_id=int\) ok in", output))


def run_example(tmp_path: Path, *overrides: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GUARDRAILS_")}
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "pipeline.py"),
            "job.requests=40",
            "job.outage.start=0",
            "job.outage.end=0",
            f"hydra.run.dir={tmp_path / 'run'}",
            *overrides,
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        check=False,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout + out.stderr


def _policy(settings: Settings, name: str) -> Any:
    return settings.policy(name)


#: What each recipe must change, checked on the composed configuration (and, for logging,
#: on what the app printed).
EFFECTS: dict[str, Callable[[Settings, str], bool]] = {
    "change a value": lambda s, _: _policy(s, "fetch_features").retry.max_attempts == 1,
    "add a key (or a whole new policy)": lambda s, _: _policy(s, "new_fn").cache.ttl == 60,
    "set a key whether or not it exists": lambda s, _: _policy(s, "predict").log.level == "DEBUG",
    "remove a block": lambda s, _: _policy(s, "fetch_features").cache is None,
    "pick another policy set": lambda s, _: s.policies != composed().policies,
    "turn a block off, keeping its settings": lambda s, _: (
        _policy(s, "predict").memory.enabled is False
        and _policy(s, "predict").memory.max_rss is not None
    ),
    "see guardrails' per-call records": lambda _, out: per_call_records(out) > 0,
    "a chaos drill: 30% of feature fetches fail": lambda s, _: (
        s.allow_chaos and _policy(s, "fetch_features").chaos.error_rate == 0.3
    ),
    "add latency to a drill (with `allow_chaos` as above)": lambda s, _: (
        _policy(s, "fetch_features").chaos.latency == 0.2
    ),
    "keep the breaker open longer": lambda s, _: (
        _policy(s, "fetch_features").breaker.open_for == 120
    ),
    "throttle a dependency": lambda s, _: _policy(s, "fetch_features").rate_limit.rate == 50,
}


def test_every_recipe_has_a_check() -> None:
    assert sorted(RECIPES) == sorted(EFFECTS)


@pytest.mark.parametrize("want", sorted(RECIPES))
def test_an_override_recipe_works_in_the_example_app(want: str, tmp_path: Path) -> None:
    overrides = RECIPES[want]
    if "add latency" in want:  # "with allow_chaos as above"
        overrides = [*RECIPES["a chaos drill: 30% of feature fetches fail"][:1], *overrides]
    output = run_example(tmp_path, *overrides)
    guardrail_overrides = [o for o in overrides if "hydra." not in o.split("=")[0]]
    settings = composed(*guardrail_overrides)
    assert want in EFFECTS, f"no check for the recipe {want!r}: add one to EFFECTS"
    assert EFFECTS[want](settings, output), (want, overrides, output)


def test_without_the_logging_recipe_the_per_call_records_are_hidden(tmp_path: Path) -> None:
    # So the check of the logging recipe can fail.
    assert per_call_records(run_example(tmp_path)) == 0


PLAIN_APP = """
import hydra, guardrails
from guardrails import guarded

@guarded("f")
def f(x: int) -> int:
    return x

@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg):
    guardrails.configure(cfg)
    f(1)

main()
"""


def test_the_logging_recipe_works_in_an_app_with_hydra_s_default_logging(
    tmp_path: Path,
) -> None:
    # Not only in the example, whose job_logging config names the guardrails logger already.
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "config.yaml").write_text(
        "defaults: [{guardrails: default}, _self_]\n"
        "hydra: {searchpath: [pkg://guardrails.conf], run: {dir: run}}\n"
        "guardrails: {policy_defaults: {log: {level: DEBUG}}}\n"
    )
    (tmp_path / "app.py").write_text(PLAIN_APP)
    (override,) = RECIPES["see guardrails' per-call records"]
    runs = []
    for extra in ([], [override]):
        out = subprocess.run(
            [sys.executable, "app.py", *extra],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            check=False,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr
        runs.append(out.stdout + out.stderr)
    assert "f: __main__.f(x=int) ok in" not in runs[0]
    assert "f: __main__.f(x=int) ok in" in runs[1]


# --- every fenced block of the README --------------------------------------------------------

FENCE = re.compile(r"^( *)```(\w*)\s*$")


@dataclass(frozen=True)
class Block:
    line: int  # of the opening fence
    lang: str
    text: str  # dedented, as a user copies it
    section: str  # the nearest heading above it
    intro: str  # the prose between the previous block (or heading) and this one

    @property
    def where(self) -> str:
        return f"README.md:{self.line} ({self.section!r}, ```{self.lang})"


def readme_blocks() -> list[Block]:
    lines = README.splitlines()
    found: list[Block] = []
    section, intro = "", list[str]()
    i = 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if fence is None:
            heading = re.match(r"#+ (.+)$", lines[i])
            if heading:
                section, intro = heading.group(1).strip(), []
            else:
                intro.append(lines[i])
            i += 1
            continue
        indent, lang = fence.groups()
        end = i + 1
        while lines[end].strip() != "```":
            end += 1
        body = "\n".join(line[len(indent) :] for line in lines[i + 1 : end]) + "\n"
        found.append(Block(i + 1, lang, body, section, "\n".join(intro).strip()))
        intro = []
        i = end + 1
    return found


BLOCKS = readme_blocks()

#: Why a block is not run as it stands. A claim is either the name of the test in this file
#: that runs (or checks) the block, or one of these reasons.
SKETCH = "not run: a sketch of decorated signatures (`...` bodies, `np` not imported)"
HYDRA_MAIN = (
    "not run: the body of a @hydra.main app, with `...` for the task; the pipeline example "
    "is such an app and runs in test_hydra_job_lifecycle_recipes"
)
WATCH_SKETCH = "not run: `...` stands for a service's life; the live reload program above runs"
PROMQL = "not run: PromQL for a Prometheus server (the metric names are tested in tests/test_metrics_prometheus.py)"
CONFTEST = (
    "not run: a conftest for a project whose production policies cover every guarded function; "
    "the test file above guards `score`, which conf/guardrails/production.yaml has no policy for"
)
MY_APP = (
    "not run: my_app.py is the reader's app with guarded functions in an imported module; "
    "tests/test_hydra_callback.py runs Hydra's joblib launcher"
)
PROMETHEUS_YML = "checked as YAML only: Prometheus' own scrape config (test_yaml_blocks)"

#: (section, a piece of the block's text) -> the test that runs it, or why it is not run.
CLAIMS: dict[tuple[str, str], str] = {
    ("guardrails", '@guarded("predict")\nasync def'): SKETCH,
    ("guardrails", "# conf/guardrails/default.yaml"): "test_yaml_blocks",
    ("The two commands", "pip install -e '.[examples]'"): "test_the_two_commands",
    ("The two commands", "pip install -e '.[test]'"): "test_the_two_commands",
    ("Without Hydra: a YAML file, a mapping or a config directory", '@guarded("embed")'): (
        "test_quick_start_without_hydra"
    ),
    ("Without Hydra: a YAML file, a mapping or a config directory", "$ GUARDRAILS_CONFIG"): (
        "test_quick_start_without_hydra"
    ),
    ("Without Hydra: a YAML file, a mapping or a config directory", "guarded calls fail until"): (
        "test_quick_start_without_hydra"
    ),
    (
        "Without Hydra: a YAML file, a mapping or a config directory",
        'guardrails.configure("policies.yaml", overrides',
    ): "test_quick_start_without_hydra",
    ("In a Hydra app", "# conf/config.yaml"): "test_yaml_blocks",
    ("In a Hydra app", "@hydra.main"): HYDRA_MAIN,
    ("In a Hydra app", " of 240 requests (accuracy"): "test_the_two_commands",
    ("YAML reference", "list[list[float]]"): "test_yaml_blocks",
    ("Failing fast and degrading", "policies:\n  fetch_features:\n    timeout"): "test_yaml_blocks",
    ("`timeout`", "timeout:"): "test_yaml_blocks",
    ("`breaker`", "breaker:"): "test_yaml_blocks",
    ("`rate_limit`", "rate_limit:"): "test_yaml_blocks",
    ("`bulkhead`", "bulkhead:"): "test_yaml_blocks",
    ("`fallback`", "fallback:"): "test_yaml_blocks",
    ("`retry.budget` and `retry.wait.retry_after`", "budget:"): "test_yaml_blocks",
    ("`chaos`", "allow_chaos: true"): "test_yaml_blocks",
    ("`chaos`", "python examples/pipeline.py"): "test_console_block",
    ("Quieter, shorter failures", "expected: [ConnectionError]"): "test_quieter_failures_recipe",
    ("Quieter, shorter failures", "def handler"): "test_quieter_failures_recipe",
    ("Quieter, shorter failures", "INFO fetch_features"): "test_quieter_failures_recipe",
    ("Hydra multirun, forks and worker pools", "-m job.seed=1,2"): "test_console_block",
    ("Worker processes", "ProcessPoolExecutor("): "test_python_program",
    ("Worker processes", "LocalCluster("): "test_python_program",
    ("Many processes, many machines", "pip install 'hydra-guardrails[redis]'"): (
        "test_console_block"
    ),
    ("Many processes, many machines", "redis_url: redis://redis.internal"): "test_yaml_blocks",
    ("Many processes, many machines", 'get_context("spawn")'): "test_redis_program",
    ("One cache for every process: `cache.backend: redis`", "stale_for: 1m"): "test_yaml_blocks",
    ("What is stored in Redis, and how", "serializer: pickle"): "test_yaml_blocks",
    ("What it costs", "redis_bench.py --quick"): "test_console_block",
    ("Hydra job lifecycle", "# conf/config.yaml"): "test_yaml_blocks",
    ("Hydra job lifecycle", "@hydra.main"): HYDRA_MAIN,
    ("Hydra job lifecycle", "hydra.run.dir=outputs/demo"): "test_hydra_job_lifecycle_recipes",
    ("Hydra job lifecycle", '"fetch_features": {"calls"'): "test_hydra_job_lifecycle_recipes",
    ("Hydra job lifecycle", "[guardrails][INFO]"): "test_hydra_job_lifecycle_recipes",
    ("Hydra job lifecycle", "hydra.sweep.dir=outputs/sweep"): "test_console_block",
    ("Hydra job lifecycle", "python my_app.py"): MY_APP,
    ("Hydra job lifecycle", "max_attempts=zero"): "test_console_block",
    ("Live reload", "watcher.reloads, watcher.failures"): "test_python_program",
    ("Live reload", "watcher.stop()"): WATCH_SKETCH,
    ("Prometheus", "pip install"): "test_console_block",
    ("Prometheus", "import prometheus_client"): "test_python_program",
    ("Prometheus", "# error ratio per policy"): PROMQL,
    ("OpenTelemetry metrics and spans", "pip install"): "test_console_block",
    ("OpenTelemetry metrics and spans", "InMemorySpanExporter"): "test_python_program",
    ("OpenTelemetry metrics and spans", "trace: true"): "test_yaml_blocks",
    ("An inference service", "pip install 'hydra-guardrails[service]'"): "test_service_recipes",
    ("An inference service", '"request_id": "req-3"'): "test_service_recipes",
    ("An inference service", '{"down": true}'): "test_service_recipes",
    ("An inference service", "# prometheus.yml"): PROMETHEUS_YML,
    ("An inference service", "# share of predict requests"): PROMQL,
    ("Several workers and replicas: one cache, one breaker", "--workers 4"): (
        "test_service_shared_recipes"
    ),
    ("Several workers and replicas: one cache, one breaker", "# conf/shared/redis.yaml"): (
        "test_service_shared_recipes"
    ),
    ("Several workers and replicas: one cache, one breaker", "# share of feature lookups"): (
        PROMQL
    ),
    ("Errors", "(3 problems)"): "test_errors_example",
    ("Performance", "python benchmarks/overhead.py"): "test_console_block",
    ("The `guardrails` command", "$ guardrails check conf guardrails=production\n"): (
        "test_console_block"
    ),
    ("The `guardrails` command", "--import examples.pipeline\nok"): "test_console_block",
    ("The `guardrails` command", "$ guardrails explain predict conf guardrails=production guar"): (
        "test_console_block"
    ),
    ("The `guardrails` command", "explain predcit"): "test_console_block",
    ("The `guardrails` command", "show conf"): "test_console_block",
    ("The `guardrails` command", "--format json"): "test_console_block",
    ("Strict mode and typos in policy names", "fetch_featurs"): "test_console_block",
    ("Testing with guardrails", "def test_retries_back_off"): "test_python_program",
    ("Testing with guardrails", "# conftest.py"): CONFTEST,
    ("Testing with guardrails", "override_policies() as use"): "test_python_program",
    ("Checking DataFrames, Series and tensors in YAML", "unique: [id]"): "test_yaml_blocks",
    ("Checking DataFrames, Series and tensors in YAML", "InputValidationError"): (
        "test_frame_refusal_message"
    ),
    ("Cache keys for DataFrames, arrays, tensors and sparse matrices", "score(df.copy())"): (
        "test_python_program"
    ),
    ("GPU memory budget", "max_gpu: 90%"): "test_yaml_blocks",
    ("GPU memory budget", "fake_gpu(total="): "test_python_program",
    ("The example: a wine classifier on DataFrames", "&measured"): "test_yaml_blocks",
    ("The example: a wine classifier on DataFrames", "('req-61')"): "test_example_refusals",
}


def claimed(block: Block) -> list[tuple[str, str]]:
    return [key for key in CLAIMS if key[0] == block.section and key[1] in block.text]


def block(section: str, piece: str) -> Block:
    (found,) = [b for b in BLOCKS if b.section == section and piece in b.text]
    return found


def claimed_by(test: str, lang: str | None = None) -> list[Block]:
    return [
        b
        for b in BLOCKS
        if any(CLAIMS[key] == test for key in claimed(b)) and (lang is None or b.lang == lang)
    ]


def test_every_block_is_claimed() -> None:
    problems = []
    for b in BLOCKS:
        keys = claimed(b)
        if len(keys) != 1:
            problems.append(
                f"{b.where} is claimed {len(keys)} times ({keys}): add it to a runner in "
                "tests/test_readme.py and to CLAIMS, or to CLAIMS with the reason it cannot run"
            )
    for key, claim in CLAIMS.items():
        if not any(key in claimed(b) for b in BLOCKS):
            problems.append(f"CLAIMS{key} matches no README block")
        if not claim.startswith(("not run: ", "checked as YAML only: ")):
            assert callable(globals().get(claim)), f"CLAIMS{key}: no test {claim}"
    assert not problems, "\n".join(problems)


# --- running things as a user does -----------------------------------------------------------

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
VENV_BIN = Path(sys.executable).parent


def environment(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("GUARDRAILS_", "SERVICE_")) and k != "PYTHONPATH"
    }
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def workdir(tmp_path: Path) -> Path:
    """A directory like a checkout: copies of conf/ and examples/ (a run writes nothing into
    the repository, and other edits of conf/ cannot reach it), the venv and benchmarks/ linked."""
    where = tmp_path / "repo"
    where.mkdir()
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(ROOT / "conf", where / "conf", ignore=ignore)
    shutil.copytree(ROOT / "examples", where / "examples", ignore=ignore)
    (where / ".venv").symlink_to(ROOT / ".venv")
    (where / "benchmarks").symlink_to(ROOT / "benchmarks")
    return where


def shell(command: str, cwd: Path, timeout: float = 300, **env: str) -> tuple[int, str]:
    """Run a README command line through bash; its stdout and stderr, interleaved."""
    out = subprocess.run(
        ["bash", "-c", command],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=cwd,
        env=environment(**env),
        check=False,
        timeout=timeout,
    )
    return out.returncode, out.stdout


@dataclass
class Command:
    text: str  # with its continuation lines, as bash reads it
    shown: list[str] = field(default_factory=list)  # the output the README shows under it

    @property
    def status(self) -> int:
        # The README says an invalid configuration exits 1 (check, explain, a Hydra job).
        return 1 if any(s.startswith("invalid guardrails configuration") for s in self.shown) else 0


def commands(b: Block) -> list[Command]:
    """A console block's commands: `$ ` lines and their `\\` continuations, each followed by
    the output it prints; a block with no `$` holds commands only."""
    lines = b.text.splitlines()
    prompted = any(line.startswith("$ ") for line in lines)
    found: list[Command] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if prompted and not line.startswith("$ "):
            assert found, f"{b.where}: output before any command"
            found[-1].shown.append(line)
            i += 1
            continue
        text = [line[2:] if prompted else line]
        while text[-1].endswith("\\"):
            i += 1
            text.append(lines[i])
        found.append(Command("\n".join(text)))
        i += 1
    return found


#: README command -> (what runs instead, why).
SUBSTITUTES: dict[str, tuple[str, str]] = {
    "python3 -m venv .venv": ("true", "the run directory's .venv links to the project's venv"),
    ".venv/bin/python -m pytest": (
        f"cd {ROOT} && .venv/bin/python -m pytest --collect-only -q",
        "the whole suite, this file included, takes minutes: collecting it proves the command",
    ),
    "python benchmarks/redis_bench.py            # the full run, about a minute": (
        "python benchmarks/redis_bench.py --quick",
        "the full run takes a minute: the README's own smoke run instead",
    ),
    "python benchmarks/overhead.py          # about three minutes; --quick for a smoke run": (
        "python benchmarks/overhead.py --quick",
        "the full run takes three minutes: the README's own smoke run instead",
    ),
}

INSTALL = re.compile(r"(?:\.venv/bin/)?pip install (?:-e )?'(\.|[\w-]+)\[(\w+)\]'(?:\s+#.*)?")


def check_install(command: str) -> None:
    """An install command is not run: the package it names is this project, with that extra."""
    match = INSTALL.fullmatch(command.strip())
    assert match, command
    name, extra = match.groups()
    assert name in (".", PYPROJECT["project"]["name"]), command
    assert extra in PYPROJECT["project"]["optional-dependencies"], command


def run_command(command: Command, cwd: Path, where: str) -> str:
    """Run one README command (each `&&` step of a one-line chain; installs are checked, not
    run) and check its exit status and the output the README shows under it."""
    steps = command.text.split(" && ") if "\n" not in command.text else [command.text]
    output = ""
    for step in steps:
        if "pip install" in step:
            check_install(step)
            continue
        to_run = SUBSTITUTES.get(step.strip(), (step, ""))[0]
        code, output = shell(to_run, cwd)
        expected = command.status if step is steps[-1] else 0
        assert code == expected, f"{where}: `{step}` exited {code}, not {expected}:\n{output}"
    assert_shows(command.shown, output, f"{where}: `{command.text}`")
    return output


# --- comparing output ------------------------------------------------------------------------

#: Where printed output may differ from the README's, and why. Each is (pattern in the README's
#: line, what matches in the output); nothing else may differ.
ALLOWANCES: dict[str, tuple[str, str]] = {
    # durations measured on the machine that ran the example
    "duration": (r"\b\d+\.\d\d ms\b", r"\d+\.\d\d ms"),
    # memory limits resolved on this machine, and the column padding after them
    "memory": (r"\(\d+(?:\.\d)?GiB here\) +", r"\(\d+(?:\.\d)?[KMGT]iB here\) +"),
    # an absolute path the README elides
    "path": (r"/…/", r"/\S+/"),
    # a log record's timestamp, which the README leaves out of Hydra's log format
    "timestamp": (r"^(?=\[guardrails\])", r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}\]"),
}

#: The pipeline's figures that depend on timing (its breaker's open_for and the retries'
#: jitter run in real time): which requests meet the outage, so how many are answered by the
#: fallback, retried, read and cached, and the latency percentiles. The counts of requests,
#: failures, rejections and the breaker's final state do not.
PIPELINE_ALLOWANCES: dict[str, tuple[str, str]] = {
    "accuracy": (r"(?<=accuracy )0\.\d{3}", r"0\.\d{3}"),
    "reads": (r"(?<=feature store reads: )\d+", r"\d+"),
    "fallbacks": (r"\d+(?= served from the fallback| calls short-circuited)", r"\d+"),
    **{
        f"count_{key}": (rf"(?<=\b{key}=)\d+", r"\d+")
        for key in ("ok", "retries", "hits", "misses", "fallbacks")
    },
    "short_circuited": (r"(?<=short-circuited=)\d+", r"\d+"),
    "percentiles": (r"(?<=\bp\d\d=)\d+\.\d\d(?=ms)", r"\d+\.\d\d"),
}
#: In the statistics table, the same figures by column.
TIMING_COLUMNS = {"ok", "retries", "hits", "misses", "fallbacks", "short-circuited"} | {
    "p50 ms",
    "p95 ms",
    "p99 ms",
}


def line_pattern(line: str, allowances: dict[str, tuple[str, str]]) -> re.Pattern[str]:
    if not allowances:
        return re.compile(re.escape(line))
    combined = "|".join(f"(?P<{name}>{readme})" for name, (readme, _) in allowances.items())
    parts, pos = [], 0
    for match in re.finditer(combined, line):
        parts.append(re.escape(line[pos : match.start()]))
        parts.append(allowances[match.lastgroup or ""][1])
        pos = match.end()
    parts.append(re.escape(line[pos:]))
    return re.compile("".join(parts))


#: The last column, the largest growth of resident memory over one call: whether a call of
#: the model on a pandas frame grows the heap (glibc extends it 128 KiB at a time) depends on
#: the allocator and on what ran before, so the cell is "—" or a size, and the column's width
#: (its borders and header) follows.
MEMORY_COLUMN = "max Δrss"
MEMORY_CELL = r" *(?:—|\d+(?:\.\d+)? (?:B|KiB|MiB|GiB)) "


def table_patterns(lines: list[str]) -> list[re.Pattern[str]]:
    """A rich table's lines, its rows with a number allowed in the TIMING_COLUMNS and any
    size (or none) in the MEMORY_COLUMN, which is the last one."""
    (header,) = [line for line in lines if line.startswith("┃")]
    columns = [c.strip() for c in header.strip("┃").split("┃")]
    assert columns[-1] == MEMORY_COLUMN, header
    patterns = []
    for line in lines:
        if not line.startswith("│"):
            # A border or the header: exact up to the memory column, whose width may differ.
            head, cut, _ = line[:-1].rpartition(next(c for c in "┳╇┴┃" if c in line[1:-1]))
            last = rf" +{re.escape(MEMORY_COLUMN)} " if line.startswith("┃") else f"{line[-2]}+"
            patterns.append(re.compile(re.escape(head + cut) + last + re.escape(line[-1])))
            continue
        cells = line.strip("│").split("│")
        assert len(cells) == len(columns), line
        regex = [
            r" *\d+(?:\.\d+)? *"
            if column in TIMING_COLUMNS
            else MEMORY_CELL
            if column == MEMORY_COLUMN
            else re.escape(cell)
            for column, cell in zip(columns, cells, strict=True)
        ]
        patterns.append(re.compile("│" + "│".join(regex) + "│"))
    return patterns


def assert_shows(
    shown: list[str] | list[re.Pattern[str]],
    printed: str,
    where: str,
    allowances: dict[str, tuple[str, str]] = ALLOWANCES,
) -> None:
    """Each shown line is a whole line of the output, in the README's order; `...` stands for
    any lines."""
    actual = [line.rstrip() for line in printed.splitlines()]
    pos = 0
    for item in shown:
        if isinstance(item, str) and item.strip() == "...":
            continue
        pattern = item if isinstance(item, re.Pattern) else line_pattern(item.rstrip(), allowances)
        for i in range(pos, len(actual)):
            if pattern.fullmatch(actual[i]):
                pos = i + 1
                break
        else:
            pytest.fail(
                f"{where}: the README shows\n  {item}\nbut no such line follows in what it "
                f"printed:\n{printed}"
            )


def json_matches(expected: Any, actual: Any, path: str = "") -> None:
    """The README's JSON answer against the real one: floats approximately (another numpy or
    scikit-learn build rounds the last digits differently), `config.source` as any absolute
    path to the config directory in use (the README shows a deployment's /srv/app/conf)."""
    if path == ".config.source":
        assert isinstance(actual, str) and actual.startswith("/") and actual.endswith("/conf")
    elif isinstance(expected, dict):
        assert isinstance(actual, dict) and sorted(actual) == sorted(expected), (path, actual)
        for key in expected:
            json_matches(expected[key], actual[key], f"{path}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), (path, actual)
        for i, (e, a) in enumerate(zip(expected, actual, strict=True)):
            json_matches(e, a, f"{path}[{i}]")
    elif isinstance(expected, float):
        assert actual == pytest.approx(expected, rel=1e-6, abs=1e-9), (path, actual)
    else:
        assert actual == expected and type(actual) is type(expected), (path, actual)


def python(program: Path, cwd: Path, *args: str, **env: str) -> tuple[int, str]:
    out = subprocess.run(
        [sys.executable, str(program), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=cwd,
        env=environment(**env),
        check=False,
        timeout=300,
    )
    return out.returncode, out.stdout


# --- the runners -----------------------------------------------------------------------------


def test_console_block(tmp_path: Path) -> None:
    """Every console block claimed here, each in its own directory, each block's commands in
    order; the blocks run side by side (most of their time is Python and Hydra starting up).
    A failure names its README line."""
    todo = claimed_by("test_console_block")
    assert len(todo) >= 10

    def run(b: Block) -> None:
        cwd = workdir(tmp_path / f"line{b.line}")
        for command in commands(b):
            run_command(command, cwd, b.where)

    for b in todo:
        (tmp_path / f"line{b.line}").mkdir()
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = [pool.submit(run, b) for b in todo]
    problems = [str(f.exception()) for f in futures if f.exception() is not None]
    assert not problems, "\n\n".join(problems)


def test_the_two_commands(tmp_path: Path) -> None:
    """Both install lines (the extras they name exist), the example's run and what it prints,
    and the test suite's command (collected, not run: this file is part of it)."""
    cwd = workdir(tmp_path)
    example = block("The two commands", "'.[examples]'")
    (command,) = commands(example)
    printed = run_command(command, cwd, example.where)
    table = block("In a Hydra app", " of 240 requests (accuracy")
    assert "ends with the statistics table:" in table.intro
    summary, *rows = table.text.splitlines()
    shown = [line_pattern(summary, PIPELINE_ALLOWANCES), *table_patterns(rows)]
    assert_shows(shown, printed, table.where)
    tests = block("The two commands", "'.[test]'")
    (command,) = commands(tests)
    assert "tests collected" in run_command(command, cwd, tests.where)


def named_file(b: Block) -> str:
    """The file name the README gives a block on the line before it ("`app.py`:")."""
    match = re.search(r"`([\w.]+)`:$", b.intro)
    assert match, f"{b.where}: the README names no file for it"
    return match.group(1)


def test_quick_start_without_hydra(tmp_path: Path) -> None:
    section = "Without Hydra: a YAML file, a mapping or a config directory"
    cwd = workdir(tmp_path)
    # The README names a policies.yaml it does not show; the override recipe below it changes
    # embed's retry.max_attempts with a plain `key=value`, so the file must write that key.
    (cwd / "policies.yaml").write_text("policies:\n  embed:\n    retry: {max_attempts: 3}\n")
    program = block(section, '@guarded("embed")').text
    program += block(section, 'guardrails.configure("policies.yaml", overrides').text
    program += 'assert guardrails.policy("embed").retry.max_attempts == 1\n'
    (cwd / "quick_start.py").write_text(program)
    code, printed = python(cwd / "quick_start.py", cwd)
    assert code == 0, printed

    environment_block = block(section, "$ GUARDRAILS_CONFIG")
    for command in commands(environment_block):
        run_command(command, cwd, environment_block.where)

    # What a guarded call raises when those variables hold a bad value.
    error = block(section, "guarded calls fail until")
    variables = re.search(
        r"from \$GUARDRAILS_CONFIG=(\S+) with \$GUARDRAILS_OVERRIDES=(\S+) \(", error.text
    )
    assert variables, error.text
    (cwd / "call.py").write_text(
        "import guardrails\n"
        "from guardrails import guarded\n\n"
        "@guarded('fetch_features')\ndef fetch_features(x: int) -> int:\n    return x\n\n"
        "try:\n    fetch_features(1)\n"
        "except guardrails.PolicyConfigError as error:\n    raise SystemExit(str(error))\n"
    )
    code, printed = python(
        cwd / "call.py",
        cwd,
        GUARDRAILS_CONFIG=variables.group(1),
        GUARDRAILS_OVERRIDES=variables.group(2),
    )
    assert code == 1, printed
    assert_shows(error.text.splitlines(), printed, error.where)


def test_quieter_failures_recipe(tmp_path: Path) -> None:
    section = "Quieter, shorter failures"
    cwd = workdir(tmp_path)
    config, app = block(section, "expected: [ConnectionError]"), block(section, "def handler")
    (cwd / named_file(config)).write_text(config.text)
    (cwd / named_file(app)).write_text(app.text)
    shown = block(section, "INFO fetch_features")
    assert f"`python {named_file(app)}`" in shown.intro, shown.intro
    code, printed = python(cwd / named_file(app), cwd)
    assert code == 1, printed  # "the KeyError ends the script"
    allowances = {
        **ALLOWANCES,
        # `python app.py` shows the script's absolute path; the README leaves its directory out
        "script": (r'(?<=  File ")(?=\w+\.py")', r"/\S+/"),
    }
    assert_shows(shown.text.splitlines(), printed, shown.where, allowances)
    assert printed.count("Traceback") == 2, printed


def test_hydra_job_lifecycle_recipes(tmp_path: Path) -> None:
    section = "Hydra job lifecycle"
    cwd = workdir(tmp_path)
    run = block(section, "hydra.run.dir=outputs/demo")
    for command in commands(run):
        run_command(command, cwd, run.where)

    # The statistics file: the README's keys, the figures that do not depend on timing.
    shown = json.loads(block(section, '"fetch_features": {"calls"').text)
    written = json.loads((cwd / "outputs/demo/guardrails_stats.json").read_text())
    assert sorted(written) == sorted(shown)
    for policy, figures in shown.items():
        for key, value in figures.items():
            if key == "...":
                continue
            assert key in written[policy], (policy, key)
            if key in ("calls", "failures", "rejected", "breaker_state"):
                assert written[policy][key] == value, (policy, key, written[policy][key])
            else:
                assert type(written[policy][key]) is type(value), (policy, key)

    # `log_report: true` in an app with Hydra's default logging (the example logs through rich
    # and sets log_report: false, since it prints the table itself).
    report = block(section, "[guardrails][INFO]")
    assert "With `log_report: true`" in report.intro
    code, printed = shell(
        "python examples/pipeline.py hydra.run.dir=outputs/report hydra/job_logging=default "
        "hydra.callbacks.guardrails.log_report=true",
        cwd,
    )
    assert code == 0, printed
    assert_shows(
        report.text.splitlines(),
        (cwd / "outputs/report/pipeline.log").read_text(),
        report.where,
        {**ALLOWANCES, **PIPELINE_ALLOWANCES},
    )


def expected_prints(program: str) -> list[str]:
    """`print(...)  # 5 1 0`: the line a program's print shows, as its comment says."""
    return re.findall(r"^\s*print\(.*\)\s*#\s*(.+)$", program, flags=re.MULTILINE)


@pytest.mark.parametrize("b", claimed_by("test_python_program"), ids=lambda b: f"line{b.line}")
def test_python_program(b: Block, tmp_path: Path) -> None:
    """A complete program runs and prints what its comments say; a complete test file (the
    README says `pytest FILE`) passes every test."""
    cwd = workdir(tmp_path)
    as_test = re.search(r"`pytest (\w+\.py)`", b.intro)
    if as_test:
        (cwd / as_test.group(1)).write_text(b.text)
        code, printed = shell(f"python -m pytest -q -p no:cacheprovider {as_test.group(1)}", cwd)
        tests = len(re.findall(r"^def test_", b.text, flags=re.MULTILINE))
        assert code == 0 and f"{tests} passed" in printed, printed
        return
    (cwd / "program.py").write_text(b.text)
    code, printed = python(cwd / "program.py", cwd)
    assert code == 0, f"{b.where}:\n{printed}"
    assert_shows(expected_prints(b.text), printed, b.where)


MYAPP = "def defaults(*args, **kwargs):\n    return {}\n"


def yaml_items(b: Block) -> list[Any]:
    """A block's YAML; a block of one-line alternatives for the same key (`fallback: {value:
    ...}` then `fallback: {function: ...}`) is each of them."""
    lines = [line for line in b.text.splitlines() if line.strip() and not line.startswith("#")]
    keys = [line.split(":")[0] for line in lines]
    if len(set(keys)) < len(keys) and all(not line.startswith(" ") for line in lines):
        return [yaml.safe_load(line) for line in lines]
    return [yaml.safe_load(b.text)]


def test_yaml_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every YAML block parses; a policy set, a policy's blocks and a Hydra primary config are
    valid guardrails configuration (myapp.features:defaults, the README's fallback function,
    is a stub here)."""
    (tmp_path / "myapp").mkdir()
    (tmp_path / "myapp" / "__init__.py").write_text("")
    (tmp_path / "myapp" / "features.py").write_text(MYAPP)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("GUARDRAILS_CACHE_SECRET", "a long random string")
    node_keys = {"policies", "allow_chaos", "strict", "policy_defaults", "redis_url"}
    checked = 0
    for b in BLOCKS:
        if b.lang != "yaml":
            continue
        items = yaml_items(b)
        claim = CLAIMS[claimed(b)[0]]
        if claim == PROMETHEUS_YML:
            assert items[0]["scrape_configs"], b.where
            continue
        if claim != "test_yaml_blocks":
            continue  # a file another test writes and runs
        for item in items:
            if b.text.startswith("# conf/config.yaml"):
                conf = tmp_path / f"conf{b.line}"
                conf.mkdir()
                (conf / "config.yaml").write_text(b.text)
                settings = guardrails.configure(conf)
            elif set(item) == {"guardrails"} and "${" in b.text:  # interpolations: a file
                written = tmp_path / f"line{b.line}.yaml"
                written.write_text(yaml.safe_dump(item))
                settings = guardrails.configure(written)
            elif set(item) == {"guardrails"}:  # a Hydra config's guardrails node
                settings = guardrails.configure(item["guardrails"])
            elif set(item) <= node_keys:
                settings = guardrails.configure(item)
            elif set(item) <= set(Policy.model_fields):  # one policy's blocks
                settings = guardrails.configure({"policies": {"p": item}})
            else:  # policies by name, as they sit under `policies:`
                settings = guardrails.configure({"policies": item})
            assert settings.policies is not None, b.where
            checked += 1
    assert checked >= 12
    for name in ("myapp.features", "myapp"):
        monkeypatch.delitem(sys.modules, name, raising=False)


def test_redis_program(tmp_path: Path, redis_url: str) -> None:
    """The README's two-process program against a real redis-server: the second process is
    answered from Redis."""
    (b,) = claimed_by("test_redis_program")
    cwd = workdir(tmp_path)
    (cwd / "program.py").write_text(b.text)
    code, printed = python(cwd / "program.py", cwd, GUARDRAILS_REDIS_URL=redis_url)
    assert code == 0, f"{b.where}:\n{printed}"
    assert_shows(expected_prints(b.text), printed, b.where)


def test_errors_example() -> None:
    """The three problems the Errors section shows, from the configuration they name."""
    shown = block("Errors", "(3 problems)")
    with pytest.raises(guardrails.PolicyConfigError) as caught:
        guardrails.configure(
            {
                "policies": {
                    "predict": {
                        "retry": {"max_attempts": "five"},
                        "cache": {"tll": "5m"},
                        "validate": {"input": "schemas:Request"},
                    }
                }
            }
        )
    printed = str(caught.value)
    assert_shows(shown.text.splitlines(), printed, shown.where)
    assert len(caught.value.problems) == 3


FRAME_REFUSAL = """
import sys

import numpy as np
import pandas as pd
import yaml

import guardrails
from guardrails import guarded

guardrails.configure(yaml.safe_load(open(sys.argv[1]))["guardrails"])


@guarded("predict")
def predict(batch: pd.DataFrame) -> np.ndarray:
    return np.full(len(batch), 0.5)


# The frame the README describes: no `id`, nulls at rows 17 and 230, a negative at row 4; the
# other columns pass their checks.
alcohol = np.full(300, 12.5)
alcohol[[17, 230]] = np.nan
alcohol[4] = -1.0
batch = pd.DataFrame(
    {
        "alcohol": alcohol,
        "quality": pd.array([5] * 300, dtype="Int64"),
        "color": pd.Categorical(["red", "white"] * 150),
    }
)
try:
    predict(batch)
except guardrails.InputValidationError as error:
    print(repr(error.errors))
    raise
"""


def collapsed(text: str) -> str:
    return " ".join(text.split())


def test_frame_refusal_message(tmp_path: Path) -> None:
    """The refusal the README shows is the last line of the traceback a real call prints with
    the YAML above it (wrapped in the README: compared with whitespace collapsed), and the
    `.errors` pair and the configuration error quoted below it are real too."""
    title = "Checking DataFrames, Series and tensors in YAML"
    config, shown = block(title, "unique: [id]"), block(title, "InputValidationError")
    assert "with the YAML above" in shown.intro, shown.intro
    (tmp_path / "checks.yaml").write_text(config.text)
    (tmp_path / "program.py").write_text(FRAME_REFUSAL)
    code, printed = python(tmp_path / "program.py", tmp_path, "checks.yaml")
    assert code == 1, printed
    assert printed.splitlines()[-1] == collapsed(shown.text), printed
    prose = section(title)
    pair = re.search(r"\(`(\(\"batch\.alcohol\", \"[^`]+\"\))`\)", prose)
    assert pair, prose
    assert pair.group(1).replace('"', "'") in printed, printed

    # "Configuration errors name the key: `<key>: <message>`"
    quoted = re.search(r"Configuration errors name the key: `([^`]+)`", prose)
    assert quoted, prose
    key, message = collapsed(quoted.group(1)).split(": ", 1)
    assert key.endswith(".columns.alcohol.min"), key
    with pytest.raises(guardrails.PolicyConfigError) as caught:
        guardrails.configure(
            {
                "policies": {
                    "predict": {
                        "validate": {"args": {"batch": {"columns": {"alcohol": {"min": "zero"}}}}}
                    }
                }
            }
        )
    problems = [line.strip() for line in str(caught.value).splitlines()]
    assert f"{key}: {message}" in problems, str(caught.value)


def rich_records(output: str) -> list[str]:
    """The log records of a rich console handler, each on one line: a record starts where the
    level column holds a level; its wrapped lines are joined with single spaces."""
    records: list[str] = []
    for line in output.splitlines():
        start = re.match(r"(?:\[\d\d:\d\d:\d\d\] ?| {11})([A-Z]+) +(.*)$", line)
        if start and start.group(1) in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            records.append(f"{start.group(1)} {start.group(2).strip()}")
        elif records and line.strip():
            records[-1] += " " + line.strip()
    return records


def test_example_refusals(tmp_path: Path) -> None:
    """The example's YAML is predict's policy in conf/guardrails/default.yaml (the README
    leaves out the columns written `*measured`, saying how many), and each refusal the README quotes ends a
    WARNING record of a real run of the batch job (rich wraps the records to the terminal)."""
    section = "The example: a wine classifier on DataFrames"
    shown_policy = yaml.safe_load(block(section, "&measured").text)["predict"]
    real = yaml.safe_load((ROOT / "conf/guardrails/default.yaml").read_text())
    real_policy = real["policies"]["predict"]
    assert shown_policy["validate"]["input"] == real_policy["validate"]["input"]
    assert shown_policy["validate"]["output"] == real_policy["validate"]["output"]
    shown_features = shown_policy["validate"]["args"]["features"]
    real_features = real_policy["validate"]["args"]["features"]
    assert {k: v for k, v in real_features.items() if k != "columns"} == {
        k: v for k, v in shown_features.items() if k != "columns"
    }
    measured = shown_features["columns"]["malic_acid"]
    for name, check in real_features["columns"].items():
        assert shown_features["columns"].get(name, measured) == check, name
    other = re.search(
        r"# \.\.\. and the other (\w+) the same way", block(section, "&measured").text
    )
    assert other, "the README says how many columns it leaves out"
    left_out = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
    assert len(real_features["columns"]) == len(shown_features["columns"]) + 1 + left_out.index(
        other.group(1)
    )

    cwd = workdir(tmp_path)
    refusals = block(section, "('req-61')")
    assert "The batch job" in refusals.intro, refusals.intro
    code, printed = shell("python examples/pipeline.py", cwd)
    assert code == 0, printed
    records = [r for r in rich_records(printed) if r.startswith("WARNING predict: ")]
    assert records, printed
    for line in refusals.text.splitlines():
        ending = " " + collapsed(line)
        assert any(r.endswith(ending) for r in records), (
            f"{refusals.where}: no refusal in a run of the example ends with\n  {line}\n"
            + "\n".join(records)
        )


# --- the inference service -------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Service:
    """One README command that starts the service, on a free port instead of 8000."""

    def __init__(self, command: str, cwd: Path, log: Path) -> None:
        self.port = free_port()
        words = shlex.split(command.replace("\\\n", " "), comments=True)
        env = {}
        while "=" in words[0]:
            name, value = words.pop(0).split("=", 1)
            env[name] = value
        assert words[words.index("--port") + 1] == "8000", command
        words[words.index("--port") + 1] = str(self.port)
        if words[0] == "python":
            words[0] = sys.executable
        else:
            words[0] = str(VENV_BIN / words[0])
        self.command = command
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                words, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, env=environment(**env)
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 90
        while True:
            try:
                answer = httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=5)
            except httpx.TransportError:
                pass
            else:
                assert answer.status_code == 200, (self.command, answer.text)
                return
            try:
                code = self.proc.wait(timeout=0.2)
            except subprocess.TimeoutExpired:
                pass
            else:
                pytest.fail(f"`{self.command}` exited {code} at startup:\n{self.output()}")
            assert time.monotonic() < deadline, f"`{self.command}` not ready:\n{self.output()}"

    def curl(self, command: Command, cwd: Path, where: str) -> None:
        """A curl line through bash, at this service; its JSON answer as the README shows it."""
        assert "localhost:8000" in command.text, command.text
        code, printed = shell(command.text.replace("localhost:8000", f"127.0.0.1:{self.port}"), cwd)
        assert code == 0, (where, command.text, printed)
        if not command.shown:
            assert printed == "", (where, command.text, printed)
            return
        (shown,) = command.shown
        json_matches(json.loads(shown), json.loads(printed))

    def stop(self) -> None:
        """SIGTERM, as a supervisor stops it; uvicorn shuts down gracefully."""
        if self.proc.poll() is not None:
            pytest.fail(f"`{self.command}` died:\n{self.output()}")
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=60)
        assert code in (0, -signal.SIGTERM), self.output()
        assert "Application shutdown complete." in self.output(), self.output()


def test_service_recipes(tmp_path: Path) -> None:
    """Each start command of the service (the plain one serves the requests block; the drill's
    own command, with --admin, serves the drill), then the curl lines as written."""
    section = "An inference service"
    cwd = workdir(tmp_path)
    starting = block(section, "pip install 'hydra-guardrails[service]'")
    install, *starts = commands(starting)
    check_install(install.text)
    requests = block(section, '"request_id": "req-3"')
    drill = block(section, '{"down": true}')
    (admin,) = re.findall(r"\(`(python examples/service\.py [^`]*--admin)`\)", drill.intro)
    services: list[Service] = []
    try:
        for i, command in enumerate([*(c.text for c in starts), admin]):
            services.append(Service(command, cwd, tmp_path / f"service{i}.log"))
        for service in services:
            service.wait_ready()
        plain, admin_service = services[0], services[-1]
        assert plain.command == "python examples/service.py --port 8000", plain.command
        for command in commands(requests):
            plain.curl(command, cwd, requests.where)
        for command in commands(drill):
            admin_service.curl(command, cwd, drill.where)
        for service in services:
            service.stop()
    finally:
        for service in services:
            if service.proc.poll() is None:
                service.proc.kill()
                service.proc.wait()


def test_service_shared_recipes(tmp_path: Path, redis_url: str) -> None:
    """The scaled-out service's two start commands (a uvicorn replica of 4 workers and a
    script replica) against a real redis-server: a row the first replica read is a shared
    hit in the second; the YAML shown is conf/shared/redis.yaml's, comments aside."""
    section = "Several workers and replicas: one cache, one breaker"
    shown = block(section, "# conf/shared/redis.yaml")
    assert yaml.safe_load(shown.text) == yaml.safe_load(
        (ROOT / "conf" / "shared" / "redis.yaml").read_text()
    ), shown.where
    cwd = workdir(tmp_path)
    starts = commands(block(section, "--workers 4"))
    assert len(starts) == 2
    services: list[Service] = []
    try:
        for i, command in enumerate(starts):
            text = command.text.replace("redis://localhost:6379/0", redis_url)
            services.append(Service(text, cwd, tmp_path / f"shared{i}.log"))
        for service in services:
            service.wait_ready()
        body = {"request_id": "req-1", "entity_id": 12}
        answers = [
            httpx.post(f"http://127.0.0.1:{s.port}/predict", json=body, timeout=30)
            for s in services
        ]
        assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
        assert answers[0].json() == answers[1].json()
        scraped = httpx.get(f"http://127.0.0.1:{services[1].port}/metrics", timeout=30).text
        assert 'guardrails_cache_shared_hits_total{policy="fetch_features"} 1.0' in scraped
        for service in services:
            service.stop()
    finally:
        for service in services:
            if service.proc.poll() is None:
                service.proc.kill()
                service.proc.wait()
