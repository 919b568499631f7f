"""`guardrails explain` and `guardrails check --import`, run as an operator runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from guardrails._chain import LAYER_NAMES

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(sys.executable).parent / "guardrails"


def run(*args: str, cwd: Path = ROOT, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GUARDRAILS_")}
    return subprocess.run(
        [str(SCRIPT), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        check=False,
        timeout=120,
        env={**clean, **env},
    )


def explained(*args: str, **env: str) -> dict[str, Any]:
    out = run("explain", *args, "--format", "json", **env)
    assert out.returncode == 0, out.stderr
    data: dict[str, Any] = json.loads(out.stdout)
    return data


def settings_of(data: dict[str, Any], layer: str) -> dict[str, dict[str, Any]]:
    (found,) = [entry for entry in data["layers"] if entry["layer"] == layer]
    return {s["key"]: s for s in found["settings"]}


def test_explain_names_where_each_value_came_from() -> None:
    override = "guardrails.policies.fetch_features.log.slow=300ms"
    data = explained("predict", "conf", "guardrails=production", override)
    assert data["ok"] is True
    assert data["policy"] == "predict"
    assert data["inherits"] == ["fetch_features"]
    # The real order, only the layers that are on.
    assert [e["layer"] for e in data["layers"]] == [
        "log",
        "validate.input",
        "memory",
        "bulkhead",
        "validate.output",
    ]
    log = settings_of(data, "log")
    assert (log["level"]["value"], log["level"]["source"]) == ("INFO", "base")
    assert log["level"]["where"] == "guardrails.policies.fetch_features.log.level"
    assert (log["args"]["value"], log["args"]["source"]) == ("none", "policy_defaults")
    # The base's value, changed on the command line: attributed to the override.
    assert (log["slow"]["value"], log["slow"]["source"]) == ("300ms", "override")
    assert log["slow"]["where"] == override
    assert log["trace"]["source"] == "default"  # written nowhere: the block's built-in default
    memory = settings_of(data, "memory")
    assert memory["max_rss"]["value"] == "80%"  # as written, not bytes
    assert memory["max_rss"]["resolved"].endswith("iB here")
    assert memory["max_rss"]["where"] == "guardrails.policies.predict.memory.max_rss"
    assert settings_of(data, "bulkhead")["max_wait"]["value"] == "1s"
    off = {o["block"]: o for o in data["off"]}
    assert off["retry"]["why"] == "enabled: false"
    assert off["retry"]["where"] == "guardrails.policies.predict.retry.enabled"
    assert off["cache"]["why"] == "null"
    assert off["cache"]["source"] == "policy"


def test_explain_text(tmp_path: Path) -> None:
    out = run("explain", "fetch_features", "conf", "guardrails=production")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "policy fetch_features: conf/config.yaml with guardrails=production"
    layers = [line.split(". ", 1)[1].split()[0] for line in lines if line[:3].strip().endswith(".")]
    assert layers == [
        "log",
        "fallback",
        "cache",
        "timeout.total",
        "retry",
        "breaker",
        "timeout.attempt",
    ]
    text = out.stdout
    assert "failure_rate: 80%" in text
    assert "window: 30s" in text
    assert "ttl: 30s" in text
    assert "max_attempts: 6" in text
    row = next(line for line in lines if "args: none" in line)
    assert row.rstrip().endswith("policy_defaults")
    row = next(line for line in lines if "ttl: 30s" in line)
    assert row.rstrip().endswith("policy fetch_features")


def test_explain_follows_the_order_table_with_every_layer_on(tmp_path: Path) -> None:
    path = tmp_path / "g.yaml"
    path.write_text(
        "allow_chaos: true\n"
        "policies:\n"
        "  all:\n"
        "    validate: {output: builtins:int, args: {x: {min: 0}}}\n"
        "    fallback: {value: 0}\n"
        "    cache: {ttl: 1m}\n"
        "    memory: {max_rss: 512MiB}\n"
        "    timeout: {total: 2s, attempt: 250ms}\n"
        "    retry: {max_attempts: 2}\n"
        "    breaker: {failure_rate: 50%}\n"
        "    rate_limit: {rate: 10/s}\n"
        "    bulkhead: {max_concurrent: 2}\n"
        "    chaos: {error_rate: 0.1}\n"
    )
    data = explained("all", str(path))
    assert [e["layer"] for e in data["layers"]] == list(LAYER_NAMES)
    assert settings_of(data, "memory")["max_rss"] == {
        "key": "max_rss",
        "value": "512MiB",
        "resolved": None,
        "source": "policy",
        "where": "guardrails.policies.all.memory.max_rss",
    }
    # The packaged defaults wrote log.level (the file has no policy_defaults).
    assert settings_of(data, "log")["level"]["source"] == "packaged"
    assert settings_of(data, "timeout.total").keys() == {"total"}
    assert settings_of(data, "timeout.attempt").keys() == {"attempt"}
    assert settings_of(data, "validate.output").keys() == {"output"}


def test_explain_a_file_with_overrides_and_a_base_chain(tmp_path: Path) -> None:
    path = tmp_path / "g.yaml"
    path.write_text(
        "policy_defaults: {log: {slow: 2s}}\n"
        "policies:\n"
        "  root: {retry: {max_attempts: 4, wait: {initial: 50ms}}}\n"
        "  mid: {base: root, retry: {wait: {max: 1s}}}\n"
        "  leaf: {base: mid, cache: {ttl: 5m}}\n"
    )
    data = explained("leaf", str(path), "policies.root.retry.max_attempts=5")
    assert data["inherits"] == ["mid", "root"]
    retry = settings_of(data, "retry")
    assert (retry["max_attempts"]["value"], retry["max_attempts"]["source"]) == (5, "override")
    assert retry["max_attempts"]["where"] == "policies.root.retry.max_attempts=5"
    assert (retry["wait.initial"]["value"], retry["wait.initial"]["where"]) == (
        "50ms",
        "guardrails.policies.root.retry.wait.initial",
    )
    assert (retry["wait.max"]["source"], retry["wait.max"]["where"]) == (
        "base",
        "guardrails.policies.mid.retry.wait.max",
    )
    assert settings_of(data, "log")["slow"]["source"] == "policy_defaults"
    assert settings_of(data, "cache")["ttl"]["source"] == "policy"


def test_explain_reads_the_environment_like_a_guarded_call(tmp_path: Path) -> None:
    data = explained(
        "predict",
        GUARDRAILS_CONFIG=str(ROOT / "conf"),
        GUARDRAILS_OVERRIDES="guardrails=production 'guardrails.policies.predict.memory.max_rss=70%'",
    )
    memory = settings_of(data, "memory")
    assert (memory["max_rss"]["value"], memory["max_rss"]["source"]) == ("70%", "override")
    assert data["strict"] is True
    # An override on the command line goes on top of the environment's.
    data = explained(
        "predict",
        "guardrails.policies.predict.memory.max_rss=60%",
        GUARDRAILS_CONFIG=str(ROOT / "conf"),
        GUARDRAILS_OVERRIDES="guardrails=production",
    )
    assert settings_of(data, "memory")["max_rss"]["value"] == "60%"
    # Nothing set: the packaged defaults, which define no policy.
    out = run("explain", "predict")
    assert out.returncode == 1
    assert "no policy named 'predict' in packaged defaults" in out.stderr


def test_explain_an_invalid_or_unknown_policy_fails() -> None:
    out = run("explain", "predict", "conf", "guardrails.policies.predict.memory.max_rss=lots")
    assert out.returncode == 1
    assert out.stdout == ""
    assert "guardrails.policies.predict.memory.max_rss: expected" in out.stderr
    out = run("explain", "predcit", "conf", "guardrails=production")
    assert out.returncode == 1
    assert "guardrails.policies.predcit: no policy named 'predcit' (did you mean 'predict'?)" in (
        out.stderr
    )
    assert "strict is true, so a function guarded with 'predcit' fails" in out.stderr
    data = json.loads(run("explain", "predcit", "conf", "--format", "json").stdout)
    assert data["ok"] is False
    assert data["problems"][0]["key"] == "guardrails.policies.predcit"


# --- check --import ------------------------------------------------------------------------

APP = """
from guardrails import guarded

