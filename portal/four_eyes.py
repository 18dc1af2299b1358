"""Four eyes: an approval counts only when two *people* took part, not two accounts of one person.

Whoever sets up an account — creates it, sends it a set-password link or sets its
password, re-activates it, or gives it another role — could be holding it: the
set-password link passes through their hands, and a promotion or re-activation is
exactly what someone assembling a second account for themselves would do. So, within
the look-back period (``FOUR_EYES_LOOKBACK_DAYS``), every account stands for itself
*and* for everyone who set it up, directly or through a chain (admin → second admin →
agent). A requester and an approver are refused when those sets meet:

* the approver set up the requester (or set up someone who did, …);
* the requester set up the approver, directly or through a chain;
* one person set up both of them (they could hold both set-password links).

A shared address or browser is **not** a reason to refuse — a call centre's agents
share both — it is listed for the auditor instead (``portal.selectors``).

The links are read from the audit trail, so they are exactly what an auditor can see.
Used by every approval in finlock: unlock requests, offline codes, confirmation of
provisional payments and re-keying a phone.
"""

from __future__ import annotations

import datetime as dt
from collections import deque
from dataclasses import dataclass

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.utils import timezone

from portal.models import AuditEvent, User

#: Audit actions by which one account (the event's actor) sets up another (the event's object):
#: the portal's staff pages and the Django admin alike.
SETUP_ACTIONS: dict[str, str] = {
    "staff.create": "created",
    "staff.password_link": "sent a set-password link to",
    "staff.password_set": "chose the password (with the link) of",
    "staff.activate": "re-activated",
    "staff.role_change": "changed the role of",
    "user.create": "created (Django admin)",
    "user.update": "changed (Django admin)",
    "user.password_change": "set the password of (Django admin)",
}


@dataclass(frozen=True)
class SetUp:
    """One link: ``by`` set up ``user`` at ``at`` (an audit event)."""

    by_id: int
    user_id: int
    action: str
    at: dt.datetime


def lookback() -> dt.timedelta:
    return dt.timedelta(days=settings.FOUR_EYES_LOOKBACK_DAYS)


def _links(now: dt.datetime) -> dict[int, list[SetUp]]:
    """Who set up whom within the look-back: user id → the links that set that user up.

    One query over the (small) set of staff-management events of the period.
    """
    rows = (
        AuditEvent.objects.filter(
            action__in=SETUP_ACTIONS,
            object_type=User._meta.label,
            actor_id__isnull=False,
            created_at__gte=now - lookback(),
            created_at__lte=now,
        )
        .values_list("actor_id", "object_id", "action", "created_at")
        .order_by("id")
    )
    parents: dict[int, list[SetUp]] = {}
    for by_id, object_id, action, at in rows:
        try:
            user_id = int(object_id)
        except ValueError:
            continue
        if user_id != by_id:
            parents.setdefault(user_id, []).append(SetUp(by_id, user_id, action, at))
    return parents


def _setters(user_id: int, parents: dict[int, list[SetUp]]) -> dict[int, list[SetUp]]:
    """Every account that set ``user_id`` up, directly or through a chain, with the chain (nearest link last)."""
    chains: dict[int, list[SetUp]] = {user_id: []}
    queue = deque([user_id])
    while queue:
        current = queue.popleft()
        for link in parents.get(current, []):
            if link.by_id not in chains:
                chains[link.by_id] = [link, *chains[current]]
                queue.append(link.by_id)
    return chains


def _name(user_id: int, names: dict[int, str], you: int) -> str:
    return "you" if user_id == you else names.get(user_id, f"user #{user_id}")


def _chain_words(chain: list[SetUp], names: dict[int, str], you: int, zone) -> str:
    parts = []
    for link in chain:
        when = timezone.localtime(link.at, zone)
        parts.append(
            f"{_name(link.by_id, names, you)} {SETUP_ACTIONS[link.action]} "
            f"{_name(link.user_id, names, you)} on {when:%d %b %Y %H:%M} {when.tzname()}"
        )
    return "; ".join(parts)


def four_eyes_refusal(*, requester, approver, now: dt.datetime | None = None) -> str | None:
    """Why ``approver`` may not decide what ``requester`` asked for, in words for the approver; None if they may.

    ``requester`` may be a non-user (an API key, the system): then only the approver's own
    account matters and nothing is refused here.
    """
    if not isinstance(approver, User):
        return "Only a signed-in person can approve."
    if not isinstance(requester, User):
        return None
    if requester.pk == approver.pk:
        return "You asked for this yourself, so another colleague must decide it (four eyes)."
    now = now or timezone.now()
    parents = _links(now)
    of_requester = _setters(requester.pk, parents)
    of_approver = _setters(approver.pk, parents)
    shared = set(of_requester) & set(of_approver)
    if not shared:
        return None
    ids = set(of_requester) | set(of_approver)
    names = dict(User.objects.filter(pk__in=ids).values_list("pk", "username"))
    zone = approver.organisation.zone if approver.organisation_id else dt.UTC
    days = settings.FOUR_EYES_LOOKBACK_DAYS
    tail = (
        f"so the two of you may be one person: a colleague set up independently of you both must decide this "
        f"(four eyes; account changes of the last {days} days count)."
    )
    if approver.pk in of_requester:
        how = _chain_words(of_requester[approver.pk], names, approver.pk, zone)
        return f"You set up the account of {names.get(requester.pk)} ({how}), {tail}"
    if requester.pk in of_approver:
        how = _chain_words(of_approver[requester.pk], names, approver.pk, zone)
        return f"{names.get(requester.pk)}, who asked for this, set up your account ({how}), {tail}"
    # Nearest common setter: the one with the shortest chains.
    common = min(shared, key=lambda pk: (len(of_requester[pk]) + len(of_approver[pk]), pk))
    how_r = _chain_words(of_requester[common], names, approver.pk, zone)
    how_a = _chain_words(of_approver[common], names, approver.pk, zone)
    return (
        f"{names.get(common)} set up both your account ({how_a}) and that of {names.get(requester.pk)}, "
        f"who asked for this ({how_r}), {tail}"
    )


def four_eyes_check(*, requester, approver, now: dt.datetime | None = None) -> None:
    """Raise ``PermissionDenied`` with the reason when ``approver`` may not decide ``requester``'s request."""
    reason = four_eyes_refusal(requester=requester, approver=approver, now=now)
    if reason:
        raise PermissionDenied(reason)
