"""Unlock requests: a person asks, another person of the provider approves (four eyes) or rejects.

An approval applies the unlock in the same transaction: a temporary unlock, a release for
good, an offline code, or a new offline-code key. A request waits while it is pending; of two
approvers clicking at once exactly one gets through.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.utils import timezone

from devices.models import Device, LockState, OfflineCode, OfflineCodeKind
from devices.services.offline import MAX_OFFLINE_DAYS, device_offline_rekey, offline_code_issue
from payments.locks.selectors import temp_unlock_hours_checked
from payments.locks.services import contract_release, contract_temp_unlock, device_release
from payments.models import Contract, ContractStatus, LockOverride
from portal.audit import audit_record, snapshot
from portal.four_eyes import four_eyes_check
from portal.models import User
from portal.permissions import Right, require
from portal.templatetags.finlock import local
from support.models import (
    Case,
    CaseEvent,
    CaseEventKind,
    UnlockKind,
    UnlockRequest,
    UnlockStatus,
)
from support.services.common import device_latest_contract, require_provider_in_scope, required_text, username_of

LIVE_CONTRACT_STATUSES = (ContractStatus.ACTIVE, ContractStatus.DEFAULTED)


class UnlockAlreadyDecided(ValidationError):
    """Someone else approved or rejected the request first; nothing more to do."""


@dataclass(frozen=True)
class ApprovalResult:
    """What approving did. ``offline_token`` is the code to read out, shown once and never stored here."""

    unlock_request: UnlockRequest
    offline_token: str | None = None


def _check_temporary(device: Device, contract: Contract | None, hours: object) -> tuple[Contract, int]:
    """The contract and hours of a temporary unlock, once they pass the provider's policy; else ``ValidationError``."""
    hours = temp_unlock_hours_checked(device.provider, hours)
    if contract is None or contract.status not in LIVE_CONTRACT_STATUSES:
        raise ValidationError(
            {"kind": ["A temporary unlock needs an active contract on this phone; ask for a release instead."]}
        )
    if contract.lock_state == LockState.RELEASED:
        raise ValidationError({"kind": ["This phone is already released for good."]})
    return contract, hours


# --- asking -----------------------------------------------------------------------------------


def _check_offline_code(device: Device, offline_kind: str, days: int | None) -> int | None:
    """The days of an offline code the phone can take (``None`` for a release code); else ``ValidationError``."""
    if offline_kind == OfflineCodeKind.UNLOCK_DAYS:
        if not isinstance(days, int) or isinstance(days, bool) or not 1 <= days <= MAX_OFFLINE_DAYS:
            raise ValidationError({"days": [f"A whole number of days from 1 to {MAX_OFFLINE_DAYS}."]})
    elif offline_kind == OfflineCodeKind.RELEASE:
        days = None
    else:
        raise ValidationError({"offline_kind": ["Choose a code for a number of days or a release code."]})
    if not device.offline_secret:
        raise ValidationError({"kind": ["This phone has not enrolled yet, so it cannot take an offline code."]})
    if device.offline_sent_at is None:
        raise ValidationError(
            {
                "kind": [
                    "This phone has not received its new offline-code key yet (it gets it when it next enrols "
                    "with its device key or a re-enrolment code), so a code would not work on it."
                ]
            }
        )
    return days


def _checked_kind(
    device: Device, contract: Contract | None, *, kind: str, hours: int | None, offline_kind: str, days: int | None
) -> tuple[int | None, str, int | None]:
    """The (hours, offline kind, days) a request of ``kind`` keeps, once checked; the others are cleared."""
    if kind == UnlockKind.TEMPORARY:
        _check_temporary(device, contract, hours)
        return hours, "", None
    if kind == UnlockKind.RELEASE:
        if (contract.lock_state if contract else device.desired_state) == LockState.RELEASED:
            raise ValidationError({"kind": ["This phone is already released for good."]})
        return None, "", None
    if kind == UnlockKind.OFFLINE_CODE:
        return None, offline_kind, _check_offline_code(device, offline_kind, days)
    if kind == UnlockKind.REKEY:
        if device.enrolled_at is None:
            raise ValidationError({"kind": ["This phone has not enrolled yet: it gets a key at its first enrolment."]})
        return None, "", None
    raise ValidationError({"kind": [f"One of {', '.join(UnlockKind.values)}."]})


