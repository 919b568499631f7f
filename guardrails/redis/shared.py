"""Breaker, rate limit and bulkhead state kept in Redis (``shared: true``), one view for every
process and machine that uses the same Redis and namespace.

Each layer's state lives under ``guardrails:<namespace>:<kind>`` (the namespace defaults to
the policy's name) and is changed only by the Lua scripts below, which read Redis's own
clock (``TIME``): the callers' clocks may differ, Redis's is one. Every key expires when it
is not used (the breaker's after an hour or twice its ``open_for`` / time window, a bucket
once it would be full again, a bulkhead once its last lease has expired).

Round trips per attempt, on the common path:

- breaker, closed: one (``admit``). A success is not sent on its own: the process counts it
  and the next ``admit`` (or the next failure) carries the count, so a healthy call costs a
  single script. A failure or a slow call is sent at once (the verdict may turn). A trial
  call (half-open) costs a second one, to report its outcome.
- rate limit: one (``take``); a reserved token costs none more.
- bulkhead: two (``acquire`` and ``release``): a slot must be given back when the attempt
  ends, not with the next call.

Redis down or slow (``redis_timeout``, default 50 ms): the layer falls back to its
per-process state (today's ``Breaker``, ``Bucket`` or ``Slots``) for the call; the outage is
logged once by the ``Server`` (``client.py``) and each failed operation is counted in
``stats().redis_errors``; while the server is down no call tries it (a probe now and then),
and the shared state is used again as soon as it answers.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import redis
import redis.asyncio

from guardrails._errors import BulkheadFull, CircuitOpenError, RateLimitExceeded
from guardrails._forksafe import ForkSafeLock
from guardrails._types import AsyncInner, Context, Inner
from guardrails.layers.breaker import (
    _FAILURE,
    _NEITHER,
    _SUCCESS,
    Breaker,
    BreakerConfig,
    _exception_text,
    _pct,
    _secs,
)
from guardrails.layers.bulkhead import BulkheadConfig
from guardrails.layers.rate_limit import RateLimitConfig
from guardrails.redis.client import ERRORS, Server, server

#: What a process calls itself in a lease's token: random, with its pid (renewed in a
#: forked child, which must not hand out its parent's tokens).
_PREFIX = f"{os.urandom(6).hex()}.{os.getpid()}."
_TOKENS = itertools.count()


def _renew_prefix() -> None:
    global _PREFIX  # noqa: PLW0603 (one string read per token)
    _PREFIX = f"{os.urandom(6).hex()}.{os.getpid()}."


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_renew_prefix)

#: A key unused this long (seconds) expires, at least (the breaker's state).
IDLE_EXPIRY = 3600.0
#: A bulkhead lease with no timeout in the policy and no ``lease`` setting (seconds).
DEFAULT_LEASE = 60.0
#: Added to a timeout to make a lease: the attempt's own end and release take some time.
LEASE_MARGIN = 1.0
#: How often a waiter for a bulkhead slot asks again: first, and at most (seconds).
POLL_FIRST = 0.002
POLL_MAX = 0.05


def _token() -> str:
    return _PREFIX + str(next(_TOKENS))


#: At most this many doubtful tokens are kept (and sent with one operation) per key.
MAX_DOUBTFUL = 256


class Doubtful:
    """Tokens of leases (bulkhead slots, trial permits) that may be in Redis though no call
    of this process holds them: an operation that took one failed (timed out) on the way
    back, or one that gave one back failed. A Redis that was slow or paused (``SIGSTOP``, a
    long fork for a snapshot) runs the commands it had already received when it goes on,
    after the caller gave up: the lease is taken for nobody. Without this, ``max_concurrent``
    such leases refused every call of every process for a whole ``lease`` after Redis came
    back. The next operation on the key that reaches Redis carries them and drops them
    first. One per key and process (``doubtful``): deque ``append``/``popleft`` are atomic."""

    __slots__ = ("tokens",)

    def __init__(self) -> None:
        self.tokens: deque[str | bytes] = deque(maxlen=MAX_DOUBTFUL)

    def __bool__(self) -> bool:
        return bool(self.tokens)

    def add(self, *tokens: str | bytes) -> None:
        self.tokens.extend(tokens)

    def take(self) -> tuple[str | bytes, ...]:
        """Every token (each taken once, whatever other threads do meanwhile)."""
        taken: list[str | bytes] = []
        popleft = self.tokens.popleft
        for _ in range(MAX_DOUBTFUL):
            try:
                taken.append(popleft())
            except IndexError:
                break
        return tuple(taken)


_DOUBTFUL: dict[tuple[str, str], Doubtful] = {}
_DOUBTFUL_LOCK = ForkSafeLock()


def doubtful(url: str, key: str) -> Doubtful:
    """The ``Doubtful`` tokens of ``key`` on the server at ``url`` (made on first use)."""
    found = _DOUBTFUL.get((url, key))
    if found is None:
        with _DOUBTFUL_LOCK:
            found = _DOUBTFUL.setdefault((url, key), Doubtful())
    return found


def key_prefix(namespace: str) -> str:
    """``guardrails:<namespace>:`` (the keys of a namespace: ``breaker``, ``rate_limit``...)."""
    return f"guardrails:{namespace}:"


class Script:
    """A Lua script run by its SHA1 (``EVALSHA``), loaded again when Redis lost it (a restart)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.sha = hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()

    def __call__(self, client: redis.Redis, keys: Sequence[str], args: Sequence[Any]) -> Any:
        try:
            return client.evalsha(self.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            client.script_load(self.text)
            return client.evalsha(self.sha, len(keys), *keys, *args)

    async def run_async(
        self, client: redis.asyncio.Redis, keys: Sequence[str], args: Sequence[Any]
    ) -> Any:
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            await client.script_load(self.text)
            return await client.evalsha(self.sha, len(keys), *keys, *args)


# --- the breaker -------------------------------------------------------------------------

#: KEYS: the state hash ``guardrails:<namespace>:breaker``; the script also keeps
#: ``...:fails`` and ``...:slows`` (count window: the sequence numbers of the failures and
#: slow calls in it), ``...:buckets`` (time window: calls, failures and slow calls per
#: twentieth of it) and ``...:trials`` (half-open: the trial permits, token -> expiry).
#: ARGV: op, ttl (ms), config "size,width,min_calls,failure_rate,slow_rate,open_for,half,
#: lease" (times in microseconds; size 0 for a time window, width 0 for a count window),
#: then the op's own: admit (successes to add, the token a trial permit would be, then
#: doubtful tokens: permits no call holds, dropped first), record (successes, failed,
#: slow), trial (epoch, token, outcome 0 neither / 1 success / 2 failure or slow), state.
#: Replies: ``{code, value, transition, why, bad, calls}``: code 0 go (closed), 1 refused
#: (value: microseconds until half-open, 0 when half-open and full), 2 a trial permit
#: (value: its epoch, then the transition and the permit's token); ``transition`` "" or
#: "closed>open" (why "f"/"s": failures or slow calls, ``bad`` of ``calls``),
#: "open>half_open", "half_open>open", "half_open>closed".
#: The healthy closed path (count window, nothing bad in it) reads one hash and adds to
#: one counter: no clock read, no config parsed.
BREAKER = Script(
    r"""
local S = KEYS[1]
local op, ttl, conf = ARGV[1], ARGV[2], ARGV[3]
local h = redis.call('HMGET', S, 'state', 'until', 'epoch', 'ok', 'bad')
local state = h[1] or 'closed'

local function clock()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

local function prune(B, k, first)
  -- the buckets older than the window go; a new bucket drops the one 21 before it, and
  -- a hash grown by gaps in the calls is swept whole
  if not first then return end
  local x = string.format('%.0f', k - 21)
  redis.call('HDEL', B, 'c' .. x, 'f' .. x, 's' .. x)
  if redis.call('HLEN', B) > 200 then
    for _, f in ipairs(redis.call('HKEYS', B)) do
      if tonumber(string.sub(f, 2)) < k - 20 then redis.call('HDEL', B, f) end
    end
  end
end

if op == 'admit' and state == 'closed' and h[5] ~= '1' then
  local n = tonumber(ARGV[4])
  if n > 0 then
    local width = string.match(conf, '^0,([^,]+)')
    if width then
      local B = S .. ':buckets'
      local k = math.floor(clock() / tonumber(width))
      local got = redis.call('HINCRBY', B, 'c' .. string.format('%.0f', k), n)
      prune(B, k, got == n)
      redis.call('PEXPIRE', B, ttl)
    else
      redis.call('HINCRBY', S, 'seq', n)
    end
    redis.call('PEXPIRE', S, ttl)
  end
  return {0}
end

local now = clock()
local c = {}
for v in string.gmatch(conf, '[^,]+') do c[#c + 1] = tonumber(v) end
local size, width, min_calls, frate, srate = c[1], c[2], c[3], c[4], c[5]
local open_for, half, lease = c[6], c[7], c[8]
local F, SL, B, T = S .. ':fails', S .. ':slows', S .. ':buckets', S .. ':trials'

local function fmt(x) return string.format('%.0f', x) end

local function touch()
  for _, k in ipairs({S, F, SL, B, T}) do redis.call('PEXPIRE', k, ttl) end
end

local function clear()
  redis.call('DEL', F, SL, B, T)
  redis.call('HDEL', S, 'bad')
end

local function open()
  redis.call('HSET', S, 'state', 'open', 'until', fmt(now + open_for), 'ok', '0')
  clear()
  touch()
end

-- closed: add n successes and one failure and/or slow call; the window's calls, failures
-- and slow calls after it
local function add(n, failed, slow)
  local bad = 0
  if failed == 1 or slow == 1 then bad = 1 end
  if width == 0 then
    local seq = redis.call('HINCRBY', S, 'seq', n + bad)
    if failed == 1 then redis.call('RPUSH', F, seq) end
    if slow == 1 then redis.call('RPUSH', SL, seq) end
    local lo = seq - size
    local function trim(L)
      while true do
        local head = redis.call('LINDEX', L, 0)
        if not head or tonumber(head) > lo then break end
        redis.call('LPOP', L)
      end
      return redis.call('LLEN', L)
    end
    local base = tonumber(redis.call('HGET', S, 'base') or '0')
    local nf, ns = trim(F), trim(SL)
    redis.call('HSET', S, 'bad', (nf + ns > 0) and '1' or '0')
    return seq - math.max(base, lo), nf, ns
  end
  local k = math.floor(now / width)
  local i = fmt(k)
  local first = false
  if n + bad > 0 then first = redis.call('HINCRBY', B, 'c' .. i, n + bad) == n + bad end
  if failed == 1 then redis.call('HINCRBY', B, 'f' .. i, 1) end
  if slow == 1 then redis.call('HINCRBY', B, 's' .. i, 1) end
  prune(B, k, first)
  local fields = {}
  for j = k - 20, k do
    local x = fmt(j)
    fields[#fields + 1] = 'c' .. x
    fields[#fields + 1] = 'f' .. x
    fields[#fields + 1] = 's' .. x
  end
  local v = redis.call('HMGET', B, unpack(fields))
  local tc, tf, ts = 0, 0, 0
  for j = 1, #fields, 3 do
    tc = tc + tonumber(v[j] or '0')
    tf = tf + tonumber(v[j + 1] or '0')
    ts = ts + tonumber(v[j + 2] or '0')
  end
  redis.call('HSET', S, 'bad', (tf + ts > 0) and '1' or '0')
  return tc, tf, ts
end

-- closed, after add: open if the window says so (the reply's tail), else nil
local function verdict(calls, nf, ns)
  if calls >= min_calls then
    if nf > 0 and nf / calls >= frate then
      open()
      return {'closed>open', 'f', nf, calls}
    end
    if ns > 0 and ns / calls >= srate then
      open()
      return {'closed>open', 's', ns, calls}
    end
  end
  return nil
end

if op == 'admit' then
  if state == 'closed' then
    local n = tonumber(ARGV[4])
    if n > 0 then
      local calls, nf, ns = add(n, 0, 0)
      if nf + ns > 0 then
        local v = verdict(calls, nf, ns)
        if v then return {1, fmt(open_for), v[1], v[2], v[3], v[4]} end
      end
      touch()
    end
    return {0}
  end
  local trans = ''
  local epoch = h[3] or '0'
  local ok = tonumber(h[4] or '0')
  if state == 'open' then
    local u = tonumber(h[2] or '0')
    if u - now > open_for then
      -- Redis's clock was set back: open for open_for from now, not for the jump
      u = now + open_for
      redis.call('HSET', S, 'until', fmt(u))
    end
    if now < u then return {1, fmt(u - now)} end
    epoch = tostring(redis.call('HINCRBY', S, 'epoch', 1))
    redis.call('HSET', S, 'state', 'half_open', 'ok', '0')
    redis.call('DEL', T)
    ok = 0
    trans = 'open>half_open'
    touch()
  end
  redis.call('ZREMRANGEBYSCORE', T, '-inf', now)
  if #ARGV > 5 then redis.call('ZREM', T, unpack(ARGV, 6)) end
  if ok + redis.call('ZCARD', T) < half then
    local token = ARGV[5]
    redis.call('ZADD', T, fmt(now + lease), token)
    redis.call('PEXPIRE', T, ttl)
    return {2, epoch, trans, token}
  end
  return {1, 0, trans}
end

if op == 'record' then
  if state ~= 'closed' then return {0} end
  local calls, nf, ns = add(tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]))
  local v = verdict(calls, nf, ns)
  if v then return {0, 0, v[1], v[2], v[3], v[4]} end
  touch()
  return {0}
end

if op == 'trial' then
  if state ~= 'half_open' or (h[3] or '0') ~= ARGV[4] then return {0} end
  redis.call('ZREM', T, ARGV[5])
  local kind = ARGV[6]
  if kind == '0' then return {0} end
  if kind == '2' then
    open()
    return {0, 0, 'half_open>open'}
  end
  local ok = redis.call('HINCRBY', S, 'ok', 1)
  if ok >= half then
    local seq = redis.call('HGET', S, 'seq') or '0'
    redis.call('HSET', S, 'state', 'closed', 'ok', '0', 'base', seq)
    clear()
    touch()
    return {0, ok, 'half_open>closed'}
  end
  touch()
  return {0}
end

if op == 'state' then
  if state == 'open' and now >= tonumber(h[2] or '0') then return 'half_open' end
  return state
end
return redis.error_reply('guardrails: unknown breaker operation ' .. op)
"""
)


def _us(seconds: float) -> str:
    return repr(seconds * 1e6)


def _ms_ceil(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))


