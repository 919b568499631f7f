"""configure() in every form, and every kind of configuration error with the text users see."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import guardrails
from guardrails import PolicyConfigError, configure, guarded, policy


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def problems(exc: pytest.ExceptionInfo[PolicyConfigError]) -> dict[str, str]:
    return dict(exc.value.problems)


# --- sources -----------------------------------------------------------------------------


def test_packaged_defaults() -> None:
    settings = configure()
    assert settings.strict is False
    assert dict(settings.policies) == {}
    assert settings.policy_defaults.log is not None
    assert settings.policy_defaults.log.level == "INFO"
    assert policy("anything") == settings.policy_defaults


def test_mapping_node_and_root() -> None:
    node = {"policies": {"f": {"retry": {"max_attempts": 7}}}}
    assert configure(node).policies["f"].retry.max_attempts == 7  # type: ignore[union-attr]
    assert configure({"guardrails": node}).policies["f"].retry.max_attempts == 7  # type: ignore[union-attr]


def test_dictconfig_root_and_node() -> None:
    root = OmegaConf.create(
        {
            "model": {"lr": 0.1},
            "guardrails": {"policies": {"f": {"cache": {"ttl": "${ttl}"}}}},
            "ttl": "1m",
        }
    )
    assert configure(root).policies["f"].cache.ttl == 60  # type: ignore[union-attr]
    assert configure(root.guardrails).policies["f"].cache.ttl == 60  # type: ignore[union-attr]


def test_yaml_file(tmp_path: Path) -> None:
    path = write(
        tmp_path / "g.yaml",
        """
        guardrails:
          policies:
            f: {cache: {ttl: 30s, maxsize: 5}}
        """,
    )
    cache = configure(path).policies["f"].cache
    assert cache is not None and (cache.ttl, cache.maxsize) == (30.0, 5)
    assert configure(str(path)).policies["f"] == configure(path).policies["f"]


def test_root_config_without_guardrails_node_is_explained() -> None:
    with pytest.raises(
        PolicyConfigError, match=r"has no 'guardrails' node .*model.*pkg://guardrails.conf"
    ):
        configure({"model": {"lr": 0.1}})


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(PolicyConfigError, match="no such file or directory"):
        configure(tmp_path / "nope.yaml")


def test_unparseable_yaml(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.yaml", "policies: {f: [unclosed\n")
    with pytest.raises(PolicyConfigError, match="cannot read YAML"):
        configure(path)


def test_overrides_only_with_a_directory(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="config directory"):
        configure({}, overrides=["x=1"])
    with pytest.raises(TypeError, match="sequence"):
        configure(tmp_path, overrides="x=1")  # type: ignore[arg-type]


def _app_dir(tmp_path: Path) -> Path:
    write(
        tmp_path / "conf" / "config.yaml",
        """
        defaults:
          - guardrails: default
          - _self_
        hydra:
          searchpath: [pkg://guardrails.conf]
        """,
    )
    write(
        tmp_path / "conf" / "guardrails" / "fast.yaml",
        """
        policies:
          f: {retry: {max_attempts: 2}, cache: {ttl: 10s}}
        """,
    )
    return tmp_path / "conf"


def test_directory_composes_with_hydra_overrides(tmp_path: Path) -> None:
    conf = _app_dir(tmp_path)
    # The packaged group resolves `guardrails: default` from pkg://guardrails.conf.
    assert dict(configure(conf).policies) == {}
    s = configure(conf, overrides=["guardrails=fast"])
    assert s.policies["f"].retry.max_attempts == 2  # type: ignore[union-attr]
    s = configure(conf, overrides=["guardrails=fast", "guardrails.policies.f.retry.max_attempts=5"])
    assert s.policies["f"].retry.max_attempts == 5  # type: ignore[union-attr]
    s = configure(conf, overrides=["guardrails=fast", "~guardrails.policies.f.cache"])
    assert s.policies["f"].cache is None
    s = configure(conf, overrides=["+guardrails.policies.g.cache.ttl=60"])
    assert s.policies["g"].cache.ttl == 60  # type: ignore[union-attr]
    s = configure(conf, overrides=["++guardrails.strict=true"])
    assert s.strict is True


def test_bad_override_is_a_config_error(tmp_path: Path) -> None:
    conf = _app_dir(tmp_path)
    with pytest.raises(PolicyConfigError, match="cannot compose"):
        configure(conf, overrides=["guardrails=nonexistent"])
    with pytest.raises(PolicyConfigError, match="cannot compose"):
        configure(
            conf, overrides=["guardrails.policies.f.retry.max_attempts=1"]
        )  # no such key: needs +


def test_composition_leaves_hydra_global_state_alone(tmp_path: Path) -> None:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    conf = _app_dir(tmp_path)
    configure(conf)
    assert not GlobalHydra.instance().is_initialized()
    other = write(tmp_path / "other" / "config.yaml", "name: other\n").parent
    with initialize_config_dir(config_dir=str(other), version_base="1.3"):
        # Inside a caller's Hydra: compose another directory, and the caller's Hydra still works.
        assert configure(conf, overrides=["guardrails=fast"]).policies["f"].cache is not None
        assert compose(config_name="config").name == "other"
    assert not GlobalHydra.instance().is_initialized()


def test_concurrent_directory_configures(tmp_path: Path) -> None:
    conf = _app_dir(tmp_path)
    errors: list[BaseException] = []

    def run(n: int) -> None:
        try:
            for _ in range(3):
                s = configure(
                    conf,
                    overrides=["guardrails=fast", f"guardrails.policies.f.retry.max_attempts={n}"],
                )
                assert s.policies["f"].retry.max_attempts == n  # type: ignore[union-attr]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(2, 8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_lazy_default_reads_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path / "g.yaml", "policies: {lazy: {cache: {ttl: 1h}}}\n")
    monkeypatch.setenv("GUARDRAILS_CONFIG", str(path))
    calls = []

    @guarded("lazy")
    def f(x: int) -> int:
        calls.append(x)
        return x

    assert f(1) == f(1) == 1
    assert calls == [1]
    assert policy("lazy").cache.ttl == 3600  # type: ignore[union-attr]


def test_lazy_default_without_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GUARDRAILS_CONFIG", raising=False)

    @guarded
    def g() -> str:
        return "ok"

    assert g() == "ok"
    assert guardrails.stats()["g"].calls == 1


# --- inheritance and defaults ------------------------------------------------------------


def test_policy_defaults_and_base_inheritance() -> None:
    configure(
        {
            "policy_defaults": {"log": {"level": "warning"}},
            "policies": {
                "a": {"retry": {"max_attempts": 4, "wait": {"initial": "1s"}}, "cache": {"ttl": 5}},
                "b": {
                    "base": "a",
                    "retry": {"max_attempts": 2},
                    "cache": None,
                    "log": {"slow": "250ms"},
                },
                "c": {"base": "b", "log": {"enabled": False}},
            },
        }
    )
    b = policy("b")
    assert b.retry is not None and b.retry.max_attempts == 2 and b.retry.wait.initial == 1.0
    assert b.cache is None
    assert b.log is not None and (b.log.level, b.log.slow) == ("WARNING", 0.25)
    assert b.base == "a"
    c = policy("c")
    assert c.log is not None and c.log.enabled is False and c.log.slow == 0.25
    assert policy("unknown").log.level == "WARNING"  # type: ignore[union-attr]


def test_policies_are_frozen() -> None:
    configure({"policies": {"a": {"retry": {}}}})
    with pytest.raises(Exception, match="frozen"):
        policy("a").retry.max_attempts = 9  # type: ignore[misc, union-attr]


# --- errors: each kind, all at once, with dotted paths -----------------------------------


def test_wrong_type_text() -> None:
    with pytest.raises(PolicyConfigError) as exc:
        configure({"policies": {"predict": {"retry": {"max_attempts": "five"}}}})
    assert (
        "guardrails.policies.predict.retry.max_attempts: Input should be a valid integer, got 'five'"
        in str(exc.value)
    )


def test_unknown_keys_suggest_the_right_one() -> None:
    with pytest.raises(PolicyConfigError) as exc:
        configure({"policies": {"p": {"retyr": {}, "cache": {"tll": 3}}}, "polices": {}})
    found = problems(exc)
    assert "did you mean 'retry'?" in found["guardrails.policies.p.retyr"]
    assert "did you mean 'ttl'?" in found["guardrails.policies.p.cache.tll"]
    assert "did you mean 'policies'?" in found["guardrails.polices"]


def test_unknown_key_under_arg_checks() -> None:
    with pytest.raises(PolicyConfigError) as exc:
        configure({"policies": {"p": {"validate": {"args": {"x": {"dtpye": "float64"}}}}}})
    assert "did you mean 'dtype'?" in problems(exc)["guardrails.policies.p.validate.args.x.dtpye"]


def test_bad_units() -> None:
    with pytest.raises(PolicyConfigError) as exc:
        configure(
            {"policies": {"p": {"cache": {"ttl": "3 parsecs"}, "memory": {"max_rss": "2 gallons"}}}}
        )
    found = problems(exc)
    assert "'250ms'" in found["guardrails.policies.p.cache.ttl"]
    assert "'2GiB'" in found["guardrails.policies.p.memory.max_rss"]


def test_unresolvable_import_paths() -> None:
    with pytest.raises(PolicyConfigError) as exc:
        configure(
            {
                "policies": {
                    "p": {
                        "validate": {"input": "no_such_module:Model", "output": "json:nothing"},
                        "retry": {"retry_on": ["ConectionError", "os:getcwd"]},
                    }
                }
            }
        )
    found = problems(exc)
    assert "cannot import module 'no_such_module'" in found["guardrails.policies.p.validate.input"]
    assert "has no attribute 'nothing'" in found["guardrails.policies.p.validate.output"]
    assert "'ConectionError' is not a builtin name" in found["guardrails.policies.p.retry.retry_on"]


def test_input_must_be_a_pydantic_model() -> None:
    with pytest.raises(PolicyConfigError, match="is not a pydantic model"):
        configure({"policies": {"p": {"validate": {"input": "collections:OrderedDict"}}}})


def test_yaml_booleans_in_disguise_are_rejected() -> None:
    with pytest.raises(PolicyConfigError) as exc:
        configure({"policies": {"p": {"retry": {"max_attempts": True, "enabled": "off"}}}})
    found = problems(exc)
    assert "valid integer" in found["guardrails.policies.p.retry.max_attempts"]
    assert "valid boolean" in found["guardrails.policies.p.retry.enabled"]


def test_base_problems() -> None:
    with pytest.raises(PolicyConfigError) as exc:
        configure(
            {
                "policies": {
                    "a": {"base": "b"},
                    "b": {"base": "a"},
                    "c": {"base": "predcit"},
                    "predict": {},
                },
                "policy_defaults": {"base": "a"},
            }
        )
    found = problems(exc)
    assert "inheritance cycle: a -> b -> a" in found["guardrails.policies.b.base"]
    assert "did you mean 'predict'?" in found["guardrails.policies.c.base"]
    assert "cannot inherit" in found["guardrails.policy_defaults.base"]


def test_errors_in_a_base_are_reported_once_at_their_source() -> None:
    with pytest.raises(PolicyConfigError) as exc:
        configure({"policies": {"a": {"cache": {"ttl": "soon"}}, "b": {"base": "a"}}})
    assert list(problems(exc)) == ["guardrails.policies.a.cache.ttl"]


def test_memory_limits_are_consistent() -> None:
    with pytest.raises(PolicyConfigError) as exc:
        configure(
            {
                "policies": {
                    "p": {"memory": {"max_rss": "1GiB", "soft_rss": "2GiB"}},
                    "q": {"memory": {}},
                }
            }
        )
    found = problems(exc)
    assert "must not be above" in found["guardrails.policies.p.memory"]
    assert "set max_rss, soft_rss or both" in found["guardrails.policies.q.memory"]


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(PolicyConfigError) as exc:
        configure(
            {
                "strict": "yes",
                "policies": {
                    "a": {"retry": {"max_attempts": 0}},
                    "b": {"log": {"level": "LOUD"}, "cache": {"maxsize": -1}},
                    "c": "not a mapping",
                },
            }
        )
    assert set(problems(exc)) == {
        "guardrails.strict",
        "guardrails.policies.a.retry.max_attempts",
        "guardrails.policies.b.log.level",
        "guardrails.policies.b.cache.maxsize",
        "guardrails.policies.c",
    }
    assert str(exc.value).startswith("invalid guardrails configuration (5 problems):")


def test_strict_mode_unknown_policy() -> None:
    @guarded("fetch_featurs")
    def f() -> int:
        return 1

    with pytest.raises(PolicyConfigError) as exc:
        configure({"strict": True, "policies": {"fetch_features": {}}})
    message = problems(exc)["guardrails.policies.fetch_featurs"]
    assert "test_config.test_strict_mode_unknown_policy.<locals>.f" in message
    assert "did you mean 'fetch_features'?" in message


def test_strict_mode_function_decorated_later_fails_on_first_call() -> None:
    configure({"strict": True, "policies": {"known": {}}})
    with pytest.raises(PolicyConfigError, match="strict is true"):
        policy("nope")

    @guarded("unknown")
    def late() -> int:
        return 1

    with pytest.raises(PolicyConfigError, match="no policy named 'unknown'"):
        late()
    with pytest.raises(PolicyConfigError):
        late()  # still failing, not silently defaulted


def test_config_that_fails_never_replaces_the_one_in_force() -> None:
    calls = []

    @guarded("f")
    def f(x: int) -> int:
        calls.append(x)
        return x

    configure({"policies": {"f": {"cache": {"ttl": 60}}}})
    f(1)
    with pytest.raises(PolicyConfigError):
        configure({"policies": {"f": {"cache": {"ttl": "bad"}}}})
    with pytest.raises(PolicyConfigError):
        configure({"strict": True, "policies": {}})  # valid alone, fails against f
    f(1)
    assert calls == [1]
    assert policy("f").cache.ttl == 60  # type: ignore[union-attr]


def test_cache_key_naming_a_missing_parameter_is_a_config_error() -> None:
    @guarded("k")
    def f(user_id: str) -> str:
        return user_id

    with pytest.raises(PolicyConfigError) as exc:
        configure({"policies": {"k": {"cache": {"key": ["user"]}}}})
    assert (
        "has no parameter 'user'; its parameters are user_id"
        in problems(exc)["guardrails.policies.k.cache.key"]
    )


def test_hydra_main_app_configures_from_its_cfg(tmp_path: Path) -> None:
    """A real @hydra.main app, run as a subprocess with a command-line override."""
    conf = _app_dir(tmp_path)
    app = write(
        tmp_path / "app.py",
        f"""
        import hydra, guardrails

        @guardrails.guarded("f")
        def f(x):
            return x * 2

        @hydra.main(version_base="1.3", config_path={str(conf)!r}, config_name="config")
        def main(cfg):
            guardrails.configure(cfg)
            print("result", f(21), guardrails.policy("f").retry.max_attempts)

        main()
        """,
    )
    out = subprocess.run(
        [
            sys.executable,
            str(app),
            "guardrails=fast",
            "guardrails.policies.f.retry.max_attempts=9",
            "hydra.run.dir=" + str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "result 42 9" in out.stdout


def test_configure_restores_the_garbage_collector_state() -> None:
    import gc

    configure({"policies": {"a": {}}})
    assert gc.isenabled()
    gc.disable()
    try:
        configure({"policies": {"a": {}}})
        assert not gc.isenabled()
    finally:
        gc.enable()
    with pytest.raises(PolicyConfigError):
        configure({"policies": {"a": {"cache": {"ttl": "never"}}}})
    assert gc.isenabled()


def test_directory_with_another_primary_config(tmp_path: Path) -> None:
    conf = _app_dir(tmp_path)
    write(conf / "serving.yaml", "defaults:\n  - guardrails: fast\n  - _self_\n")
    assert configure(conf, config_name="serving").policies["f"].retry.max_attempts == 2  # type: ignore[union-attr]
    with pytest.raises(PolicyConfigError, match="cannot compose"):
        configure(conf, config_name="missing")
