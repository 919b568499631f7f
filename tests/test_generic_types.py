"""Type expressions written in YAML for ``validate.output``: generics, unions, literals."""

from __future__ import annotations

import subprocess
import sys
import typing
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from guardrails import OutputValidationError, PolicyConfigError, configure, guarded, policy
from guardrails._types import INSTANCE_OF, MAX_TYPE_DEPTH, parse_type, type_text
from guardrails.layers import validate as validate_module
from tests.schemas_for_tests import Prediction

KEY = "guardrails.policies.v.validate.output"


def output_policy(output: Any, **blocks: Any) -> None:
    configure({"policies": {"v": {"validate": {"output": output}, **blocks}}})


def returning(value: Any) -> Any:
    return guarded("v")(lambda: value)()


@pytest.mark.parametrize(
    ("written", "good", "validated", "bad"),
    [
        ("list[list[float]]", [[1, 2.5]], [[1.0, 2.5]], [[1, "x"]]),
        ("dict[str, float]", {"a": 1}, {"a": 1.0}, {"a": "many"}),
        ("tuple[int, ...]", [1, 2, 3], (1, 2, 3), [1, "two"]),
        ("tuple[str, int]", ("a", 1), ("a", 1), ("a", 1, 2)),
        ("int | None", None, None, "many"),
        ("Optional[int]", 3, 3, [3]),
        ("typing.Optional[list[int]]", [1], [1], {"a": 1}),
        ("Union[int, str]", "x", "x", [1]),
        ("Literal['cat', 'dog', 3]", "dog", "dog", "cow"),
        ("set[int]", [1, 1, 2], {1, 2}, [[1]]),
        ("list[tests.schemas_for_tests:Prediction]", [{"label": "a", "score": 0.5}], None, [{}]),
        ("tests.schemas_for_tests:Prediction | None", None, None, {"label": "a", "score": 9}),
        ("collections.abc:Sequence[float]", (1, 2), (1.0, 2.0), "no"),
        ("InstanceOf[numpy.ndarray]", np.zeros(2), None, [0.0, 0.0]),
        ("dict[str, InstanceOf[numpy:ndarray]]", {"w": np.ones(1)}, None, {"w": [1.0]}),
        ("Any", object, object, None),
    ],
)
def test_a_type_expression_validates_the_return_value(
    written: str, good: Any, validated: Any, bad: Any
) -> None:
    output_policy(written)
    result = returning(good)
    if validated is not None:
        assert result == validated and type(result) is type(validated)
    if written == "Any":
        return
    with pytest.raises(OutputValidationError) as exc:
        returning(bad)
    assert exc.value.policy == "v"


def test_a_model_inside_a_generic_is_validated_into_the_model() -> None:
    output_policy("list[tests.schemas_for_tests:Prediction]")
    (item,) = returning([{"label": "a", "score": "0.5"}])
    assert isinstance(item, Prediction) and item.score == 0.5


def test_types_written_in_a_yaml_file_and_shown_back_as_written(tmp_path: Path) -> None:
    path = tmp_path / "g.yaml"
    path.write_text(
        "policies:\n"
        "  a:\n"
        "    validate:\n"
        "      output: list[list[float]]\n"  # block style: no quotes needed
        "  b: {validate: {output: 'int | None'}}\n"  # flow style: quoted
        "  c: {validate: {output: \"Literal['x', 'y']\"}}\n"
        "  d:\n"
        "    validate:\n"
        "      output: dict[str, InstanceOf[numpy.ndarray]]\n"
    )
    settings = configure(path)
    shown = {
        name: settings.policies[name].model_dump(mode="json")["validate"]["output"]
        for name in "abcd"
    }
    assert shown == {
        "a": "list[list[float]]",
        "b": "int | None",
        "c": "Literal['x', 'y']",
        "d": "dict[str, InstanceOf[numpy:ndarray]]",
    }
    # What is shown configures the same policy again.
    for name, text in shown.items():
        assert parse_type(text) == settings.policies[name].validate.output  # type: ignore[union-attr]


