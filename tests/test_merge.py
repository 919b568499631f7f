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


names = st.sampled_from(["a", "b", "c", "d", "e"])
bodies = st.fixed_dictionaries(
    {}, optional={"base": st.one_of(names, st.just("zz"), st.integers()), "x": trees, "y": leaves}
)


@given(st.dictionaries(names, bodies, min_size=1), trees)
def test_inheritance_is_the_left_fold_along_each_chain(
    own: dict[str, dict[str, Any]], defaults: dict[str, Any]
) -> None:
    """The memoised resolution gives each policy exactly defaults <- root ... <- policy,
    and refuses (once, at the breaking `base`) exactly the chains that end badly."""
    from guardrails._policy import _inherit

    problems: list[tuple[str, str]] = []
    merged = _inherit(own, defaults, problems)
    broken_at: set[str] = set()
    for name in own:
        chain, seen = [name], {name}
        while (base := own[chain[-1]].get("base")) is not None:
            if not isinstance(base, str) or base not in own or base in seen:
                broken_at.add(f"guardrails.policies.{chain[-1]}.base")
                chain = []
                break
            chain.append(base)
            seen.add(base)
        if not chain:
            assert merged[name] is None
            continue
        expected = defaults
        for ancestor in reversed(chain):
            expected = deep_merge(expected, own[ancestor])
        assert merged[name] == expected
    # Each broken link is reported, and only once (a cycle at one of its links).
    paths = [path for path, _ in problems]
    assert len(paths) == len(set(paths))
    assert set(paths) <= broken_at
    assert bool(paths) == bool(broken_at)
