"""The server's Ed25519 key that signs device commands, and the public keys phones trust.

Configured by ``DEVICE_SIGNING_KEY`` (current) and ``DEVICE_SIGNING_PUBLIC_KEYS``
(retired), read and validated in ``config.settings``. Without configuration (development
only: settings refuse to start with ``DEBUG=0``) a key is generated once into
``<FINLOCK_VAR_DIR>/device-signing-key`` so commands stay verifiable across restarts.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.db import IntegrityError, transaction
from django.dispatch import receiver
from django.utils import timezone

from devices.models import KeyStatement
from devices.protocol import KIND_KEY_STATEMENT, b64, payload_bytes, seal, unb64
from portal.audit import audit_record

log = logging.getLogger(__name__)


def public_key_b64(private_key: Ed25519PrivateKey) -> str:
    """The base64 of a key's 32-byte raw public half, as announced to phones."""
    return b64(private_key.public_key().public_bytes_raw())


@functools.cache
def current_signer() -> tuple[str, Ed25519PrivateKey]:
    """``(key_id, private key)`` that signs new commands (read once per process)."""
    configured = settings.DEVICE_SIGNING_KEY
    if configured:
        key_id, seed = configured
    else:
        key_id, seed = _development_key(Path(settings.DEVICE_SIGNING_KEY_FILE))
    return key_id, Ed25519PrivateKey.from_private_bytes(seed)


def public_keys() -> dict[str, str]:
    """Every key id a phone must accept, mapped to its base64 public key: retired ones and the current one."""
    key_id, private_key = current_signer()
    keys = {kid: b64(raw) for kid, raw in settings.DEVICE_SIGNING_PUBLIC_KEYS.items()}
    keys[key_id] = public_key_b64(private_key)
    return keys


def key_statement() -> dict[str, Any]:
    """The envelope of the newest key statement, writing a new one if the configured keys changed.

    Check-in and enrolment answers carry it. A phone replaces its trusted key set only by a
    statement with a higher ``seq`` signed by a key it already trusts, so the configured set
    changes as docs/lock-pipeline.md "Rotating the signing key" says: announce the new key
    (signed by the old), then sign with it, then retire the old one (signed by the new).
    """
    return _statement_for(tuple(sorted(public_keys().items()))).envelope


@functools.cache
def _statement_for(keys: tuple[tuple[str, str], ...]) -> KeyStatement:
    wanted = dict(keys)
    latest = KeyStatement.objects.order_by("-seq").first()
    if latest is not None and latest.keys == wanted:
        return latest
    key_id, private_key = current_signer()
    seq = (latest.seq if latest else 0) + 1
    body = payload_bytes(
        {
            "kind": KIND_KEY_STATEMENT,
            "seq": seq,
            "issued_at": timezone.now().strftime("%Y-%m-%dT%H:%M:%SZ"),
            "keys": wanted,
        }
    )
    envelope = seal(body, key_id=key_id, private_key=private_key)
    try:
        with transaction.atomic():
            statement = KeyStatement.objects.create(
                seq=seq, body=body.decode("utf-8"), key_id=key_id, signature=envelope["signature"]
            )
            audit_record(
                actor="server configuration",
                action="device.key_statement",
                obj=statement,
                before={"keys": sorted(latest.keys) if latest else []},
                after={"keys": sorted(wanted), "seq": seq, "signed_by": key_id},
            )
    except IntegrityError:
        # Race: two processes noticing the new key set at once both write seq n+1; the
        # unique seq lets one win, and the other serves the winner's statement.
        statement = KeyStatement.objects.get(seq=seq)
    log.warning("Key statement %s: phones now trust %s", statement.seq, ", ".join(sorted(wanted)))
    return statement


def _development_key(path: Path) -> tuple[str, bytes]:
    """Read the development key, generating it on first use (file mode 0600)."""
    if not path.exists():
        seed = os.urandom(32)
        public = Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()
        # The id names the key, so a regenerated development key never reuses an old id.
        key_id = "dev-" + hashlib.sha256(public).hexdigest()[:8]
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(f"{key_id}:{b64(seed)}\n")
        try:
            # Two processes starting at once (gunicorn workers) may both generate a key:
            # link() refuses to replace an existing file, so exactly one key wins and
            # every process reads that one.
            os.link(tmp, path)
            log.warning("Generated a development device signing key %s in %s", key_id, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
    key_id, _sep, encoded = path.read_text().strip().partition(":")
    try:
        seed = unb64(encoded)
    except ValueError:
        seed = b""
    if not key_id or len(seed) != 32:
        raise ImproperlyConfigured(
            f"{path} is not a device signing key (<key_id>:<base64 seed>); delete it to generate a new one"
        )
    return key_id, seed


@receiver(setting_changed)
def _forget_cached_key(*, setting, **kwargs):
    # Tests switch keys with override_settings; the cached signer must follow.
    if setting in {"DEVICE_SIGNING_KEY", "DEVICE_SIGNING_KEY_FILE", "DEVICE_SIGNING_PUBLIC_KEYS"}:
        current_signer.cache_clear()
        _statement_for.cache_clear()