def test_a_quoted_hydra_override_sets_a_type(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    (conf / "guardrails").mkdir(parents=True)
    (conf / "config.yaml").write_text(
        "defaults:\n  - guardrails: default\n  - _self_\nhydra:\n  searchpath: [pkg://guardrails.conf]\n"
    )
    (conf / "guardrails" / "default.yaml").write_text("policies: {v: {}}\n")
    configure(conf, overrides=["+guardrails.policies.v.validate.output='list[list[float]]'"])
    assert policy("v").validate.output == list[list[float]]  # type: ignore[union-attr]


def test_the_guardrails_show_command_prints_the_type_as_written(tmp_path: Path) -> None:
    path = tmp_path / "g.yaml"
    path.write_text("policies:\n  v: {validate: {output: 'dict[str, list[float]] | None'}}\n")
    out = subprocess.run(
        [sys.executable, "-m", "guardrails._cli", "show", str(path)],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    shown = yaml.safe_load(out.stdout)["guardrails"]["policies"]["v"]["validate"]["output"]
    assert shown == "dict[str, list[float]] | None"


def test_an_unchanged_type_keeps_the_cache_across_configure() -> None:
    calls: list[int] = []

    @guarded("v")
    def f(x: int) -> list[float]:
        calls.append(x)
        return [float(x)]

    for _ in range(3):
        output_policy("list[float] | None", cache={"ttl": 60})
        assert f(1) == [1.0]
    assert calls == [1]


def test_the_adapter_cache_does_not_grow_with_reconfiguration() -> None:
    output_policy("list[InstanceOf[numpy.ndarray]]")
    size = len(validate_module._adapters)
    for _ in range(5):
        output_policy("list[InstanceOf[numpy.ndarray]]")
    assert len(validate_module._adapters) == size
    assert parse_type("InstanceOf[numpy.ndarray]") == typing.Annotated[np.ndarray, INSTANCE_OF]


# --- what is refused, and how it is said ----------------------------------------------------


@pytest.mark.parametrize(
    ("written", "says"),
    [
        ("list[", "expected a type at the end"),
        ("list[int]]", "unexpected ']' at position 10"),
        ("list[]", "list[] needs parameters"),
        ("int[str]", "int[...] is not a type"),
        ("Optional", "Optional takes parameters"),
        ("Literal[int]", "a Literal takes quoted strings"),
        ("list[1]", "expected a type name, found '1'"),
        ("str | ", "expected a type at the end"),
        ("list[int] extra", "unexpected 'extra'"),
        ("list[no_such_name]", "'no_such_name' is not a builtin name"),
        ("list[nosuchmodule:X]", "cannot import module 'nosuchmodule'"),
        ("list[os.path:join]", "which is not a type"),
        ("InstanceOf[int, str]", "InstanceOf takes one class"),
        ("dict[str, numpy.ndarray]", "write InstanceOf[numpy:ndarray] to check only"),
        ("dict[str,]", "Expected two type arguments"),
        ("list['a']", "expected a type name, found \"'a'\""),
    ],
)
def test_a_bad_type_names_the_key_and_what_is_wrong(written: str, says: str) -> None:
    with pytest.raises(PolicyConfigError) as exc:
        output_policy(written)
    message = dict(exc.value.problems)[KEY]
    assert says in message, message


@pytest.mark.parametrize(
    "hostile",
    [
        "list[__import__('os').system('touch /tmp/guardrails-pwned')]",
        "list[(lambda: 1)()]",
        "list[int]; import os",
        "list[int if True else str]",
        "list[builtins:eval]",
        "list[f'{1}']",
        'list["a\\\\"]',
    ],
)
def test_nothing_in_a_type_expression_is_evaluated(hostile: str, tmp_path: Path) -> None:
    with pytest.raises(PolicyConfigError) as exc:
        output_policy(hostile)
    assert KEY in dict(exc.value.problems)
    assert not Path("/tmp/guardrails-pwned").exists()


def test_deep_and_long_expressions_are_refused_without_recursing() -> None:
    deep = "list[" * (MAX_TYPE_DEPTH + 2) + "int" + "]" * (MAX_TYPE_DEPTH + 2)
    with pytest.raises(PolicyConfigError, match="nested more than"):
        output_policy(deep)
    very_deep = "list[" * 100_000 + "int" + "]" * 100_000
    with pytest.raises(PolicyConfigError, match="at most"):
        output_policy(very_deep)
    output_policy("list[" * MAX_TYPE_DEPTH + "int" + "]" * MAX_TYPE_DEPTH)  # the limit itself


def test_a_type_object_is_accepted_from_python_too() -> None:
    output_policy(dict[str, list[int]])
    assert returning({"a": ["1"]}) == {"a": [1]}
    with pytest.raises(PolicyConfigError, match="expected a type like"):
        output_policy(3)


# --- every expression reads back from how it is shown -------------------------------------

_LEAVES = st.sampled_from(
    ["int", "float", "str", "bool", "bytes", "None", "Any", "tests.schemas_for_tests:Order"]
)


def _expressions() -> st.SearchStrategy[str]:
    def extend(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        return st.one_of(
            inner.map(lambda t: f"list[{t}]"),
            inner.map(lambda t: f"set[{t}]" if t not in ("Any",) else "set[int]"),
            st.tuples(st.sampled_from(["str", "int"]), inner).map(
                lambda p: f"dict[{p[0]}, {p[1]}]"
            ),
            inner.map(lambda t: f"tuple[{t}, ...]"),
            st.lists(inner, min_size=1, max_size=3).map(lambda ts: f"tuple[{', '.join(ts)}]"),
            st.lists(inner, min_size=2, max_size=3).map(" | ".join),
            inner.map(lambda t: f"Optional[{t}]"),
            st.lists(
                st.one_of(st.text("abc xyz", max_size=4).map(repr), st.integers(-5, 5).map(str)),
                min_size=1,
                max_size=3,
            ).map(lambda vs: f"Literal[{', '.join(vs)}]"),
        )

    return st.recursive(_LEAVES, extend, max_leaves=6)


@given(_expressions())
def test_shown_types_read_back_equal(text: str) -> None:
    tp = parse_type(text)
    assert parse_type(type_text(tp)) == tp
    assert type_text(parse_type(type_text(tp))) == type_text(tp)
