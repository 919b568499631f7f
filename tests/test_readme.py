"""Every recipe in the README runs, so none can go stale.

The "Override recipes" table is read from README.md itself: each row's overrides run on the
example app as a user runs them (a subprocess, real Hydra), and each row's effect is checked. A
row this file has no check for fails the test: a new recipe comes with its proof.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import guardrails
from guardrails._policy import Settings

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
    assert EFFECTS.get(want, lambda *_: False)(settings, output), (want, overrides, output)


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
