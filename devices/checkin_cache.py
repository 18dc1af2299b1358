"""The routine check-in answered from Redis: no database query, one Redis round trip.

Every enrolled phone checks in every few minutes, so check-in is by far the busiest
call finlock serves; almost always the phone reports nothing new and only needs its
current signed command again. With ``REDIS_URL`` set, each device has a *record* in
Redis holding what that answer needs (its credential digest, the two sequence counters
and the signed command, compressed: ``devices/checkin_record.py``), and one Lua script per
check-in finds the record by the credential's digest, counts the request against the
device's rate limit and notes the check-in time in a buffer that
``devices.checkin_flush.checkins_flush`` writes to the database every few seconds
(set-based). Anything unusual (no record, a stale one, a body the fast path does not fully
understand, a phone reporting a sequence newer than the record) falls through to the
database path in ``devices.services.checkin.device_checkin``, which then refills the record.

Correctness rests on a per-device *generation* counter:

* a writer that changes what a check-in must answer (a new command, an enrolment that
  replaces the credential) increments the device's generation after its transaction
  commits (:func:`invalidate`);
* a fill reads the generation **before** it reads the database and stores it in the
  record; the fast path serves a record only if its generation is still current.

Race prevented: a fill that read the database just before a new command committed would
otherwise store the old envelope after the writer's invalidation and serve it until the
record expired; its generation is then one behind and the record is never served.
Records live ``CHECKIN_CACHE_SECONDS``; generations a day, refreshed on every change, so
a generation cannot lapse back to a value an old record still holds.

In front of Redis, each process keeps the answers it served in the last
``CHECKIN_LOCAL_SECONDS`` (one second by default) in memory, so a phone calling in a loop
does not fetch its record again; every such answer is still checked against the device's
generation and counted in Redis, by a small script in the same single round trip (see
:func:`answer`). Memory never answers a credential, or a command, that Redis no longer
holds current.

Without ``REDIS_URL`` (the embedded default) none of this runs: every check-in takes the
database path. Figures: ``bench/checkin.py`` and the README.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

import redis
from django.conf import settings
from django.core.signals import setting_changed
from django.db import transaction
from django.dispatch import receiver
from django.http import HttpResponse
from redis import exceptions as redis_exceptions
from rest_framework.throttling import SimpleRateThrottle

from devices import checkin_record
from devices.checkin_record import render
from devices.keys import key_statements
from devices.models import Device, DeviceCommand
from devices.protocol import CREDENTIAL_PREFIX, MAX_SEQ, PROTOCOL_VERSION, STATES, secret_digest
from portal.cache import OutageLog

log = logging.getLogger(__name__)
# A Redis outage is logged when it starts and when it ends, not on every check-in.
_outage = OutageLog(
    "check-in cache: Redis", "check-ins are answered from the database and counted in this process's memory", logger=log
)

PREFIX = "finlock:checkin:v1:"
# The record's key names its format: a process still running the previous format (during a
# rolling restart) neither reads nor serves a record of this one, while both share the
# generation counters, so an invalidation by either reaches both.
RECORD = PREFIX + "recz:"
DICTIONARY = PREFIX + "dict:"  # + id: a compression dictionary shared by records (devices/checkin_record.py)
SEEN = PREFIX + "seen"  # hash: device id -> "<epoch ms>|<credential digest>|<app version>"
SEEN_FLUSHING = PREFIX + "seen:flushing"
FLUSH_LOCK = PREFIX + "flush-lock"
GENERATION_SECONDS = 86_400
GENERATION_SEQUENCE = PREFIX + "genseq"  # never expires: see _BUMP
APP_VERSION_LENGTH = 40
FLUSH_BATCH = 10_000

# KEYS[1]: cred:<digest>. ARGV: now in ms, app version, rate window index, window seconds.
# Returns false when the credential has no mapping, else {device id, record or false,
# generation, requests in this window (0: not counted, no record of this credential)}.
# Counting and noting the check-in happen here so the whole fast path costs one round
# trip; a check-in that then falls through to the database path is noted twice,
# harmlessly (the later time wins).
_LUA = """
local id = redis.call('GET', KEYS[1])
if not id then return false end
local prefix = '@PREFIX@'
local record = redis.call('GET', '@RECORD@' .. id)
local generation = redis.call('GET', prefix .. 'gen:' .. id) or '0'
local digest = string.sub(KEYS[1], @DIGEST_AT@)
-- Only a current record of this very credential counts the request: a credential replaced
-- by a new enrolment may still map here, and must not use up (and so throttle) the phone's
-- current credential; a stale record leaves the counting to the database path.
local space = record and string.find(record, ' ', 1, true)
local current = space and string.sub(record, 1, space - 1) == generation
if not current or string.sub(record, space + 1, space + 64) ~= digest then
  return {id, false, generation, 0}
