"""Strict mode refuses a policy name one typo from a guarded function's; nothing else changes."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import guardrails
from guardrails import PolicyConfigError, configure, guarded
from guardrails._core import current_settings, recompile
from guardrails._policy import typo_index, typo_of

ROOT = Path(__file__).resolve().parents[1]


def test_a_misspelt_policy_beside_the_real_one_is_refused_when_strict() -> None:
    @guarded("fetch_features")
    def fetch_features(entity_id: int) -> int:
        return entity_id

    good = configure({"strict": True, "policies": {"fetch_features": {"cache": {"ttl": 60}}}})
    # The command-line typo of the issue: a new policy that no function uses.
    with pytest.raises(PolicyConfigError) as caught:
        configure(
            ROOT / "conf",
            overrides=["guardrails=production", "+guardrails.policies.fetch_featurs.cache.ttl=5"],
        )
    assert len(caught.value.problems) == 1
    key, message = caught.value.problems[0]
    assert key == "guardrails.policies.fetch_featurs"
    assert "(did you mean 'fetch_features', the policy of " in message
    assert "test_strict_names" in message  # names the function
    assert "guardrails.strict=false" in message
    # The configuration in force is still the good one.
    assert current_settings() is good
    assert fetch_features(3) == 3


def test_every_kind_of_typo_is_named(tmp_path: Path) -> None:
    @guarded("score_batch")
    def score(x: int) -> int:
        return x

    for typo in ("score_bach", "scores_batch", "score_batsh", "score_abtch", "Score_batch"):
        with pytest.raises(
            PolicyConfigError, match=rf"policies\.{typo}: .*did you mean 'score_batch'"
        ):
            configure({"strict": True, "policies": {"score_batch": {}, typo: {}}})


@pytest.mark.parametrize(
    "other",
    [
        "score_batch_v2",  # two characters more
        "predict",  # unrelated
        "transform",
    ],
)
def test_an_unused_policy_that_is_no_typo_is_allowed(other: str) -> None:
    # Its function may be imported after configure(): refusing would break apps that
    # configure first.
    @guarded("score_batch")
    def score(x: int) -> int:
        return x

    settings = configure({"strict": True, "policies": {"score_batch": {}, other: {}}})
    assert other in settings.policies
    assert score(1) == 1


def test_versions_are_no_typos() -> None:
    @guarded("model_v1")
    def v1(x: int) -> int:
        return x

    configure({"strict": True, "policies": {"model_v1": {}, "model_v2": {}, "model_v10": {}}})


def test_not_strict_a_typo_is_allowed() -> None:
    @guarded("fetch_features")
    def fetch_features(entity_id: int) -> int:
        return entity_id

    configure({"policies": {"fetch_features": {}, "fetch_featurs": {}}})


def test_a_function_imported_after_configure_does_not_break_a_recompile() -> None:
    configure({"strict": True, "policies": {"rank": {}, "ranks": {}}})

    @guarded("ranks")
    def ranks(x: int) -> int:
        return x

    # `rank` is now one typo from a guarded function's policy; the settings in force were
    # accepted and stay so (a recompile follows a clock change, for instance).
    recompile()
    assert ranks(2) == 2
    # The next configure() checks again.
    with pytest.raises(PolicyConfigError, match=r"policies\.rank: .*did you mean 'ranks'"):
        configure({"strict": True, "policies": {"rank": {}, "ranks": {}}})


def test_policy_of_an_unknown_name_when_strict_says_did_you_mean() -> None:
    configure({"strict": True, "policies": {"predict": {"cache": {"ttl": 5}}}})
    with pytest.raises(PolicyConfigError) as caught:
        guardrails.policy("predcit")
    assert caught.value.problems[0][0] == "guardrails.policies.predcit"
    assert "(did you mean 'predict'?)" in caught.value.problems[0][1]


names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=4, max_size=20)


@given(names, st.data())
def test_one_edit_that_is_not_a_digit_is_a_typo(name: str, data: st.DataObject) -> None:
    kind = data.draw(st.sampled_from(["insert", "delete", "replace", "swap"]))
    i = data.draw(st.integers(0, len(name) - 1))
    letter = data.draw(st.sampled_from("abcdefghijklmnopqrstuvwxyz_"))
    if kind == "insert":
        typo = name[:i] + letter + name[i:]
    elif kind == "delete":
        typo = name[:i] + name[i + 1 :]
    elif kind == "replace":
        typo = name[:i] + letter + name[i + 1 :]
    else:
        j = min(i + 1, len(name) - 1)
        typo = name[:i] + name[j] + name[i] + name[j + 1 :] if j > i else name
    if typo == name or len(typo) < 4:
        assert typo_of(typo, typo_index([name])) is None
    else:
        assert typo_of(typo, typo_index([name])) == name


@given(names, names)
def test_typo_of_agrees_with_an_edit_distance(a: str, b: str) -> None:
    found = typo_of(a, typo_index([b])) == b
    assert found == (a != b and _distance(a, b) == 1)


def _distance(a: str, b: str) -> int:
    """Optimal string alignment distance (adjacent swaps count one)."""
    d = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(len(a) + 1):
        d[i][0] = i
    for j in range(len(b) + 1):
        d[0][j] = j
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            cost = a[i - 1] != b[j - 1]
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1)
    return d[len(a)][len(b)]


def test_the_check_is_linear() -> None:
    # 20,000 unused names beside 20,000 used ones: an all-pairs comparison would take minutes.
    used = [f"policy_{i:05d}_x" for i in range(20_000)]
    index = typo_index(used)
    assert all(typo_of(f"other_{i:05d}_y", index) is None for i in range(20_000))
    assert typo_of("policy_00042_", index) == "policy_00042_x"
