"""The second level of the ``cache`` layer: values in Redis, one computation per key across
processes.

The layer (``guardrails.layers.cache``) keeps its in-process store in front and calls this
level only on an in-process miss, from the one caller per process that leads the key (its
in-process single flight): ``begin`` answers with a value from Redis, a stale value to
serve, a lease (this process computes the key), or nothing (Redis is away or the wait ran
out: compute in this process without it). After computing, the leader calls ``finish``
(store the value and release the lock, one round trip) or ``abandon`` (release the lock at
once, so that another process can try).

Redis keys: ``guardrails:<namespace>:<qualname>:<version>:<digest>`` for the value (its
expiry is ``ttl + stale_for``; its header holds the wall-clock time it is fresh until) and
the same followed by ``:lock`` for the lock, a random token set with ``NX PX`` whose expiry
is the call's timeout (``lock_expiry``). A process that does not get the lock polls (one
``MGET`` of the value and the lock per poll, backing off from 1 ms to 20 ms) until the
value is there, or the lock is gone without a value (the leader failed, or died and its lock
expired: it tries to lead), or the lock's expiry and a margin have passed (it computes in
this process). The value is stored only while the leader still holds its lock (a compare
in the store script): a leader that outlived its lock, or whose keys were deleted by
``clear_caches(shared=True)``, keeps its value in this process only.

Every Redis error or timeout is reported to the ``Server`` (one WARNING per outage),
counted in ``stats().redis_errors``, and the call goes on in this process.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import os
import secrets
import time
from collections.abc import Callable
from typing import Any

import redis
import redis.asyncio

from guardrails.redis import client as _client
from guardrails.redis.codec import BadValue, Unstorable, decoder, encoder
from guardrails.redis.digest import Unshareable, digest

__all__ = [
    "FOUND",
    "LEASE",
    "STALE",
    "Lease",
    "SharedLevel",
    "Unshareable",
    "lock_expiry",
]

#: ``begin`` answers: ``(FOUND, value, fresh_for)``, ``(STALE, value, None)``,
#: ``(LEASE, lease, stale_value_or_NONE)``; ``None`` means compute without Redis.
FOUND = 1
STALE = 2
LEASE = 3
#: No stale value.
NONE: Any = object()

#: Polling a key another process computes: the first pause, and the longest.
FIRST_PAUSE = 0.001
MAX_PAUSE = 0.02
#: How long past the lock's expiry a waiter keeps waiting, at most, before it computes.
MARGIN = 1.0
#: At most one WARNING per function per this many seconds about values read back bad.
BAD_VALUE_LOG_EVERY = 60.0
#: Timeout of ``clear_shared``'s SCAN and UNLINK commands (an operation on many keys).
ADMIN_TIMEOUT = 5.0

_STORE = """
if redis.call('get', KEYS[2]) == ARGV[1] then
  redis.call('set', KEYS[1], ARGV[2], 'PX', ARGV[3])
  redis.call('del', KEYS[2])
  return 1
end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""
_STORE_SHA = hashlib.sha1(_STORE.encode()).hexdigest()
_RELEASE_SHA = hashlib.sha1(_RELEASE.encode()).hexdigest()

#: Release tasks of cancelled async leaders (a task is only weakly held by the loop).
_BACKGROUND: set[asyncio.Task[Any]] = set()


def lock_expiry(lock_timeout: float, policy: Any) -> float:
    """How long a leader holds a key's lock: the policy's ``timeout.total``, else
    ``timeout.attempt`` times ``retry.max_attempts``, else ``cache.lock_timeout``."""
    timeout = getattr(policy, "timeout", None)
    if timeout is not None and timeout.enabled:
        if timeout.total is not None:
            return float(timeout.total)
        if timeout.attempt is not None:
            retry = getattr(policy, "retry", None)
            attempts = retry.max_attempts if retry is not None and retry.enabled else 1
            return float(timeout.attempt) * attempts
    return float(lock_timeout)


class Lease:
    """This process leads a key: it holds the lock with ``token`` (taken in ``pid``)."""

    __slots__ = ("key", "lock", "pid", "token")

    def __init__(self, key: str, lock: str, token: str) -> None:
        self.key = key
        self.lock = lock
        self.token = token
        self.pid = os.getpid()


