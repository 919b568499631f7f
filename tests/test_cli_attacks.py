"""Attacks on the CLI (show, explain, check --import), strict typo refusal and the type
expressions of ``validate.output``: what an operator or a hostile config would try."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import guardrails
import guardrails._policy
from guardrails import PolicyConfigError, configure, guarded
from guardrails._cli import main
from guardrails._config import load
from guardrails._types import parse_type, type_text

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


def shown_in_process(*args: str) -> str:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["show", *args])
    assert code == 0, err.getvalue()
    return out.getvalue()


def assert_same_settings(a: guardrails.Settings, b: guardrails.Settings) -> None:
    assert (a.strict, a.allow_chaos) == (b.strict, b.allow_chaos)
    assert a.policy_defaults == b.policy_defaults
    assert sorted(a.policies) == sorted(b.policies)
    for name in a.policies:
        assert a.policies[name] == b.policies[name], name


# --- show: the output, configured again, gives the same settings ----------------------------


def test_show_of_the_production_set_configures_back_to_the_same_settings(tmp_path: Path) -> None:
    # predict inherits fetch_features and removes its cache, timeout, breaker and fallback
    # (`cache: null`). Shown without those keys, the output read back put all four back.
    out = run("show", "conf", "guardrails=production")
    assert out.returncode == 0, out.stderr
    path = tmp_path / "shown.yaml"
    path.write_text(out.stdout)
    original = load(str(ROOT / "conf"), overrides=["guardrails=production"])
    assert_same_settings(original, load(str(path)))
    predict = yaml.safe_load(out.stdout)["guardrails"]["policies"]["predict"]
    assert predict["base"] == "fetch_features"
    assert predict["cache"] is None and predict["breaker"] is None


def test_a_setting_removed_below_policy_defaults_is_shown_as_null(tmp_path: Path) -> None:
    path = tmp_path / "g.yaml"
    path.write_text(
        "guardrails:\n"
        "  policy_defaults:\n"
        "    log: {slow: 1s}\n"
        "    timeout: {attempt: 1s, total: 5s}\n"
        "  policies:\n"
        "    p: {timeout: {total: null}, log: {slow: null}}\n"
        "    q: {log: null}\n"
    )
    text = shown_in_process(str(path))
    back = tmp_path / "back.yaml"
    back.write_text(text)
    assert_same_settings(load(str(path)), load(str(back)))
    p = yaml.safe_load(text)["guardrails"]["policies"]["p"]
    assert p["timeout"] == {"enabled": True, "attempt": "1s", "total": None}


_DURATIONS = st.sampled_from(["250ms", "1s", 0.5, 2, "PT1M", "5m"])
_TYPES = st.sampled_from(
    ["int", "list[list[float]]", "int | None", "dict[str, float]", "Literal['a', 'b']"]
)
_BLOCKS: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "log": st.fixed_dictionaries(
        {},
        optional={
            "level": st.sampled_from(["DEBUG", "INFO", "WARNING"]),
            "slow": st.one_of(st.none(), _DURATIONS),
            "args": st.sampled_from(["none", "shapes"]),
            "expected": st.sampled_from([["ValueError"], ["ConnectionError", "TimeoutError"]]),
        },
    ),
    "validate": st.fixed_dictionaries({}, optional={"output": _TYPES}),
    "cache": st.fixed_dictionaries(
        {},
        optional={"ttl": _DURATIONS, "maxsize": st.integers(1, 10_000), "key": st.just(["x"])},
    ),
    "memory": st.fixed_dictionaries(
        {},
        optional={
            "max_rss": st.sampled_from(["90%", "64GiB", None]),
            "soft_rss": st.sampled_from(["50%", "1GiB", None]),
        },
    ),
    "retry": st.fixed_dictionaries(
        {},
        optional={
            "max_attempts": st.integers(1, 5),
            "wait": st.one_of(
                _DURATIONS, st.fixed_dictionaries({}, optional={"initial": _DURATIONS})
            ),
            "retry_on": st.sampled_from([["ConnectionError"], []]),
            "deadline": st.one_of(st.none(), _DURATIONS),
        },
    ),
    "timeout": st.fixed_dictionaries(
        {},
        optional={
            "attempt": st.one_of(st.none(), _DURATIONS),
            "total": st.one_of(st.none(), _DURATIONS),
        },
    ),
    "bulkhead": st.fixed_dictionaries({"max_concurrent": st.integers(1, 8)}),
    "breaker": st.fixed_dictionaries(
        {},
        optional={
            "failure_rate": st.sampled_from(["50%", 0.8]),
            "slow_call": st.one_of(st.none(), _DURATIONS),
        },
    ),
}


@st.composite
def _block_set(draw: st.DrawFn) -> dict[str, Any]:
    chosen = draw(st.lists(st.sampled_from(sorted(_BLOCKS)), unique=True, max_size=4))
    body: dict[str, Any] = {}
    for name in chosen:
        body[name] = draw(
            st.one_of(st.none(), st.just({"enabled": False}), _BLOCKS[name]),
        )
    return body


@st.composite
def _configs(draw: st.DrawFn) -> dict[str, Any]:
    n = draw(st.integers(1, 5))
    policies: dict[str, Any] = {}
    for i in range(n):
        body = draw(_block_set())
        if i and draw(st.booleans()):
            body["base"] = f"p{draw(st.integers(0, i - 1))}"
        policies[f"p{i}"] = body
    return {
        "guardrails": {
            "strict": draw(st.booleans()),
            "policy_defaults": draw(_block_set()),
            "policies": policies,
        }
    }


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config=_configs())
def test_shown_policies_configure_back_to_the_same_settings(
    config: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> None:
    folder = tmp_path_factory.mktemp("show")
    path = folder / "g.yaml"
    path.write_text(yaml.safe_dump(config))
    try:
        original = load(str(path))
    except PolicyConfigError:
        return  # a generated combination the models refuse: nothing to show
    back = folder / "back.yaml"
    back.write_text(shown_in_process(str(path)))
    assert_same_settings(original, load(str(back)))


# --- strict names: a policy used as a base is used -------------------------------------------


APP = """
from guardrails import guarded

