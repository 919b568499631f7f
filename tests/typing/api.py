"""Type-checked by mypy (never run): @guarded keeps the decorated function's types."""

from __future__ import annotations

from typing import assert_type

import guardrails
from guardrails import guarded


@guarded("fetch")
def fetch(user_id: str, *, limit: int = 10) -> dict[str, int]:
    return {user_id: limit}


@guarded
def bare(x: float) -> float:
    return x


@guarded()
async def predict(rows: list[float]) -> list[float]:
    return rows


assert_type(fetch("u", limit=3), dict[str, int])
assert_type(bare(1.0), float)


async def use() -> None:
    assert_type(await predict([1.0]), list[float])


settings: guardrails.Settings = guardrails.configure({"policies": {}})
stats: dict[str, guardrails.PolicyStats] = guardrails.stats()
retry = guardrails.policy("fetch").retry
attempts: int | None = retry.max_attempts if retry is not None else None
