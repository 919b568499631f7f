"""The second level of the ``cache`` layer: values in Redis, one computation per key across
processes.

The layer (``guardrails.layers.cache``) keeps its in-process store in front and calls this
level only on an in-process miss, from the one caller per process that leads the key (its
in-process single flight): ``begin`` answers with a value from Redis, a stale value to
serve, a lease (this process computes the key), or nothing (Redis is away or the wait ran
out: compute in this process without it). After computing, the leader calls ``finish``
(store the value and release the lock, one round trip) or ``abandon`` (release the lock at
once, so that another process can try).

Redis keys: ``guardrails:<namespace>:<qualname>:<version>:<digest>`` for the value (the
digest of the in-process key and of what the value depends on besides the arguments: the
key's parameter names, ``validate.output``, a closure's plain values; its
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
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

import redis
import redis.asyncio

from guardrails._forksafe import ForkSafeLock
from guardrails.redis import client as _client
from guardrails.redis.codec import (
    _HEADER,
    HEADER_SIZE,
    MAGIC,
    BadValue,
    Unstorable,
    decoder,
    encoder,
)
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
#: ``(LEASE, lease, (stale_value, fresh_for) or NONE)`` (``fresh_for`` <= 0: minus how long
#: it has been stale); ``None`` means compute without Redis.
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
#: Timeout of ``clear_shared``'s SCAN and UNLINK commands (an operation on many keys), and
#: the least for storing a value larger than ``BULK_SIZE`` bytes (see ``store_timeout``).
ADMIN_TIMEOUT = 5.0
BULK_SIZE = 1 << 20

#: Offsets of the codec's header the scripts read: magic at 0, ``fresh_until`` (a
#: little-endian float64) at ``_FRESH_AT``.
_FRESH_AT = HEADER_SIZE - 8
if _HEADER.format != "<2sBBBd" or MAGIC != b"gR":  # pragma: no cover (a codec change)
    raise ImportError("guardrails.redis.cache reads the codec header: update its scripts")

#: A key's value, or its lock, in one step: no value can be stored and its lock released
#: between looking for the value and taking the lock (which would compute it again).
#: KEYS: value, lock. ARGV: token, lock ms, now (the caller's wall clock), and "1" when the
#: caller found the value there unusable (unreadable, or past its stale window): then the
#: lock is taken whatever the value says.
#: Answers ``{1, value}``: fresh by its header; ``{2, value or nil}``: the lock is the
#: caller's (``value`` is the stale one, if any); ``{3, value or nil}``: another holds it.
_TAKE = f"""
local v = redis.call('get', KEYS[1])
if v and ARGV[4] == '0' and string.len(v) >= {HEADER_SIZE}
    and string.sub(v, 1, 2) == 'gR' then
  local fresh_until = struct.unpack('<d', string.sub(v, {_FRESH_AT + 1}, {HEADER_SIZE}))
  if fresh_until > tonumber(ARGV[3]) then
    return {{1, v}}
  end
