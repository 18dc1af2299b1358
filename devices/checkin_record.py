"""The check-in cache's record (devices/checkin_cache.py): what it holds, compressed, and for how long.

A million phones each keep a record in Redis for ``CHECKIN_CACHE_SECONDS``; the signed
command in it is most of its size (the lock screen: 2-7 KB, the largest in Sinhala), so it
is stored compressed, and rebuilt into the envelope the database path would answer, byte
for byte, when a check-in is served from it.

Half of a screen is the same for every phone of a provider and language (the labels, the
notices, the service centres: :data:`SHARED_SCREEN_MEMBERS`), so that half is stored once,
as a zlib *dictionary* under its SHA-256, and each record is compressed against it: a
Sinhala screen with five payment channels and five service centres takes about 0.9 KB
instead of 2.4 KB. A dictionary never changes under its id, so a process keeps the ones it
fetched. Figures: ``bench/checkin.py`` and the README.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import zlib
from collections.abc import Callable

from django.conf import settings
from django.utils import timezone
from rest_framework.renderers import JSONRenderer

from devices.protocol import envelope_of

#: zlib level of a record's command: 6 (zlib's default) is within 1-2 % of level 9's size.
RECORD_COMPRESSION = 6
#: The members of a command's ``screen`` that are the same for every phone of one provider in one
#: language (docs/lock-pipeline.md, "Lock-screen content"); a phone-specific value here only costs size.
SHARED_SCREEN_MEMBERS = (
    "labels",
    "data_kept_notice",
    "factory_reset_warning",
    "offline_unlock_hint",
    "service_centers",
    "fallback",
)
#: A record's dictionary id when its command has no screen to share.
NO_DICTIONARY = "-"
#: Dictionaries a process keeps (a few per provider and language; each a few kilobytes).
DICTIONARY_ENTRIES = 512

# id -> dictionary. Content-addressed: an entry can never be stale, only evicted.
_dictionaries: dict[str, bytes] = {}


def render(data) -> bytes:
    """JSON exactly as the device API's DRF renderer writes it, so both paths answer the same bytes."""
    return JSONRenderer().render(data)


def record_seconds(renew_at: dt.datetime | None, now: dt.datetime | None = None) -> int:
    """How long a record may live: ``CHECKIN_CACHE_SECONDS``, cut to the whole seconds left before ``renew_at``."""
    seconds = settings.CHECKIN_CACHE_SECONDS
    if renew_at is not None:
        left = (renew_at - (now or timezone.now())).total_seconds()
        seconds = min(seconds, math.floor(left))  # rounded down: the record is gone by renew_at
    return seconds


def record_dictionary(body: bytes) -> bytes:
    """The compression dictionary of a command's signed body: its screen's shared members as JSON, or ``b""``."""
    try:
        screen = json.loads(body).get("screen")
    except (ValueError, AttributeError):
        return b""
    if not isinstance(screen, dict):
        return b""
    shared = {name: screen[name] for name in SHARED_SCREEN_MEMBERS if name in screen}
    if not shared:
        return b""
    return json.dumps(shared, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def dictionary_id(dictionary: bytes) -> str:
    """The id a dictionary is stored and named under: the first 128 bits of its SHA-256, in hex."""
    return hashlib.sha256(dictionary).hexdigest()[:32] if dictionary else NO_DICTIONARY


def record_bytes(
    *,
    generation: int,
    digest: str,
    reported_seq: int,
    command_seq: int,
    body: str,
    key_id: str,
    signature: str,
) -> tuple[bytes, bytes]:
    """A device's record, and the dictionary it was compressed against (``b""``: none).

    The record: ``"<generation> <digest> <reported_seq> <command_seq> <dictionary id> "``, then the command.

    The head stays plain text: the check-in script (devices.checkin_cache) reads the generation
    and digest. The command is its signed body with the key id and signature ahead of it (a
    JSON array on one line), compressed against ``dictionary`` (:func:`record_dictionary`); not
    the envelope, whose base64 would hide the body's repetitions from zlib.
    """
    signed = body.encode("utf-8")
    dictionary = record_dictionary(signed)
    compressor = zlib.compressobj(RECORD_COMPRESSION, zdict=dictionary)
    command = compressor.compress(render([key_id, signature]) + b"\n" + signed) + compressor.flush()
    name = dictionary_id(dictionary).encode("ascii")
    return b"%d %s %d %d %s " % (generation, digest.encode(), reported_seq, command_seq, name) + command, dictionary


def record_envelope(command: bytes, dictionary: bytes) -> bytes:
    """The rendered envelope of a record's compressed command, exactly as the database path renders it.

    Built by the same ``envelope_of`` and ``render`` as that path's answer, so both answer the
    same bytes. ``ValueError`` for anything this code did not write.
    """
    try:
        decompressor = zlib.decompressobj(zdict=dictionary)
        raw = decompressor.decompress(command)
        if not decompressor.eof:
            raise ValueError("a truncated command")
        head, _newline, body = raw.partition(b"\n")
        key_id, signature = json.loads(head)
    except (zlib.error, TypeError) as exc:
        raise ValueError("not a check-in record's command") from exc
    return render(envelope_of(body, key_id=key_id, signature=signature))


def dictionary_get(name: str, fetch: Callable[[str], bytes | None]) -> bytes | None:
    """The dictionary named ``name``: kept in this process, else ``fetch(name)`` (from Redis); None if not found.

    A fetched dictionary is kept only if its SHA-256 matches its name, so a damaged one is never used twice.
    """
    if name == NO_DICTIONARY:
        return b""
    found = _dictionaries.get(name)
    if found is None:
        found = fetch(name)
        if found is None or dictionary_id(found) != name:
            return None
        if len(_dictionaries) >= DICTIONARY_ENTRIES:
            _dictionaries.clear()  # rare (a fleet has a few per provider and language): start afresh
        _dictionaries[name] = found
    return found
