"""Who may act on a device: its provider in scope, and two people for what needs four eyes."""

from __future__ import annotations

from django.core.exceptions import PermissionDenied
from django.http import Http404

from devices.models import (
    Device,
)
from portal.four_eyes import four_eyes_check
from portal.models import User
from portal.permissions import Right, has_right, visible_provider_ids


def require_in_scope(user: User, device: Device) -> None:
    visible = visible_provider_ids(user)
    if visible is not None and device.provider_id not in visible:
        raise Http404("No such device.")


def require_two_people(device: Device, *, requested_by: User, approved_by: User, what: str) -> None:
    """Both in scope of ``device``, each with their right, and two people (four eyes) — or refuse."""
    require_in_scope(requested_by, device)
    require_in_scope(approved_by, device)
    if not has_right(requested_by, Right.REQUEST_UNLOCK):
        raise PermissionDenied("The requester's role does not allow requesting this.")
    if not has_right(approved_by, Right.APPROVE_UNLOCK):
        raise PermissionDenied("The approver's role does not allow approving this.")
    if requested_by.pk == approved_by.pk:
        raise PermissionDenied(f"{what} needs a second person to approve it.")
    four_eyes_check(requester=requested_by, approver=approved_by)
