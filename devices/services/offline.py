"""Offline codes (OpenPAYGO Token) and offline-code re-keys: four eyes, audited."""

from __future__ import annotations

import secrets

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone
from openpaygo import TokenType, generate_token
from openpaygo.token_shared import OpenPAYGOTokenShared

from devices.models import (
    Device,
    OfflineCode,
    OfflineCodeKind,
)
from devices.services.access import require_two_people
from portal.audit import audit_record
from portal.models import User

MAX_OFFLINE_DAYS = OpenPAYGOTokenShared.MAX_ACTIVATION_VALUE  # 995: the largest value a standard token carries


def offline_code_issue(
    *,
    device: Device,
    kind: str,
    days: int | None = None,
    requested_by: User,
    approved_by: User,
    reason: str,
) -> OfflineCode:
    """Issue an OpenPAYGO Token for a phone that cannot reach the server (four eyes, audited).

    ``requested_by`` (right ``request_unlock``) and ``approved_by`` (right
    ``approve_unlock``) must be two different people, both with the device's provider
    in scope (else 404), and ``reason`` is required. ``kind`` is ``unlock_days``
    (``days`` 1-995) or ``release``.

    The token is a standard 9-digit OpenPAYGO Token (``openpaygo.generate_token``)
    from the device's secret and starting code (sent at enrolment) and the next
    value of the device's counter (``offline_count``, kept under a row lock):

    * ``unlock_days``: ``SET_TIME`` with value = days — the phone is usable for that
      many days from entry (set, not added, so codes never stack up);
    * ``release``: ``DISABLE_PAYG`` (value 998) — the lock is removed for good.

    The phone decodes with ``openpaygo.decode_token(token=, secret_key=,
    count=<last count it accepted>, used_counts=<its list>, starting_code=)``, which
    returns ``(value, token_type, count, used_counts)``: it applies the value only
    for ``TokenType.SET_TIME`` (days) or ``TokenType.DISABLE_PAYG`` (release), then
    stores the returned count and used counts. A code already entered, or older
    than one entered since, decodes as ``ALREADY_USED`` and a wrong one as
    ``INVALID``; both are refused. When the phone is online again its signed
    commands take over.
    """
    reason = (reason or "").strip()
    if not reason:
        raise ValidationError({"reason": ["Say why the code is needed."]})
    token_type, value = _token_type_for(kind, days)
    require_two_people(device, requested_by=requested_by, approved_by=approved_by, what="An offline code")
    with transaction.atomic():
        # Race: two codes issued at once would read the same counter and produce
        # tokens for the same count, of which the phone accepts only one.
        locked = Device.objects.select_for_update().get(pk=device.pk)
        count, token = _mint(locked, token_type=token_type, value=value)
        Device.objects.filter(pk=locked.pk).update(offline_count=count, updated_at=timezone.now())
        code = OfflineCode.objects.create(
            device=locked,
            kind=kind,
            days=days,
            token=token,
            count=count,
            reason=reason[: OfflineCode._meta.get_field("reason").max_length],
            requested_by=requested_by,
            approved_by=approved_by,
        )
        # The token itself stays out of the trail: whoever reads the trail could unlock the phone.
        audit_record(
            actor=approved_by,
            action="device.offline_code",
            obj=locked,
            after={
                "kind": kind,
                "days": days,
                "count": count,
                "reason": code.reason,
                "requested_by": requested_by.get_username(),
                # The requester's id: the auditor's same-browser list (portal.selectors.APPROVAL_ACTIONS).
                "requested_by_id": requested_by.pk,
                "approved_by": approved_by.get_username(),
            },
        )
    device.offline_count = count
    return code


def _token_type_for(kind: str, days: int | None) -> tuple[int, int | None]:
    """The OpenPAYGO token type and value of an offline code of ``kind``; field errors for a bad request."""
    if kind == OfflineCodeKind.UNLOCK_DAYS:
        if not isinstance(days, int) or isinstance(days, bool) or not 1 <= days <= MAX_OFFLINE_DAYS:
            raise ValidationError({"days": [f"A whole number of days from 1 to {MAX_OFFLINE_DAYS}."]})
        return TokenType.SET_TIME, days
    if kind == OfflineCodeKind.RELEASE:
        if days is not None:
            raise ValidationError({"days": ["A release has no number of days."]})
        return TokenType.DISABLE_PAYG, None
    raise ValidationError({"kind": [f"One of {', '.join(OfflineCodeKind.values)}."]})


def _mint(locked: Device, *, token_type: int, value: int | None) -> tuple[int, str]:
    """The next ``(count, token)`` under the locked device's secret; refused if the phone lacks that secret."""
    if not locked.offline_secret:
        raise ValidationError("This device has not enrolled yet, so it has no offline-code secret.")
    if locked.offline_sent_at is None:
        # A re-keyed phone gets its new secret at its next proven enrolment; until then a
        # code under the new secret would not work on it, and the old secret is gone.
        raise ValidationError(
            "This phone has not received its new offline-code key yet (it gets it when it next enrols "
            "with its device key or a re-enrolment code); a code made now would not work on it."
        )
    count, token = generate_token(
        secret_key=locked.offline_secret,
        count=locked.offline_count,
        value=value,
        token_type=token_type,
        starting_code=locked.offline_starting_code,
    )
    return int(count), str(token)


def device_offline_rekey(
    *, device: Device, requested_by: User, approved_by: User, reason: str, ip_address: str | None = None
) -> Device:
    """Give a phone that lost its offline-code secret a new one (four eyes, audited).

    ``requested_by`` (``request_unlock``) and ``approved_by`` (``approve_unlock``) must be
    two people (:func:`portal.four_eyes.four_eyes_check`), both with the device's provider
    in scope. A new OpenPAYGO secret and starting code replace the old ones and the
    counter starts again at 0, so codes made under the old secret no longer work. The
    secret is never shown to anyone: it waits for the phone's next *proven* enrolment
    (signed with its device key, or with a re-enrolment code) and is handed out there once.
    """
    reason = (reason or "").strip()
    if not reason:
        raise ValidationError({"reason": ["Say why the phone needs a new offline-code key."]})
    require_two_people(device, requested_by=requested_by, approved_by=approved_by, what="A new offline-code key")
    with transaction.atomic():
        locked = Device.objects.select_for_update().get(pk=device.pk)
        if locked.enrolled_at is None:
            raise ValidationError(
                "This phone has not enrolled yet: it gets its offline-code key at its first enrolment."
            )
        before = {"offline_count": locked.offline_count, "offline_sent_at": locked.offline_sent_at}
        secret = secrets.token_hex(16)
        locked.offline_secret = secret
        locked.offline_starting_code = OpenPAYGOTokenShared.generate_starting_code(bytes.fromhex(secret))
        locked.offline_count = 0
        locked.offline_sent_at = None
        locked.updated_at = timezone.now()
        locked.save(
            update_fields=["offline_secret", "offline_starting_code", "offline_count", "offline_sent_at", "updated_at"]
        )
        # Neither the secret nor the starting code enters the trail: with them anyone could mint codes.
        audit_record(
            actor=approved_by,
            action="device.offline_rekey",
            obj=locked,
            before=before,
            after={
                "offline_count": 0,
                "offline_sent_at": None,
                "reason": reason[:300],
                "requested_by": requested_by.get_username(),
                "approved_by": approved_by.get_username(),
            },
            ip_address=ip_address,
        )
    return locked