def lease_for(explicit: float | None, policy_blocks: Any) -> float:
    """How long a lease (a bulkhead slot, a trial permit) lasts without being given back:
    ``explicit`` (``bulkhead.lease``), else the policy's ``timeout.attempt`` (else
    ``timeout.total``) plus a second, else a minute."""
    if explicit is not None:
        return explicit
    timeout = getattr(policy_blocks, "timeout", None)
    if timeout is not None and timeout.enabled:
        limit = timeout.attempt if timeout.attempt is not None else timeout.total
        if limit is not None:
            return float(limit) + LEASE_MARGIN
    return DEFAULT_LEASE


class _Outage:
    """What every shared layer does with a failed Redis operation: the server's outage watch
    (one WARNING per outage) and the policy's ``redis_errors``."""

    __slots__ = ("count", "server", "what")

    def __init__(self, srv: Server, ctx: Context, kind: str) -> None:
        self.server = srv
        self.what = f"policy {ctx.policy!r}: {kind} in this process only"
        self.count = ctx.counters.redis_error

    def __call__(self, exc: BaseException) -> None:
        self.count()
        self.server.failed(exc, self.what)


class SharedBreaker:
    """A policy's breaker in Redis (the ``"breaker"`` shared state when ``shared: true``),
    with the per-process ``Breaker`` it falls back to (``local``)."""

    def __init__(self, cfg: BreakerConfig, ctx: Context, local: Breaker) -> None:
        assert ctx.redis_url is not None
        self.local = local
        self.server = server(ctx.redis_url)
        self.timeout = cfg.redis_timeout
        self.keys = (key_prefix(cfg.namespace or ctx.policy) + "breaker",)
        #: Trial permits that may be in Redis though no call holds them (see ``Doubtful``).
        self.doubts = doubtful(ctx.redis_url, self.keys[0])
        timed = cfg.timed
        window_seconds = float(cfg.window) if timed else 0.0
        ttl = max(IDLE_EXPIRY, 2 * cfg.open_for, 2 * window_seconds)
        #: A trial permit not given back within this (its process was killed) comes back.
        self.lease = max(lease_for(None, ctx.policy_blocks), cfg.open_for)
        self.config = ",".join(
            [
                str(0 if timed else int(cfg.window)),
                _us(window_seconds / 20) if timed else "0",
                str(cfg.min_calls),
                repr(cfg.failure_rate),
                repr(cfg.slow_rate),
                _us(cfg.open_for),
                str(cfg.half_open_calls),
                _us(self.lease),
            ]
        )
        self.ttl = str(_ms_ceil(ttl))
        self.lock = threading.Lock()
        #: Successes of this process not yet sent (the next admit or record carries them).
        self.pending = 0
        self.counters = ctx.counters
        #: What the last reply said (``state_name``), and until when an open one is open.
        self.seen = "closed"
        self.seen_until = 0.0

    def take_pending(self) -> int:
        with self.lock:
            n, self.pending = self.pending, 0
        return n

    def add_pending(self) -> None:
        with self.lock:
            self.pending += 1

    def after_fork_in_child(self) -> None:
        # The parent's successes are the parent's to send.
        self.lock = threading.Lock()
        self.pending = 0
        self.local.after_fork_in_child()

    def state_name(self) -> str:
        """The shared state as this process last saw it in a reply (``stats()`` never waits
        on Redis); this process's own breaker's while Redis is away."""
        if self.server.down_until:
            return self.local.state_name()
        state = self.seen
        if state == "open" and self.local.monotonic() >= self.seen_until:
            return "half_open"
        return state

    def saw(self, reply: list[Any]) -> None:
        """Note the state a reply (not the common ``closed``) tells."""
        code = reply[0]
        if code == 1 and int(reply[1]):
            self.seen = "open"
            self.seen_until = self.local.monotonic() + int(reply[1]) / 1e6
        elif code:
            self.seen = "half_open"
        if len(reply) > 2 and reply[2]:
            change = reply[2].decode() if isinstance(reply[2], bytes) else str(reply[2])
            now = change.partition(">")[2]
            self.seen = now
            if now == "open":
                self.seen_until = self.local.monotonic() + self.local.open_for

    # -- the replies' transitions, logged by the process whose script made them ----------

    def transition(
        self,
        reply: list[Any],
        qualname: str,
        exc: BaseException | None = None,
        seconds: float = 0.0,
    ) -> None:
        self.saw(reply)
        if len(reply) < 3 or not reply[2]:
            return
        change = reply[2].decode() if isinstance(reply[2], bytes) else str(reply[2])
        local = self.local
        if change == "closed>open":
            why_kind = reply[3].decode() if isinstance(reply[3], bytes) else str(reply[3])
            bad, calls = int(reply[4]), int(reply[5])
            span = local._span(calls)
            if why_kind == "f":
                why = (
                    f"{bad} of {span} failed ({_pct(bad / calls)}, failure_rate "
                    f"{_pct(local.failure_rate)})"
                )
            else:
                why = (
                    f"{bad} of {span} took {_secs(local.slow_call or 0.0)} or longer "
                    f"({_pct(bad / calls)}, slow_rate {_pct(local.slow_rate)})"
                )
            message = ("closed", "open", f"{why}; trial calls in {_secs(local.open_for)}")
        elif change == "open>half_open":
            n = local.half_open_calls
            message = (
                "open",
                "half_open",
                f"open for {_secs(local.open_for)}; letting {n} trial "
                f"call{'s' if n != 1 else ''} through (in every process)",
            )
        elif change == "half_open>open":
            if exc is not None and local.classify(exc) == _FAILURE:
                why = f"a trial call failed ({_exception_text(exc)})"
            else:
                why = f"a trial call took {_secs(seconds)}, slow_call {_secs(local.slow_call or 0)}"
            message = ("half_open", "open", f"{why}; trial calls in {_secs(local.open_for)}")
        else:  # half_open>closed
            n = int(reply[1])
            message = ("half_open", "closed", f"{n} trial call{'s' if n != 1 else ''} succeeded")
        local._log(message, qualname)


