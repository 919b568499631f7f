"""configure() in every form, and every kind of configuration error with the text users see."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
    assert "set max_rss, soft_rss, max_gpu or soft_gpu" in found["guardrails.policies.q.memory"]


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


# --- hostile input: nothing escapes as anything but PolicyConfigError ---------------------


def _nested_dict(depth: int) -> dict[str, Any]:
    top: dict[str, Any] = {}
    node = top
    for _ in range(depth):
        node["a"] = {}
        node = node["a"]
    return top


def _nested_dictconfig(depth: int) -> Any:
    # Built level by level: OmegaConf.create() of the whole thing would recurse itself.
    cfg = OmegaConf.create({"guardrails": {"policies": {"p": {}}}})
    node = cfg.guardrails.policies.p
    for _ in range(depth):
        node["a"] = {}
        node = node._get_node("a")
    return cfg


def test_deep_nesting_from_a_mapping_and_a_dictconfig() -> None:
    for source in (
        {"policies": {"p": _nested_dict(5000)}},
        {"guardrails": {"policies": {"p": _nested_dict(5000)}}},
        _nested_dictconfig(5000),
        _nested_dictconfig(5000).guardrails,
    ):
        with pytest.raises(PolicyConfigError) as exc:
            configure(source)
        ((path, message),) = exc.value.problems
        assert path.startswith("guardrails.policies.p.a.a.a")
        assert message == "nested more than 32 levels deep"


def test_a_cycle_in_a_mapping_is_refused() -> None:
    looped: dict[str, Any] = {"retry": {}}
    looped["retry"]["again"] = looped
    with pytest.raises(PolicyConfigError, match="nested more than 32 levels deep"):
        configure({"policies": {"p": looped}})


def test_an_interpolation_into_a_deep_node_elsewhere() -> None:
    cfg = _nested_dictconfig(0)
    cfg.outside = {}
    deep = cfg._get_node("outside")
    for _ in range(3000):
        deep["a"] = {}
        deep = deep._get_node("a")
    cfg.guardrails.policies.p.retry = "${outside}"  # deep, but only once resolved
    with pytest.raises(PolicyConfigError, match="nested too deeply"):
        configure(cfg)


@pytest.mark.parametrize(
    ("block", "value", "expected"),
    [
        ({"cache": {"ttl": 10**400}}, "cache.ttl", "finite duration"),
        ({"memory": {"max_rss": 10**400}}, "memory.max_rss", "finite size"),
        ({"memory": {"max_rss": float("inf")}}, "memory.max_rss", "finite size"),
        ({"memory": {"soft_rss": 2**70}}, "memory.soft_rss", "finite size"),
        ({"validate": {"args": {"x": {"min": True}}}}, "validate.args.x.min", "valid number"),
        ({"validate": {"args": {"x": {"max": "5"}}}}, "validate.args.x.max", "valid number"),
        ({"validate": {"args": {"x": {"min": float("nan")}}}}, "validate.args.x.min", "finite"),
        ({"validate": {"args": {"x": {"max": 10**400}}}}, "validate.args.x.max", "number"),
    ],
)
def test_numbers_out_of_range_are_config_errors(
    block: dict[str, Any], value: str, expected: str
) -> None:
    with pytest.raises(PolicyConfigError) as exc:
        configure({"policies": {"p": block}})
    message = problems(exc)[f"guardrails.policies.p.{value}"]
    assert expected in message
    assert len(message) < 300  # a 400-digit number is not echoed whole


def test_interpolated_values_are_never_echoed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "hunter2-s3cr3t-token"
    monkeypatch.setenv("GUARDRAILS_TEST_SECRET", secret)
    node = {
        "policies": {
            "p": {"retry": {"max_attempts": "${oc.env:GUARDRAILS_TEST_SECRET}"}},
            "r": {"base": "${oc.env:GUARDRAILS_TEST_SECRET}"},
            "q": {"cache": {"ttl": "x${oc.env:GUARDRAILS_TEST_SECRET}"}},
            "s": {"cache": {"ttl": "lots"}},  # written out: still echoed
        }
    }
    yaml_file = write(tmp_path / "g.yaml", OmegaConf.to_yaml({"guardrails": node}))
    conf = _app_dir(tmp_path)
    write(conf / "guardrails" / "secret.yaml", OmegaConf.to_yaml(node))
    sources: list[tuple[Any, tuple[str, ...]]] = [
        (OmegaConf.create({"guardrails": node}), ()),
        (OmegaConf.create(node), ()),
        ({"guardrails": OmegaConf.create(node)}, ()),
        (yaml_file, ()),
        (conf, ("guardrails=secret",)),
    ]
    for source, overrides in sources:
        with pytest.raises(PolicyConfigError) as exc:
            configure(source, overrides=overrides)
        found = problems(exc)
        assert secret not in str(exc.value), source
        assert "<interpolated value>" in found["guardrails.policies.p.retry.max_attempts"]
        assert "no policy named <interpolated value>" in found["guardrails.policies.r.base"]
        assert found["guardrails.policies.q.cache.ttl"].endswith("got <interpolated value>")
        assert found["guardrails.policies.s.cache.ttl"].endswith("got 'lots'")


@pytest.mark.parametrize(
    ("block", "value"),
    [
        ({"retry": {"retry_on": ["${oc.env:GUARDRAILS_TEST_SECRET}.mod:Name"]}}, "retry_on"),
        ({"validate": {"output": "os:${oc.env:GUARDRAILS_TEST_SECRET}"}}, "output"),
        ({"retry": {"abort_on": ["os.${oc.env:GUARDRAILS_TEST_SECRET}"]}}, "abort_on"),
    ],
)
def test_secrets_inside_import_paths_are_never_echoed(
    block: dict[str, Any], value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "hunter2s3cr3ttoken"
    monkeypatch.setenv("GUARDRAILS_TEST_SECRET", secret)
    with pytest.raises(PolicyConfigError) as exc:
        configure(OmegaConf.create({"policies": {"p": block}}))
    assert secret not in str(exc.value)
    assert "<interpolated value>" in str(exc.value)


def test_interpolated_values_are_never_echoed_by_problems_found_compiling(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    secret = "hunter2-s3cr3t-token"
    monkeypatch.setenv("GUARDRAILS_TEST_SECRET", secret)

    @guarded("k")
    def f(x: int) -> int:
        return x

    node = {"policies": {"k": {"cache": {"key": ["${oc.env:GUARDRAILS_TEST_SECRET}"]}}}}
    with pytest.raises(PolicyConfigError) as exc:
        configure(OmegaConf.create(node))
    assert secret not in str(exc.value)
    assert (
        "has no parameter <interpolated value>" in problems(exc)["guardrails.policies.k.cache.key"]
    )


def test_each_new_failure_keeps_the_configuration_in_force(tmp_path: Path) -> None:
    calls = []

    @guarded("kept")
    def f(x: int) -> int:
        calls.append(x)
        return x

    configure({"policies": {"kept": {"cache": {"ttl": 60}}}})
    f(1)
    bad: list[Any] = [
        {"policies": {"p": _nested_dict(5000)}},
        _nested_dictconfig(5000),
        {"policies": {"kept": {"cache": {"ttl": 10**400}}}},
        {"policies": {"kept": {"memory": {"max_rss": 10**400}}}},
        {"policies": {"kept": {"validate": {"output": "numpy:ndarray"}}}},
        {"policies": {"kept": {"validate": {"args": {"x": {"min": True}}}}}},
        {"policies": {"kept": {"base": "kept"}}},
        write(tmp_path / "empty.yaml", "# nothing here\n"),
        write(tmp_path / "bool.yaml", "policies: {kept: {cache: {enabled: off}}}\n"),
    ]
    for source in bad:
        with pytest.raises(PolicyConfigError):
            configure(source)
        f(1)
        assert calls == [1], source
        assert policy("kept").cache.ttl == 60  # type: ignore[union-attr]


# --- base inheritance stays linear -----------------------------------------------------


def _chain(n: int, root: dict[str, Any] | None = None) -> dict[str, Any]:
    """Policies p0 <- p1 <- ... <- p(n-1), each inheriting the one before."""
    policies: dict[str, Any] = {"p0": root or {"retry": {"max_attempts": 2}}}
    for i in range(1, n):
        policies[f"p{i}"] = {"base": f"p{i - 1}", "cache": {"ttl": i}}
    return {"policies": policies}


def _lines_run_in_policy_module(source: dict[str, Any]) -> int:
    """Lines executed in guardrails/_policy.py by one configure(): the work done, not time."""
    import guardrails._policy as module

    count = 0

    def local(frame: Any, event: str, arg: Any) -> Any:
        nonlocal count
        if event == "line":
            count += 1
        return local

    def global_(frame: Any, event: str, arg: Any) -> Any:
        return local if frame.f_code.co_filename == module.__file__ else None

    sys.settrace(global_)
    try:
        with contextlib.suppress(PolicyConfigError):
            configure(source)
    finally:
        sys.settrace(None)
    return count


def test_a_long_base_chain_merges_each_policy_once(monkeypatch: pytest.MonkeyPatch) -> None:
    import guardrails._policy as module

    merges = 0
    real = module.deep_merge

    def counting(base: Any, over: Any) -> dict[str, Any]:
        nonlocal merges
        merges += 1
        return real(base, over)

    monkeypatch.setattr(module, "deep_merge", counting)
    counts = {}
    for n in (2000, 4000):
        merges = 0
        settings = configure(_chain(n))
        counts[n] = merges
        last = settings.policies[f"p{n - 1}"]
        assert last.retry is not None and last.retry.max_attempts == 2
        assert last.cache is not None and last.cache.ttl == n - 1
    # One merge per policy and level of its own body (plus the packaged defaults).
    assert counts[4000] - counts[2000] <= 2 * 2000 * 2


def test_a_long_base_chain_stays_linear_when_it_fails() -> None:
    # The root's error is inherited by every policy; finding where it was written must not
    # walk the chain once per policy.
    work = {
        n: _lines_run_in_policy_module(_chain(n, {"cache": {"ttl": "soon"}})) for n in (2000, 4000)
    }
    assert work[4000] < 2.2 * work[2000]
    with pytest.raises(PolicyConfigError) as exc:
        configure(_chain(4000, {"cache": {"ttl": "soon"}}))
    assert list(problems(exc)) == ["guardrails.policies.p0.cache.ttl"]


def test_a_long_chain_with_a_broken_link_reports_it_once() -> None:
    source = _chain(4000)
    source["policies"]["p10"]["base"] = "p_missing"
    source["policies"]["p20"]["base"] = "p30"  # p20 -> p30 -> ... -> p21 -> p20: a cycle
    with pytest.raises(PolicyConfigError) as exc:
        configure(source)
    found = problems(exc)
    assert set(found) == {"guardrails.policies.p10.base", "guardrails.policies.p21.base"}
    assert "no policy named 'p_missing'" in found["guardrails.policies.p10.base"]
    assert found["guardrails.policies.p21.base"].startswith("inheritance cycle: p20 -> p30 -> ")
    assert _lines_run_in_policy_module(source) < 2.2 * _lines_run_in_policy_module(
        {"policies": dict(list(source["policies"].items())[:2000])}
    )


# --- import paths whose modules fail ------------------------------------------------------


@pytest.fixture
def failing_modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory on ``sys.path`` with modules that fail at import, or on an attribute."""
    write(tmp_path / "mods" / "grx_boom.py", "raise RuntimeError('boom')\n")
    write(tmp_path / "mods" / "grx_syntax.py", "class X(:\n    pass\n")
    write(tmp_path / "mods" / "grx_zero.py", "X = 1 / 0\n")
    write(
        tmp_path / "mods" / "grx_lazy.py",
        """
        def __getattr__(name):
            raise LookupError(f"no lazy {name}")
        """,
    )
    write(tmp_path / "mods" / "grx_interrupt.py", "raise KeyboardInterrupt\n")
    monkeypatch.syspath_prepend(str(tmp_path / "mods"))
    before = set(sys.modules)
    yield tmp_path / "mods"
    for name in set(sys.modules) - before:
        if name.startswith("grx_"):
            del sys.modules[name]