print("importing app")  # must not end up in --format json output

@guarded("fetch_features")
def fetch_features(entity_id: int) -> int:
    return entity_id

@guarded("predict")
def predict(request_id: str, features: object) -> object:
    return features

@guarded("rerank")
async def rerank(items: list[int]) -> list[int]:
    return items

@guarded("embed")
def embed(text: str) -> str:
    return text
"""


def app(tmp_path: Path, name: str = "ops_app", text: str = APP) -> dict[str, str]:
    (tmp_path / f"{name}.py").write_text(text)
    return {"PYTHONPATH": str(tmp_path)}


def test_check_import_reports_guarded_functions_without_a_policy(tmp_path: Path) -> None:
    env = app(tmp_path)
    # Today `check` says ok, and then the app fails on its first call of rerank and embed.
    assert run("check", "conf", "guardrails=production", **env).returncode == 0
    out = run("check", "conf", "guardrails=production", "--import", "ops_app", **env)
    assert out.returncode == 1
    assert "importing app" not in out.stdout
    assert "(2 problems)" in out.stderr
    assert (
        "guardrails.policies.embed: no policy named 'embed' for guarded function ops_app.embed"
        in out.stderr
    )
    assert "guardrails.policies.rerank: no policy named 'rerank'" in out.stderr
    assert "strict is true, so its first call fails" in out.stderr
    data = json.loads(
        run(
            "check",
            "conf",
            "guardrails=production",
            "--import",
            "ops_app",
            "--format",
            "json",
            **env,
        ).stdout
    )
    assert data["ok"] is False
    assert data["source"] == "conf/config.yaml"
    assert data["strict"] is True
    assert data["policies"] == ["fetch_features", "predict"]
    assert {f["function"]: f["has_policy"] for f in data["functions"]} == {
        "ops_app.embed": False,
        "ops_app.fetch_features": True,
        "ops_app.predict": True,
        "ops_app.rerank": False,
    }
    assert [f["async"] for f in data["functions"] if f["policy"] == "rerank"] == [True]
    assert [p["key"] for p in data["problems"]] == [
        "guardrails.policies.embed",
        "guardrails.policies.rerank",
    ]
    # With the policies added on the command line (after --import), it passes.
    out = run(
        "check",
        "conf",
        "guardrails=production",
        "--import",
        "ops_app",
        "+guardrails.policies.rerank={}",
        "+guardrails.policies.embed.cache.ttl=1h",
        **env,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.endswith("4 policies, strict=true; 4 guarded functions, each with a policy\n")


def test_check_import_unused_policies_warn_or_fail_when_strict(tmp_path: Path) -> None:
    env = app(tmp_path)
    extra = [
        "+guardrails.policies.rerank={}",
        "+guardrails.policies.embed={}",
        "+guardrails.policies.rerankk={}",
    ]
    out = run("check", "conf", *extra, "--import", "ops_app", **env)
    assert out.returncode == 0, out.stderr
    assert "warning: guardrails.policies.rerankk: no guarded function uses policy 'rerankk'" in (
        out.stderr
    )
    assert "(did you mean 'rerank'?)" in out.stderr
    data = json.loads(
        run("check", "conf", *extra, "--import=ops_app", "--format=json", **env).stdout
    )
    assert data["ok"] is True
    assert [w["key"] for w in data["warnings"]] == ["guardrails.policies.rerankk"]
    out = run("check", "conf", *extra, "++guardrails.strict=true", "--import", "ops_app", **env)
    assert out.returncode == 1
    assert "guardrails.policies.rerankk: no guarded function uses policy 'rerankk'" in out.stderr


def test_check_import_compiles_each_chain(tmp_path: Path) -> None:
    env = app(tmp_path)
    out = run(
        "check",
        "conf",
        "+guardrails.policies.embed.cache.key=[txt]",
        "+guardrails.policies.rerank.validate.args.item.min=0",
        "--import",
        "ops_app",
        **env,
    )
    assert out.returncode == 1
    assert "guardrails.policies.embed.cache.key: ops_app.embed has no parameter 'txt'" in out.stderr
    assert "guardrails.policies.rerank.validate" in out.stderr


def test_check_import_a_module_that_fails_to_import(tmp_path: Path) -> None:
    env = app(tmp_path, "broken_app", "import ops_app_missing_dependency\n")
    app(tmp_path, "exits_app", "import sys\nsys.exit(3)\n")
    app(tmp_path)
    out = run(
        "check",
        "conf",
        "--import",
        "broken_app,exits_app",
        "--import",
        "no_such_module",
        "--import",
        "ops_app",
        **env,
    )
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    assert (
        "--import broken_app: cannot import: ModuleNotFoundError: No module named "
        "'ops_app_missing_dependency' (at " in out.stderr
    )
    assert "broken_app.py, line 1)" in out.stderr
    assert "--import exits_app: cannot import: SystemExit: 3" in out.stderr
    assert "--import no_such_module: cannot import: ModuleNotFoundError" in out.stderr
    # The module that imports is still checked.
    assert "guardrails.policies.embed: no policy named 'embed'" in out.stderr


def test_check_import_refs_that_do_not_import(tmp_path: Path) -> None:
    env = app(tmp_path)
    out = run(
        "check",
        "conf",
        "+guardrails.policies.rerank.fallback.function=ops_app:no_such_fallback",
        "+guardrails.policies.rerank.retry.retry_on=[ops_app:NoSuchError]",
        "+guardrails.policies.embed={}",
        "--import",
        "ops_app",
        **env,
    )
    assert out.returncode == 1
    assert "guardrails.policies.rerank.fallback.function: " in out.stderr
    assert "no_such_fallback" in out.stderr
    assert "guardrails.policies.rerank.retry.retry_on" in out.stderr


def test_settings_under_one_key_from_one_place_share_a_line(tmp_path: Path) -> None:
    long_name = "a_column_whose_name_is_longer_than_the_alignment_of_the_sources"
    (tmp_path / "p.yaml").write_text(
        "policy_defaults: {retry: {wait: {initial: 1s}}}\n"
        "policies:\n"
        "  p:\n"
        "    retry: {max_attempts: 2, wait: {max: 5s, multiplier: 3}}\n"
        "    validate:\n"
        "      args:\n"
        f"        df: {{columns: {{{long_name}: {{dtype: float64, min: 0}}, b: {{min: 1}}}}}}\n"
    )
    out = run("explain", "p", str(tmp_path / "p.yaml"))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    column = next(line for line in lines if long_name in line)
    # As written, in the order written, and apart from its source by two spaces at least.
    assert f"args.df.columns.{long_name}: {{dtype: float64, min: 0}}  policy p" in column
    assert any("args.df.columns.b.min: 1" in line for line in lines)  # alone: not grouped
    # wait.initial came from policy_defaults, the rest from the policy: not one line.
    assert any("wait.initial: 1s" in line and "policy_defaults" in line for line in lines)
    assert any("wait: {max: 5s, multiplier: 3}" in line and "policy p" in line for line in lines)
    # A check nobody wrote is no built-in default worth a word.
    assert not any("finite=false" in line for line in lines)