def breaker(
    cfg: BreakerConfig, inner: Inner, local_layer: Inner, ctx: Context, shared: SharedBreaker
) -> Inner:
    """The sync shared-breaker layer: ``local_layer`` (the per-process breaker around
    ``inner``) serves the calls while Redis is away."""
    srv, timeout, keys, config = shared.server, shared.timeout, shared.keys, shared.config
    ttl = shared.ttl
    usable, succeeded, client_for = srv.usable, srv.succeeded, srv.client
    outage = _Outage(srv, ctx, "breaker")
    take_pending, add_pending, transition = (
        shared.take_pending,
        shared.add_pending,
        shared.transition,
    )
    classify = shared.local.classify
    doubts, new_token = shared.doubts, _token
    policy, qualname = ctx.policy, ctx.qualname
    short_circuit = ctx.counters.short_circuit
    monotonic = ctx.clock.monotonic
    slow_call = cfg.slow_call if cfg.slow_call is not None else math.inf
    timing = cfg.slow_call is not None
    call = BREAKER

    def record(failed: bool, slow: bool, exc: BaseException | None) -> None:
        try:
            reply = call(
                client_for(timeout),
                keys,
                ("record", ttl, config, take_pending(), int(failed), int(slow)),
            )
        except ERRORS as err:
            outage(err)
            # Counted here at least, so a failure is never lost from every breaker.
            shared.local.record(failed, slow, monotonic(), qualname, exc)
            return
        succeeded()
        transition(reply, qualname, exc)

    def trial(
        ticket: bytes, token: bytes, args: tuple[Any, ...], kwargs: dict[str, Any], info: Any
    ) -> Any:
        t0 = monotonic()
        exc: BaseException | None = None
        try:
            return inner(args, kwargs, info)
        except BaseException as err:
            exc = err
            raise
        finally:
            seconds = monotonic() - t0
            kind = _SUCCESS if exc is None else classify(exc)
            bad = kind == _FAILURE or (kind == _SUCCESS and seconds >= slow_call)
            code = b"0" if kind == _NEITHER else b"2" if bad else b"1"
            try:
                reply = call(client_for(timeout), keys, ("trial", ttl, config, ticket, token, code))
            except BaseException as err:
                doubts.add(token)  # the permit comes back with the next admit
                if not isinstance(err, ERRORS):
                    raise
                outage(err)
            else:
                succeeded()
                transition(reply, qualname, exc, seconds)

    def shared_breaker_layer(args: tuple[Any, ...], kwargs: dict[str, Any], info: Any) -> Any:
        if not usable():
            return local_layer(args, kwargs, info)
        token = new_token()
        more = doubts.take() if doubts else ()
        try:
            reply = call(
                client_for(timeout), keys, ("admit", ttl, config, take_pending(), token, *more)
            )
        except BaseException as exc:
            # Failed, or interrupted on the way: it may have run, a permit taken for nobody.
            doubts.add(token, *more)
            if not isinstance(exc, ERRORS):
                raise
            outage(exc)
            return local_layer(args, kwargs, info)
        succeeded()
        code = reply[0]
        if code == 0:
            if shared.seen != "closed":
                shared.seen = "closed"
            t0 = monotonic() if timing else 0.0
            try:
                result = inner(args, kwargs, info)
            except BaseException as exc:
                kind = classify(exc)
                if kind == _FAILURE:
                    record(True, timing and monotonic() - t0 >= slow_call, exc)
                elif kind == _SUCCESS:
                    if timing and monotonic() - t0 >= slow_call:
                        record(False, True, exc)
                    else:
                        add_pending()
                raise
            if timing and monotonic() - t0 >= slow_call:
                record(False, True, None)
            else:
                add_pending()
            return result
        transition(reply, qualname)
        if code == 2:
            return trial(reply[1], reply[3], args, kwargs, info)
        short_circuit()
        raise CircuitOpenError(policy, qualname, int(reply[1]) / 1e6)

    return shared_breaker_layer


