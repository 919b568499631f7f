"""The `guardrails` console script, run as an operator runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(sys.executable).parent / "guardrails"


def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GUARDRAILS_")}
    return subprocess.run(
        [str(SCRIPT), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
        timeout=120,
        env={**clean, **env},
    )


def test_check_a_good_policy_set() -> None:
    out = run("check", "conf", "guardrails=production")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok: conf/config.yaml: 2 policies, strict=true"


def test_check_lists_every_problem_and_fails() -> None:
    out = run(
        "check",
        "conf",
        "guardrails.policies.fetch_features.retry.max_attempts=five",
        "guardrails.policies.fetch_features.cache.ttl=soon",
    )
    assert out.returncode == 1
    assert "(2 problems)" in out.stderr
    assert (
        "guardrails.policies.fetch_features.retry.max_attempts: Input should be a valid integer"
        in out.stderr
    )
    assert "guardrails.policies.fetch_features.cache.ttl: expected" in out.stderr


def test_show_prints_effective_policies_as_yaml() -> None:
    out = run("show", "conf", "guardrails=production", "--policy", "predict")
    assert out.returncode == 0, out.stderr
    shown = yaml.safe_load(out.stdout)["guardrails"]
    predict = shown["policies"]["predict"]
    assert predict["base"] == "fetch_features"
    assert predict["validate"]["input"] == "examples.schemas:PredictRequest"
    assert predict["retry"]["enabled"] is False
    # Removed from what it inherits: written null, so the output configured again is the
    # same policy (a missing key would bring the base's cache back).
    assert predict["cache"] is None


def test_packaged_defaults_and_yaml_files(tmp_path: Path) -> None:
    assert run("check").stdout.startswith("ok: packaged defaults: 0 policies")
    path = tmp_path / "g.yaml"
    path.write_text("policies: {f: {cache: {ttl: 1h}}}\n")
    out = run("show", str(path))
    assert yaml.safe_load(out.stdout)["guardrails"]["policies"]["f"]["cache"]["ttl"] == "1h"
    bad = run("check", str(path), "x=1")
    assert bad.returncode == 1
    assert "guardrails.x: " in bad.stderr


def test_check_finds_what_would_otherwise_fail_on_a_call(tmp_path: Path) -> None:
    path = tmp_path / "g.yaml"
    path.write_text(
        "policies:\n  p: {validate: {output: 'numpy:ndarray'}, cache: {enabled: no, ttl: 1e400}}\n"
    )
    out = run("check", str(path))
    assert out.returncode == 1
    assert "(3 problems)" in out.stderr
    assert "guardrails.policies.p.validate.output: pydantic cannot validate" in out.stderr
    assert "guardrails.policies.p.cache.enabled: 'no' is a YAML 1.1 boolean" in out.stderr
    assert "guardrails.policies.p.cache.ttl: expected a finite duration" in out.stderr


def test_check_refuses_an_alias_bomb_in_a_config_directory(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    (conf / "guardrails").mkdir(parents=True)
    (conf / "config.yaml").write_text(
        "defaults:\n  - guardrails: bomb\n  - _self_\nhydra:\n  searchpath: [pkg://guardrails.conf]\n"
    )
    bomb = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    for prev, name in zip("abcdefghi", "bcdefghij", strict=True):
        bomb += f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 9) + "]\n"
    (conf / "guardrails" / "bomb.yaml").write_text(bomb)
    out = run("check", str(conf))
    assert out.returncode == 1
    assert "guardrails/bomb.yaml: its aliases would expand it by" in out.stderr


def test_show_an_unknown_policy_when_strict_fails_like_check(tmp_path: Path) -> None:
    path = tmp_path / "g.yaml"
    path.write_text("strict: true\npolicies: {fetch: {cache: {ttl: 1h}}}\n")
    out = run("show", str(path), "--policy", "fetch", "--policy", "fetc")
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    assert out.stdout == ""
    assert out.stderr.startswith("invalid guardrails configuration (1 problem):\n")
    assert "guardrails.policies.fetc: no policy named 'fetc'" in out.stderr
    assert "(did you mean 'fetch'?)" in out.stderr
    # Not strict either: an unknown name is most likely a typo, not a wish to see the defaults.
    path.write_text("strict: false\npolicies: {fetch: {cache: {ttl: 1h}}}\n")
    out = run("show", str(path), "--policy", "fetc", "--policy", "nope")
    assert out.returncode == 1
    assert out.stdout == ""
    assert "(2 problems)" in out.stderr
    assert "guardrails.policies.fetc: no policy named 'fetc' (did you mean 'fetch'?)" in out.stderr
    assert "a function guarded with 'nope' runs policy_defaults" in out.stderr


def test_a_chaos_drill_is_checked_and_shown_as_one(tmp_path: Path) -> None:
    drill = (
        "+guardrails.allow_chaos=true",
        "+guardrails.policies.fetch_features.chaos.error_rate=0.3",
    )
    out = run("check", "conf", *drill)
    assert out.returncode == 0, out.stderr
    assert "allow_chaos=true (faults will be injected)" in out.stdout
    shown = yaml.safe_load(run("show", "conf", *drill, "--policy", "fetch_features").stdout)
    assert shown["guardrails"]["allow_chaos"] is True
    assert shown["guardrails"]["policies"]["fetch_features"]["chaos"]["error_rate"] == 0.3
    # What `show` prints is a configuration that loads back as the same drill.
    path = tmp_path / "drill.yaml"
    path.write_text(yaml.safe_dump(shown))
    assert "allow_chaos=true" in run("check", str(path)).stdout
    refused = run("check", "conf", drill[1])
    assert refused.returncode == 1
    assert "fetch_features.chaos: chaos injects failures" in refused.stderr
    assert "allow_chaos" not in run("show", "conf").stdout


def test_show_prints_values_as_written() -> None:
    shown = yaml.safe_load(run("show", "conf", "guardrails=production").stdout)["guardrails"]
    fetch, predict = shown["policies"]["fetch_features"], shown["policies"]["predict"]
    # As in production.yaml, not guardrails._errors:CircuitOpenError nor 20220850995 bytes.
    assert fetch["fallback"]["catch"] == ["guardrails.CircuitOpenError"]
    assert predict["memory"] == {"enabled": True, "max_rss": "80%", "soft_rss": "60%"}
    assert predict["log"]["slow"] == "200ms"  # inherited from fetch_features, as written there
    assert shown["policy_defaults"]["log"]["slow"] == "1s"
    assert fetch["breaker"]["failure_rate"] == "80%"
    assert fetch["breaker"]["slow_rate"] == 1.0  # a built-in default, never written
    assert fetch["retry"]["wait"]["retry_after"] is False


def test_show_format_json() -> None:
    out = run("show", "conf", "guardrails=production", "--policy", "predict", "--format", "json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["ok"] is True
    assert data["source"] == "conf/config.yaml"
    assert data["overrides"] == ["guardrails=production"]
    assert data["guardrails"]["strict"] is True
    assert list(data["guardrails"]["policies"]) == ["predict"]
    assert data["guardrails"]["policies"]["predict"]["memory"]["max_rss"] == "80%"
    bad = run("show", "conf", "--policy", "predic", "--format", "json")
    assert bad.returncode == 1
    refused = json.loads(bad.stdout)
    assert refused["ok"] is False
    assert refused["problems"][0]["key"] == "guardrails.policies.predic"
    assert "did you mean 'predict'" in refused["problems"][0]["message"]


def test_show_hides_interpolated_values(tmp_path: Path) -> None:
    path = tmp_path / "g.yaml"
    path.write_text("policies:\n  f: {fallback: {value: '${oc.env:SERVICE_TOKEN}'}}\n")
    out = run("show", str(path), SERVICE_TOKEN="s3cr3t-t0ken-value")
    assert out.returncode == 0, out.stderr
    assert "s3cr3t" not in out.stdout
    assert yaml.safe_load(out.stdout)["guardrails"]["policies"]["f"]["fallback"]["value"] == (
        "<interpolated value>"
    )
    explained = run("explain", "f", str(path), SERVICE_TOKEN="s3cr3t-t0ken-value")
    assert explained.returncode == 0, explained.stderr
    assert "s3cr3t" not in explained.stdout
    assert "<interpolated value>" in explained.stdout
