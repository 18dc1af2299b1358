"""The server's Ed25519 key that signs device commands, and the public keys phones trust.

Configured by ``DEVICE_SIGNING_KEY`` (current), ``DEVICE_SIGNING_PUBLIC_KEYS`` (announced
or previous keys phones must also trust) and ``DEVICE_SIGNING_RETIRED_KEYS`` (ids the next
statement may drop), read and validated in ``config.settings``. Without configuration (development
only: settings refuse to start with ``DEBUG=0``) a key is generated once into
``<FINLOCK_VAR_DIR>/device-signing-key`` so commands stay verifiable across restarts.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import time
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
from devices.protocol import KIND_KEY_STATEMENT, b64, payload_bytes, payload_of, seal, unb64
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
    """The configured key ids a phone must accept, mapped to base64 public keys: the listed ones and the current one."""
    key_id, private_key = current_signer()
    keys = {kid: b64(raw) for kid, raw in settings.DEVICE_SIGNING_PUBLIC_KEYS.items()}
    keys[key_id] = public_key_b64(private_key)
    return keys


# Answers carry at most this many statements (each about 300 bytes; 32 rotations): a phone that
# missed fewer catches up at once. One further behind is stranded until a staff re-key.
CHAIN_LENGTH = 64
# A process re-reads the published statements this often, so every process serves the newest
# chain soon after any one of them writes it (a statement changes only with a restart).
REFRESH_SECONDS = 60.0


def key_statements() -> list[dict[str, Any]]:
    """The envelopes of the newest key statements (at most ``CHAIN_LENGTH``), oldest first.

    Enrolment and check-in answers carry them as ``key_statements``. A phone applies them in
    order: one it already holds is ``stale``, a newer one replaces its trusted set if a key it
    trusts signed it, so a phone that missed statements catches up through the chain. A new
    statement is written only as :func:`statement_problems` allows (docs/lock-pipeline.md,
    "Keys"); otherwise the newest is served unchanged and the difference logged.
    """
    now = time.monotonic()
    cached = _published.get("chain")
    if cached is None or now - cached[0] >= REFRESH_SECONDS:
        cached = (now, [statement.envelope for statement in _publish()])
        _published["chain"] = cached
    return list(cached[1])


class UntrustedSigner(ValueError):
    """The configured signing key is not in the newest published statement: phones would refuse its commands."""


def published_keys() -> dict[str, str]:
    """The keys of the newest published statement (what up-to-date phones trust)."""
    chain = key_statements()
    return dict(payload_of(chain[-1])["keys"]) if chain else {}


def trusted_signer() -> tuple[str, Ed25519PrivateKey]:
    """The signer of new commands, refused (``UntrustedSigner``) when phones would not trust it.

    A worker still running an older configuration (a key retired since) would otherwise sign
    commands every phone refuses as ``unknown_key``: a paid phone would stay locked. It fails
    loudly instead, in every process type, until it is restarted with the current configuration.
    """
    key_id, private_key = current_signer()
    published = published_keys()
    if published and published.get(key_id) != public_key_b64(private_key):
        message = (
            f"the signing key {key_id} is not in the published key statement ({', '.join(sorted(published))}); "
            "restart this process with the current DEVICE_SIGNING_KEY"
        )
        log.error("Refusing to sign device commands: %s", message)
        raise UntrustedSigner(message)
    return key_id, private_key


def statement_problems(
    published: list[dict[str, str]], configured: dict[str, str], signer: str, retired: frozenset[str]
) -> list[str]:
    """Why the configured set may not become the next statement after ``published`` (oldest first).

    Empty when it may (or when it is the newest statement already). A new statement only adds
    keys no statement ever listed and only drops keys the operator names as retired, and is
    signed by a key the newest statement lists. So a process still running an older
    configuration can neither take back an announced key (stranding the phones that learnt
    it), nor bring back a retired one, nor sign with a key phones do not trust yet.
    """
    if not published:
        return []
    newest = published[-1]
    ever_listed = {key_id for keys in published for key_id in keys}
    problems = [
        f"{k} was dropped by an earlier statement"
        for k in sorted(configured.keys() - newest.keys())
        if k in ever_listed
    ]
    problems += [
        f"{k} is not configured but not retired (DEVICE_SIGNING_RETIRED_KEYS)"
        for k in sorted(newest.keys() - configured.keys())
        if k not in retired
    ]
    problems += [
        f"{k} has another public key" for k in sorted(newest.keys() & configured.keys()) if newest[k] != configured[k]
    ]
    if configured != newest and signer not in newest:
        problems.append(f"the signing key {signer} is not listed, so phones would refuse a statement it signs")
    return problems


def _publish() -> list[KeyStatement]:
    """The newest statements, oldest first, after writing the configured set if the rules allow it."""
    key_id, private_key = current_signer()
    configured = public_keys()
    retired = frozenset(settings.DEVICE_SIGNING_RETIRED_KEYS)
    for _attempt in range(3):
        statements = list(KeyStatement.objects.order_by("seq"))
        published = [statement.keys for statement in statements]
        problems = statement_problems(published, configured, key_id, retired)
        if problems:
            _log_once(statements[-1].seq, problems)
        elif not published or published[-1] != configured:
            latest = statements[-1] if statements else None
            written = _write(latest, configured, key_id=key_id, private_key=private_key)
            if written is None:
                continue  # another process wrote this seq first: decide again against its statement
            statements.append(written)
        return statements[-CHAIN_LENGTH:]
    raise RuntimeError("key statements are being written concurrently; try again")


def _write(
    latest: KeyStatement | None, keys: dict[str, str], *, key_id: str, private_key: Ed25519PrivateKey
) -> KeyStatement | None:
    seq = (latest.seq if latest else 0) + 1
    body = payload_bytes(
        {
            "kind": KIND_KEY_STATEMENT,
            "seq": seq,
            "issued_at": timezone.now().strftime("%Y-%m-%dT%H:%M:%SZ"),
            "keys": keys,
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
                after={"keys": sorted(keys), "seq": seq, "signed_by": key_id},
            )
    except IntegrityError:
        # Race: two processes both write seq n+1; the unique seq lets one win, and the other
        # decides again against the winner's statement (serving it, or logging the difference).
        return None
    log.warning("Key statement %s: phones now trust %s", seq, ", ".join(sorted(keys)))
    return statement


def _log_once(seq: int, problems: list[str]) -> None:
    message = (
        f"configured keys differ from the published statement {seq}: {'; '.join(problems)}; "
        "restart every process with the current configuration"
    )
    if message not in _logged:
        _logged.add(message)
        log.error("%s", message)


# {"chain": (monotonic time read, envelopes)}; and the differences this process has logged.
_published: dict[str, tuple[float, list[dict[str, Any]]]] = {}
_logged: set[str] = set()


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
    if setting.startswith("DEVICE_SIGNING"):
        current_signer.cache_clear()
        _published.clear()
        _logged.clear()