def _escape_glob(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


class SharedLevel:
    """One guarded function's Redis level, built with its chain."""

    def __init__(
        self,
        *,
        url: str,
        policy: str,
        qualname: str,
        namespace: str,
        version: int,
        ttl: float,
        stale_for: float,
        serializer: Any,
        secret: str | None,
        redis_timeout: float,
        expiry: float,
        wall: Callable[[], float],
        redis_error: Callable[[], Any],
        logger: logging.Logger,
    ) -> None:
        self.server = _client.server(url)
        self.policy = policy
        self.qualname = qualname
        self.prefix = f"guardrails:{namespace}:{qualname}:{version}:"
        self.timeout = redis_timeout
        key = secret.encode() if secret is not None else None
        self.encode = encoder(serializer, key)
        self.decode = decoder(serializer, key)
        self.ttl = ttl
        self.stale_for = stale_for
        self.expiry = expiry
        self.value_px = max(1, math.ceil((ttl + stale_for) * 1000))
        self.lock_px = max(1, math.ceil(expiry * 1000))
        self.wall = wall
        self.redis_error = redis_error
        self.logger = logger
        self.what = f"policy {policy!r}: cache in this process only"
        self.warned_unstorable = False
        self.bad_logged_at = -math.inf

    # -- shared by both paths --------------------------------------------------------------

    def key_for(self, l1_key: Any) -> str:
        """The Redis key of an in-process key; ``Unshareable`` if it has none."""
        return self.prefix + digest(l1_key)

    def failed(self, exc: BaseException) -> None:
        self.redis_error()
        self.server.failed(exc, self.what)

    def read(self, data: Any, key: str) -> tuple[Any, float] | None:
        """``(value, fresh_for)`` of a payload (``fresh_for`` <= 0: stale), or ``None``:
        bad (logged), or past its stale window (a clock ahead of the writer's)."""
        try:
            value, fresh_until = self.decode(data, key.encode())
        except BadValue as exc:
            now = time.monotonic()
            if now - self.bad_logged_at >= BAD_VALUE_LOG_EVERY:
                self.bad_logged_at = now
                self.logger.warning(
                    "guardrails: policy %r (%s): the value in Redis at %s is not usable (%s); "
                    "computed again and overwritten (this warning at most once a minute)",
                    self.policy,
                    self.qualname,
                    key,
                    exc,
                )
            return None
        fresh_for = min(self.ttl, fresh_until - self.wall())
        if fresh_for <= 0 and -fresh_for >= self.stale_for:
            return None
        return value, fresh_for

    def payload(self, value: Any, key: str) -> bytes | None:
        """The bytes to store, or ``None`` for a value the codec refuses (warned once)."""
        try:
            return self.encode(value, self.wall() + self.ttl, key.encode())
        except Unstorable as exc:
            if not self.warned_unstorable:
                self.warned_unstorable = True
                self.logger.warning(
                    "guardrails: policy %r (%s): a value it returned cannot be stored in "
                    "Redis (%s); such values stay in this process's cache only "
                    "(this warning once per function)",
                    self.policy,
                    self.qualname,
                    exc,
                )
            return None

    # -- sync ------------------------------------------------------------------------------

    def begin(self, key: str) -> tuple[int, Any, Any] | None:
        """The value of ``key`` from Redis, a stale one to serve, or a lease to compute it;
        ``None``: compute in this process without Redis."""
        server = self.server
        if not server.usable():
            return None
        lock = key + ":lock"
        deadline = 0.0
        pause = FIRST_PAUSE
        stale = NONE
        try:
            client = server.client(self.timeout)
            data = client.get(key)
            while True:
                if data is not None:
                    got = self.read(data, key)
                    if got is not None:
                        if got[1] > 0:
                            server.succeeded()
                            return (FOUND, got[0], got[1])
                        stale = got[0]
                token = secrets.token_hex(16)
                if client.set(lock, token, nx=True, px=self.lock_px):
                    server.succeeded()
                    return (LEASE, Lease(key, lock, token), stale)
                if stale is not NONE:
                    server.succeeded()
                    return (STALE, stale, None)
                if not deadline:
                    deadline = time.monotonic() + self.expiry + MARGIN
                while True:
                    if time.monotonic() >= deadline:
                        server.succeeded()
                        return None
                    time.sleep(pause)
                    pause = min(pause * 2, MAX_PAUSE)
                    data, holder = client.mget(key, lock)
                    if data is not None or holder is None:
                        break
        except _client.ERRORS as exc:
            self.failed(exc)
            return None

    def finish(self, lease: Lease, value: Any) -> None:
        """Store the value computed under ``lease`` and release its lock."""
        if lease.pid != os.getpid():
            return  # a forked child does not hold its parent's locks
        data = self.payload(value, lease.key)
        try:
            client = self.server.client(self.timeout)
            if data is None:
                _eval(client, _RELEASE_SHA, _RELEASE, 1, lease.lock, lease.token)
            else:
                _eval(
                    client,
                    _STORE_SHA,
                    _STORE,
                    2,
                    lease.key,
                    lease.lock,
                    lease.token,
                    data,
                    self.value_px,
                )
            self.server.succeeded()
        except _client.ERRORS as exc:
            self.failed(exc)

    def abandon(self, lease: Lease) -> None:
        """Release the lock of a computation that failed: another process may try at once."""
        if lease.pid != os.getpid():
            return
        try:
            client = self.server.client(self.timeout)
            _eval(client, _RELEASE_SHA, _RELEASE, 1, lease.lock, lease.token)
            self.server.succeeded()
        except _client.ERRORS as exc:
            self.failed(exc)

    def clear_shared(self) -> int:
        """Delete this function's keys (values and locks) under its namespace and version;
        the number deleted. Raises what Redis raises."""
        client = self.server.client(max(self.timeout, ADMIN_TIMEOUT))
        deleted = 0
        batch: list[Any] = []
        for found in client.scan_iter(match=_escape_glob(self.prefix) + "*", count=1000):
            batch.append(found)
            if len(batch) >= 1000:
                deleted += int(client.unlink(*batch))
                batch = []
        if batch:
            deleted += int(client.unlink(*batch))
        return deleted

    # -- asyncio ---------------------------------------------------------------------------

    async def abegin(self, key: str) -> tuple[int, Any, Any] | None:
        """``begin`` on the running loop's asyncio client."""
        server = self.server
        if not server.usable():
            return None
        lock = key + ":lock"
        deadline = 0.0
        pause = FIRST_PAUSE
        stale = NONE
        try:
            client = server.async_client(self.timeout)
            data = await client.get(key)
            while True:
                if data is not None:
                    got = self.read(data, key)
                    if got is not None:
                        if got[1] > 0:
                            server.succeeded()
                            return (FOUND, got[0], got[1])
                        stale = got[0]
                token = secrets.token_hex(16)
                try:
                    taken = await client.set(lock, token, nx=True, px=self.lock_px)
                except asyncio.CancelledError:
                    # The server may have set it: release it rather than leave it to expire.
                    self.release_later(Lease(key, lock, token))
                    raise
                if taken:
                    server.succeeded()
                    return (LEASE, Lease(key, lock, token), stale)
                if stale is not NONE:
                    server.succeeded()
                    return (STALE, stale, None)
                if not deadline:
                    deadline = time.monotonic() + self.expiry + MARGIN
                while True:
                    if time.monotonic() >= deadline:
                        server.succeeded()
                        return None
                    await asyncio.sleep(pause)
                    pause = min(pause * 2, MAX_PAUSE)
                    data, holder = await client.mget(key, lock)
                    if data is not None or holder is None:
                        break
        except _client.ERRORS as exc:
            self.failed(exc)
            return None

    async def afinish(self, lease: Lease, value: Any) -> None:
        if lease.pid != os.getpid():
            return
        data = self.payload(value, lease.key)
        try:
            client = self.server.async_client(self.timeout)
            if data is None:
                await _aeval(client, _RELEASE_SHA, _RELEASE, 1, lease.lock, lease.token)
            else:
                await _aeval(
                    client,
                    _STORE_SHA,
                    _STORE,
                    2,
                    lease.key,
                    lease.lock,
                    lease.token,
                    data,
                    self.value_px,
                )
            self.server.succeeded()
        except _client.ERRORS as exc:
            self.failed(exc)

    async def aabandon(self, lease: Lease) -> None:
        if lease.pid != os.getpid():
            return
        try:
            client = self.server.async_client(self.timeout)
            await _aeval(client, _RELEASE_SHA, _RELEASE, 1, lease.lock, lease.token)
            self.server.succeeded()
        except _client.ERRORS as exc:
            self.failed(exc)

    def release_later(self, lease: Lease) -> None:
        """Release ``lease`` in a task of its own: for a leader that was cancelled (awaiting
        in its own task could be cancelled again)."""
        task = asyncio.get_running_loop().create_task(self.aabandon(lease))
        _BACKGROUND.add(task)
        task.add_done_callback(_BACKGROUND.discard)


def _eval(client: redis.Redis, sha: str, source: str, nkeys: int, *args: Any) -> Any:
    try:
        return client.evalsha(sha, nkeys, *args)
    except redis.exceptions.NoScriptError:
        return client.eval(source, nkeys, *args)


async def _aeval(client: redis.asyncio.Redis, sha: str, source: str, nkeys: int, *args: Any) -> Any:
    try:
        return await client.evalsha(sha, nkeys, *args)
    except redis.exceptions.NoScriptError:
        return await client.eval(source, nkeys, *args)
