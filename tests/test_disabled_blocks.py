"""``enabled: false`` turns any block off with nothing else written, and still checks what is."""

from __future__ import annotations

import pytest

import guardrails
from guardrails import PolicyConfigError, configure, guarded
from guardrails._policy import Policy

KINDS = [name for name in Policy.model_fields if name != "base"]


@pytest.mark.parametrize("kind", KINDS)
def test_a_block_that_is_off_needs_no_settings(kind: str) -> None:
    configure({"policies": {"p": {kind: {"enabled": False}}}})
    block = getattr(guardrails.policy("p"), kind)
    assert block is not None and block.enabled is False
    calls = []
    assert guarded("p")(lambda: calls.append(1) or "ran")() == "ran"
    assert calls == [1]


@pytest.mark.parametrize(
    ("block", "key"),
    [
        ({"memory": {"enabled": False, "max_rss": "lots"}}, "memory.max_rss"),
        ({"timeout": {"enabled": False, "attempt": -1}}, "timeout.attempt"),
        ({"rate_limit": {"enabled": False, "rate": "fast"}}, "rate_limit.rate"),
        ({"bulkhead": {"enabled": False, "max_concurent": 3}}, "bulkhead.max_concurent"),
        ({"rate_limit": {"enabled": "no", "rate": "5/s"}}, "rate_limit.enabled"),
    ],
)
def test_what_a_block_that_is_off_does_say_is_still_checked(
    block: dict[str, object], key: str
) -> None:
    with pytest.raises(PolicyConfigError) as exc:
        configure({"policies": {"p": block}})
    assert [path for path, _ in exc.value.problems] == [f"guardrails.policies.p.{key}"]


def test_turning_a_block_back_on_needs_its_settings() -> None:
    with pytest.raises(PolicyConfigError) as exc:
        configure(
            {
                "policy_defaults": {"bulkhead": {"enabled": False}},
                "policies": {"p": {"bulkhead": {"enabled": True}}},
            }
        )
    assert "guardrails.policies.p.bulkhead.max_concurrent" in str(exc.value)


def test_an_override_turns_a_written_block_off_in_a_hydra_config_dir() -> None:
    # The README recipe, through Hydra's own override grammar: `++` sets the key whether or
    # not the block wrote it.
    settings = configure("conf", overrides=["++guardrails.policies.predict.memory.enabled=false"])
    memory = settings.policy("predict").memory
    assert memory is not None and memory.enabled is False and memory.max_rss is not None