end
local window = prefix .. 'rate:' .. id .. ':' .. ARGV[3]
local count = redis.call('INCR', window)
if count == 1 then redis.call('EXPIRE', window, ARGV[4]) end
redis.call('HSET', '@SEEN@', id, ARGV[1] .. '|' .. digest .. '|' .. ARGV[2])
return {id, record, generation, count}
"""
_LUA = (
    _LUA.replace("@PREFIX@", PREFIX)
    .replace("@RECORD@", RECORD)
    .replace("@SEEN@", SEEN)
    .replace("@DIGEST_AT@", str(len(PREFIX + "cred:") + 1))
)

# The memory level's round trip: is the answer this process remembers still current, and
# count the request. KEYS: gen:<id>, rate:<id>:<window>, the seen hash. ARGV: the generation
# the remembered record carried, window seconds, device id, "<epoch ms>|<digest>|<app version>".
# Returns -1 (nothing counted: the caller asks again with the full script above, which counts)
# when the generation moved, else the requests in this window including this one. A new
# enrolment moves the generation too, so a replaced credential is never answered from memory.
_VALIDATE = """
if (redis.call('GET', KEYS[1]) or '0') ~= ARGV[1] then return -1 end
local count = redis.call('INCR', KEYS[2])
if count == 1 then redis.call('EXPIRE', KEYS[2], ARGV[2]) end
redis.call('HSET', KEYS[3], ARGV[3], ARGV[4])
return count
"""

# KEYS: gen:<id> of each device. ARGV[1]: the global sequence key, ARGV[2]: seconds to keep.
# Each device's generation is taken from one global sequence that never expires, so a
# generation whose key lapsed can never come back to a value an old record still holds.
_BUMP = """
for _, key in ipairs(KEYS) do
  local g = redis.call('INCR', ARGV[1])
  redis.call('SET', key, g, 'EX', ARGV[2])
end
return #KEYS
"""


@functools.cache
def _client():
    """This process's Redis pool and scripts (fast path, bump, memory check), or None without ``REDIS_URL``/cache."""
    if not settings.REDIS_URL or not settings.CHECKIN_CACHE_SECONDS:
        return None
    # Short timeouts: a slow or unreachable Redis must cost a check-in little before
    # it falls back to the database, not the phone's whole request timeout.
    pool = redis.ConnectionPool.from_url(settings.REDIS_URL, socket_timeout=0.5, socket_connect_timeout=0.5)
    client = redis.Redis(connection_pool=pool)
    return client, client.register_script(_LUA), client.register_script(_BUMP), client.register_script(_VALIDATE)


def redis_client() -> redis.Redis | None:
    """This process's Redis client for the check-in keys, or None without ``REDIS_URL``/cache."""
    found = _client()
    return found[0] if found is not None else None


@receiver(setting_changed)
def _forget_client(*, setting, **kwargs):
    if setting in {"REDIS_URL", "CHECKIN_CACHE_SECONDS"}:
        _client.cache_clear()
        _own.__dict__.clear()