@guarded("predict")
def predict(x):
    return x
"""


def test_check_import_counts_a_base_policy_as_used(tmp_path: Path) -> None:
    (tmp_path / "base_app_r3.py").write_text(APP)
    path = tmp_path / "g.yaml"
    # `common` is what predict runs (through base): not "used by no guarded function".
    path.write_text(
        "guardrails:\n"
        "  strict: true\n"
        "  policies:\n"
        "    common: {retry: {max_attempts: 3}}\n"
        "    predict: {base: common}\n"
        "    orphan: {}\n"
    )
    out = run("check", str(path), "--import", "base_app_r3", "--format", "json", cwd=tmp_path)
    data = json.loads(out.stdout)
    assert [p["key"] for p in data["problems"]] == ["guardrails.policies.orphan"], data
    assert out.returncode == 1


def test_strict_accepts_a_base_one_typo_from_its_policy() -> None:
    @guarded("predict")
    def predict(x: int) -> int:
        return x

    # `predicts` is predict's base, so it is in use; without the base it is still a typo.
    configure(
        {
            "guardrails": {
                "strict": True,
                "policies": {
                    "predicts": {"retry": {"max_attempts": 2}},
                    "predict": {"base": "predicts"},
                },
            }
        }
    )
    assert predict(3) == 3
    with pytest.raises(PolicyConfigError, match="did you mean 'predict'"):
        configure({"guardrails": {"strict": True, "policies": {"predicts": {}, "predict": {}}}})


def test_a_typo_of_a_base_is_not_named_as_a_function_policy() -> None:
    @guarded("predict")
    def predict(x: int) -> int:
        return x

    # `commons` is one typo of the base `common`, which no function is guarded with: allowed
    # (and no KeyError looking up the function of `common`).
    configure(
        {
            "guardrails": {
                "strict": True,
                "policies": {"common": {}, "predict": {"base": "common"}, "commons": {}},
            }
        }
    )
    assert predict(1) == 1


# --- type expressions ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "hostile",
    ["copyreg:dispatch_table[complex]", "sys:modules[int]", "os:environ[str]"],
)
def test_a_subscript_of_something_that_is_not_a_type_is_refused(hostile: str) -> None:
    # Before: Python's subscription of a module-level mapping ran, and whatever it returned
    # (copyreg's pickle_complex function) was accepted as validate.output.
    with pytest.raises(PolicyConfigError) as caught:
        configure({"guardrails": {"policies": {"p": {"validate": {"output": hostile}}}}})
    (problem,) = caught.value.problems
    assert problem[0] == "guardrails.policies.p.validate.output"
    assert "which is not a type" in problem[1]


@pytest.mark.parametrize("written", ["sys:modules", "list[sys:modules]", "sys.modules"])
def test_a_name_of_a_huge_object_gives_a_short_message(written: str) -> None:
    # The message held repr(sys.modules): tens of kilobytes in a log line.
    with pytest.raises(PolicyConfigError) as caught:
        configure({"guardrails": {"policies": {"p": {"validate": {"output": written}}}}})
    (problem,) = caught.value.problems
    assert len(problem[1]) < 300, problem[1]
    assert "a dict object" in problem[1]


@pytest.mark.parametrize(
    "value", ["a\nb", "tab\there", "back\\slash", "it's", 'say "hi"', "ünï ✓", "]", ",|["]
)
def test_a_literal_string_is_shown_so_that_it_reads_back(value: str) -> None:
    quote = '"' if "'" in value else "'"
    tp = parse_type(f"Literal[{quote}{value}{quote}]")
    assert typing.get_args(tp) == (value,)
    assert parse_type(type_text(tp)) == tp


@pytest.mark.parametrize(
    ("written", "shown"),
    [
        ("typing.List[int]", "list[int]"),
        ("typing:Dict[str, typing:List[float]]", "dict[str, list[float]]"),
        ("typing.Tuple[int, ...]", "tuple[int, ...]"),
        ("typing:Sequence[int]", "collections.abc:Sequence[int]"),
        ("typing:FrozenSet[str] | None", "frozenset[str] | None"),
    ],
)
def test_typing_aliases_read_back_equal(written: str, shown: str) -> None:
    # typing.List[int] was shown as list[int], which reads back unequal (and a policy
    # configured from `show` was then a different policy, with a new cache store).
    tp = parse_type(written)
    assert type_text(tp) == shown
    assert parse_type(shown) == tp


# --- JSON output: strict JSON whatever the configuration or the imported code does ----------


def strict_json(text: str) -> Any:
    def refuse(constant: str) -> Any:
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_json_output_is_strict_json_for_values_that_are_not_finite(tmp_path: Path) -> None:
    # A fallback answer of NaN (a model's "no score") was printed as NaN / Infinity, which
    # JSON parsers other than Python's (jq, JavaScript, Go) refuse.
    path = tmp_path / "g.yaml"
    path.write_text(
        "guardrails:\n"
        "  policies:\n"
        "    p: {fallback: {value: .nan, catch: [ValueError]}}\n"
        "    q: {fallback: {value: {score: .inf, low: -.inf}, catch: [ValueError]}}\n"
    )
    explained = strict_json(run("explain", "p", str(path), "--format", "json").stdout)
    (fallback,) = [layer for layer in explained["layers"] if layer["layer"] == "fallback"]
    assert {s["key"]: s["value"] for s in fallback["settings"]}["value"] == ".nan"
    shown = strict_json(run("show", str(path), "--format", "json").stdout)
    assert shown["guardrails"]["policies"]["q"]["fallback"]["value"] == {
        "score": ".inf",
        "low": "-.inf",
    }
    assert strict_json(run("check", str(path), "--format", "json").stdout)["ok"] is True


NOISY = """
import ctypes
import os

