"""Which browser a sign-in came from: a long-lived random first-party cookie, for the auditor.

The sign-in page gives every browser a random id (``finlock_browser``: HttpOnly,
SameSite=Lax, Secure outside DEBUG, kept ~400 days, the most browsers allow). It is not a
fingerprint: it says nothing about the device, and clearing cookies (or another browser
profile) gives a new one. The ``login`` audit event records a keyed digest of it, never the
value: an HMAC with a key derived from ``SECRET_KEY``, cut to 16 hex digits — enough to tell
browsers apart, useless to forge a cookie from.

Nothing is ever refused on it (a call centre's agents share computers); the auditor's
"same browser" page (``portal.selectors.same_browser_approvals``) lists approvals where
requester and approver signed in from one browser.
"""

from __future__ import annotations

import re
import secrets

from django.conf import settings
from django.utils.crypto import salted_hmac

BROWSER_COOKIE = "finlock_browser"
BROWSER_COOKIE_MAX_AGE = 400 * 24 * 3600  # Chrome caps a cookie's lifetime at 400 days
_WELL_FORMED = re.compile(r"^[A-Za-z0-9_-]{43}$")  # secrets.token_urlsafe(32)
_ON_REQUEST = "_finlock_browser"


def browser_id(request) -> str:
    """This browser's id: its cookie when well-formed, else a fresh one (set by ``browser_cookie_set``)."""
    value = getattr(request, _ON_REQUEST, None)
    if value is None:
        value = request.COOKIES.get(BROWSER_COOKIE, "")
        if not _WELL_FORMED.match(value):
            value = secrets.token_urlsafe(32)
        setattr(request, _ON_REQUEST, value)
    return value


def browser_digest(value: str) -> str:
    """The keyed digest the audit trail keeps of a browser id (16 hex digits)."""
    return salted_hmac("finlock.portal.browser", value, algorithm="sha256").hexdigest()[:16]


def browser_cookie_set(request, response) -> None:
    """(Re)set the browser cookie on ``response``: ~400 days from this sign-in page."""
    response.set_cookie(
        BROWSER_COOKIE,
        browser_id(request),
        max_age=BROWSER_COOKIE_MAX_AGE,
        httponly=True,
        samesite="Lax",
        secure=not settings.DEBUG,
    )