_own = threading.local()


def _run_script(script, keys: list[str], args: list) -> Any:
    """EVALSHA on a connection this thread owns.

    The check-in is the hottest call finlock has: redis-py's pool checkout, retry and
    command layers cost about as much CPU as the round trip itself, so the fast path
    keeps one of the pool's connections for itself and speaks through it directly
    (redis-py's own connection class and hiredis parser). Any error disconnects it;
    the next call reconnects.
    """
    client = _client()[0]
    conn = getattr(_own, "conn", None)
    if conn is None or _own.pid != os.getpid():  # forked since (a gunicorn worker): never share a socket
        _own.conn = conn = client.connection_pool.make_connection()
        _own.pid = os.getpid()
    try:
        conn.send_command("EVALSHA", script.sha, len(keys), *keys, *args)
        try:
            return conn.read_response()
        except redis_exceptions.NoScriptError:  # Redis restarted and forgot the script
            conn.send_command("EVAL", script.script, len(keys), *keys, *args)
            return conn.read_response()
    except BaseException:
        conn.disconnect()
        raise


def enabled() -> bool:
    return _client() is not None


@functools.cache
def _rate() -> tuple[int, int]:
    num, duration = SimpleRateThrottle.parse_rate(None, settings.DEVICE_API_RATE)  # type: ignore[arg-type]  # a static use
    assert num is not None and duration is not None, "DEVICE_API_RATE is checked at start-up"
    return num, duration


@receiver(setting_changed)
def _forget_rate(*, setting, **kwargs):
    if setting == "DEVICE_API_RATE":
        _rate.cache_clear()


_rendered_chain: dict[str, tuple[list[dict[str, Any]], bytes]] = {}  # {"chain": (the chain, its JSON)}


def _key_statements() -> bytes:
    """The key statements as JSON, rendered again only when the chain changes (a new statement)."""
    chain = key_statements()
    cached = _rendered_chain.get("chain")
    if cached is None or cached[0] != chain:
        _rendered_chain["chain"] = cached = (chain, render(chain))
    return cached[1]


def rate_count(device_id: int) -> tuple[int, int, int] | None:
    """Count one request of a device in the shared per-device window: ``(count, limit, seconds to wait)``.

    The device API's throttle uses this when the cache is on, so that requests answered
    here and by the database path share one counter. None without Redis or when it
    cannot be reached (the device API's throttle then counts in this process's memory: a
    rate limit must not take the phones' check-ins down with Redis).
    """
    found = _client()
    if found is None:
        return None
    client = found[0]
    limit, window = _rate()
    now = time.time()
    key = f"{PREFIX}rate:{device_id}:{int(now // window)}"
    try:
        pipe = client.pipeline(transaction=False)
        pipe.incr(key)
        pipe.expire(key, window)
        count, _ok = pipe.execute()
    except Exception as exc:
        _outage.failed(exc)
        return None
    _outage.answered()
    return count, limit, max(1, int(window - now % window))


# --- Writers ---------------------------------------------------------------------------


def invalidate(device_ids) -> None:
    """Make every cached check-in answer of these devices stale (call after commit).

    Never raises: the change it follows is committed. If Redis cannot be reached the
    records stay until they expire (``CHECKIN_CACHE_SECONDS``), and meanwhile a phone
    checking in may be answered its previous command, which it already applied or
    will supersede with the pushed one; the push channels are unaffected.
    """
    found = _client()
    if found is None:
        return
    bump = found[2]
    ids = list(device_ids)
    _local_forget(ids)
    try:
        for start in range(0, len(ids), FLUSH_BATCH):
            keys = [f"{PREFIX}gen:{device_id}" for device_id in ids[start : start + FLUSH_BATCH]]
            bump(keys=keys, args=[GENERATION_SEQUENCE, GENERATION_SECONDS])
    except Exception as exc:
        log.error("check-in cache: could not invalidate %d device(s) (%s)", len(ids), exc)