def breaker_async(
    cfg: BreakerConfig,
    inner: AsyncInner,
    local_layer: AsyncInner,
    ctx: Context,
    shared: SharedBreaker,
) -> AsyncInner:
    """The async shared-breaker layer (the same Redis state as the sync one)."""
    srv, timeout, keys, config = shared.server, shared.timeout, shared.keys, shared.config
    ttl = shared.ttl
    usable, succeeded, client_for = srv.usable, srv.succeeded, srv.async_client
    outage = _Outage(srv, ctx, "breaker")
    take_pending, add_pending, transition = (
        shared.take_pending,
        shared.add_pending,
        shared.transition,
    )
    classify = shared.local.classify
    doubts, new_token = shared.doubts, _token
    policy, qualname = ctx.policy, ctx.qualname
    short_circuit = ctx.counters.short_circuit
    monotonic = ctx.clock.monotonic
    slow_call = cfg.slow_call if cfg.slow_call is not None else math.inf
    timing = cfg.slow_call is not None
    run = BREAKER.run_async

    async def record(failed: bool, slow: bool, exc: BaseException | None) -> None:
        try:
            reply = await run(
                client_for(timeout),
                keys,
                ("record", ttl, config, take_pending(), int(failed), int(slow)),
            )
        except ERRORS as err:
            outage(err)
            shared.local.record(failed, slow, monotonic(), qualname, exc)
            return
        succeeded()
        transition(reply, qualname, exc)

    async def trial(
        ticket: bytes, token: bytes, args: tuple[Any, ...], kwargs: dict[str, Any], info: Any
    ) -> Any:
        t0 = monotonic()
        exc: BaseException | None = None
        try:
            return await inner(args, kwargs, info)
        except BaseException as err:
            exc = err
            raise
        finally:
            seconds = monotonic() - t0
            kind = _SUCCESS if exc is None else classify(exc)
            bad = kind == _FAILURE or (kind == _SUCCESS and seconds >= slow_call)
            code = b"0" if kind == _NEITHER else b"2" if bad else b"1"
            try:
                reply = await run(
                    client_for(timeout), keys, ("trial", ttl, config, ticket, token, code)
                )
            except BaseException as err:
                doubts.add(token)  # the permit comes back with the next admit
                if not isinstance(err, ERRORS):
                    raise
                outage(err)
            else:
                succeeded()
                transition(reply, qualname, exc, seconds)

    async def shared_breaker_layer(args: tuple[Any, ...], kwargs: dict[str, Any], info: Any) -> Any:
        if not usable():
            return await local_layer(args, kwargs, info)
        token = new_token()
        more = doubts.take() if doubts else ()
        try:
            reply = await run(
                client_for(timeout), keys, ("admit", ttl, config, take_pending(), token, *more)
            )
        except BaseException as exc:
            # Failed, or cancelled on the way: it may have run, a permit taken for nobody.
            doubts.add(token, *more)
            if not isinstance(exc, ERRORS):
                raise
            outage(exc)
            return await local_layer(args, kwargs, info)
        succeeded()
        code = reply[0]
        if code == 0:
            if shared.seen != "closed":
                shared.seen = "closed"
            t0 = monotonic() if timing else 0.0
            try:
                result = await inner(args, kwargs, info)
            except BaseException as exc:
                kind = classify(exc)
                if kind == _FAILURE:
                    await record(True, timing and monotonic() - t0 >= slow_call, exc)
                elif kind == _SUCCESS:
                    if timing and monotonic() - t0 >= slow_call:
                        await record(False, True, exc)
                    else:
                        add_pending()
                raise
            if timing and monotonic() - t0 >= slow_call:
                await record(False, True, None)
            else:
                add_pending()
            return result
        transition(reply, qualname)
        if code == 2:
            return await trial(reply[1], reply[3], args, kwargs, info)
        short_circuit()
        raise CircuitOpenError(policy, qualname, int(reply[1]) / 1e6)

    return shared_breaker_layer