def _check_case(case: Case | None, device: Device) -> None:
    """A linked case must be of the phone's provider and about this very phone (the approver reads it as the why)."""
    if case is None:
        return
    if case.provider_id != device.provider_id:
        raise ValidationError({"case": ["Not a case of this phone's provider."]})
    case_device_id = case.device_id or (case.contract.device_id if case.contract is not None else None)
    if case_device_id and case_device_id != device.pk:
        # The approver reads the case as the justification: it must be about this very phone.
        raise ValidationError({"case": ["This case is about another phone."]})


def unlock_request_create(
    *,
    device: Device,
    kind: str,
    requested_by: User,
    reason: str,
    hours: int | None = None,
    offline_kind: str = "",
    days: int | None = None,
    case: Case | None = None,
    ip_address: str | None = None,
) -> UnlockRequest:
    """Ask for a temporary unlock (``hours``), a permanent release, an offline code (``offline_kind``, ``days``),
    or a new offline-code key (``rekey``) for a phone that lost its own.

    The request waits for another person of the provider to approve it. Checked now as
    far as it can be (the approval checks again, as things may change meanwhile).
    """
    require_provider_in_scope(requested_by, device.provider_id)
    require(requested_by, Right.REQUEST_UNLOCK)
    reason = required_text(reason, "reason", "Say why the phone should be unlocked.", limit=300)
    contract = device_latest_contract(device)
    hours, offline_kind, days = _checked_kind(
        device, contract, kind=kind, hours=hours, offline_kind=offline_kind, days=days
    )
    _check_case(case, device)
    with transaction.atomic():
        unlock = UnlockRequest.objects.create(
            provider_id=device.provider_id,
            device=device,
            contract=contract,
            case=case,
            kind=kind,
            hours=hours,
            offline_kind=offline_kind,
            days=days,
            reason=reason,
            requested_by=requested_by,
            requester_organisation_id=requested_by.organisation_id,
        )
        if case is not None:
            CaseEvent.objects.create(
                case=case,
                kind=CaseEventKind.UNLOCK_REQUESTED,
                actor=requested_by,
                text=f"{unlock.kind_label} requested: {reason}",
                data={"unlock_request": unlock.pk},
            )
        audit_record(
            actor=requested_by,
            action="unlock_request.create",
            obj=unlock,
            after=snapshot(unlock),
            ip_address=ip_address,
        )
    return unlock


# --- deciding ---------------------------------------------------------------------------------


def _check_approver(unlock: UnlockRequest, approver: User) -> None:
    require_provider_in_scope(approver, unlock.provider_id)
    require(approver, Right.APPROVE_UNLOCK)
    if approver.organisation_id != unlock.provider_id:
        raise PermissionDenied("Only the provider's own staff decide on its unlock requests.")
    if approver.pk == unlock.requested_by_id:
        raise PermissionDenied(
            "You asked for this unlock, so someone else of the provider must approve or reject it (four eyes)."
        )


def _claim(unlock: UnlockRequest, approver: User, status: str, note: str, now: dt.datetime) -> None:
    """Move the request out of pending, or tell the caller who did first."""
    # Race: two approvers clicking at once. The conditional UPDATE lets exactly one
    # through (the second blocks on the row until the first commits, then matches nothing).
    done = UnlockRequest.objects.filter(pk=unlock.pk, status=UnlockStatus.PENDING).update(
        status=status, decided_by=approver, decided_at=now, decision_note=note
    )
    if not done:
        current = UnlockRequest.objects.select_related("decided_by").get(pk=unlock.pk)
        raise UnlockAlreadyDecided(
            f"Already {current.get_status_display().lower()} by {username_of(current.decided_by)}; nothing more to do."
        )


