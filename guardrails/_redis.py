"""What the core knows of Redis, without importing redis-py or the integration.

The URL's checks, the types of the settings that shared layers have in common, and
``integration()``, which loads a module of ``guardrails.redis`` by name when a block asks for
Redis: the integration imports the core, and the core finds it only then, as a plugin, so
``import guardrails`` imports neither it nor redis-py.
"""

from __future__ import annotations

import importlib
import re
from typing import Annotated, Any

from pydantic import BeforeValidator, Field

from guardrails._errors import PolicyConfigError
from guardrails._types import Context, Duration
from guardrails._units import shown

#: Where ``redis_url`` comes from when the configuration does not set it.
REDIS_URL_ENV = "GUARDRAILS_REDIS_URL"
_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def redis_url_problem(url: Any) -> str | None:
    """What is wrong with ``url`` as a Redis URL, or ``None`` (the URL itself is never
    shown: it may hold a password)."""
    expected = "expected a Redis URL like redis://localhost:6379/0 (or rediss://, unix://)"
    if not isinstance(url, str):
        scalar = url is None or isinstance(url, int | float)
        return f"{expected}, got {shown(url) if scalar else 'a ' + type(url).__name__}"
    if not url.startswith(_REDIS_SCHEMES):
        return f"{expected}; the string given starts otherwise (not shown: it may hold a password)"
    return None


def redis_url_shown(url: str) -> str:
    """``url`` with its password (if any) masked, for logs and ``show``."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not sep or not at:
        return url
    user, colon, _ = userinfo.partition(":")
    return (
        f"{scheme}://{user}{':***' if colon else ''}@{host}" if colon else f"{scheme}://***@{host}"
    )


_NAMESPACE = re.compile(r"^[A-Za-z0-9_.\-/]{1,200}$")


def _namespace(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _NAMESPACE.match(value):
        raise ValueError(
            "expected a name of 1 to 200 letters, digits, '_', '.', '-' or '/' (the Redis "
            f"keys are guardrails:<namespace>:<kind>), got {shown(value)}"
        )
    return value


#: ``namespace`` of a shared breaker, rate limit or bulkhead: where its state lives in Redis
#: (``guardrails:<namespace>:breaker``); default the policy's name. Two policies (or two
#: applications) with one namespace share one state.
Namespace = Annotated[str | None, BeforeValidator(_namespace)]
#: ``redis_timeout``: how long one Redis operation of a shared layer may take (default 50ms).
RedisTimeout = Annotated[Duration, Field(gt=0, le=60)]


def shared_url_problem(ctx: Context, block: str) -> None:
    """``shared: true`` with no Redis URL in force: the configuration error (at configure())."""
    if ctx.redis_url is None:
        raise PolicyConfigError(
            [
                (
                    f"guardrails.policies.{ctx.policy}.{block}.shared",
                    "needs a Redis server: set the top-level guardrails.redis_url "
                    "(redis://host:6379/0) or the environment variable $GUARDRAILS_REDIS_URL",
                )
            ]
        )


def integration(ctx: Context, key: str, name: str) -> Any:
    """``guardrails.redis.<name>``, loaded for the block setting at ``key`` (``cache.backend``,
    ``breaker.shared``) when a chain is compiled; without redis-py, the configuration
    error saying what to install."""
    try:
        return importlib.import_module(f"guardrails.redis.{name}")
    except ImportError as exc:
        raise PolicyConfigError(
            [
                (
                    f"guardrails.policies.{ctx.policy}.{key}",
                    f"needs redis-py ({exc}): pip install 'hydra-guardrails[redis]'",
                )
            ]
        ) from None


def shared_module(ctx: Context, block: str) -> Any:
    """``guardrails.redis.shared`` for a block with ``shared: true`` (its URL checked)."""
    shared_url_problem(ctx, block)
    return integration(ctx, f"{block}.shared", "shared")
