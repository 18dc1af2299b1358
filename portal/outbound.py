"""Generic outbound HTTP push helpers shared by every outbox in finlock.

Two outboxes push to a provider's systems: device commands to the provider's device
gateway (``devices.delivery``) and provider events to the provider's webhooks
(``portal.webhooks``). Both sign the body with HMAC-SHA256, refuse redirects, retry
with exponential backoff and jitter, and tolerate a broker outage. Those pieces live
here, in ``portal`` (the bottom layer), so that ``devices`` and ``portal`` share them
without ``portal`` importing an app built on it.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import ipaddress
import random
import socket
import urllib.error
import urllib.request
from urllib.parse import urlparse

from django.conf import settings
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


def webhook_signature(secret: str, body: bytes) -> str:
    """The ``X-Finlock-Signature`` header value for ``body``: ``sha256=<hex HMAC-SHA256>``."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


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


def signed_post(*, url: str, body: bytes, secret: str, headers: dict[str, str], timeout: float) -> int:
    """POST ``body`` signed with ``secret`` (``X-Finlock-Signature``); the 2xx status, or ``PushError``.

    Redirects are not followed (a 3xx is a failure), and with ``DEBUG`` off only https
    to a public address is allowed.
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
            "User-Agent": "finlock-webhooks/1",
            **headers,
            "X-Finlock-Signature": webhook_signature(secret, body),
        },
    )
    try:
        with opener.open(request, timeout=timeout) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        detail = _snippet(exc)
        raise PushError(f"endpoint answered HTTP {exc.code}{': ' + detail if detail else ''}", exc.code) from exc
    except urllib.error.URLError as exc:
        raise PushError(f"endpoint unreachable: {exc.reason}") from exc
    except (http.client.HTTPException, OSError) as exc:  # TimeoutError, ConnectionResetError, bad status line
        raise PushError(f"endpoint unreachable: {type(exc).__name__}: {exc}") from exc
    if not 200 <= status < 300:
        raise PushError(f"endpoint answered HTTP {status}", status)
    return status