@dataclass(frozen=True)
class _Applied:
    """What an approved request did: the sentence the requester reads, and the override or code it made."""

    outcome: str
    override: LockOverride | None = None
    code: OfflineCode | None = None


def _apply_temporary(unlock: UnlockRequest, *, approver: User, why: str, now: dt.datetime) -> _Applied:
    device = unlock.device
    if unlock.contract is not None:
        unlock.contract.refresh_from_db()
    contract, hours = _check_temporary(device, unlock.contract, unlock.hours)
    ends_at = now + dt.timedelta(hours=hours)
    override = contract_temp_unlock(contract=contract, actor=approver, hours=hours, reason=why, now=now)
    # The approver reads the end in the provider's zone, as every page shows a time.
    until = local(ends_at, device.provider)
    if contract.lock_state == LockState.TEMP_UNLOCKED:
        outcome = f"Temporarily unlocked until {until}; then the lock policy applies again."
    else:
        outcome = (
            f"Override in place until {until}; the contract does not lock the phone now "
            f"({contract.get_lock_state_display().lower()}), so no command was needed."
        )
    return _Applied(outcome, override=override)


def _apply_release(unlock: UnlockRequest, *, approver: User, why: str, now: dt.datetime) -> _Applied:
    if unlock.contract is not None:
        contract_release(contract=unlock.contract, actor=approver, reason=why, now=now)
    else:
        device_release(device=unlock.device, actor=approver, reason=why)
    return _Applied("Released for good: no command can lock this phone again for this contract.")


def _apply_rekey(unlock: UnlockRequest, *, approver: User, why: str, ip_address: str | None) -> _Applied:
    device_offline_rekey(
        device=unlock.device,
        requested_by=unlock.requested_by,
        approved_by=approver,
        reason=why,
        ip_address=ip_address,
    )
    return _Applied(
        "New offline-code key made: the phone receives it when it next enrols with its device key or a "
        "re-enrolment code; codes made with the old key no longer work."
    )


def _apply_offline_code(unlock: UnlockRequest, *, approver: User, why: str) -> _Applied:
    code = offline_code_issue(
        device=unlock.device,
        kind=unlock.offline_kind,
        days=unlock.days,
        requested_by=unlock.requested_by,
        approved_by=approver,
        reason=why,
    )
    return _Applied(f"{unlock.kind_label} issued (counter {code.count}); it was shown once to the approver.", code=code)


def _apply(unlock: UnlockRequest, *, approver: User, now: dt.datetime, ip_address: str | None) -> _Applied:
    """Do what the approved request asks for, in the caller's transaction."""
    why = f"Unlock request #{unlock.pk} by {unlock.requested_by.get_username()}: {unlock.reason}"[:300]
    if unlock.kind == UnlockKind.TEMPORARY:
        return _apply_temporary(unlock, approver=approver, why=why, now=now)
    if unlock.kind == UnlockKind.RELEASE:
        return _apply_release(unlock, approver=approver, why=why, now=now)
    if unlock.kind == UnlockKind.REKEY:
        return _apply_rekey(unlock, approver=approver, why=why, ip_address=ip_address)
    return _apply_offline_code(unlock, approver=approver, why=why)


