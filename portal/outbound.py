"""Generic outbound HTTP push helpers shared by every outbox in finlock.

Two outboxes push to a provider's systems: device commands to the provider's device
gateway (``devices.delivery``) and provider events to the provider's webhooks
(``portal.webhooks``). Both sign every POST the Standard Webhooks way
(https://www.standardwebhooks.com), refuse redirects, retry with exponential backoff and
jitter, and tolerate a broker outage. Those pieces live here, in ``portal`` (the bottom
layer), so that ``devices`` and ``portal`` share them without ``portal`` importing an app
built on it.

Signing (Standard Webhooks, version ``v1``): three headers on every POST,

* ``webhook-id``: the message id, the same on every retry of one message (a receiver
  deduplicates on it);
* ``webhook-timestamp``: Unix seconds when this attempt was signed (new on every retry);
* ``webhook-signature``: ``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``, one
  per valid secret, separated by spaces (two while a rotated secret is still honoured).

The secret is ``whsec_<base64>``; the HMAC key is the base64-decoded bytes, never the
string. Because the timestamp is signed, a receiver's verifier (``standardwebhooks``'
``Webhook(secret).verify(body, headers)``, or any other) refuses a captured delivery
replayed more than its tolerance (5 minutes) later, and within it the ``webhook-id`` it
has already seen.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import http.client
import ipaddress
import random
import secrets
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from urllib.parse import urlparse

from django.conf import settings
from django.core.exceptions import ValidationError
from kombu.exceptions import OperationalError as BrokerOperationalError

#: Enqueueing failed because the broker is unreachable (kombu wraps redis and amqp errors in OperationalError).
BROKER_ERRORS = (BrokerOperationalError, ConnectionError, TimeoutError, OSError)


def backoff_seconds(attempts: int, *, rng: random.Random | None = None) -> float:
    """Delay before the next try after ``attempts`` failed rounds (``attempts >= 1``).

    ``min(cap, base * 2**(attempts-1))`` times a random factor in [0.5, 1.5]: 10 s, 20 s,
    40 s ... up to an hour with the defaults (``DELIVERY_BACKOFF_*``). The jitter spreads
    the retries of the thousands of pushes that failed together when an endpoint went
    down, so they do not all hit it again in the same second when it comes back.
    """
    base = settings.DELIVERY_BACKOFF_BASE_SECONDS
    cap = settings.DELIVERY_BACKOFF_CAP_SECONDS
    exponent = min(max(attempts - 1, 0), 32)  # 2**32 * base is past any cap; keeps the number small
    return min(cap, base * 2**exponent) * (rng or random).uniform(0.5, 1.5)


#: A Standard Webhooks secret is this prefix and the base64 (standard alphabet, padded) of the key.
SECRET_PREFIX = "whsec_"
#: Bytes of key in a secret finlock generates (256 bits, the HMAC-SHA256 block's natural size).
SECRET_BYTES = 32
#: The least key a secret typed in by an operator may carry (the specification's lower bound).
MIN_SECRET_BYTES = 24
#: The specification's upper bound for a key.
MAX_SECRET_BYTES = 64


def webhook_secret_generate() -> str:
    """A new ``whsec_<base64 of 32 random bytes>`` secret (shown to its owner once)."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii")


def webhook_secret_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_`` secret: its base64-decoded bytes; ``ValueError`` for anything else.

    Strict: the standard alphabet with padding, nothing ignored, so finlock and every
    receiver derive the very same key from the very same string.
    """
    if not isinstance(secret, str) or not secret.startswith(SECRET_PREFIX):
        raise ValueError(f"a webhook secret starts with {SECRET_PREFIX!r}")
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"a webhook secret is {SECRET_PREFIX!r} followed by standard, padded base64") from exc
    if not key:
        raise ValueError("a webhook secret may not be empty")
    return key


def webhook_secret_fingerprint(secret: str) -> str:
    """``sha256:<16 hex>`` of the key: tells two secrets apart in the audit trail, reveals nothing of either."""
    return "sha256:" + hashlib.sha256(webhook_secret_key(secret)).hexdigest()[:16]


def validate_webhook_secret(value: str) -> None:
    """Django validator: ``whsec_`` and the padded base64 of 24 to 64 bytes (Standard Webhooks)."""
    try:
        key = webhook_secret_key(value)
    except ValueError as exc:
        raise ValidationError(f"Not a Standard Webhooks secret: {exc}.") from None
    if not MIN_SECRET_BYTES <= len(key) <= MAX_SECRET_BYTES:
        raise ValidationError(
            f"The secret must carry {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes of key, not {len(key)}."
        )


def webhook_sign(*, secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """One ``webhook-signature`` entry: ``v1,<base64 HMAC-SHA256 of "{msg_id}.{timestamp}.{body}">``."""
    signed = msg_id.encode("utf-8") + b"." + str(timestamp).encode("ascii") + b"." + body
    digest = hmac.new(webhook_secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def standard_webhook_headers(
    *, signing_secrets: Sequence[str], msg_id: str, body: bytes, timestamp: int | None = None
) -> dict[str, str]:
    """The three Standard Webhooks headers for one POST of ``body``.

    ``signing_secrets``: every secret the receiver may hold (the current one first; a rotated one
    while it is still honoured), one signature each. ``timestamp`` defaults to now: each
    attempt is signed afresh, so a retry hours later still passes the receiver's
    tolerance while a copy of an old attempt does not.
    """
    if not signing_secrets:
        raise ValueError("at least one secret is needed to sign a webhook")
    if " " in msg_id or not msg_id:
        raise ValueError(f"invalid webhook id {msg_id!r}")
    timestamp = int(time.time()) if timestamp is None else int(timestamp)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(
            webhook_sign(secret=secret, msg_id=msg_id, timestamp=timestamp, body=body) for secret in signing_secrets
        ),
    }


class NoRedirects(urllib.request.HTTPRedirectHandler):
    """Treat a 3xx as a failure: only 2xx is success, and following a redirect would
    turn the POST into a GET somewhere else that then "succeeds"."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


