"""Property tests for the merge under policy_defaults and base inheritance."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from guardrails._policy import deep_merge

leaves = st.one_of(st.integers(), st.text(max_size=3), st.booleans(), st.none())
trees = st.recursive(
    st.dictionaries(st.sampled_from("abcd"), leaves, max_size=3),
    lambda children: st.dictionaries(
        st.sampled_from("abcd"), st.one_of(leaves, children), max_size=3
    ),
    max_leaves=10,
)


@given(trees)
def test_identity_and_idempotence(a: dict[str, Any]) -> None:
    assert deep_merge(a, {}) == a
    assert deep_merge({}, a) == a
    assert deep_merge(a, a) == a


@given(trees, trees)
def test_the_override_wins_and_nothing_is_lost(base: dict[str, Any], over: dict[str, Any]) -> None:
    merged = deep_merge(base, over)
    assert set(merged) == set(base) | set(over)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            assert merged[key] == deep_merge(base[key], value)
        else:
            assert merged[key] == value
    for key in set(base) - set(over):
        assert merged[key] == base[key]


@given(trees, trees, trees)
def test_a_chain_applies_left_to_right(
    a: dict[str, Any], b: dict[str, Any], c: dict[str, Any]
) -> None:
    # defaults <- base <- policy: the last layer that sets a leaf decides it. (Not
    # associative: `b` replacing a mapping with a leaf drops the mapping for good.)
    merged = deep_merge(deep_merge(a, b), c)
    for key, value in c.items():
        if not isinstance(value, dict):
            assert merged[key] == value


@given(trees, trees)
def test_inputs_are_not_mutated(a: dict[str, Any], b: dict[str, Any]) -> None:
    import copy

    a0, b0 = copy.deepcopy(a), copy.deepcopy(b)
    deep_merge(a, b)
    assert (a, b) == (a0, b0)
