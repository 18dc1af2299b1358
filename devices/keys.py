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

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.dispatch import receiver

from devices.protocol import b64, unb64

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
    if setting in {"DEVICE_SIGNING_KEY", "DEVICE_SIGNING_KEY_FILE"}:
        current_signer.cache_clear()
