"""Audit trail entries for sign-in, sign-out and failed sign-in."""

from __future__ import annotations

from portal.audit import audit_record
from portal.browsers import browser_digest, browser_id
from portal.http import client_ip
from portal.models import User


def on_login(sender, request, user, **kwargs):
    # Which browser (a keyed digest of the sign-in page's cookie, never its value): for the
    # auditor's list of approvals where requester and approver signed in from one browser.
    after = {"browser": browser_digest(browser_id(request))} if request is not None else None
    audit_record(
        actor=user, action="login", obj=user, organisation=user.organisation, after=after, ip_address=client_ip(request)
    )


def on_logout(sender, request, user, **kwargs):
    if user is not None:
        audit_record(
            actor=user, action="logout", obj=user, organisation=user.organisation, ip_address=client_ip(request)
        )


def on_login_failed(sender, credentials, request=None, **kwargs):
    username = str(credentials.get("username", ""))[:150]
    user = User.objects.filter(username=username).select_related("organisation").first()
    audit_record(
        actor=None,
        action="login.failed",
        organisation=user.organisation if user else None,
        object_repr=f"username {username!r}",
        ip_address=client_ip(request),
    )