def forget_credential(digest: str) -> None:
    """Drop a replaced credential's mapping at once (it would otherwise stay until it expires). Never raises."""
    found = _client()
    if found is None or not digest:
        return
    try:
        found[0].delete(f"{PREFIX}cred:{digest}")
    except Exception as exc:
        log.warning("check-in cache: could not forget a replaced credential (%s)", exc)


def invalidate_on_commit(device_ids) -> None:
    """:func:`invalidate` now, and again once the current transaction commits.

    Now, so that nothing answers the previous command from here on, in this process or
    another (a check-in inside this same transaction, a test whose transaction never
    commits); after the commit, because a fill running between now and then may have
    read the rows as they were before this transaction and stored them.
    """
    if _client() is None:
        return
    ids = list(device_ids)
    invalidate(ids)
    transaction.on_commit(lambda: invalidate(ids))


def fill(device_id: int) -> None:
    """Store the device's current check-in answer in Redis, tagged with the generation read first.

    Called after the database path answered a check-in. Never raises. The record lives
    ``CHECKIN_CACHE_SECONDS``, but never past the device's ``lease_renew_at``: from then on a
    check-in must reach the database path, which renews the lease (devices.services.checkin),
    so a renewal that is due is never hidden behind a cached answer; none is stored once it is due.
    """
    found = _client()
    if found is None:
        return
    client = found[0]
    try:
        # The generation first, then the database: see the module docstring.
        generation = int(client.get(f"{PREFIX}gen:{device_id}") or 0)
        row = (
            Device.objects.filter(pk=device_id, enrolled_at__isnull=False)
            .values_list("credential_digest", "reported_seq", "command_seq", "lease_renew_at")
            .first()
        )
        latest = (
            DeviceCommand.objects.filter(device_id=device_id)
            .order_by("-seq")
            .values_list("body", "key_id", "signature", "version")
            .first()
        )
        if row is None or latest is None or not row[0] or latest[3] != PROTOCOL_VERSION:
            return
        digest, reported_seq, command_seq, renew_at = row
        seconds = checkin_record.record_seconds(renew_at)
        if seconds <= 0:
            return
        body, key_id, signature, _version = latest
        record, dictionary = checkin_record.record_bytes(
            generation=generation,
            digest=digest,
            reported_seq=reported_seq,
            command_seq=command_seq,
            body=body,
            key_id=key_id,
            signature=signature,
        )
        pipe = client.pipeline(transaction=False)
        if dictionary:  # kept as long as any record may use it; refreshed by every fill
            pipe.set(
                DICTIONARY + checkin_record.dictionary_id(dictionary), dictionary, ex=settings.CHECKIN_CACHE_SECONDS
            )
        pipe.set(f"{RECORD}{device_id}", record, ex=seconds)
        pipe.set(f"{PREFIX}cred:{digest}", device_id, ex=settings.CHECKIN_CACHE_SECONDS)
        pipe.execute()
    except redis_exceptions.RedisError as exc:
        _outage.failed(exc)  # the next check-in takes the database path again; said once per outage
    except Exception as exc:
        log.warning("check-in cache: could not fill device %s (%s)", device_id, exc)


# --- The fast path ----------------------------------------------------------------------


def _routine_body(raw: bytes) -> tuple[str, int, str] | None:
    """``(state, last_seq, app_version)`` of a well-formed check-in, else None (the full path validates)."""
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):  # the database path's parser answers 400 (portal/api/parsers.py)
        return None
    if not isinstance(body, dict):
        return None
    state, last_seq, app_version = body.get("state"), body.get("last_seq"), body.get("app_version", "")
    if state not in STATES or type(last_seq) is not int or not 0 <= last_seq <= MAX_SEQ:
        return None
    if type(app_version) is not str or len(app_version) > APP_VERSION_LENGTH:
        return None
    return state, last_seq, app_version


