"""YAML the loader would misread or choke on: disguised booleans, alias bombs, deep nesting."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from guardrails import PolicyConfigError, configure, policy
from guardrails._yaml import BOOLEAN_WORDS, MAX_ALIAS_NODES, MAX_DEPTH

WORDS = sorted(BOOLEAN_WORDS)
TRUE_WORDS = {"y", "Y", "yes", "Yes", "YES", "on", "On", "ON"}


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def problems_of(source: object, **kwargs: object) -> dict[str, str]:
    with pytest.raises(PolicyConfigError) as exc:
        configure(source, **kwargs)  # type: ignore[arg-type]
    return dict(exc.value.problems)


# --- YAML 1.1 booleans in a file ----------------------------------------------------------


def test_booleans_in_values_and_keys_of_a_file(tmp_path: Path) -> None:
    path = write(
        tmp_path / "g.yaml",
        """
        guardrails:
          strict: on
          policies:
            no: {cache: {ttl: 5}}
            fetch:
              cache: {enabled: no, ttl: 5}
              retry: {retry_on: [ConnectionError, Off]}
        """,
    )
    found = problems_of(path)
    assert set(found) == {
        "guardrails.strict",
        "guardrails.policies.no",
        "guardrails.policies.fetch.cache.enabled",
        "guardrails.policies.fetch.retry.retry_on.1",
        "guardrails.policies.fetch.retry.retry_on",  # validation's own view: False is no class
    }
    enabled = found["guardrails.policies.fetch.cache.enabled"]
    assert enabled.startswith("'no' is a YAML 1.1 boolean, read as false")
    assert "write false (or quote it" in enabled and f"{path}, line 7" in enabled
    assert "write true" in found["guardrails.strict"]
    assert "the key 'no'" in found["guardrails.policies.no"]
    assert "quote it ('no')" in found["guardrails.policies.no"]


@given(st.sampled_from(WORDS), st.sampled_from(["value", "key", "item"]))
def test_every_word_in_every_position_is_reported(word: str, where: str) -> None:
    import tempfile

    text = {
        "value": f"policies: {{p: {{log: {{enabled: {word}}}}}}}\n",
        "key": f"policies: {{{word}: {{log: {{level: INFO}}}}}}\n",
        "item": f"policies: {{p: {{retry: {{retry_on: [TimeoutError, {word}]}}}}}}\n",
    }[where]
    expected = {
        "value": "guardrails.policies.p.log.enabled",
        "key": f"guardrails.policies.{word}",
        "item": "guardrails.policies.p.retry.retry_on.1",
    }[where]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "g.yaml"
        path.write_text(text)
        found = problems_of(path)
    meant = "true" if word in TRUE_WORDS else "false"
    assert f"{word!r} is a YAML 1.1 boolean, read as {meant}" in found[expected]


@given(st.sampled_from(WORDS), st.sampled_from(["'", '"']))
def test_only_the_plain_word_is_reported_never_the_quoted_one(word: str, quote: str) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "g.yaml"
        quoted = f"{quote}{word}{quote}: {{log: {{level: INFO}}}}"
        path.write_text(f"policies: {{{quoted}, p: {{cache: {{enabled: {word}}}}}}}\n")
        assert list(problems_of(path)) == ["guardrails.policies.p.cache.enabled"]
        path.write_text(
            f"policies: {{{quoted}, p: {{cache: {{enabled: {quote}{word}{quote}}}}}}}\n"
        )
        found = problems_of(path)
    # Quoted, the word is a string: the policy is named by it, and `enabled` wants a boolean.
    assert list(found) == ["guardrails.policies.p.cache.enabled"]
    assert "valid boolean" in found["guardrails.policies.p.cache.enabled"]


def test_true_and_false_in_any_case_stay_booleans(tmp_path: Path) -> None:
    text = (
        "strict: TRUE\npolicies:\n  p: {cache: {enabled: False, ttl: 1e3}, log: {enabled: true}}\n"
    )
    path = write(tmp_path / "g.yaml", text + "  q: {log: {enabled: yes}}\n")
    assert list(problems_of(path)) == ["guardrails.policies.q.log.enabled"]
    settings = configure(write(path, text))
    assert settings.strict is True
    p = settings.policies["p"]
    assert p.cache is not None and p.cache.enabled is False
    assert p.log is not None and p.log.enabled is True
    # The checked reader constructs with OmegaConf's loader, whose float rule reads 1e3.
    assert p.cache.ttl == 1000.0


def test_the_whole_file_is_checked(tmp_path: Path) -> None:
    path = write(
        tmp_path / "g.yaml",
        """
        model: {verbose: yes}
        guardrails:
          policies: {p: {}}
        """,
    )
    assert "model.verbose" in problems_of(path)


def test_a_node_file_reports_paths_under_guardrails(tmp_path: Path) -> None:
    path = write(tmp_path / "g.yaml", "policies: {p: {memory: {enabled: off, max_rss: 1GiB}}}\n")
    assert list(problems_of(path)) == ["guardrails.policies.p.memory.enabled"]


def test_boolean_problems_come_with_every_other_problem(tmp_path: Path) -> None:
    path = write(
        tmp_path / "g.yaml",
        """
        policies:
          p: {cache: {enabled: no, ttl: soon}}
        """,
    )
    found = problems_of(path)
    assert set(found) == {
        "guardrails.policies.p.cache.enabled",
        "guardrails.policies.p.cache.ttl",
    }


# --- YAML 1.1 booleans in a config directory composed by Hydra ----------------------------


def _app(tmp_path: Path) -> Path:
    conf = tmp_path / "conf"
    write(
        conf / "config.yaml",
        """
        defaults:
          - guardrails: default
          - _self_
        hydra:
          searchpath: [pkg://guardrails.conf]
        job: {verbose: yes}
        """,
    )
    write(conf / "guardrails" / "fast.yaml", "policies:\n  f: {cache: {enabled: no}}\n")
    write(conf / "guardrails" / "clean.yaml", "policies:\n  f: {cache: {enabled: false}}\n")
    write(
        conf / "extra" / "glob.yaml",
        """
        # @package _global_
        guardrails:
          strict: off
        other: {flag: on}
        """,
    )
    write(conf / "extra" / "pkg.yaml", "# @package guardrails.policies\ng: {log: {enabled: NO}}\n")
    return conf


def test_directory_reports_words_where_they_land_under_guardrails(tmp_path: Path) -> None:
    conf = _app(tmp_path)
    found = problems_of(conf, overrides=["guardrails=fast"])
    # The application's own `job.verbose: yes` is not guardrails' business.
    assert list(found) == ["guardrails.policies.f.cache.enabled"]
    assert "guardrails/fast.yaml, line 2" in found["guardrails.policies.f.cache.enabled"]
    found = problems_of(conf, overrides=["guardrails=clean", "+extra=glob"])
    assert list(found) == ["guardrails.strict"]
    found = problems_of(conf, overrides=["guardrails=clean", "+extra=pkg"])
    assert list(found) == ["guardrails.policies.g.log.enabled"]
    # fast.yaml, not in this composition, is none of its business.
    cache = configure(conf, overrides=["guardrails=clean"]).policies["f"].cache
    assert cache is not None and cache.enabled is False


def _interpolating_app(tmp_path: Path) -> Path:
    conf = tmp_path / "conf"
    write(
        conf / "config.yaml",
        """
        defaults:
          - guardrails: refs
          - _self_
        hydra:
          searchpath: [pkg://guardrails.conf]
        flags: {c: off, e: false}
        chain: {a: '${flags.c}', b: '${chain.a}'}
        shared: {cache: {enabled: no, ttl: 5}}
        """,
    )
    write(
        conf / "guardrails" / "refs.yaml",
        """
        policies:
          f: {cache: {enabled: '${flags.c}', ttl: 5}}
          g: {cache: '${shared.cache}'}
          h: {log: {enabled: '${chain.b}'}}
          k: {cache: {enabled: '${flags.e}', ttl: 1}, log: {enabled: '${..cache.enabled}'}}
        """,
    )
    write(
        conf / "guardrails" / "rel.yaml",
        "policies:\n"
        "  r: {cache: {enabled: '${..log.enabled}', ttl: 1}, log: {enabled: '${...s.log.enabled}'}}\n"
        "  s: {log: {enabled: '${flags.c}'}}\n",
    )
    return conf


def test_directory_reports_words_that_reach_guardrails_through_interpolations(
    tmp_path: Path,
) -> None:
    conf = _interpolating_app(tmp_path)
    config = str((conf / "config.yaml").resolve())
    found = problems_of(conf)
    # `flags.c: off` lies outside the guardrails node; it reaches it through `${flags.c}`.
    assert list(found) == [
        "guardrails.policies.f.cache.enabled",
        "guardrails.policies.g.cache.enabled",
        "guardrails.policies.h.log.enabled",
    ]
    assert found["guardrails.policies.f.cache.enabled"] == (
        f"'off' is a YAML 1.1 boolean, read as false ({config}, line 7, at flags.c), and "
        "lands here through the interpolation ${flags.c}; write false there (or quote it, "
        "'off', to mean the word)"
    )
    # A whole node by reference, and a chain of references.
    assert (
        f"'no' is a YAML 1.1 boolean, read as false ({config}, line 9, at shared.cache.enabled)"
        ", and lands here through the interpolation ${shared.cache};"
    ) in found["guardrails.policies.g.cache.enabled"]
    assert (
        "at flags.c), and lands here through the interpolations ${chain.b} -> ${chain.a} -> "
        "${flags.c}; write false there"
    ) in found["guardrails.policies.h.log.enabled"]
    # An override replaces the file's word: nothing disguised reaches guardrails from flags.c.
    fixed = ["flags.c=false", "shared.cache.enabled=false"]
    settings = configure(conf, overrides=fixed)
    f_cache, k_log = settings.policies["f"].cache, settings.policies["k"].log
    assert f_cache is not None and f_cache.enabled is False
    assert k_log is not None and k_log.enabled is False  # `${..cache.enabled}` -> `${flags.e}`
    found = problems_of(conf, overrides=fixed[:1])
    assert list(found) == ["guardrails.policies.g.cache.enabled"]
    # Relative references, to a sibling's child and two levels up.
    found = problems_of(conf, overrides=["guardrails=rel"])
    assert list(found) == [
        "guardrails.policies.r.cache.enabled",
        "guardrails.policies.r.log.enabled",
        "guardrails.policies.s.log.enabled",
    ]
    assert (
        "the interpolations ${..log.enabled} -> ${...s.log.enabled} -> ${flags.c};"
        in (found["guardrails.policies.r.cache.enabled"])
    )


def test_a_file_reports_words_at_the_guardrails_paths_their_interpolations_reach(
    tmp_path: Path,
) -> None:
    path = write(
        tmp_path / "g.yaml",
        """
        flags: {c: off}
        shared: {log: {enabled: yes}}
        guardrails:
          policies:
            f: {cache: {enabled: '${flags.c}', ttl: 5}, log: '${shared.log}'}
        """,
    )
    found = problems_of(path)
    # The whole file is checked, so the words are caught where they are written, and also
    # where the policy reads them.
    assert list(found) == [
        "flags.c",
        "shared.log.enabled",
        "guardrails.policies.f.cache.enabled",
        "guardrails.policies.f.log.enabled",
    ]
    assert found["guardrails.policies.f.cache.enabled"].startswith(
        f"'off' is a YAML 1.1 boolean, read as false ({path}, line 2, at flags.c), and lands "
        "here through the interpolation ${flags.c}"
    )
    assert (
        "at shared.log.enabled), and lands here through the interpolation ${shared.log}"
        in (found["guardrails.policies.f.log.enabled"])
    )


# --- alias bombs, recursion and depth -------------------------------------------------------


def _laughs(levels: int) -> str:
    text = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    previous = "a"
    for name in "bcdefghijklmnop"[: levels - 1]:
        text += f"{name}: &{name} [" + ", ".join([f"*{previous}"] * 9) + "]\n"
        previous = name
    return text


def test_billion_laughs_is_refused_before_it_expands(tmp_path: Path) -> None:
    # 9**10 nodes once expanded; the check is linear in the file, so this returns at once.
    path = write(tmp_path / "lol.yaml", _laughs(10))
    assert len(path.read_text()) < 500
    found = problems_of(path)
    assert f"more than the {MAX_ALIAS_NODES:,} allowed" in found[str(path)]
    # Modest sharing, merge keys included, is fine.
    path = write(
        tmp_path / "g.yaml",
        """
        policies:
          a: &shared {retry: {max_attempts: 4}, cache: {ttl: 5}}
          b: *shared
          c: {<<: *shared, log: {level: DEBUG}}
        """,
    )
    settings = configure(path)
    assert settings.policies["b"] == settings.policies["a"]
    assert settings.policies["c"].retry == settings.policies["a"].retry
    assert configure(write(tmp_path / "l3.yaml", _laughs(3) + "guardrails:\n")).strict is False


def test_billion_laughs_in_a_directory_file(tmp_path: Path) -> None:
    conf = _app(tmp_path)
    bomb = write(conf / "guardrails" / "bomb.yaml", _laughs(10))
    found = problems_of(conf, overrides=["guardrails=bomb"])
    assert "allowed (an alias bomb?)" in found[str(bomb.resolve())]


def test_recursive_alias_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "g.yaml", "policies: &a {p: *a}\n")
    assert "refers to a node that contains it" in problems_of(path)[str(path)]


def test_deep_nesting_in_a_file(tmp_path: Path) -> None:
    path = write(tmp_path / "g.yaml", "policies: " + "{a: " * 5000 + "1" + "}" * 5000 + "\n")
    assert f"nested more than {MAX_DEPTH} levels deep (line 1)" in problems_of(path)[str(path)]


def test_deep_nesting_made_of_aliases(tmp_path: Path) -> None:
    # Each level is shallow as written; expanded, they nest 20 * 10 levels deep.
    text = "l0: &l0 " + "{k: " * 20 + "1" + "}" * 20 + "\n"
    for i in range(1, 10):
        text += f"l{i}: &l{i} " + "{k: " * 19 + f"*l{i - 1}" + "}" * 19 + "\n"
    path = write(tmp_path / "g.yaml", text)
    assert "once its aliases are expanded" in problems_of(path)[str(path)]


def test_deep_nesting_in_a_directory_file(tmp_path: Path) -> None:
    conf = _app(tmp_path)
    deep = write(conf / "guardrails" / "deep.yaml", "policies: " + "{a: " * 3000 + "}" * 3000)
    assert (
        "nested more than" in problems_of(conf, overrides=["guardrails=deep"])[str(deep.resolve())]
    )


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n# and another\n", "---\n"])
def test_empty_file_is_an_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "g.yaml"
    path.write_text(text)
    assert "the file is empty" in problems_of(path)[str(path)]
    # An explicit empty node says "the defaults" on purpose.
    assert dict(configure(write(path, "guardrails:\n")).policies) == {}


def test_failures_keep_the_configuration_in_force(tmp_path: Path) -> None:
    configure({"policies": {"kept": {"cache": {"ttl": 7}}}})
    bad = {
        "boolean.yaml": "policies: {kept: {cache: {enabled: no}}}\n",
        "bomb.yaml": _laughs(10),
        "deep.yaml": "policies: " + "{a: " * 100 + "}" * 100,
        "empty.yaml": "# nothing\n",
        "recursive.yaml": "policies: &a {p: *a}\n",
    }
    for name, text in bad.items():
        with pytest.raises(PolicyConfigError):
            configure(write(tmp_path / name, text))
        assert policy("kept").cache.ttl == 7, name  # type: ignore[union-attr]


HYDRA_APP = """
import hydra
import guardrails


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg):
    try:
        guardrails.configure(cfg)
    except guardrails.PolicyConfigError as exc:
        print("REFUSED", exc)
    else:
        print("CONFIGURED", guardrails.policy("f").cache)


main()
"""


def _hydra_app(tmp_path: Path, policy_yaml: str, *overrides: str) -> str:
    import os
    import subprocess
    import sys

    (tmp_path / "conf" / "guardrails").mkdir(parents=True)
    (tmp_path / "conf" / "config.yaml").write_text(
        "defaults:\n  - guardrails: mine\n  - _self_\n"
        "hydra:\n  searchpath: [pkg://guardrails.conf]\n"
        "job: {verbose: yes}\n"  # the app's own key: none of guardrails' business
    )
    (tmp_path / "conf" / "guardrails" / "mine.yaml").write_text(policy_yaml)
    (tmp_path / "app.py").write_text(HYDRA_APP)
    env = {k: v for k, v in os.environ.items() if k != "GUARDRAILS_CONFIG"}
    out = subprocess.run(
        [sys.executable, "app.py", f"hydra.run.dir={tmp_path / 'out'}", *overrides],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_a_hydra_main_app_gets_the_booleans_of_the_files_its_job_composed(tmp_path: Path) -> None:
    out = _hydra_app(tmp_path, "policies:\n  f:\n    cache: {ttl: 5, enabled: no}\n")
    assert "REFUSED" in out
    assert "guardrails.policies.f.cache.enabled: 'no' is a YAML 1.1 boolean" in out
    assert "mine.yaml, line 3" in out
    assert "job.verbose" not in out


def test_a_hydra_main_app_with_true_and_false_configures(tmp_path: Path) -> None:
    out = _hydra_app(
        tmp_path,
        "policies:\n  f:\n    cache: {ttl: 5, enabled: false}\n",
        "guardrails.policies.f.cache.ttl=7",
    )
    assert "CONFIGURED enabled=False ttl=7.0" in out


def test_a_hydra_main_app_gets_the_booleans_its_interpolations_reach(tmp_path: Path) -> None:
    # `job: {verbose: yes}` is the app's own key (config.yaml, line 6); the policy reads it.
    policy_yaml = (
        "policies:\n"
        "  f:\n"
        "    cache: {ttl: 5, enabled: '${job.verbose}'}\n"
        "    log: {enabled: '${..cache.enabled}'}\n"
    )
    out = _hydra_app(tmp_path, policy_yaml)
    assert "REFUSED" in out
    config = (tmp_path / "conf" / "config.yaml").resolve()
    assert (
        "guardrails.policies.f.cache.enabled: 'yes' is a YAML 1.1 boolean, read as true "
        f"({config}, line 6, at job.verbose), and lands here through the interpolation "
        "${job.verbose}; write true there"
    ) in out
    assert (
        "guardrails.policies.f.log.enabled: 'yes' is a YAML 1.1 boolean, read as true "
        f"({config}, line 6, at job.verbose), and lands here through the interpolations "
        "${..cache.enabled} -> ${job.verbose}"
    ) in out
    assert "(2 problems)" in out
    # Set on the command line, the value is the override's, not the file's word.
    (tmp_path / "conf").rename(tmp_path / "refused")
    out = _hydra_app(tmp_path, policy_yaml, "job.verbose=true")
    assert "CONFIGURED enabled=True ttl=5.0" in out


@pytest.mark.parametrize("char", ["\x00", "\x07", "\ufffe"])
def test_a_character_yaml_refuses_is_a_config_error_naming_the_source(char: str) -> None:
    import yaml

    from guardrails import _yaml

    with pytest.raises(PolicyConfigError) as exc:
        _yaml.load(f"policies: {{p: {{}}}}{char}\n", yaml.SafeLoader, "f.yaml")
    assert exc.value.problems[0][0] == "f.yaml"
    assert "cannot read YAML" in exc.value.problems[0][1]
