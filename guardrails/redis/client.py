"""Connections to Redis: one ``Server`` per URL and process, and the outage watch.

Every Redis operation guardrails makes has a short timeout (``cache.redis_timeout``,
default 50 ms) and no retries of its own: a guarded call must never wait long on Redis,
because it can always fall back to this process's own state (the in-process cache, a
per-process breaker, bucket or bulkhead).

The outage watch: the first failed operation (refused connection, timeout, an error
reply that is not the script's own) logs one WARNING naming the server and what falls
back, and marks the server down; while down, callers skip Redis altogether
(``usable()`` is false) except for one probe every ``probe_every`` seconds (0.5 s,
doubling to 5 s while the outage lasts), so a dead server costs nothing per call and a
slow one costs one timeout per probe. The first operation that succeeds again logs one
INFO and ends the outage. Every failure is counted (``stats().redis_errors`` of the
policy that met it) by the caller.

Fork: redis-py notices a fork and opens new connections in the child; the lock here is a
``ForkSafeLock``; a child starts with the parent's outage state (it is as true there).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import AsyncIterator
from typing import Any

import redis
import redis.asyncio
from redis.backoff import NoBackoff
from redis.retry import Retry

from guardrails._forksafe import ForkSafeLock
from guardrails._redis import redis_url_shown

LOGGER = logging.getLogger("guardrails.redis")

#: What a failed Redis operation raises: redis-py's errors and the OS's socket errors.
#: (``redis.exceptions.TimeoutError`` and ``ConnectionError`` are ``RedisError``s.)
ERRORS: tuple[type[BaseException], ...] = (redis.exceptions.RedisError, OSError)

#: How long a server that failed is left alone before one call probes it, first and at most.
PROBE_FIRST = 0.5
PROBE_MAX = 5.0
#: How many kinds of error reply a server logs, at most.
MAX_REPLY_ERRORS = 100


def _clock() -> float:
    return time.monotonic()


class Server:
    """One Redis server (URL) as this process sees it: its clients and its health."""

    def __init__(self, url: str) -> None:
        self.url = url
        #: The URL as logs show it (password masked).
        self.shown = redis_url_shown(url)
        self._lock = ForkSafeLock()
        self._sync: dict[float, redis.Redis] = {}
        #: Per event loop: its clients by timeout (and the closer that ends them).
        self._async: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Any, Any]] = (
            weakref.WeakKeyDictionary()
        )
        #: ``monotonic()`` before which callers skip Redis (0: the server is up).
        self.down_until = 0.0
        self._probe_every = PROBE_FIRST
        #: Outages seen by this process, and the last error's text (for ``stats`` and tests).
        self.outages = 0
        self.last_error: str | None = None
        #: The error replies logged already (see ``failed``).
        self._replies_seen: set[tuple[str, str, str]] = set()

    # -- clients ---------------------------------------------------------------------------

    def client(self, timeout: float) -> redis.Redis:
        """The sync client whose every operation times out after ``timeout`` seconds."""
        found = self._sync.get(timeout)
        if found is None:
            with self._lock:
                found = self._sync.get(timeout)
                if found is None:
                    found = self._sync[timeout] = redis.Redis.from_url(
                        self.url, **_options(timeout)
                    )
        return found

    def async_client(self, timeout: float) -> redis.asyncio.Redis:
        """The asyncio client of the running event loop (an asyncio connection belongs to
        the loop that opened it). Its connections are closed when the loop shuts down
        (``asyncio.run`` and servers call ``loop.shutdown_asyncgens()``)."""
        loop = asyncio.get_running_loop()
        per_loop = self._async.get(loop)
        if per_loop is None:
            with self._lock:
                per_loop = self._async.get(loop)
                if per_loop is None:
                    self._let_go_of_closed_loops()
                    per_loop = self._async[loop] = {}
                    _close_at_shutdown(per_loop)
        found = per_loop.get(timeout)
        if found is None:
            found = per_loop[timeout] = redis.asyncio.Redis.from_url(self.url, **_options(timeout))
        return found

    def _let_go_of_closed_loops(self) -> None:
        """Forget the clients of loops closed without ``shutdown_asyncgens()`` (a bare
        ``loop.close()``): their connections hold their loop, so the table's entry kept each
        such loop alive for ever with its sockets open. Called with the lock held."""
        for loop, clients in list(self._async.items()):
            if loop.is_closed():
                del self._async[loop]
                _abandon(clients)

    # -- health ----------------------------------------------------------------------------

    def usable(self) -> bool:
        """Whether to try Redis now: up, or down and due for a probe (this caller probes)."""
        down_until = self.down_until
        if not down_until:
            return True
        now = _clock()
        if now < down_until:
            return False
        with self._lock:
            if now < self.down_until:  # another caller took this probe
                return False
            # This caller probes; the others skip until it has answered (or timed out).
            self.down_until = now + self._probe_every
            self._probe_every = min(self._probe_every * 2, PROBE_MAX)
        return True

    def failed(self, exc: BaseException, what: str) -> None:
        """An operation failed: start (and log) an outage unless one is going on.

        ``what``: what falls back while Redis is away, for the WARNING (``"policy
        'embed': cache in this process only"``).

        An error reply (``ResponseError``: a key of another type, a script error, a
        read-only replica) is not an outage: the server answered, and other keys and
        policies may be fine. It is logged once per kind and ``what`` (at most
        ``MAX_REPLY_ERRORS`` kinds), and the server stays in use.
        """
        self.last_error = _error_text(exc)
        if isinstance(exc, redis.exceptions.ResponseError) and not _refused_connection(exc):
            self._reply_error(exc, what)
            return
        with self._lock:
            starting = not self.down_until
            if starting:
                self.outages += 1
                self._probe_every = PROBE_FIRST
            self.down_until = _clock() + self._probe_every
        if starting:
            LOGGER.warning(
                "guardrails: Redis at %s is unreachable or slow (%s); %s until it answers "
                "again (tried again every few seconds)",
                self.shown,
                self.last_error,
                what,
            )

    def _reply_error(self, exc: BaseException, what: str) -> None:
        kind = (what, type(exc).__name__, (self.last_error or "")[:80])
        with self._lock:
            if kind in self._replies_seen or len(self._replies_seen) >= MAX_REPLY_ERRORS:
                return
            self._replies_seen.add(kind)
        LOGGER.warning(
            "guardrails: Redis at %s refused an operation (%s); %s for such calls (logged "
            "once; the server stays in use for the rest)",
            self.shown,
            self.last_error,
            what,
        )

    def succeeded(self) -> None:
        """An operation succeeded: end the outage, if one is going on (cheap when none is)."""
        if not self.down_until:
            return
        with self._lock:
            if not self.down_until:
                return
            self.down_until = 0.0
            self._probe_every = PROBE_FIRST
        LOGGER.info("guardrails: Redis at %s answers again; shared state is back", self.shown)

    def close(self) -> None:
        """Close the sync clients' connections (the asyncio ones close with their loops)."""
        with self._lock:
            clients, self._sync = list(self._sync.values()), {}
            self._let_go_of_closed_loops()
        for client in clients:
            client.close()


async def _closer(clients: dict[Any, Any]) -> AsyncIterator[None]:
    try:
        yield
    finally:
        if not clients.get("abandoned"):
            for client in [c for c in clients.values() if isinstance(c, redis.asyncio.Redis)]:
                with contextlib.suppress(Exception):
                    await client.aclose()
        clients.clear()


def _abandon(clients: dict[Any, Any]) -> None:
    """End the closer of a loop that was closed without running it, here and at once
    (nothing can be awaited on a closed loop; left unfinished, the collector would hand it
    to its closed loop, which raises). The connections' sockets are closed by the garbage
    collector (asyncio cannot close a transport whose loop is closed)."""
    closer = clients.get("closer")
    clients["abandoned"] = True
    if closer is not None:
        step: Any = closer.aclose()
        with contextlib.suppress(StopIteration, RuntimeError):
            step.send(None)  # runs the `finally`, which awaits nothing when abandoned


def _close_at_shutdown(clients: dict[Any, Any]) -> None:
    """Close ``clients`` when the running loop shuts down: an async generator, started
    here (so the loop tracks it) and paused, whose ``finally`` the loop's
    ``shutdown_asyncgens()`` runs while the loop still runs. Without it the connections
    would outlive their loop and warn when collected."""
    closer = _closer(clients)
    step: Any = closer.__anext__()
    with contextlib.suppress(StopIteration):
        step.send(None)  # runs to the `yield`: nothing is awaited before it
    clients["closer"] = closer  # kept as long as the loop's entry


#: Error replies to the commands a new connection sends (``SELECT`` of a database the server
#: lacks, ``AUTH``/``HELLO``): no command can work on that server, so it is an outage (one
#: WARNING, probes with backoff), not a refusal of one key (which every call would meet
#: again, opening a connection each time).
_CONNECTION_REPLIES = ("DB index is out of range", "NOAUTH", "WRONGPASS", "invalid password")


def _refused_connection(exc: BaseException) -> bool:
    try:
        text = str(exc)
    except Exception:
        return False
    return text.startswith(_CONNECTION_REPLIES)


def _options(timeout: float) -> dict[str, Any]:
    return {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        # No retries: a failed operation falls back at once; the outage watch probes.
        "retry": Retry(NoBackoff(), 0),
        "retry_on_timeout": False,
        "health_check_interval": 0,
    }


def _error_text(exc: BaseException) -> str:
    try:
        text = str(exc)
    except Exception:
        text = ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


_SERVERS: dict[str, Server] = {}
_SERVERS_LOCK = ForkSafeLock()


def server(url: str) -> Server:
    """The process's ``Server`` for ``url`` (made on first use)."""
    found = _SERVERS.get(url)
    if found is None:
        with _SERVERS_LOCK:
            found = _SERVERS.setdefault(url, Server(url))
    return found


def servers() -> list[Server]:
    """Every server this process has used."""
    return list(_SERVERS.values())


def reset() -> None:
    """Forget every server (closing its clients): for ``guardrails.testing.reset()``."""
    with _SERVERS_LOCK:
        found = list(_SERVERS.values())
        _SERVERS.clear()
    for each in found:
        each.close()
