"""Django's cache on Redis that keeps counting in this process's memory while Redis is away.

finlock's cache holds rate-limit counters only (the provider API's throttle, the device
API's throttles, the owners' self-service limit). A rate limit exists to slow an attacker
down, never to refuse money: if Redis is stopped, full or unreachable, ``POST
/api/v1/payments/`` and Daraja's callbacks must still record the payment. So every cache
call that finds Redis unavailable is served by a per-process memory cache instead (the
limits then count per process: with four gunicorn workers a client gets up to four times
its limit until Redis answers again), and the outage is logged once when it starts and
once when it ends, never per request.

While Redis is down, a process asks it again at most every ``FAILOVER_RETRY_SECONDS``
(an option of the cache, 5 s by default), so a dead Redis costs a request nothing and a
black-holed one (connection timeouts) costs one request per interval at most half a second.

Never use this cache for anything whose loss or duplication matters (a lock, a nonce, an
idempotency key): during an outage each process sees only its own memory.
"""

from __future__ import annotations

import logging
import threading
import time

from django.core.cache.backends.locmem import LocMemCache
from django.core.cache.backends.redis import RedisCache
from redis import exceptions as redis_exceptions

log = logging.getLogger(__name__)

# Redis errors that mean "Redis cannot serve us now", as opposed to a wrong command.
_UNAVAILABLE = (
    redis_exceptions.ConnectionError,  # refused, reset, DNS, authentication, loading
    redis_exceptions.TimeoutError,
    redis_exceptions.ReadOnlyError,  # a replica after a failover
    redis_exceptions.OutOfMemoryError,  # maxmemory reached with noeviction
    redis_exceptions.TryAgainError,
)


def unavailable(exc: BaseException) -> bool:
    """True when ``exc`` says Redis cannot serve requests right now (not that a command was wrong)."""
    if isinstance(exc, _UNAVAILABLE):
        return True
    # A failed background save makes Redis refuse every write ("MISCONF ...").
    return isinstance(exc, redis_exceptions.ResponseError) and str(exc).startswith("MISCONF")


class OutageLog:
    """Logs an outage of a shared service once when it starts and once when it ends, never per request.

    One per service and process, shared by its threads. ``failed`` and ``answered`` are
    called on every request; they log on a change of state only.
    """

    def __init__(self, what: str, fallback: str, *, logger: logging.Logger = log):
        self.what = what
        self.fallback = fallback
        self.logger = logger
        self.down_since: float | None = None
        self._lock = threading.Lock()

    def failed(self, exc: BaseException) -> None:
        if self.down_since is not None:
            return
        with self._lock:
            if self.down_since is None:
                self.down_since = time.monotonic()
                self.logger.warning("%s unavailable (%s): %s until it answers again", self.what, exc, self.fallback)

    def answered(self) -> None:
        if self.down_since is None:
            return
        with self._lock:
            if self.down_since is not None:
                self.logger.warning(
                    "%s answers again after %.0f s of outage", self.what, time.monotonic() - self.down_since
                )
                self.down_since = None


# One outage state per Redis location and process, shared by the per-thread cache objects.
_outages: dict[str, tuple[OutageLog, list[float]]] = {}
_outages_lock = threading.Lock()


class FailoverRedisCache(RedisCache):
    """``RedisCache`` that falls back to a per-process memory cache while Redis is unavailable.

    OPTIONS: ``FAILOVER_RETRY_SECONDS`` (5) besides redis-py's pool options; the socket
    timeouts default to half a second so a black-holed Redis cannot hold a request for long.
    """

    def __init__(self, server, params):
        options = dict(params.get("OPTIONS") or {})
        self._retry_seconds = float(options.pop("FAILOVER_RETRY_SECONDS", 5.0))
        options.setdefault("socket_connect_timeout", 0.5)
        options.setdefault("socket_timeout", 0.5)
        super().__init__(server, {**params, "OPTIONS": options})
        location = server if isinstance(server, str) else ",".join(server)
        # Same key prefix, version and default timeout: a key means the same thing in both.
        self._memory = LocMemCache(
            f"finlock-failover:{location}",
            {**{k: v for k, v in params.items() if k != "OPTIONS"}, "OPTIONS": {"MAX_ENTRIES": 100_000}},
        )
        with _outages_lock:
            if location not in _outages:
                outage = OutageLog("cache: Redis", "rate limits count in this process's memory")
                _outages[location] = (outage, [0.0])  # [monotonic time before which Redis is not asked]
            self._outage, self._next_try = _outages[location]

    def _call(self, name: str, *args, **kwargs):
        if self._outage.down_since is not None and time.monotonic() < self._next_try[0]:
            return getattr(self._memory, name)(*args, **kwargs)
        try:
            result = getattr(RedisCache, name)(self, *args, **kwargs)
        except redis_exceptions.RedisError as exc:
            if not unavailable(exc):
                raise
            self._next_try[0] = time.monotonic() + self._retry_seconds
            self._outage.failed(exc)
            return getattr(self._memory, name)(*args, **kwargs)
        self._outage.answered()
        return result

    def add(self, *args, **kwargs):
        return self._call("add", *args, **kwargs)

    def get(self, *args, **kwargs):
        return self._call("get", *args, **kwargs)

    def set(self, *args, **kwargs):
        return self._call("set", *args, **kwargs)

    def touch(self, *args, **kwargs):
        return self._call("touch", *args, **kwargs)

    def delete(self, *args, **kwargs):
        return self._call("delete", *args, **kwargs)

    def get_many(self, *args, **kwargs):
        return self._call("get_many", *args, **kwargs)

    def has_key(self, *args, **kwargs):
        return self._call("has_key", *args, **kwargs)

    def incr(self, *args, **kwargs):
        return self._call("incr", *args, **kwargs)

    def set_many(self, *args, **kwargs):
        return self._call("set_many", *args, **kwargs)

    def delete_many(self, *args, **kwargs):
        return self._call("delete_many", *args, **kwargs)

    def clear(self):
        self._memory.clear()
        return self._call("clear")