print("print at import")
os.write(1, b"os.write at import\\n")
ctypes.CDLL(None).printf(b"printf at import\\n")  # a C library's banner, buffered in a pipe

from guardrails import guarded

@guarded("noisy")
def noisy(x):
    return x
"""


def test_check_import_keeps_json_clean_of_what_modules_write_to_descriptor_1(
    tmp_path: Path,
) -> None:
    (tmp_path / "noisy_r3.py").write_text(NOISY)
    path = tmp_path / "g.yaml"
    path.write_text("guardrails: {policies: {noisy: {}}}\n")
    out = run("check", str(path), "--import", "noisy_r3", "--format", "json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    data = strict_json(out.stdout)
    assert data["ok"] is True
    assert [f["function"] for f in data["functions"]] == ["noisy_r3.noisy"]
    for line in ("print at import", "os.write at import", "printf at import"):
        assert line in out.stderr


def test_check_import_names_the_application_line_that_failed(tmp_path: Path) -> None:
    (tmp_path / "gen_r3.py").write_text(
        "from guardrails import guarded\n\n@guarded('gen')\ndef rows():\n    yield 1\n"
    )
    out = run("check", "--import", "gen_r3", "--format", "json", cwd=tmp_path)
    (problem,) = strict_json(out.stdout)["problems"]
    assert problem["key"] == "--import gen_r3"
    assert "cannot guard the generator function rows" in problem["message"]
    assert f"(at {tmp_path / 'gen_r3.py'}, line 3)" in problem["message"], problem["message"]


def test_show_merges_each_policy_once_however_long_the_base_chain(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each shown policy walked its whole base chain again: quadratic (1,500 chained
    # policies took 12 s). Counted, not timed: top-level merges per policy shown.
    import guardrails._explain as explain_module

    n = 300
    policies: dict[str, Any] = {"p0": {"retry": {"max_attempts": 3}}}
    for i in range(1, n):
        policies[f"p{i}"] = {"base": f"p{i - 1}", "cache": {"ttl": i}}
    path = tmp_path / "chain.yaml"
    path.write_text(yaml.safe_dump({"guardrails": {"policies": policies}}))
    calls = [0]
    real = guardrails._policy.deep_merge

    def counting(base: Any, over: Any) -> dict[str, Any]:
        calls[0] += 1
        return real(base, over)

    monkeypatch.setattr(explain_module, "deep_merge", counting)
    text = shown_in_process(str(path))
    assert calls[0] <= 4 * n, calls[0]
    back = tmp_path / "back.yaml"
    back.write_text(text)
    assert_same_settings(load(str(path)), load(str(back)))


_TYPE_TOKENS = [
    *("list", "dict", "tuple", "int", "float", "str", "None", "Any", "Optional", "Union"),
    *("Literal", "InstanceOf", "type", "frozenset", "bytes", "bool", "'a'", '"b"', "1", "-2"),
    *("True", "...", "[", "]", ",", "|", " ", "typing:List", "typing.Dict"),
    *("collections.abc:Sequence", "numpy:ndarray", "object", "Exception", "complex"),
]


@settings(max_examples=400, deadline=None)
@given(parts=st.lists(st.sampled_from(_TYPE_TOKENS), max_size=12))
@example(parts=["typing:List", "|", "typing:List"])
@example(parts=["typing.Dict", "[", "str", ",", "typing:List", "]"])
def test_any_token_soup_is_read_or_refused_and_what_is_read_reads_back(parts: list[str]) -> None:
    # typing:List|typing:List was read as typing.List and shown as typing:List, which the
    # plain-name rules then refused: show's output did not load back.
    text = "".join(parts)
    try:
        tp = parse_type(text)
    except ValueError:
        return
    assert parse_type(type_text(tp)) == tp, (text, type_text(tp))
