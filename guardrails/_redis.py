"""What the core knows of Redis, without importing redis-py or the integration.

The URL's checks, the types of the settings that shared layers have in common, and
``integration()``, which loads a module of ``guardrails.redis`` by name when a block asks for
Redis: the integration imports the core, and the core finds it only then, as a plugin, so
``import guardrails`` imports neither it nor redis-py.
"""

from __future__ import annotations

import importlib
import re
import urllib.parse
from typing import Annotated, Any

from pydantic import BeforeValidator, Field

from guardrails._errors import PolicyConfigError
from guardrails._types import Context, Duration
from guardrails._units import shown

#: Where ``redis_url`` comes from when the configuration does not set it.
REDIS_URL_ENV = "GUARDRAILS_REDIS_URL"
_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


#: Query options of a Redis URL that redis-py reads (and how), other than guardrails' own.
_QUERY_INT = frozenset({"db", "socket_read_size", "max_connections", "ssl_min_version"})
_QUERY_BOOL = frozenset({"socket_keepalive", "ssl_check_hostname", "legacy_responses"})
_QUERY_TEXT = frozenset({"client_name", "username", "password", "lib_name", "lib_version"})
#: Options redis-py passes to an SSL connection only (``rediss://``).
_QUERY_SSL = frozenset(
    {
        "ssl_cert_reqs",
        "ssl_ca_certs",
        "ssl_ca_path",
        "ssl_ca_data",
        "ssl_certfile",
        "ssl_keyfile",
        "ssl_password",
        "ssl_check_hostname",
        "ssl_min_version",
        "ssl_ciphers",
    }
)
#: Options guardrails sets itself: one in the URL would override ``redis_timeout`` (redis-py
#: lets the URL win), so a dead server could hold every guarded call for its value.
_QUERY_OURS = frozenset(
    {
        "socket_timeout",
        "socket_connect_timeout",
        "timeout",
        "retry_on_timeout",
        "retry_on_error",
        "health_check_interval",
    }
)
#: Query option names whose values are secrets (masked by ``redis_url_shown``).
_SECRET_QUERY = re.compile(r"(?i)([?&][a-z_]*password=)[^&#]*")


def redis_url_problem(url: Any) -> str | None:
    """What is wrong with ``url`` as a Redis URL, or ``None`` (the URL itself is never
    shown: it may hold a password). Everything redis-py would refuse when it first connects
    is refused here, at ``configure()``: a port or database that is not a number, an
    unknown query option (each would fail every guarded call with ``ValueError`` or
    ``TypeError`` from redis-py), and a timeout in the query, which would override
    ``redis_timeout``."""
    expected = "expected a Redis URL like redis://localhost:6379/0 (or rediss://, unix://)"
    if not isinstance(url, str):
        scalar = url is None or isinstance(url, int | float)
        return f"{expected}, got {shown(url) if scalar else 'a ' + type(url).__name__}"
    if not url.startswith(_REDIS_SCHEMES):
        return f"{expected}; the string given starts otherwise (not shown: it may hold a password)"
    try:
        parts = urllib.parse.urlparse(url)
        port = parts.port
    except ValueError as exc:
        what = "the port is not a number from 1 to 65535" if "ort" in str(exc) else str(exc)
        return f"{expected}; not a valid URL: {what} (the URL is not shown: it may hold a password)"
    if port == 0:
        return f"{expected}; the port is not a number from 1 to 65535"
    query = urllib.parse.parse_qs(parts.query)
    if parts.scheme == "unix":
        if not parts.path:
            return f"{expected}; unix:// needs the socket's path, like unix:///run/redis.sock"
    else:
        db = urllib.parse.unquote(parts.path).replace("/", "")
        if db and not db.strip().isdigit():
            return (
                f"{expected}; the database (the path after the host) must be a number "
                "from 0, like /0"
            )
    for name, values in query.items():
        value = values[0]
        if name in _QUERY_OURS:
            return (
                f"{expected}; the query sets {name}, which guardrails sets itself: use the "
                "policy's redis_timeout (cache.redis_timeout, breaker.redis_timeout, ...)"
            )
        if name in _QUERY_SSL and parts.scheme != "rediss":
            return f"{expected}; the query option {name} needs a rediss:// (TLS) URL"
        if name in _QUERY_INT and not value.strip().isdigit():
            return f"{expected}; the query option {name} must be a whole number"
        if name == "protocol" and value.strip() not in ("2", "3"):
            return f"{expected}; the query option protocol must be 2 or 3"
        known = _QUERY_INT | _QUERY_BOOL | _QUERY_TEXT | _QUERY_SSL | {"protocol"}
        if name not in known:
            return (
                f"{expected}; unknown query option {name!r} (redis-py would refuse it when "
                f"connecting); known: {', '.join(sorted(known))}"
            )
    return None


def redis_url_shown(url: str) -> str:
    """``url`` with its password (if any) masked, for logs and ``show``: the one in the
    user part and any ``password``/``ssl_password`` query option."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not sep:
        return url
    if at:
        user, colon, _ = userinfo.partition(":")
        rest = f"{user}:***@{host}" if colon else f"***@{host}"
    return _SECRET_QUERY.sub(r"\1***", f"{scheme}://{rest}")


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
    url = ctx.redis_url
    problem = redis_url_problem(url) if url is not None else None
    if problem is not None:
        # The configuration's redis_url is checked with the rest of it: this one came from
        # the environment, read when chains are compiled.
        raise PolicyConfigError(
            [(f"guardrails.policies.{ctx.policy}.{key}", f"${REDIS_URL_ENV}: {problem}")]
        )
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