# --- the rate limit ----------------------------------------------------------------------

#: GCRA on Redis's clock. KEYS: the bucket (when it will be full again, in microseconds).
#: ARGV 'take', interval, span ((burst - 1) × interval), max_wait (microseconds): replies
#: ``{0}`` a token now, ``{1, wait}`` refused (the next token in ``wait`` µs), ``{2, wait,
#: ticket}`` reserved, due in ``wait`` µs. ARGV 'give', interval, ticket: a reserved token
#: comes back if it is still the last one taken.
RATE_LIMIT = Script(
    r"""
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[2])
-- The key's expiry, in milliseconds, as an integer string: a Lua number past 1e17 is sent
-- as '1e+17' ("not an integer"); a bucket full again that late is capped at 1e15 ms.
local function px(until_us)
  return string.format('%.0f', math.min(math.ceil((until_us - now) / 1000) + 1000, 1e15))
end
if ARGV[1] == 'give' then
  if redis.call('GET', KEYS[1]) == ARGV[3] then
    local full_at = tonumber(ARGV[3]) - interval
    if full_at - now > -1000000 then
      redis.call('SET', KEYS[1], string.format('%.17g', full_at), 'PX', px(full_at))
    end
  end
  return {0}
end
local span, max_wait = tonumber(ARGV[3]), tonumber(ARGV[4])
local full_at = tonumber(redis.call('GET', KEYS[1]) or '0')
if full_at < now then full_at = now end
local wait = full_at - span - now
if wait > 0.001 and wait > max_wait then
  return {1, string.format('%.0f', wait)}
end
local next_full = string.format('%.17g', full_at + interval)
redis.call('SET', KEYS[1], next_full, 'PX', px(full_at + interval))
if wait <= 0.001 then return {0} end
return {2, string.format('%.0f', wait), next_full}
"""
)