end
if redis.call('set', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {{2, v}}
end
return {{3, v}}
"""
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
_TAKE_SHA = hashlib.sha1(_TAKE.encode()).hexdigest()
_STORE_SHA = hashlib.sha1(_STORE.encode()).hexdigest()
_RELEASE_SHA = hashlib.sha1(_RELEASE.encode()).hexdigest()
#: ``_TAKE``'s answers.
_FRESH, _TAKEN, _HELD = 1, 2, 3

#: Release tasks of cancelled async leaders (a task is only weakly held by the loop).
_BACKGROUND: set[asyncio.Task[Any]] = set()

#: ``(qualname, reason)`` of the values this process warned it cannot store in Redis: one
#: WARNING per function and reason, however many chains (slots, recompiles) it has.
_UNSTORABLE_WARNED: set[tuple[str, str]] = set()
_UNSTORABLE_LOCK = threading.Lock()


class _Idle(deque[Any]):
    """Idle connections of one sync client, taken and given back around each command
    (``deque.pop`` and ``append`` are atomic): a round trip without redis-py's per-command
    machinery (its pool's lock and bookkeeping, its metrics hooks), which costs as much as a
    third of a loopback ``GET``. The connections come from the client's pool and stay
    checked out of it, so closing the client (``Server.close``) closes them too."""

    def __init__(self, pool: Any) -> None:
        super().__init__()
        self.pool = pool
        self.pid = os.getpid()
        #: Bumped when a connection is found broken (the server restarted, or a proxy or
        #: a firewall dropped its connections): the idle ones opened before are most likely
        #: broken too, and each would be another error and another outage. A connection is
        #: opened anew when it is next taken (its ``_guardrails_epoch`` is older).
        self.epoch = 0


#: Per sync client: its idle connections (the shared levels of all functions using it).
_IDLE: weakref.WeakKeyDictionary[Any, _Idle] = weakref.WeakKeyDictionary()
_IDLE_LOCK = ForkSafeLock()


def _idle_for(client: redis.Redis) -> _Idle:
    """``client``'s idle connections in this process (a forked child gets a list of its own:
    it never writes to its parent's sockets)."""
    with _IDLE_LOCK:
        found = _IDLE.get(client)
        if found is None or found.pid != os.getpid():
            found = _IDLE[client] = _Idle(client.connection_pool)
        return found


def _run(idle: _Idle, args: tuple[Any, ...]) -> Any:
    """One command on an idle connection of ``idle`` (or a new one of its pool)."""
    try:
        conn = idle.pop()
        if conn._guardrails_epoch != idle.epoch:
            conn._guardrails_epoch = idle.epoch
            conn.disconnect()  # opened before a connection was found broken
    except IndexError:
        conn = idle.pool.get_connection()  # the pool's: closed with the client
        conn._guardrails_epoch = idle.epoch
    try:
        conn.send_packed_command(conn.pack_command(*args), check_health=False)
        reply = conn.read_response()
    except redis.exceptions.ResponseError:
        raise  # an error reply: the connection is in step
    except BaseException as exc:
        # A timeout or an interruption may leave a reply on the way: never read it as
        # the next command's (the connection reconnects when next used).
        conn.disconnect()
        if isinstance(exc, redis.exceptions.ConnectionError | ConnectionError):
            idle.epoch += 1
            conn._guardrails_epoch = idle.epoch
        raise
    finally:
        idle.append(conn)
    return reply


def lock_expiry(lock_timeout: float, policy: Any) -> float:
    """How long a leader holds a key's lock: as long as the policy lets one call run.

    ``timeout.total`` bounds the whole call. Else, with ``timeout.attempt``, each attempt
    can take its timeout plus the waits of the rate limit and bulkhead before it
    (``max_wait``), and ``retry`` makes ``max_attempts`` of them with the longest backoff
    waits between them, or stops at ``retry.deadline`` (plus the attempt then running).
    Without a timeout, ``cache.lock_timeout``.
    """
    timeout = _on(policy, "timeout")
    if timeout is None:
        return float(lock_timeout)
    if timeout.total is not None:
        return float(timeout.total)
    if timeout.attempt is None:
        return float(lock_timeout)
    attempt = float(timeout.attempt)
    for kind in ("rate_limit", "bulkhead"):
        block = _on(policy, kind)
        if block is not None:
            attempt += float(block.max_wait)
    retry = _on(policy, "retry")
    if retry is None:
        return attempt
    n = int(retry.max_attempts)
    wait = retry.wait
    cap = float(wait.max)
    jitter = min(float(wait.initial if wait.jitter is None else wait.jitter), cap)
    waits = 0.0
    if wait.retry_after:  # a failure may ask for up to `max` before each retry
        waits = (n - 1) * cap
    else:
        step, left = float(wait.initial), n - 1
        while left > 0 and step < cap - jitter:
            waits += step + jitter
            step *= float(wait.multiplier)  # inf at worst, never an error
            left -= 1
        waits += left * cap  # the rest at the cap: (cap - jitter) + jitter each
    total = n * attempt + waits
    if retry.deadline is not None:
        total = min(total, float(retry.deadline) + attempt)
    return total


def _on(policy: Any, kind: str) -> Any:
    block = getattr(policy, kind, None)
    return block if block is not None and block.enabled else None


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

    #: ``begin``'s answers, for the layer (which does not import this module by name).
    FOUND = FOUND
    LEASE = LEASE
    NONE = NONE

    def __init__(
        self,
        *,
        url: str,
        depends_on: str = "",
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
        #: What a value depends on besides its arguments (``cache.key``'s parameter names,
        #: ``validate.output``): hashed into every key's digest, so that other settings (a
        #: reload, another release in another process) never read these values.
        salt = depends_on.encode()
        self._digest_base = hashlib.blake2b(digest_size=20)
        self._digest_base.update(len(salt).to_bytes(8, "little") + salt)
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
        self.bad_logged_at = -math.inf
        #: The sync path's idle connections (``_idle_for``), found in process ``_pid``.
        self._idle: _Idle | None = None
        self._pid = 0

    # -- shared by both paths --------------------------------------------------------------

    def key_for(self, l1_key: Any) -> str:
        """The Redis key of an in-process key; ``Unshareable`` if it has none."""
        h = self._digest_base.copy()
        h.update(digest(l1_key).encode())
        return self.prefix + h.hexdigest()

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
        """The bytes to store, or ``None`` for a value the codec refuses (warned once per
        function and reason in this process)."""
        try:
            return self.encode(value, self.wall() + self.ttl, key.encode())
        except Unstorable as exc:
            reason = str(exc)
            with _UNSTORABLE_LOCK:
                first = (self.qualname, reason) not in _UNSTORABLE_WARNED
                _UNSTORABLE_WARNED.add((self.qualname, reason))
            if first:
                self.logger.warning(
                    "guardrails: policy %r (%s): a value it returned cannot be stored in "
                    "Redis (%s); such values stay in this process's cache only "
                    "(this warning once per function and reason)",
                    self.policy,
                    self.qualname,
                    reason,
                )
            return None

    def take_args(self, key: str, lock: str, token: str, unusable: bool) -> tuple[Any, ...]:
        """``_TAKE``'s keys and arguments (``now`` written exactly: ``repr`` of a float)."""
        return (key, lock, token, self.lock_px, repr(float(self.wall())), "1" if unusable else "0")

    def answer(
        self, status: int, data: Any, key: str, lock: str, token: str
    ) -> tuple[tuple[int, Any, Any] | None, Any, Lease | None]:
        """What ``_TAKE``'s answer means: ``(answer, got, lease_to_release)``; ``answer``
        ``None``: wait for the holder (or, with ``got`` ``None`` after a ``_FRESH``, ask
        again: the value is unusable)."""
        got = self.read(data, key) if data is not None else None
        if status == _FRESH:
            if got is not None and got[1] > 0:
                return (FOUND, got[0], got[1]), got, None
            return None, got, None  # unusable, or just went stale: ask again
        if status == _TAKEN:
            lease = Lease(key, lock, token)
            if got is not None and got[1] > 0:
                # Stored since this caller found it unusable: use it, give the lock back.
                return (FOUND, got[0], got[1]), got, lease
            return (LEASE, lease, got if got is not None else NONE), got, None
        if got is not None:
            if got[1] > 0:
                return (FOUND, got[0], got[1]), got, None
            return (STALE, got[0], None), got, None  # stale while another recomputes it
        return None, got, None

    # -- sync ------------------------------------------------------------------------------

    def call(self, *args: Any) -> Any:
        """One command on an idle connection of this process; raises what Redis raises."""
        idle = self._idle
        if idle is None or self._pid != os.getpid():
            self._pid = os.getpid()
            idle = self._idle = _idle_for(self.server.client(self.timeout))
        return _run(idle, args)

    def store_timeout(self, size: int) -> float:
        """The timeout of a command sending ``size`` bytes: ``redis_timeout``, or for a
        large value the time to move it at a slow 20 MB/s and more (a socket's timeout
        bounds a whole ``sendall``: 32 MB never fit in 50 ms, and each try was an outage
        for every policy, the value never shared and its lock left to expire)."""
        if size <= BULK_SIZE:
            return self.timeout
        return max(self.timeout, float(math.ceil(ADMIN_TIMEOUT + size / 20e6)))

    def store_call(self, size: int, *args: Any) -> Any:
        """``script`` with ``store_timeout(size)``."""
        timeout = self.store_timeout(size)
        if timeout == self.timeout:
            return self.script(*args)
        idle = _idle_for(self.server.client(timeout))
        try:
            return _run(idle, ("EVALSHA", *args[:1], *args[2:]))
        except redis.exceptions.NoScriptError:
            return _run(idle, ("EVAL", *args[1:]))

    def script(self, sha: str, source: str, nkeys: int, *args: Any) -> Any:
        try:
            return self.call("EVALSHA", sha, nkeys, *args)
        except redis.exceptions.NoScriptError:
            return self.call("EVAL", source, nkeys, *args)

    def begin(self, key: str) -> tuple[int, Any, Any] | None:
        """The value of ``key`` from Redis, a stale one to serve, or a lease to compute it;
        ``None``: compute in this process without Redis."""
        server = self.server
        if not server.usable():
            return None
        try:
            data = self.call("GET", key)
        except _client.ERRORS as exc:
            self.failed(exc)
            return None
        got = None
        if data is not None:
            got = self.read(data, key)
            if got is not None and got[1] > 0:
                server.succeeded()
                return (FOUND, got[0], got[1])
        try:
            found = self.contend(key, data, got)
        except _client.ERRORS as exc:
            self.failed(exc)
            return None
        server.succeeded()
        return found

    def contend(self, key: str, data: Any, got: Any) -> tuple[int, Any, Any] | None:
        """After a ``GET`` that gave no fresh value: the value, or the lock, in one step;
        then, if another holds the lock, wait for its value."""
        lock = key + ":lock"
        deadline = 0.0
        pause = FIRST_PAUSE
        while True:
            token = secrets.token_hex(16)
            unusable = data is not None and got is None
            status, data = self.script(
                _TAKE_SHA, _TAKE, 2, *self.take_args(key, lock, token, unusable)
            )
            found, got, release = self.answer(status, data, key, lock, token)
            if release is not None:
                self.abandon(release)
            if found is not None:
                return found
            if status == _FRESH:
                continue  # unusable after all: ask again, taking the lock whatever it says
            # Another process computes it: wait for its value, or for its lock to go.
            if not deadline:
                deadline = time.monotonic() + self.expiry + MARGIN
            while True:
                if time.monotonic() >= deadline:
                    return None
                time.sleep(pause)
                pause = min(pause * 2, MAX_PAUSE)
                data, holder = self.call("MGET", key, lock)
                got = self.read(data, key) if data is not None else None
                if got is not None and (got[1] > 0 or holder is not None):
                    return (FOUND, got[0], got[1]) if got[1] > 0 else (STALE, got[0], None)
                if holder is None:
                    break  # the holder failed or died: try to lead (in one step again)

    def finish(self, lease: Lease, value: Any) -> None:
        """Store the value computed under ``lease`` and release its lock."""
        if lease.pid != os.getpid():
            return  # a forked child does not hold its parent's locks
        data = self.payload(value, lease.key)
        try:
            self.store_call(0 if data is None else len(data), *self._ending(lease, data))
            self.server.succeeded()
        except _client.ERRORS as exc:
            self.failed(exc)

    def _ending(self, lease: Lease, data: bytes | None) -> tuple[Any, ...]:
        """The script call that ends ``lease``: store ``data`` and release the lock in one
        step, or only release it (``None``: nothing to store)."""
        if data is None:
            return (_RELEASE_SHA, _RELEASE, 1, lease.lock, lease.token)
        return (_STORE_SHA, _STORE, 2, lease.key, lease.lock, lease.token, data, self.value_px)

    def abandon(self, lease: Lease) -> None:
        """Release the lock of a computation that failed: another process may try at once."""
        if lease.pid != os.getpid():
            return
        try:
            self.script(_RELEASE_SHA, _RELEASE, 1, lease.lock, lease.token)
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
        try:
            client = server.async_client(self.timeout)
            data = await client.get(key)
            got = None
            if data is not None:
                got = self.read(data, key)
                if got is not None and got[1] > 0:
                    server.succeeded()
                    return (FOUND, got[0], got[1])
            found = await self.acontend(client, key, data, got)
        except _client.ERRORS as exc:
            self.failed(exc)
            return None
        server.succeeded()
        return found

    async def acontend(
        self, client: redis.asyncio.Redis, key: str, data: Any, got: Any
    ) -> tuple[int, Any, Any] | None:
        lock = key + ":lock"
        deadline = 0.0
        pause = FIRST_PAUSE
        while True:
            token = secrets.token_hex(16)
            unusable = data is not None and got is None
            try:
                status, data = await _aeval(
                    client, _TAKE_SHA, _TAKE, 2, *self.take_args(key, lock, token, unusable)
                )
            except asyncio.CancelledError:
                # The server may have given it the lock: release it rather than leave it
                # to expire.
                self.release_later(Lease(key, lock, token))
                raise
            found, got, release = self.answer(status, data, key, lock, token)
            if release is not None:
                await self.aabandon(release)
            if found is not None:
                return found
            if status == _FRESH:
                continue
            if not deadline:
                deadline = time.monotonic() + self.expiry + MARGIN
            while True:
                if time.monotonic() >= deadline:
                    return None
                await asyncio.sleep(pause)
                pause = min(pause * 2, MAX_PAUSE)
                data, holder = await client.mget(key, lock)
                got = self.read(data, key) if data is not None else None
                if got is not None and (got[1] > 0 or holder is not None):
                    return (FOUND, got[0], got[1]) if got[1] > 0 else (STALE, got[0], None)
                if holder is None:
                    break

    async def afinish(self, lease: Lease, value: Any) -> None:
        if lease.pid != os.getpid():
            return
        data = self.payload(value, lease.key)
        try:
            size = 0 if data is None else len(data)
            client = self.server.async_client(self.store_timeout(size))
            await _aeval(client, *self._ending(lease, data))
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


async def _aeval(client: redis.asyncio.Redis, sha: str, source: str, nkeys: int, *args: Any) -> Any:
    try:
        return await client.evalsha(sha, nkeys, *args)
    except redis.exceptions.NoScriptError:
        return await client.eval(source, nkeys, *args)