def _record_approval(
    unlock: UnlockRequest, *, approver: User, note: str, applied: _Applied, now: dt.datetime, ip_address: str | None
) -> None:
    """The outcome on the request, in the audit trail and on the linked case's timeline."""
    UnlockRequest.objects.filter(pk=unlock.pk).update(
        override=applied.override, offline_code=applied.code, outcome=applied.outcome
    )
    unlock.refresh_from_db()
    audit_record(
        actor=approver,
        action="unlock_request.approve",
        obj=unlock,
        before={"status": UnlockStatus.PENDING},
        after={
            "status": UnlockStatus.APPROVED,
            "kind": unlock.kind,
            "requested_by": unlock.requested_by.get_username(),
            # The requester's id: the auditor's same-browser list (portal.selectors.APPROVAL_ACTIONS).
            "requested_by_id": unlock.requested_by_id,
            "note": note,
            "outcome": applied.outcome,
            "override": applied.override.pk if applied.override else None,
            "offline_code": applied.code.pk if applied.code else None,
        },
        ip_address=ip_address,
    )
    _note_on_case(unlock, approver=approver, now=now, text=f"approved: {applied.outcome}")


def unlock_request_approve(
    *,
    unlock_request: UnlockRequest,
    approver: User,
    note: str = "",
    now: dt.datetime | None = None,
    ip_address: str | None = None,
) -> ApprovalResult:
    """Approve a pending request and apply it in the same transaction; all or nothing.

    * temporary: a ``temp_unlock`` override until now + hours, then the contract is
      decided at once (``payments.locks.services.contract_override_add``) so the signed command is issued
      now; when the override ends the sweep decides again and re-locks (in lock hours);
    * release: ``payments.locks.services.contract_release`` (or ``device_release`` without a contract);
    * offline code: ``devices.services.offline.offline_code_issue``; the code is returned once;
    * new offline-code key: ``devices.services.offline.device_offline_rekey`` (new secret, new
      starting code, counter reset; the phone receives it at its next proven enrolment).

    Raises ``PermissionDenied`` for the requester themself, ``UnlockAlreadyDecided`` when
    another approver was first, ``ValidationError`` when the effect is no longer possible
    (the request then stays pending).
    """
    _check_approver(unlock_request, approver)
    # Two accounts of one person are not two people; a rejection changes nothing, so only approval is checked.
    four_eyes_check(requester=unlock_request.requested_by, approver=approver)
    note = (note or "").strip()[:300]
    now = now or timezone.now()
    with transaction.atomic():
        _claim(unlock_request, approver, UnlockStatus.APPROVED, note, now)
        unlock = UnlockRequest.objects.select_related("device__provider", "contract", "requested_by").get(
            pk=unlock_request.pk
        )
        applied = _apply(unlock, approver=approver, now=now, ip_address=ip_address)
        _record_approval(unlock, approver=approver, note=note, applied=applied, now=now, ip_address=ip_address)
    return ApprovalResult(unlock_request=unlock, offline_token=applied.code.token if applied.code else None)


def unlock_request_reject(
    *, unlock_request: UnlockRequest, approver: User, note: str, ip_address: str | None = None
) -> UnlockRequest:
    """Refuse a pending request with a reason the requester reads; nothing changes on the phone."""
    _check_approver(unlock_request, approver)
    note = required_text(note, "note", "Say why the unlock is refused.", limit=300)
    now = timezone.now()
    with transaction.atomic():
        _claim(unlock_request, approver, UnlockStatus.REJECTED, note, now)
        unlock = UnlockRequest.objects.get(pk=unlock_request.pk)
        audit_record(
            actor=approver,
            action="unlock_request.reject",
            obj=unlock,
            before={"status": UnlockStatus.PENDING},
            after={"status": UnlockStatus.REJECTED, "note": note},
            ip_address=ip_address,
        )
        _note_on_case(unlock, approver=approver, now=now, text=f"rejected: {note}")
    return unlock


def _note_on_case(unlock: UnlockRequest, *, approver: User, now: dt.datetime, text: str) -> None:
    """The decision on a request made from a hotline case, as a note on that case."""
    if unlock.case_id:
        CaseEvent.objects.create(
            case_id=unlock.case_id,
            kind=CaseEventKind.NOTE,
            actor=approver,
            at=now,
            text=f"Unlock request #{unlock.pk} {text}",
            data={"unlock_request": unlock.pk},
        )