def _throttled(wait: int) -> HttpResponse:
    response = HttpResponse(
        render({"detail": f"Request was throttled. Expected available in {wait} seconds."}),
        status=429,
        content_type="application/json",
    )
    response["Retry-After"] = str(wait)
    return response


@dataclass(slots=True)
class _Local:
    """An answer this process served lately, kept for ``CHECKIN_LOCAL_SECONDS`` so it need not be fetched again.

    Never served without asking Redis whether ``generation`` is still the device's
    (:data:`_VALIDATE`), which also counts the request.
    """

    device_id: int
    generation: bytes  # the device's generation the record was filled at
    reported_seq: int
    command_seq: int
    envelope: bytes
    expires: float  # time.monotonic()


# digest -> _Local, oldest first (insertion order), at most CHECKIN_LOCAL_ENTRIES.
_local: dict[str, _Local] = {}


def _local_forget(device_ids) -> None:
    """Drop this process's entries of these devices (a writer in this process changed them)."""
    if _local:
        ids = set(device_ids)
        # list() copies under the GIL: another thread (gthread workers) may be storing.
        for digest, entry in list(_local.items()):
            if entry.device_id in ids:
                _local.pop(digest, None)


def _local_store(digest: str, entry: _Local) -> None:
    _local.pop(digest, None)
    while len(_local) >= settings.CHECKIN_LOCAL_ENTRIES:
        try:
            _local.pop(next(iter(_local)))  # the oldest
        except (StopIteration, KeyError, RuntimeError):  # emptied or changed by another thread
            break
    _local[digest] = entry


def _answer_bytes(envelope: bytes) -> HttpResponse:
    response = HttpResponse(
        b'{"envelope":' + envelope + b',"key_statements":' + _key_statements() + b"}",
        content_type="application/json",
    )
    # What DRF adds to the database path's answer, so a client cannot tell the paths apart.
    response["Vary"] = "Accept"
    response["Allow"] = "POST, OPTIONS"
    return response


def answer(request) -> HttpResponse | None:
    """The check-in answered from the cache, or None to take the database path.

    Only a complete, well-formed, authenticated routine check-in is answered here;
    every refusal (401, 400) is the database path's, so both paths refuse alike.

    Two levels, one Redis round trip either way. The Redis record (shared by every
    process, exact: see the module docstring) is fetched by :data:`_LUA`. For a phone
    this process answered less than ``CHECKIN_LOCAL_SECONDS`` ago, the answer is
    kept in memory and only checked by :data:`_VALIDATE`: a small script that compares
    the device's generation with the one the remembered record carried and counts the
    request. That spares the record's transfer (several kilobytes with the lock screen)
    and the larger script, not the round trip: the round trip is what makes memory
    exact. Race prevented: a command issued, or a credential replaced by a new
    enrolment, in *another* process moves the generation after its commit, so from
    then on no process answers the older command or the replaced credential from
    memory; and each request is counted in the shared window when it is answered, so
    several processes cannot each let a device through up to the whole limit.
    """
    found = _client()
    if found is None or request.method != "POST":
        return None
    ask = _routine_checkin(request)
    if ask is None:
        return None
    entry = _local.get(ask.digest)
    if entry is not None:
        answered = _answer_from_memory(request, found, entry, ask)
        if not isinstance(answered, _Stale):
            return answered
        # Expired, changed since (a new command or enrolment), or the phone reports something
        # new: nothing was counted yet; the full script below counts this request once.
        _local.pop(ask.digest, None)
    return _answer_from_record(request, found, ask)


@dataclass(frozen=True)
class _Ask:
    """A routine check-in, read from the request, and the rate window it falls in."""

    digest: str
    last_seq: int
    app_version: str
    limit: int
    window: int
    now: float
    window_index: int
    monotonic: float


class _Stale:
    """What :func:`_answer_from_memory` says when the remembered answer cannot be used."""


_STALE = _Stale()