def rate_limit(cfg: RateLimitConfig, inner: Inner, local_layer: Inner, ctx: Context) -> Inner:
    """The sync shared rate limit: one bucket in Redis for every process."""
    assert ctx.redis_url is not None
    srv = server(ctx.redis_url)
    usable, succeeded, client_for = srv.usable, srv.succeeded, srv.client
    timeout = cfg.redis_timeout
    keys = (key_prefix(cfg.namespace or ctx.policy) + "rate_limit",)
    interval = 1.0 / cfg.rate
    take_args = ("take", _us(interval), _us((cfg.capacity - 1) * interval), _us(cfg.max_wait))
    outage = _Outage(srv, ctx, "rate limit")
    refused, policy, qualname = ctx.counters.rate_limit, ctx.policy, ctx.qualname
    sleep = ctx.clock.sleep
    call = RATE_LIMIT

    def give_back(ticket: bytes) -> None:
        try:
            call(client_for(timeout), keys, ("give", take_args[1], ticket))
        except ERRORS as exc:
            outage(exc)  # the token stays spent
        else:
            succeeded()

    def shared_rate_limit_layer(args: tuple[Any, ...], kwargs: dict[str, Any], info: Any) -> Any:
        if not usable():
            return local_layer(args, kwargs, info)
        try:
            reply = call(client_for(timeout), keys, take_args)
        except ERRORS as exc:
            outage(exc)
            return local_layer(args, kwargs, info)
        succeeded()
        code = reply[0]
        if code:
            wait = int(reply[1]) / 1e6
            if code == 1:
                refused()
                raise RateLimitExceeded(policy, qualname, wait)
            try:
                sleep(wait)
            except BaseException:  # interrupted: the reserved token was never used
                give_back(reply[2])
                raise
        return inner(args, kwargs, info)

    return shared_rate_limit_layer


