"""``guardrails.hydra.GuardrailsCallback``: real ``@hydra.main`` apps run as subprocesses.

The app (written under tmp_path) guards four functions whose figures are fixed by the job's
seed: ``flaky`` (fails ``i % 4`` times per key before it answers; retry and cache), ``dep``
(down in odd-seeded jobs; a breaker that stays open for an hour), ``noisy`` (a seeded chaos
drill) and ``limited`` (a rate limit of one an hour, burst 5). A job that inherited the
last job's breaker, bucket, dice, cache or counters shows other figures than the same job
run alone.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from guardrails._stats import PolicyStats
from guardrails.hydra import GuardrailsCallback, JobConfigurationError, write_stats

ROOT = Path(__file__).resolve().parents[1]
FIELDS = set(PolicyStats.__dataclass_fields__)
#: Fields that depend on time, not on what the job did.
TIMED = {"p50_ms", "p95_ms", "p99_ms"}
CALLS = 30
KEYS = 20

TASKS = '''
"""The app's guarded functions, in a module: a launcher's workers import them."""

from guardrails import guarded

ATTEMPTS: dict[int, int] = {}
DOWN = [False]


def start(seed: int) -> None:
    """The app's own state, afresh for each job (guardrails' is the callback's)."""
    ATTEMPTS.clear()
    DOWN[0] = seed % 2 == 1  # odd jobs find the dependency down


@guarded("flaky")
def flaky(i: int) -> int:
    ATTEMPTS[i] = ATTEMPTS.get(i, 0) + 1
    if ATTEMPTS[i] <= i % 4:  # key i fails i % 4 times before it answers
        raise ConnectionError(f"flaky {i}: attempt {ATTEMPTS[i]}")
    return i * i


@guarded("dep")
def dep(i: int) -> int:
    if DOWN[0]:
        raise ConnectionError("dependency down")
    return i


@guarded("noisy")
def noisy(i: int) -> int:
    return i


@guarded("limited")
def limited(i: int) -> int:
    return i