def test_import_paths_whose_modules_fail_are_config_errors(failing_modules: Path) -> None:
    source = {
        "policies": {
            "p": {
                "validate": {"input": "grx_boom:X", "output": "grx_syntax:X"},
                "retry": {"retry_on": ["ConnectionError", "..x"], "abort_on": ["grx_lazy:X"]},
            },
            "q": {"retry": {"retry_on": "grx_zero.X", "abort_on": ".grx_boom:X"}},
        }
    }
    with pytest.raises(PolicyConfigError) as exc:
        configure(source)
    found = problems(exc)
    assert set(found) == {
        "guardrails.policies.p.validate.input",
        "guardrails.policies.p.validate.output",
        "guardrails.policies.p.retry.retry_on",
        "guardrails.policies.p.retry.abort_on",
        "guardrails.policies.q.retry.retry_on",
        "guardrails.policies.q.retry.abort_on",
    }
    assert (
        "importing module 'grx_boom' for 'grx_boom:X' raised RuntimeError: boom"
        in found["guardrails.policies.p.validate.input"]
    )
    output = found["guardrails.policies.p.validate.output"]
    assert "importing module 'grx_syntax' for 'grx_syntax:X' raised SyntaxError" in output
    assert "'..x' is a relative import path" in found["guardrails.policies.p.retry.retry_on"]
    assert (
        "reading 'X' from module 'grx_lazy' for 'grx_lazy:X' raised LookupError: no lazy X"
        in found["guardrails.policies.p.retry.abort_on"]
    )
    assert (
        "importing module 'grx_zero' for 'grx_zero.X' raised ZeroDivisionError: division by zero"
        in found["guardrails.policies.q.retry.retry_on"]
    )
    assert (
        "'.grx_boom:X' is a relative import path" in found["guardrails.policies.q.retry.abort_on"]
    )
    assert "grx_boom" not in sys.modules


def test_an_interrupt_while_importing_a_module_propagates(failing_modules: Path) -> None:
    configure({"policies": {"kept": {"cache": {"ttl": 7}}}})
    with pytest.raises(KeyboardInterrupt):
        configure({"policies": {"p": {"validate": {"input": "grx_interrupt:X"}}}})
    assert policy("kept").cache.ttl == 7  # type: ignore[union-attr]
    # A malformed path is refused before anything is imported.
    with pytest.raises(PolicyConfigError) as exc:
        configure({"policies": {"p": {"validate": {"output": ":X", "input": "grx_boom:"}}}})
    found = problems(exc)
    assert "':X' is not an import path" in found["guardrails.policies.p.validate.output"]
    assert "'grx_boom:' is not an import path" in found["guardrails.policies.p.validate.input"]
    assert "grx_boom" not in sys.modules