def rate_limit_async(
    cfg: RateLimitConfig, inner: AsyncInner, local_layer: AsyncInner, ctx: Context
) -> AsyncInner:
    """The async shared rate limit (the same bucket as the sync one)."""
    assert ctx.redis_url is not None
    srv = server(ctx.redis_url)
    usable, succeeded, client_for = srv.usable, srv.succeeded, srv.async_client
    timeout = cfg.redis_timeout
    keys = (key_prefix(cfg.namespace or ctx.policy) + "rate_limit",)
    interval = 1.0 / cfg.rate
    take_args = ("take", _us(interval), _us((cfg.capacity - 1) * interval), _us(cfg.max_wait))
    outage = _Outage(srv, ctx, "rate limit")
    refused, policy, qualname = ctx.counters.rate_limit, ctx.policy, ctx.qualname
    sleep = ctx.clock.async_sleep
    run = RATE_LIMIT.run_async

    async def give_back(ticket: bytes) -> None:
        try:
            await run(client_for(timeout), keys, ("give", take_args[1], ticket))
        except ERRORS as exc:
            outage(exc)
        else:
            succeeded()

    async def shared_rate_limit_layer(
        args: tuple[Any, ...], kwargs: dict[str, Any], info: Any
    ) -> Any:
        if not usable():
            return await local_layer(args, kwargs, info)
        try:
            reply = await run(client_for(timeout), keys, take_args)
        except ERRORS as exc:
            outage(exc)
            return await local_layer(args, kwargs, info)
        succeeded()
        code = reply[0]
        if code:
            wait = int(reply[1]) / 1e6
            if code == 1:
                refused()
                raise RateLimitExceeded(policy, qualname, wait)
            try:
                await sleep(wait)
            except BaseException:  # cancelled while waiting: the token was never used
                await give_back(reply[2])
                raise
        return await inner(args, kwargs, info)

    return shared_rate_limit_layer


# --- the bulkhead ------------------------------------------------------------------------

#: KEYS: the leases (a sorted set: token -> expiry in microseconds). ARGV 'acquire', token,
#: max_concurrent, lease (µs), then doubtful tokens to drop first: 1 taken, 0 full. ARGV
#: 'release', token, then doubtful tokens.
BULKHEAD = Script(
    r"""
if ARGV[1] == 'release' then
  return redis.call('ZREM', KEYS[1], unpack(ARGV, 2))
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if #ARGV > 4 then redis.call('ZREM', KEYS[1], unpack(ARGV, 5)) end
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[3]) then
  local lease = tonumber(ARGV[4])
  redis.call('ZADD', KEYS[1], string.format('%.0f', now + lease), ARGV[2])
  redis.call('PEXPIRE', KEYS[1], math.ceil(lease / 1000) + 1000)
  return 1
end
return 0
"""
)


def _polls(max_wait: float) -> Callable[[float], float]:
    """How long to sleep before asking again, ``waited`` seconds into a wait."""

    def pause(waited: float) -> float:
        # Doubling: each pause as long as the wait so far, between POLL_FIRST and POLL_MAX.
        step = max(POLL_FIRST, min(POLL_MAX, waited))
        return max(0.0, min(step, max_wait - waited))

    return pause