'''

HEADER = """
import os
import random
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

import guardrails
"""

BODY = """

def attempt(fn, i):
    try:
        fn(i)
    except Exception:
        pass  # counted by guardrails; the app carries on


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    out = Path(HydraConfig.get().runtime.output_dir)
    (out / "pid").write_text(str(os.getpid()))
    start(cfg.job.seed)
    rng = random.Random(cfg.job.seed)
    for n in range(cfg.job.calls):
        attempt(flaky, rng.randrange(cfg.job.n_keys))
        if n == cfg.job.reconfigure_at:
            guardrails.configure(cfg)  # the older recipe, midway: must not reset the job
    for i in range(10):
        attempt(dep, i)
        attempt(noisy, i)
    for i in range(3):
        attempt(limited, i)
    if cfg.job.crash:
        raise RuntimeError("the job crashed after its calls")


if __name__ == "__main__":
    main()
"""

#: The guarded functions in a module the script imports (as real projects have them).
APP = HEADER + "from tasks import dep, flaky, limited, noisy, start\n" + BODY
#: The guarded functions in the script itself (``__main__``).
SCRIPT_ONLY = HEADER + TASKS.split('"""', 2)[2] + BODY

CONFIG = f"""
defaults:
  - guardrails: default
  - _self_

hydra:
  searchpath: [pkg://guardrails.conf]
  job: {{chdir: false}}
  callbacks:
    guardrails:
      _target_: guardrails.hydra.GuardrailsCallback

job: {{seed: 2, calls: {CALLS}, n_keys: {KEYS}, reconfigure_at: -1, crash: false}}

guardrails:
  strict: true
  allow_chaos: true
  policy_defaults:
    log: {{level: DEBUG}}
  policies:
    flaky:
      retry: {{max_attempts: 3, wait: {{initial: 0s, max: 0s}}}}
      cache: {{ttl: 1h, key: [i]}}
    dep:
      breaker: {{failure_rate: 50%, window: 4, min_calls: 4, open_for: 1h}}
    noisy:
      chaos: {{error_rate: 50%, seed: 3}}
    limited:
      rate_limit: {{rate: 1/h, burst: 5}}
"""


def write_app(where: Path, *, main: str = APP, tasks: str = TASKS) -> Path:
    (where / "conf").mkdir(parents=True)
    (where / "conf" / "config.yaml").write_text(CONFIG)
    (where / "tasks.py").write_text(textwrap.dedent(tasks))
    (where / "app.py").write_text(textwrap.dedent(main))
    return where


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_app(tmp_path_factory.mktemp("app"))


def run(app: Path, *arguments: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GUARDRAILS_", "HYDRA_"))}
    out = subprocess.run(
        [sys.executable, str(app / "app.py"), *arguments],
        capture_output=True,
        text=True,
        cwd=app,
        env=env,
        check=False,
        timeout=300,
    )
    if ok:
        assert out.returncode == 0, out.stdout + out.stderr
    return out


def stats_of(job_dir: Path) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = json.loads((job_dir / "guardrails_stats.json").read_text())
    return found


def counts(found: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The figures of a job that do not depend on time."""
    return {name: {k: v for k, v in s.items() if k not in TIMED} for name, s in found.items()}


class Alone:
    """Jobs run alone (one process each), by seed, computed once per module."""

    def __init__(self, app: Path, where: Path) -> None:
        self.app, self.where, self.done = app, where, dict[int, dict[str, Any]]()

    def __call__(self, seed: int) -> dict[str, dict[str, Any]]:
        if seed not in self.done:
            run(self.app, f"job.seed={seed}", f"hydra.run.dir={self.where / str(seed)}")
            self.done[seed] = counts(stats_of(self.where / str(seed)))
        return self.done[seed]


@pytest.fixture(scope="module")
def alone(app: Path, tmp_path_factory: pytest.TempPathFactory) -> Alone:
    return Alone(app, tmp_path_factory.mktemp("alone"))


def expected_flaky(seed: int, max_attempts: int = 3) -> Counter[str]:
    """What ``flaky`` counts in a job: the app's calls replayed against a model of retry
    (attempts up to ``max_attempts``) under a cache (a success is stored; a failure is not)."""
    rng = random.Random(seed)
    attempts: Counter[int] = Counter()
    cached: set[int] = set()
    c: Counter[str] = Counter()
    for _ in range(CALLS):
        i = rng.randrange(KEYS)
        c["calls"] += 1
        if i in cached:
            c["cache_hits"] += 1
            c["successes"] += 1
            continue
        c["cache_misses"] += 1
        for n in range(max_attempts):
            attempts[i] += 1
            if attempts[i] > i % 4:
                cached.add(i)
                c["successes"] += 1
                break
            if n + 1 < max_attempts:
                c["retries"] += 1
        else:
            c["failures"] += 1
    return c


def assert_flaky(found: dict[str, Any], model: Counter[str]) -> None:
    for field in ("calls", "successes", "failures", "retries", "cache_hits", "cache_misses"):
        assert found[field] == model[field], (field, found, model)


def test_a_run_writes_the_jobs_statistics_with_exact_counts(app: Path, tmp_path: Path) -> None:
    run(app, "job.seed=2", f"hydra.run.dir={tmp_path}")
    found = stats_of(tmp_path)
    assert set(found) == {"dep", "flaky", "limited", "noisy"}
    assert all(set(s) == FIELDS for s in found.values())
    model = expected_flaky(2)
    assert model["failures"] > 0 and model["retries"] > 0 and model["cache_hits"] > 0
    assert_flaky(found["flaky"], model)
    assert found["flaky"]["p50_ms"] is not None  # latencies are recorded (log is on)
    assert found["dep"] == {
        **found["dep"],
        **{"calls": 10, "successes": 10, "failures": 0, "breaker_state": "closed"},
    }
    noisy = found["noisy"]
    assert noisy["calls"] == 10 and 0 < noisy["injected"] == noisy["failures"] < 10
    assert found["limited"]["successes"] == 3 and found["limited"]["rate_limited"] == 0
    # The report is logged on the guardrails logger (into the job's log), one line a policy.
    log = (tmp_path / "app.log").read_text()
    assert f"[guardrails][INFO] - guardrails: flaky: calls={CALLS} ok={model['successes']}" in log
    assert f"written to {tmp_path / 'guardrails_stats.json'}" in log
    # Written atomically: no temporary file is left beside it.
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".g")) == []


def test_an_odd_seed_opens_the_breaker(alone: Alone) -> None:
    # What makes the multirun tests mean something: job 1's breaker opens, job 2's must not.
    dep = alone(1)["dep"]
    assert dep["breaker_state"] == "open" and dep["short_circuited"] == 6
    assert alone(2)["dep"]["breaker_state"] == "closed"
    assert alone(1)["noisy"] != alone(2)["noisy"] or alone(1)["flaky"] != alone(2)["flaky"]


def test_each_job_of_a_multirun_counts_what_it_counts_alone(
    app: Path, alone: Alone, tmp_path: Path
) -> None:
    # The basic launcher runs the jobs one after another in this one process: each must get
    # a closed breaker, a full bucket, new chaos dice, an empty cache and zeroed counters.
    run(app, "-m", "job.seed=1,2,3", f"hydra.sweep.dir={tmp_path}")
    pids = {(tmp_path / str(n) / "pid").read_text() for n in range(3)}
    assert len(pids) == 1
    for n, seed in enumerate((1, 2, 3)):
        assert counts(stats_of(tmp_path / str(n))) == alone(seed), f"job {n} (seed {seed})"


def test_the_joblib_launcher_reuses_workers_and_each_job_counts_what_it_counts_alone(
    app: Path, alone: Alone, tmp_path: Path
) -> None:
    seeds = (1, 2, 3, 4, 5)
    run(
        app,
        "-m",
        f"job.seed={','.join(map(str, seeds))}",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        f"hydra.sweep.dir={tmp_path}",
    )
    pids = [(tmp_path / str(n) / "pid").read_text() for n in range(len(seeds))]
    assert len(set(pids)) < len(seeds), pids  # two workers ran five jobs: some ran several
    for n, seed in enumerate(seeds):
        assert counts(stats_of(tmp_path / str(n))) == alone(seed), f"job {n} (seed {seed})"


def test_a_job_that_raises_still_writes_its_statistics(
    app: Path, alone: Alone, tmp_path: Path
) -> None:
    out = run(app, "job.seed=2", "job.crash=true", f"hydra.run.dir={tmp_path}", ok=False)
    assert out.returncode == 1
    assert "RuntimeError: the job crashed after its calls" in out.stderr
    assert counts(stats_of(tmp_path)) == alone(2)
    assert "guardrails: the job failed with 4 policies in use" in (tmp_path / "app.log").read_text()


def test_an_app_that_also_calls_configure_keeps_its_counts(
    app: Path, alone: Alone, tmp_path: Path
) -> None:
    # The callback configured the job; the app's own configure(cfg) midway is the same job.
    run(app, "job.seed=2", "job.reconfigure_at=10", f"hydra.run.dir={tmp_path}")
    assert counts(stats_of(tmp_path)) == alone(2)


def test_an_override_on_the_command_line_changes_the_counts(
    app: Path, alone: Alone, tmp_path: Path
) -> None:
    run(
        app,
        "job.seed=2",
        "guardrails.policies.flaky.retry.max_attempts=1",
        f"hydra.run.dir={tmp_path}",
    )
    found = stats_of(tmp_path)["flaky"]
    model = expected_flaky(2, max_attempts=1)
    assert_flaky(found, model)
    assert found["retries"] == 0 and found["failures"] > alone(2)["flaky"]["failures"]


def test_a_bad_policy_fails_the_job_before_it_runs(app: Path, tmp_path: Path) -> None:
    # Hydra turns an exception raised by a callback into a warning and runs the job anyway
    # (here: unguarded). The callback stops the job instead, with every problem named.
    out = run(
        app,
        "guardrails.policies.flaky.retry.max_attempts=zero",
        "guardrails.policies.dep.breaker.window=-1",
        f"hydra.run.dir={tmp_path}",
        ok=False,
    )
    assert out.returncode == 1, out.stdout + out.stderr
    assert "the job did not run" in out.stderr
    assert "guardrails.policies.flaky.retry.max_attempts: Input should be a valid integer" in (
        out.stderr
    )
    assert "guardrails.policies.dep.breaker.window" in out.stderr
    assert not (tmp_path / "pid").exists()  # the task never ran
    assert not (tmp_path / "guardrails_stats.json").exists()
    assert "guardrails: the job stops before its task runs" in (tmp_path / "app.log").read_text()


@pytest.mark.parametrize("launcher", [(), ("hydra/launcher=joblib", "hydra.launcher.n_jobs=2")])
def test_a_bad_policy_in_one_job_of_a_multirun_fails_the_multirun(
    app: Path, tmp_path: Path, launcher: tuple[str, ...]
) -> None:
    out = run(
        app,
        "-m",
        "guardrails.policies.flaky.retry.max_attempts=2,0",
        *launcher,
        f"hydra.sweep.dir={tmp_path}",
        ok=False,
    )
    assert out.returncode == 1, out.stdout + out.stderr
    assert "guardrails.policies.flaky.retry.max_attempts: Input should be greater than" in (
        out.stderr
    )
    assert not (tmp_path / "1" / "pid").exists()


def test_the_callbacks_options(app: Path, tmp_path: Path) -> None:
    out = run(
        app,
        "+hydra.callbacks.guardrails.stats_file=stats/guardrails.json",
        "+hydra.callbacks.guardrails.log_report=false",
        f"hydra.run.dir={tmp_path}",
    )
    assert json.loads((tmp_path / "stats" / "guardrails.json").read_text())["flaky"]["calls"] == 30
    assert not (tmp_path / "guardrails_stats.json").exists()
    assert "guardrails: flaky:" not in out.stdout + out.stderr
    out = run(app, "+hydra.callbacks.guardrails.stats_file=null", f"hydra.run.dir={tmp_path}/b")
    assert not (tmp_path / "b" / "guardrails_stats.json").exists()
    assert "guardrails: flaky: calls=30" in out.stdout


def test_guarded_functions_defined_in_the_script_run_in_a_joblib_multirun(
    alone: Alone, tmp_path: Path
) -> None:
    # The launcher pickles the task, and with it (by value: the script is no module a worker
    # can import) the guarded functions it uses; each arrives guarded, compiled against the
    # job's configuration, and counts what the same job counts alone.
    app = write_app(tmp_path / "script", main=SCRIPT_ONLY)
    seeds = (1, 2)
    out = run(
        app,
        "-m",
        f"job.seed={','.join(map(str, seeds))}",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    )
    assert "cannot pickle" not in out.stdout + out.stderr
    for n, seed in enumerate(seeds):
        assert counts(stats_of(tmp_path / "sweep" / str(n))) == alone(seed), f"job {n}"


def test_statistics_are_written_atomically_or_not_at_all(tmp_path: Path) -> None:
    target = tmp_path / "guardrails_stats.json"
    fields: dict[str, Any] = {**dict.fromkeys(FIELDS, 0), "breaker_state": None}
    snapshot = {"p": PolicyStats(**fields)}
    assert write_stats(target, snapshot) == target
    assert json.loads(target.read_text())["p"]["calls"] == 0
    # A rename that fails (the name is taken by a directory) leaves no temporary file.
    (tmp_path / "taken").mkdir()
    with pytest.raises(IsADirectoryError):
        write_stats(tmp_path / "taken", snapshot)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["guardrails_stats.json", "taken"]
    assert oct(target.stat().st_mode & 0o777) != oct(0o600)  # the umask's mode, not mkstemp's


def test_the_callbacks_options_are_checked() -> None:
    with pytest.raises(TypeError, match="stats_file"):
        GuardrailsCallback(stats_file="")
    with pytest.raises(TypeError, match="log_report"):
        GuardrailsCallback(log_report="yes")  # type: ignore[arg-type]
    assert issubclass(JobConfigurationError, SystemExit)
    assert not issubclass(JobConfigurationError, Exception)  # Hydra catches Exception


def test_import_guardrails_imports_neither_the_callback_nor_hydra() -> None:
    code = (
        "import sys, guardrails; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'hydra' or 'hydra' in m[:16]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"


def test_the_example_needs_no_configure_call_and_writes_the_table_as_json(tmp_path: Path) -> None:
    from tests.test_examples import NO_OUTAGE, SUMMARY, col, example, tables

    output = example(
        tmp_path,
        *NO_OUTAGE,
        "guardrails.policies.fetch_features.retry.max_attempts=1",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert "guardrails.configure(" not in (ROOT / "examples" / "pipeline.py").read_text()
    match = SUMMARY.search(output)
    assert match, output
    (table,) = tables(output)
    found = stats_of(tmp_path / "run")
    assert set(found) == {"fetch_features", "predict"}
    for name, row in table.items():
        for column, field in (("calls", "calls"), ("ok", "successes"), ("failed", "failures")):
            assert found[name][field] == col(row, column), (name, field)
        assert found[name]["cache_hits"] == col(row, "hits")
    # The override from the command line is in force: one attempt, so failures and no retry.
    assert found["fetch_features"]["retries"] == 0
    assert found["fetch_features"]["failures"] == int(match["unavailable"]) > 0
    assert found["predict"]["rejected"] == int(match["rejected"]) > 0


def test_a_config_without_a_guardrails_node_stops_the_job_and_changes_nothing(
    logs: pytest.LogCaptureFixture,
) -> None:
    from omegaconf import OmegaConf

    import guardrails
    from guardrails import PolicyConfigError

    guardrails.configure({"policies": {"p": {"retry": {"max_attempts": 4}}}})
    callback = GuardrailsCallback()
    with pytest.raises(JobConfigurationError, match="has no 'guardrails' node") as caught:
        callback.on_job_start(OmegaConf.create({"job": {"seed": 1}}), task_function=print)
    assert isinstance(caught.value.__cause__, PolicyConfigError)
    assert "the job did not run" in str(caught.value.code)
    assert [r.levelname for r in logs.records if "stops before" in r.getMessage()] == ["ERROR"]
    retry = guardrails.policy("p").retry
    assert retry is not None and retry.max_attempts == 4  # the good config stays in force


def test_statistics_go_where_the_directory_went_missing(tmp_path: Path) -> None:
    fields: dict[str, Any] = {**dict.fromkeys(FIELDS, 1), "breaker_state": "open"}
    target = tmp_path / "gone" / "deeper" / "guardrails_stats.json"
    write_stats(target, {"p": PolicyStats(**fields)})
    assert json.loads(target.read_text()) == {"p": fields}