def _routine_checkin(request) -> _Ask | None:
    """The check-in as the fast path may answer it: well-formed, with a device credential; else None."""
    header = request.META.get("HTTP_AUTHORIZATION", "")
    scheme, _sep, credential = header.partition(" ")
    if scheme.lower() != "device" or not credential.startswith(CREDENTIAL_PREFIX):
        return None
    if request.content_type != "application/json":
        return None
    body = _routine_body(request.body)
    if body is None:
        return None
    _state, last_seq, app_version = body
    limit, window = _rate()
    now = time.time()
    return _Ask(
        digest=secret_digest(credential),
        last_seq=last_seq,
        app_version=app_version,
        limit=limit,
        window=window,
        now=now,
        window_index=int(now // window),
        monotonic=time.monotonic(),
    )


def _answer_from_memory(request, found, entry: _Local, ask: _Ask) -> HttpResponse | _Stale | None:
    """The remembered answer if Redis confirms the device's generation (and counts the request).

    ``None``: Redis is unavailable (the database path answers); ``_STALE``: not usable.
    """
    if not (entry.expires > ask.monotonic and ask.last_seq <= entry.reported_seq and ask.last_seq <= entry.command_seq):
        return _STALE
    try:
        count = _run_script(
            found[3],
            [f"{PREFIX}gen:{entry.device_id}", f"{PREFIX}rate:{entry.device_id}:{ask.window_index}", SEEN],
            [entry.generation, ask.window, entry.device_id, f"{int(ask.now * 1000)}|{ask.digest}|{ask.app_version}"],
        )
    except Exception as exc:
        log.warning("check-in cache: Redis unavailable (%s); answering from the database", exc)
        return None
    if count < 0:
        return _STALE
    request.META["finlock.checkin_counted"] = True
    if count > ask.limit:
        return _throttled(max(1, int(ask.window - ask.now % ask.window)))
    return _answer_bytes(entry.envelope)


def _answer_from_record(request, found, ask: _Ask) -> HttpResponse | None:
    """The answer from the shared Redis record (one script: fetch and count), remembered for a moment."""
    try:
        hit = _run_script(
            found[1],
            [f"{PREFIX}cred:{ask.digest}"],
            [int(ask.now * 1000), ask.app_version, ask.window_index, ask.window],
        )
    except Exception as exc:
        _outage.failed(exc)
        return None
    _outage.answered()
    if not hit:
        return None
    device_id, record, generation, count = hit
    if count:  # counted here, so the database path must not count this request again
        request.META["finlock.checkin_counted"] = True
    if count > ask.limit:
        return _throttled(max(1, int(ask.window - ask.now % ask.window)))
    if not record:
        return None
    try:
        record_generation, record_digest, reported_seq, command_seq, dictionary, command = record.split(b" ", 5)
        reported_seq, command_seq = int(reported_seq), int(command_seq)
    except ValueError:
        return None  # not a record this code wrote: the database path answers and rewrites it
    if record_generation != generation or record_digest != ask.digest.encode():
        return None  # stale, or the credential was replaced by a new enrolment
    if not (ask.last_seq <= reported_seq and ask.last_seq <= command_seq):
        return None  # the phone reports something new: the database path records it
    try:
        shared = checkin_record.dictionary_get(dictionary.decode(), lambda name: found[0].get(DICTIONARY + name))
        if shared is None:
            return None  # expired or evicted: the database path answers and stores it again
        envelope = checkin_record.record_envelope(command, shared)  # tens of µs (bench/checkin.py)
    except (ValueError, redis_exceptions.RedisError):
        return None
    if settings.CHECKIN_LOCAL_SECONDS:
        _local_store(
            ask.digest,
            _Local(
                device_id=int(device_id),
                generation=generation,
                reported_seq=reported_seq,
                command_seq=command_seq,
                envelope=envelope,
                expires=ask.monotonic + settings.CHECKIN_LOCAL_SECONDS,
            ),
        )
    return _answer_bytes(envelope)