def bulkhead(cfg: BulkheadConfig, inner: Inner, local_layer: Inner, ctx: Context) -> Inner:
    """The sync shared bulkhead: at most ``max_concurrent`` leases at once in Redis."""
    assert ctx.redis_url is not None
    srv = server(ctx.redis_url)
    usable, succeeded, client_for = srv.usable, srv.succeeded, srv.client
    timeout = cfg.redis_timeout
    keys = (key_prefix(cfg.namespace or ctx.policy) + "bulkhead",)
    limit, lease = str(cfg.max_concurrent), _us(lease_for(cfg.lease, ctx.policy_blocks))
    max_wait = cfg.max_wait
    outage = _Outage(srv, ctx, "bulkhead")
    rejected, policy, qualname = ctx.counters.bulkhead_reject, ctx.policy, ctx.qualname
    capacity = cfg.max_concurrent
    call = BULKHEAD
    pause = _polls(max_wait)
    doubts = doubtful(srv.url, keys[0])

    def release(token: str) -> None:
        more = doubts.take() if doubts else ()
        try:
            call(client_for(timeout), keys, ("release", token, *more))
        except ERRORS as exc:
            doubts.add(token, *more)  # given back by the next operation that reaches Redis
            outage(exc)
        else:
            succeeded()

    def acquire(token: str) -> bool | None:
        """True: a slot; False: full; None: Redis failed (fall back)."""
        more = doubts.take() if doubts else ()
        try:
            got = call(client_for(timeout), keys, ("acquire", token, limit, lease, *more))
        except ERRORS as exc:
            doubts.add(token, *more)  # it may have run: a slot taken for nobody
            outage(exc)
            return None
        succeeded()
        return bool(got)

    def shared_bulkhead_layer(args: tuple[Any, ...], kwargs: dict[str, Any], info: Any) -> Any:
        if not usable():
            return local_layer(args, kwargs, info)
        token = _token()
        try:
            got = acquire(token)
            if got is False and max_wait:
                start = time.monotonic()
                while got is False:
                    waited = time.monotonic() - start
                    if waited >= max_wait:
                        break
                    time.sleep(pause(waited))
                    if not usable():
                        got = None
                        break
                    got = acquire(token)
        except BaseException:  # interrupted: a lease taken meanwhile comes back
            release(token)
            raise
        if got is None:
            return local_layer(args, kwargs, info)
        if not got:
            rejected()
            raise BulkheadFull(policy, qualname, capacity)
        try:
            return inner(args, kwargs, info)
        finally:
            release(token)

    return shared_bulkhead_layer


def bulkhead_async(
    cfg: BulkheadConfig, inner: AsyncInner, local_layer: AsyncInner, ctx: Context
) -> AsyncInner:
    """The async shared bulkhead; a cancelled attempt gives its lease back."""
    assert ctx.redis_url is not None
    srv = server(ctx.redis_url)
    usable, succeeded, client_for = srv.usable, srv.succeeded, srv.async_client
    timeout = cfg.redis_timeout
    keys = (key_prefix(cfg.namespace or ctx.policy) + "bulkhead",)
    limit, lease = str(cfg.max_concurrent), _us(lease_for(cfg.lease, ctx.policy_blocks))
    max_wait = cfg.max_wait
    outage = _Outage(srv, ctx, "bulkhead")
    rejected, policy, qualname = ctx.counters.bulkhead_reject, ctx.policy, ctx.qualname
    capacity = cfg.max_concurrent
    run = BULKHEAD.run_async
    pause = _polls(max_wait)
    doubts = doubtful(srv.url, keys[0])

    async def release(token: str) -> None:
        more = doubts.take() if doubts else ()
        try:
            # Shielded: a second cancellation must not leave the lease behind.
            await asyncio.shield(run(client_for(timeout), keys, ("release", token, *more)))
        except ERRORS as exc:
            doubts.add(token, *more)
            outage(exc)
        else:
            succeeded()

    async def acquire(token: str) -> bool | None:
        more = doubts.take() if doubts else ()
        try:
            got = await run(client_for(timeout), keys, ("acquire", token, limit, lease, *more))
        except ERRORS as exc:
            doubts.add(token, *more)  # it may have run: a slot taken for nobody
            outage(exc)
            return None
        succeeded()
        return bool(got)

    async def shared_bulkhead_layer(
        args: tuple[Any, ...], kwargs: dict[str, Any], info: Any
    ) -> Any:
        if not usable():
            return await local_layer(args, kwargs, info)
        token = _token()
        try:
            got = await acquire(token)
            if got is False and max_wait:
                start = time.monotonic()
                while got is False:
                    waited = time.monotonic() - start
                    if waited >= max_wait:
                        break
                    await asyncio.sleep(pause(waited))
                    if not usable():
                        got = None
                        break
                    got = await acquire(token)
        except BaseException:  # cancelled: a lease taken meanwhile comes back
            await release(token)
            raise
        if got is None:
            return await local_layer(args, kwargs, info)
        if not got:
            rejected()
            raise BulkheadFull(policy, qualname, capacity)
        try:
            return await inner(args, kwargs, info)
        finally:
            await release(token)

    return shared_bulkhead_layer


__all__ = [
    "BREAKER",
    "BULKHEAD",
    "RATE_LIMIT",
    "Script",
    "SharedBreaker",
    "breaker",
    "breaker_async",
    "bulkhead",
    "bulkhead_async",
    "key_prefix",
    "lease_for",
    "rate_limit",
    "rate_limit_async",
]
