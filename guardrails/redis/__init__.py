"""guardrails across processes and machines, through Redis.

Imported only when a policy asks for Redis (``cache.backend: redis``, ``breaker.shared``,
``rate_limit.shared``, ``bulkhead.shared``); ``import guardrails`` never imports it, nor
redis-py. Install with ``pip install 'hydra-guardrails[redis]'``.

- ``client``: one connection pool per URL and process, short timeouts, and the outage
  watch (one WARNING when Redis becomes unreachable, one INFO when it is back, no calls to
  it in between but a probe now and then).
- ``codec``: what goes into Redis and comes back out: no pickle unless configured, signed
  when ``cache.secret`` is set.
- ``digest``: the Redis key of a call, the same in every process.
- ``cache``: the second level of the ``cache`` layer and its cross-process single flight.
- ``shared``: breaker, rate limit and bulkhead state kept in Redis by atomic scripts.
"""