#: An opener that never follows redirects; use it for every push to a third party.
opener = urllib.request.build_opener(NoRedirects)


class PushError(Exception):
    """An endpoint refused or could not take a push; the message is shown to staff.

    ``status_code`` is the HTTP status when the endpoint answered, else ``None``.
    """

    def __init__(self, message: str, status_code: int | None = None):
        super().__init__(message)
        self.status_code = status_code


def _snippet(response) -> str:
    try:
        return response.read(300).decode("utf-8", "replace").strip()
    except Exception:  # the body is a courtesy for staff reading the error; never fail on it
        return ""


def check_public_destination(url: str) -> None:
    """Refuse (``PushError``) a URL whose host resolves to a private, loopback or link-local address.

    A provider admin chooses the URL, and finlock's workers sit inside the operator's
    network: without this a webhook could be pointed at the metadata service or an
    internal admin port (server-side request forgery). Skipped with ``DEBUG`` on, where
    endpoints on 127.0.0.1 are the norm. The check resolves the name just before the
    request; a DNS answer that changes in between (rebinding) is not covered here and
    belongs to the egress firewall.
    """
    if settings.DEBUG:
        return
    host = urlparse(url).hostname or ""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError as exc:
        raise PushError(f"cannot resolve {host!r}: {exc}") from exc
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if not address.is_global:
            raise PushError(f"{host!r} resolves to a non-public address ({address}); refused")


def signed_post(
    *,
    url: str,
    body: bytes,
    signing_secrets: Sequence[str],
    msg_id: str,
    headers: dict[str, str],
    timeout: float,
    receiver: str = "endpoint",
    user_agent: str = "finlock-webhooks/1",
) -> int:
    """POST ``body`` signed the Standard Webhooks way (see the module doc); the 2xx status, or ``PushError``.

    The one guarded poster: every outbound HTTP call of finlock goes through it. ``msg_id`` is
    the ``webhook-id``: pass the same one on every retry of a message. Redirects are not
    followed (a 3xx is a failure), and with ``DEBUG`` off only https to a public address is
    allowed (tests that post to a local stand-in turn ``DEBUG`` on). ``receiver`` names the
    other side in error messages ("endpoint", "gateway"). A secret that cannot sign is a
    ``ValueError`` (a configuration problem, not a failed push).
    """
    scheme = urlparse(url).scheme
    if scheme not in ("http", "https") or (scheme == "http" and not settings.DEBUG):
        raise PushError(f"URL must be https{' or http' if settings.DEBUG else ''}, not {url!r}")
    check_public_destination(url)
    request = urllib.request.Request(  # noqa: S310 - scheme checked above
        url,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "User-Agent": user_agent,
            **headers,
            **standard_webhook_headers(signing_secrets=signing_secrets, msg_id=msg_id, body=body),
        },
    )
    try:
        with opener.open(request, timeout=timeout) as response:
            status = int(response.status)
    except urllib.error.HTTPError as exc:
        detail = _snippet(exc)
        raise PushError(f"{receiver} answered HTTP {exc.code}{': ' + detail if detail else ''}", exc.code) from exc
    except urllib.error.URLError as exc:
        raise PushError(f"{receiver} unreachable: {exc.reason}") from exc
    except (http.client.HTTPException, OSError) as exc:  # TimeoutError, ConnectionResetError, bad status line
        raise PushError(f"{receiver} unreachable: {type(exc).__name__}: {exc}") from exc
    if not 200 <= status < 300:
        raise PushError(f"{receiver} answered HTTP {status}", status)
    return status
