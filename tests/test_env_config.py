"""$GUARDRAILS_CONFIG with $GUARDRAILS_OVERRIDES, and overrides applied to one YAML file."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import guardrails
from guardrails import PolicyConfigError, configure, guarded, policy
from guardrails._config import OVERRIDES_ENV_VAR, env_source

NODE = "policies:\n  p:\n    retry: {max_attempts: 2}\n    cache: {ttl: 5}\n"
ROOT = "guardrails:\n  policies:\n    p:\n      retry: {max_attempts: 2}\n      cache: {ttl: 5}\nother: 1\n"


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.delenv("GUARDRAILS_CONFIG", raising=False)
    monkeypatch.delenv(OVERRIDES_ENV_VAR, raising=False)
    return monkeypatch


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def attempts(name: str = "p") -> int:
    found = policy(name).retry
    assert found is not None
    return found.max_attempts


# --- $GUARDRAILS_OVERRIDES ----------------------------------------------------------------


def test_overrides_from_the_environment_apply_to_the_file(
    tmp_path: Path, env: pytest.MonkeyPatch
) -> None:
    env.setenv("GUARDRAILS_CONFIG", str(write(tmp_path / "g.yaml", NODE)))
    env.setenv(
        OVERRIDES_ENV_VAR,
        "guardrails.policies.p.retry.max_attempts=4 '+guardrails.policies.q.log.slow=250ms' "
        "~guardrails.policies.p.cache",
    )

    @guarded("p")
    def f() -> int:
        return 1

    assert f() == 1
    assert attempts() == 4 and policy("p").cache is None
    assert policy("q").log.slow == 0.25  # type: ignore[union-attr]


def test_overrides_from_the_environment_apply_to_a_config_directory(
    tmp_path: Path, env: pytest.MonkeyPatch
) -> None:
    conf = tmp_path / "conf"
    (conf / "guardrails").mkdir(parents=True)
    write(
        conf / "config.yaml",
        "defaults:\n  - guardrails: default\n  - _self_\nhydra:\n  searchpath: [pkg://guardrails.conf]\n",
    )
    write(conf / "guardrails" / "default.yaml", NODE)
    write(conf / "guardrails" / "fast.yaml", "policies:\n  p: {retry: {max_attempts: 1}}\n")
    env.setenv("GUARDRAILS_CONFIG", str(conf))
    env.setenv(OVERRIDES_ENV_VAR, "guardrails=fast")
    assert attempts() == 1


def test_overrides_alone_apply_to_the_packaged_defaults(env: pytest.MonkeyPatch) -> None:
    env.setenv(OVERRIDES_ENV_VAR, "+guardrails.policies.p.retry.max_attempts=6")
    assert attempts() == 6
    assert policy("other").log.level == "INFO"  # type: ignore[union-attr]


def test_env_source_splits_like_a_shell(env: pytest.MonkeyPatch) -> None:
    env.setenv("GUARDRAILS_CONFIG", "/x/conf")
    env.setenv(OVERRIDES_ENV_VAR, "  a=1\t'b=two words'  \"c=[1, 2]\"\n")
    assert env_source() == ("/x/conf", ("a=1", "b=two words", "c=[1, 2]"))
    env.setenv(OVERRIDES_ENV_VAR, "")
    assert env_source() == ("/x/conf", ())


def test_unbalanced_quotes_name_the_variable(tmp_path: Path, env: pytest.MonkeyPatch) -> None:
    env.setenv("GUARDRAILS_CONFIG", str(write(tmp_path / "g.yaml", NODE)))
    env.setenv(OVERRIDES_ENV_VAR, "a='unclosed")
    with pytest.raises(PolicyConfigError) as exc:
        policy("p")
    text = str(exc.value)
    assert "$GUARDRAILS_OVERRIDES" in text and "cannot split" in text
    assert str(tmp_path / "g.yaml") in text


# --- a bad $GUARDRAILS_CONFIG -------------------------------------------------------------


def test_a_bad_env_config_fails_each_call_naming_the_variable_the_file_and_every_problem(
    tmp_path: Path, env: pytest.MonkeyPatch
) -> None:
    path = write(
        tmp_path / "g.yaml", "policies:\n  p: {retry: {max_attempts: five}, cache: {ttl: 5}}\n"
    )
    env.setenv("GUARDRAILS_CONFIG", str(path))
    env.setenv(OVERRIDES_ENV_VAR, "guardrails.policies.p.cache.ttl=soon")
    ran: list[int] = []

    @guarded("p")
    def f(x: int) -> int:
        ran.append(x)
        return x

    for attempt in range(3):  # every call, not only the first: never the defaults
        with pytest.raises(PolicyConfigError) as exc:
            f(attempt)
        text = str(exc.value)
        assert f"$GUARDRAILS_CONFIG={path}" in text
        assert "$GUARDRAILS_OVERRIDES=guardrails.policies.p.cache.ttl=soon" in text
        assert "guardrails.policies.p.retry.max_attempts" in text
        assert "guardrails.policies.p.cache.ttl" in text
        assert len(exc.value.problems) == 2
        assert exc.value.__traceback__ is not None
    assert ran == []
    assert guardrails.stats() == {} or guardrails.stats()["p"].calls == 0


def test_a_fixed_env_config_heals_the_process_without_a_restart(
    tmp_path: Path, env: pytest.MonkeyPatch, monkeypatch: pytest.MonkeyPatch
) -> None:
    import guardrails._config as config_module

    path = write(tmp_path / "g.yaml", "policies: {p: {retry: {max_attempts: 0}}}\n")
    env.setenv("GUARDRAILS_CONFIG", str(path))
    loads: list[object] = []
    real_load = config_module.load

    def counting_load(*args: object, **kwargs: object) -> guardrails.Settings:
        loads.append(args)
        return real_load(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(config_module, "load", counting_load)

    @guarded("p")
    def f() -> str:
        return "ok"

    for _ in range(5):
        with pytest.raises(PolicyConfigError, match="max_attempts"):
            f()
    assert len(loads) == 1  # the broken file was read once, then only its status
    path.write_text("policies: {p: {retry: {max_attempts: 3}}}\n")
    assert f() == "ok"
    assert attempts() == 3 and len(loads) == 2


def test_changing_the_overrides_is_a_change_too(tmp_path: Path, env: pytest.MonkeyPatch) -> None:
    env.setenv("GUARDRAILS_CONFIG", str(write(tmp_path / "g.yaml", NODE)))
    env.setenv(OVERRIDES_ENV_VAR, "guardrails.policies.p.retry.max_attempts=zero")
    with pytest.raises(PolicyConfigError, match="max_attempts"):
        policy("p")
    env.setenv(OVERRIDES_ENV_VAR, "guardrails.policies.p.retry.max_attempts=3")
    assert attempts() == 3


def test_a_missing_env_config_says_so(tmp_path: Path, env: pytest.MonkeyPatch) -> None:
    env.setenv("GUARDRAILS_CONFIG", str(tmp_path / "nope.yaml"))
    with pytest.raises(PolicyConfigError) as exc:
        guarded("p")(lambda: 1)()
    assert "$GUARDRAILS_CONFIG" in str(exc.value) and "no such file" in str(exc.value)
    write(tmp_path / "nope.yaml", NODE)  # created later: the next call reads it
    assert guarded("p")(lambda: 1)() == 1


def test_in_a_fresh_process_the_first_call_fails_with_the_clear_error(tmp_path: Path) -> None:
    path = write(tmp_path / "g.yaml", "policies: {p: {cache: {ttl: -1s}}}\n")
    script = textwrap.dedent(
        """
        import guardrails
        @guardrails.guarded("p")
        def f():
            return 1
        try:
            f()
        except guardrails.PolicyConfigError as exc:
            print(exc)
        """
    )
    env = {**os.environ, "GUARDRAILS_CONFIG": str(path), OVERRIDES_ENV_VAR: ""}
    out = subprocess.run(
        [sys.executable, "-c", script],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert f"$GUARDRAILS_CONFIG={path}" in out.stdout
    assert "guardrails.policies.p.cache.ttl" in out.stdout


# --- overrides for one YAML file (configure and watch take them too) ----------------------


@pytest.mark.parametrize("text", [NODE, ROOT], ids=["the node", "a root config"])
def test_overrides_apply_to_a_yaml_file_as_hydra_applies_them(tmp_path: Path, text: str) -> None:
    path = write(tmp_path / "g.yaml", text)
    configure(
        path,
        overrides=[
            "guardrails.policies.p.retry.max_attempts=5",
            "+guardrails.policies.q.cache.ttl=1m",
            "++guardrails.policies.p.log.level=DEBUG",
            "~guardrails.policies.p.cache",
        ],
    )
    assert attempts() == 5 and policy("p").cache is None
    assert policy("q").cache.ttl == 60  # type: ignore[union-attr]
    assert policy("p").log.level == "DEBUG"  # type: ignore[union-attr]


def test_a_file_holding_the_node_takes_keys_without_the_prefix_too(tmp_path: Path) -> None:
    configure(write(tmp_path / "g.yaml", NODE), overrides=["policies.p.retry.max_attempts=9"])
    assert attempts() == 9


def test_every_bad_override_of_a_file_is_reported_with_its_key(tmp_path: Path) -> None:
    path = write(tmp_path / "g.yaml", NODE)
    configure(path)
    with pytest.raises(PolicyConfigError) as exc:
        configure(
            path,
            overrides=[
                "guardrails.policies.fetch_featurs.cache.ttl=5",  # a typo: not there to change
                "guardrails.policies.p.retry.max_attempts=1,2",  # a sweep
                "guardrails=x",
            ],
        )
    problems = dict(exc.value.problems)
    assert (
        "+guardrails.policies.fetch_featurs.cache.ttl=5"
        in problems["guardrails.policies.fetch_featurs.cache.ttl"]
    )
    assert "sweep" in problems["guardrails.policies.p.retry.max_attempts"]
    assert "whole 'guardrails' node" in problems["guardrails"]
    assert attempts() == 2  # nothing changed
    with pytest.raises(PolicyConfigError, match="cannot parse the override 'a=b=c\\['"):
        configure(path, overrides=["a=b=c["])
    with pytest.raises(PolicyConfigError, match="max_attempts: Input should be a valid integer"):
        configure(path, overrides=["guardrails.policies.p.retry.max_attempts=five"])


def test_an_override_fixes_a_disguised_boolean_of_the_file(tmp_path: Path) -> None:
    path = write(tmp_path / "g.yaml", "policies:\n  p:\n    retry: {enabled: yes}\n")
    with pytest.raises(PolicyConfigError, match=r"YAML 1\.1 boolean"):
        configure(path)
    configure(path, overrides=["guardrails.policies.p.retry.enabled=true"])
    assert policy("p").retry is not None


def test_overrides_are_strings(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="override strings"):
        configure(write(tmp_path / "g.yaml", NODE), overrides=[1])  # type: ignore[list-item]
