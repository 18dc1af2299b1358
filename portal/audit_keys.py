"""The secret keys that make the audit trail's hashes and checkpoints unforgeable by the database.

``AUDIT_HMAC_KEY`` (``<key_id>:<base64 32 bytes>``, read and validated in ``config.settings``)
keys every new event's hash (HMAC-SHA256), the signature of the chain head row and the
signature of every checkpoint written outside the database. Keys of earlier rotations stay
in ``AUDIT_HMAC_RETIRED_KEYS`` so the events they keyed still verify. The keys live only in
the environment of finlock's own processes, never in the database, so a database role
(even the tables' owner) can edit a row but cannot recompute a hash that verifies.

Without configuration (development only: settings refuse to start with ``DEBUG=0``) a key
is generated once into ``<FINLOCK_VAR_DIR>/audit-hmac-key``; deleting that file makes the
development trail unverifiable.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import json
import logging
import os
import secrets
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.dispatch import receiver

log = logging.getLogger(__name__)


class UnknownAuditKey(LookupError):
    """A hash or signature names a key id this process does not hold."""

    def __init__(self, key_id: str):
        super().__init__(key_id)
        self.key_id = key_id


@functools.cache
def signing_key() -> tuple[str, bytes]:
    """``(key_id, key)`` that keys new events, the head and checkpoints (read once per process)."""
    configured = settings.AUDIT_HMAC_KEY
    if configured:
        return configured
    return _development_key(Path(settings.AUDIT_HMAC_KEY_FILE))


@functools.cache
def verification_keys() -> dict[str, bytes]:
    """Every key id whose hashes and signatures verify: the retired ones and the current one."""
    keys = dict(settings.AUDIT_HMAC_RETIRED_KEYS)
    key_id, key = signing_key()
    keys[key_id] = key
    return keys


def mac(key_id: str, message: bytes) -> str:
    """The hex HMAC-SHA256 of ``message`` under the key ``key_id`` (``UnknownAuditKey`` if not held)."""
    key = verification_keys().get(key_id)
    if key is None:
        raise UnknownAuditKey(key_id)
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def mac_matches(key_id: str, message: bytes, expected: str) -> bool:
    """Whether ``expected`` is the HMAC of ``message`` under ``key_id``, compared in constant time."""
    return hmac.compare_digest(mac(key_id, message), expected or "")


def head_message(
    *, last_event_id: int | None, last_hash: str, legacy_until: int, unverified_since: int | None, key_id: str
) -> bytes:
    """The bytes the chain head's ``mac`` signs (a domain prefix keeps them apart from event hashes)."""
    content = {
        "last_event_id": last_event_id,
        "last_hash": last_hash,
        "legacy_until": legacy_until,
        "unverified_since": unverified_since,
        "key_id": key_id,
    }
    return b"finlock-audit-head/v1\n" + json.dumps(content, sort_keys=True, separators=(",", ":")).encode()


def checkpoint_message(*, event_id: int, hash: str, at: str, key_id: str) -> bytes:
    """The bytes a checkpoint's ``mac`` signs."""
    content = {"event_id": event_id, "hash": hash, "at": at, "key_id": key_id}
    return b"finlock-audit-checkpoint/v1\n" + json.dumps(content, sort_keys=True, separators=(",", ":")).encode()


def generate_key_line(key_id: str) -> str:
    """A fresh ``<key_id>:<base64 32 bytes>`` value for ``AUDIT_HMAC_KEY``."""
    return f"{key_id}:{base64.b64encode(secrets.token_bytes(32)).decode()}"


def _development_key(path: Path) -> tuple[str, bytes]:
    """Read the development key, generating it on first use (file mode 0600)."""
    if not path.exists():
        # A random id (not derived from the key) so the id reveals nothing of the key, and a
        # regenerated development key never reuses an old id.
        line = generate_key_line("dev-" + secrets.token_hex(4))
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(line + "\n")
        try:
            # Two processes starting at once (gunicorn workers, test workers) may both
            # generate a key: link() refuses to replace an existing file, so exactly one
            # key wins and every process reads that one.
            os.link(tmp, path)
            log.warning("Generated a development audit key %s in %s", line.partition(":")[0], path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
    key_id, _sep, encoded = path.read_text().strip().partition(":")
    try:
        key = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if not key_id or len(key) != 32:
        raise ImproperlyConfigured(
            f"{path} is not an audit key (<key_id>:<base64 32 bytes>); the development trail it keyed "
            "cannot be verified without it"
        )
    return key_id, key


@receiver(setting_changed)
def _forget_cached_keys(*, setting, **kwargs):
    # Tests switch keys with override_settings; the cached keys must follow.
    if setting in {"AUDIT_HMAC_KEY", "AUDIT_HMAC_RETIRED_KEYS", "AUDIT_HMAC_KEY_FILE"}:
        signing_key.cache_clear()
        verification_keys.cache_clear()
